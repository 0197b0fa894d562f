//! Acting routes on the device: free and reset.

use std::sync::Arc;

use axum::extract::State;
use vramkeeper_crds::api::{RemediateRequest, RemediationReport, RemediationTrigger};

use super::{
    ApiJson,
    route::{ACTING_ERRORS, AuthClass, Operation, Route},
};
use crate::{
    api::error::{ApiError, Result},
    app::App,
};

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::post(
            "/v1/gpu/free",
            free,
            AuthClass::Acting,
            Operation::json::<RemediationReport>(
                "Clean allocator pools, end zombie workers and orphans.",
            )
            .body::<RemediateRequest>()
            .errors(ACTING_ERRORS),
        ),
        Route::post(
            "/v1/gpu/reset",
            reset,
            AuthClass::Acting,
            Operation::json::<RemediationReport>(
                "Stop every worker, wait for the baseline, reload the active model.",
            )
            .body::<RemediateRequest>()
            .errors(ACTING_ERRORS),
        ),
    ]
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
