//! Read routes: `/v1/status`, `/v1/models`, `/v1/history`.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, State},
    routing::get,
};
use serde::Deserialize;
use vramkeeper_crds::api::{CatalogEntry, HistoryResponse, ModelsResponse, StatusResponse};

use super::ApiJson;
use crate::{
    app::App,
    error::{ApiError, Result},
};

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/models", get(models))
        .route("/v1/history", get(history))
}

async fn status(State(app): State<Arc<App>>) -> ApiJson<StatusResponse> {
    ApiJson(StatusResponse {
        agent: app.agent.clone(),
        devices: app.devices.iter().map(|d| d.status()).collect(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceQuery {
    #[serde(default)]
    gpu: u32,
}

async fn models(
    State(app): State<Arc<App>>,
    query: std::result::Result<Query<DeviceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<ModelsResponse>> {
    let Query(q) = query?;
    let device = app.device(q.gpu)?;
    let models = app
        .catalog
        .models()
        .iter()
        .map(|spec| {
            let size = spec.kind.size();
            let capabilities = spec.kind.capabilities();
            CatalogEntry {
                name: spec.name.clone(),
                kind: spec.kind.name().to_string(),
                params: size.params,
                param_bytes: size.bytes(),
                dtype: size.dtype.as_str().into(),
                embeddings: capabilities.embeddings.is_some(),
                capabilities: capabilities.list(),
                state: device.model_state(&spec.name),
            }
        })
        .collect();
    Ok(ApiJson(ModelsResponse { models }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    gpu: u32,
    /// Seconds, up to a day (default 15 minutes).
    #[serde(default = "default_window")]
    window: u64,
}

fn default_window() -> u64 {
    900
}

async fn history(
    State(app): State<Arc<App>>,
    query: std::result::Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<HistoryResponse>> {
    let Query(q) = query?;
    if !(1..=86_400).contains(&q.window) {
        return Err(ApiError::Invalid(format!(
            "window {} is outside 1..=86400 seconds",
            q.window
        )));
    }
    Ok(ApiJson(app.device(q.gpu)?.history(q.window)))
}
