//! Acting routes on the device: free and reset.

use std::sync::Arc;

use axum::{Router, extract::State, routing::post};
use vramkeeper_crds::api::{RemediateRequest, RemediationReport, RemediationTrigger};

use super::ApiJson;
use crate::{
    app::App,
    error::{ApiError, Result},
};

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/gpu/free", post(free))
        .route("/v1/gpu/reset", post(reset))
}

fn trigger(req: &RemediateRequest) -> Result<RemediationTrigger> {
    match req.trigger {
        None => Ok(RemediationTrigger::Api),
        Some(RemediationTrigger::Auto) => Err(ApiError::Invalid(
            "trigger auto is the agent's own; use api or operator".into(),
        )),
        Some(t) => Ok(t),
    }
}

async fn free(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<RemediateRequest>,
) -> Result<ApiJson<RemediationReport>> {
    let trigger = trigger(&req)?;
    Ok(ApiJson(
        app.device(req.gpu)?.free(trigger, req.kill_foreign).await?,
    ))
}

async fn reset(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<RemediateRequest>,
) -> Result<ApiJson<RemediationReport>> {
    let trigger = trigger(&req)?;
    Ok(ApiJson(
        app.device(req.gpu)?
            .reset(trigger, req.kill_foreign)
            .await?,
    ))
}
