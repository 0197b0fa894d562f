//! `/healthz` (the process answers) and `/readyz` (every device can be read, as many GPUs as
//! expected among them, and the state directory written).

use std::sync::Arc;

use axum::{extract::State, http::StatusCode};

use super::route::{AuthClass, Operation, Route};
use crate::{app::App, probe::BackendKind, state_file};

const TEXT: &str = "text/plain; charset=utf-8";

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get(
            "/healthz",
            || async { "ok\n" },
            AuthClass::Open,
            Operation::text("Liveness: the process answers.", TEXT),
        ),
        Route::get(
            "/readyz",
            readyz,
            AuthClass::Open,
            Operation::text(
                "Readiness: every device's memory can be read (503 when not).",
                TEXT,
            )
            .errors(&[503]),
        ),
        Route::get(
            "/metrics",
            metrics,
            AuthClass::Open,
            Operation::text(
                "OpenMetrics: memory, ghost, switches, remediations, requests.",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        ),
    ]
}

async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, String) {
    let mut failing = vec![];
    let mut gpus = 0;
    for d in &app.devices {
        match d.status().probe_error {
            Some(e) => failing.push(format!("device {}: {e}", d.info.index)),
            None if d.info.backend == BackendKind::Cuda => gpus += 1,
            None => {}
        }
    }
    let mut reasons = vec![];
    if !failing.is_empty() {
        reasons.push(format!("memory readings fail: {}", failing.join("; ")));
    }
    // A node that should have GPUs and serves on its CPU (or lost one) is not ready.
    if gpus < app.min_gpus {
        reasons.push(format!(
            "{gpus} GPU(s) readable, {} expected (--min-gpus, or --device cuda)",
            app.min_gpus
        ));
    }
    // Every load and unload writes the state file: with the directory read-only, each would
    // fail after the model was loaded.
    let dir = app.state_dir.clone();
    match tokio::task::spawn_blocking(move || state_file::check_writable(&dir)).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => reasons.push(why),
        Err(e) => reasons.push(format!("cannot check the state directory: {e}")),
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
}
