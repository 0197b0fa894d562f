//! Acting routes on models: switch, unload, test-load.

use std::sync::Arc;

use axum::extract::State;
use vramkeeper_crds::{
    SwitchTrigger,
    api::{
        SwitchRequest, SwitchResponse, TestLoadEntry, TestLoadRequest, TestLoadResponse,
        UnloadRequest, UnloadResponse,
    },
};

use super::{
    ApiJson, limits,
    route::{ACTING_ERRORS, AuthClass, Operation, Route},
};
use crate::{
    api::error::{ApiError, Result},
    app::App,
};

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::post(
            "/v1/models/switch",
            switch,
            AuthClass::Acting,
            Operation::json::<SwitchResponse>(
                "Unload the active model, verify the release, load this one and measure it.",
            )
            .body::<SwitchRequest>()
            .errors(ACTING_ERRORS),
        ),
        Route::post(
            "/v1/models/unload",
            unload,
            AuthClass::Acting,
            Operation::json::<UnloadResponse>("Unload the active model and verify the release.")
                .body::<UnloadRequest>()
                .errors(ACTING_ERRORS),
        ),
        Route::post(
            "/v1/models/test-load",
            test_load,
            AuthClass::Acting,
            Operation::json::<TestLoadResponse>(
                "Load every catalog model in turn and measure it; restore the active one.",
            )
            .body::<TestLoadRequest>()
            .errors(ACTING_ERRORS),
        ),
    ]
}

/// The trigger a client may name: `api` (the default); the operator's `spec` (reconciling a
/// GpuModel's spec) and, on unload, `idle` (its `idleUnloadSeconds`); `test-load`, which the
/// status page names as it drives a test-load cycle one model at a time. Acting routes need
/// the token whenever one is configured, so only its holders can name any of them. `auto` and
/// `reset` say that the agent acted on its own (an inference naming another model, a reset
/// reloading its model) and are refused: a client naming them would forge the history and the
/// metrics.
fn client_trigger(
    asked: Option<SwitchTrigger>,
    allowed: &[SwitchTrigger],
) -> Result<SwitchTrigger> {
    let trigger = asked.unwrap_or(SwitchTrigger::Api);
    if allowed.contains(&trigger) {
        return Ok(trigger);
    }
    let names: Vec<&str> = allowed.iter().map(|t| t.as_str()).collect();
    Err(ApiError::Invalid(format!(
        "trigger {} cannot be named by a client on this route, which takes {} (auto and \
         reset are recorded only when the agent acts by itself)",
        trigger.as_str(),
        names.join(" or ")
    )))
}

async fn switch(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<SwitchRequest>,
) -> Result<ApiJson<SwitchResponse>> {
    if req.model.is_empty() {
        return Err(ApiError::Invalid("model must not be empty".into()));
    }
    let trigger = client_trigger(
        req.trigger,
        &[
            SwitchTrigger::Api,
            SwitchTrigger::Spec,
            SwitchTrigger::TestLoad,
        ],
    )?;
    let device = app.device(req.gpu)?;
    device.fits(&device.spec(&req.model)?)?;
    let response = device.switch(&req.model, trigger).await?;
    Ok(ApiJson(response))
}

async fn unload(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<UnloadRequest>,
) -> Result<ApiJson<UnloadResponse>> {
    let trigger = client_trigger(
        req.trigger,
        &[
            SwitchTrigger::Api,
            SwitchTrigger::Spec,
            SwitchTrigger::Idle,
            SwitchTrigger::TestLoad,
        ],
    )?;
    let device = app.device(req.gpu)?;
    let release = device.unload(trigger).await?;
    Ok(ApiJson(UnloadResponse { release }))
}

async fn test_load(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<TestLoadRequest>,
) -> Result<ApiJson<TestLoadResponse>> {
    let device = app.device(req.gpu)?;
    let Some(models) = req.models else {
        // The whole catalog, less the models that cannot fit: those are reported, not loaded.
        let mut fitting = vec![];
        let mut refused = vec![];
        for spec in app.catalog.models() {
            match device.fits(spec) {
                Ok(()) => fitting.push(spec.name.clone()),
                Err(e) => refused.push(TestLoadEntry {
                    model: spec.name.clone(),
                    result: None,
                    error: Some(e.detail()),
                }),
            }
        }
        let mut response = if fitting.is_empty() {
            TestLoadResponse {
                results: vec![],
                restored: device.status().active_model,
            }
        } else {
            device.test_load(Some(fitting)).await?
        };
        response.results.extend(refused);
        return Ok(ApiJson(response));
    };
    limits::test_load_list(&models, &app.catalog)?;
    for name in &models {
        device.fits(&device.spec(name)?)?;
    }
    Ok(ApiJson(device.test_load(Some(models)).await?))
}
