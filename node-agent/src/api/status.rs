//! Read routes: `/v1/status`, `/v1/models`, `/v1/history`.

use std::sync::Arc;

use axum::extract::{Query, State};
use serde::Deserialize;
use vramkeeper_crds::api::{CatalogEntry, HistoryResponse, ModelsResponse, StatusResponse};

use super::{
    ApiJson,
    route::{AuthClass, GPU, Operation, Route, WINDOW},
};
use crate::{
    api::error::{ApiError, Result},
    app::App,
};

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get(
            "/v1/status",
            status,
            AuthClass::Read,
            Operation::json::<StatusResponse>(
                "Every device: memory, baseline, ghost and its sources, zombie state, models.",
            ),
        ),
        Route::get(
            "/v1/models",
            models,
            AuthClass::Read,
            Operation::json::<ModelsResponse>(
                "The catalog, with each model's state on the device.",
            )
            .query(&[GPU])
            .errors(&[404, 422]),
        ),
        Route::get(
            "/v1/history",
            history,
            AuthClass::Read,
            Operation::json::<HistoryResponse>(
                "Memory samples, switches and remediations of a time window.",
            )
            .query(&[GPU, WINDOW])
            .errors(&[404, 422]),
        ),
    ]
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
