//! Acting routes on models: switch, unload, test-load.

use std::sync::Arc;

use axum::{Router, extract::State, routing::post};
use vramkeeper_crds::api::{
    SwitchRequest, SwitchResponse, TestLoadRequest, TestLoadResponse, UnloadRequest, UnloadResponse,
};

use super::ApiJson;
use crate::{
    app::App,
    device::Device,
    error::{ApiError, Result},
};

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/models/switch", post(switch))
        .route("/v1/models/unload", post(unload))
        .route("/v1/models/test-load", post(test_load))
}

async fn switch(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<SwitchRequest>,
) -> Result<ApiJson<SwitchResponse>> {
    if req.model.is_empty() {
        return Err(ApiError::Invalid("model must not be empty".into()));
    }
    let device = app.device(req.gpu)?;
    let response = device
        .switch(&req.model, Device::trigger_or_api(req.trigger))
        .await?;
    Ok(ApiJson(response))
}

async fn unload(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<UnloadRequest>,
) -> Result<ApiJson<UnloadResponse>> {
    let device = app.device(req.gpu)?;
    let release = device.unload(Device::trigger_or_api(req.trigger)).await?;
    Ok(ApiJson(UnloadResponse { release }))
}

async fn test_load(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<TestLoadRequest>,
) -> Result<ApiJson<TestLoadResponse>> {
    if req.models.as_ref().is_some_and(|m| m.is_empty()) {
        return Err(ApiError::Invalid(
            "models, when given, must name at least one model".into(),
        ));
    }
    let device = app.device(req.gpu)?;
    Ok(ApiJson(device.test_load(req.models).await?))
}
