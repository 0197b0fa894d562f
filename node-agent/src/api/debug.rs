//! Test-only routes, present only with `--enable-test-ops`: make the active worker hold memory
//! as a leak would, so that detection and remediation can be shown end to end.

use std::sync::Arc;

use axum::{Router, extract::State, routing::post};
use serde::{Deserialize, Serialize};

use super::ApiJson;
use crate::{
    app::App,
    error::{ApiError, Result},
};

pub fn router(enabled: bool) -> Router<Arc<App>> {
    if !enabled {
        return Router::new();
    }
    Router::new().route("/v1/debug/leak", post(leak))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeakRequest {
    #[serde(default)]
    gpu: u32,
    /// MiB to hold.
    mib: u64,
    /// Pooled (a cleanup releases it) or held (only ending the worker does).
    #[serde(default)]
    pooled: bool,
}

#[derive(Serialize)]
struct LeakResponse {
    model: String,
    mib: u64,
    pooled: bool,
}

async fn leak(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<LeakRequest>,
) -> Result<ApiJson<LeakResponse>> {
    if !(1..=1 << 20).contains(&req.mib) {
        return Err(ApiError::Invalid(format!(
            "mib {} is outside 1..=1048576",
            req.mib
        )));
    }
    let model = app.device(req.gpu)?.leak(req.mib, req.pooled).await?;
    Ok(ApiJson(LeakResponse {
        model,
        mib: req.mib,
        pooled: req.pooled,
    }))
}
