//! Test-only routes, present only with `--enable-test-ops`: make the active worker hold memory
//! as a leak would, or start the next worker with a fault, so that detection, remediation and
//! failure handling can be shown end to end.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{
    ApiJson,
    route::{AuthClass, Route},
};
use crate::{
    api::error::{ApiError, Result},
    app::App,
    args::Fault,
    device::FaultHooks,
};

/// Acting routes (the token whenever one is configured); `api::routes` adds them only with
/// `--enable-test-ops`.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::test_only_post("/v1/debug/leak", leak, AuthClass::Acting),
        Route::test_only_post("/v1/debug/fault", fault, AuthClass::Acting),
        Route::test_only_post("/v1/debug/probe", probe, AuthClass::Acting),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeRequest {
    #[serde(default)]
    gpu: u32,
    /// Make every reading of the device fail (true) or work again (false).
    fail: bool,
}

/// The fault switches of device `gpu` (they exist whenever these routes do).
fn faults_of(app: &App, gpu: u32) -> Result<&FaultHooks> {
    app.device(gpu)?
        .faults()
        .ok_or_else(|| ApiError::Internal("test routes without fault hooks".into()))
}

async fn probe(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<ProbeRequest>,
) -> Result<ApiJson<serde_json::Value>> {
    faults_of(&app, req.gpu)?.fail_reads(req.fail);
    Ok(ApiJson(serde_json::json!({ "probe_fails": req.fail })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    #[serde(default)]
    gpu: u32,
    /// The fault the next worker of this device starts with (`null` clears it).
    fault: Option<Fault>,
}

async fn fault(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<FaultRequest>,
) -> Result<ApiJson<serde_json::Value>> {
    faults_of(&app, req.gpu)?.set_next_worker_fault(req.fault);
    Ok(ApiJson(
        serde_json::json!({ "next_worker_fault": req.fault }),
    ))
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
