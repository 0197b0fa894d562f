//! `/healthz` (the process answers) and `/readyz` (every device can be read, and the state
//! directory written).

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::{app::App, state_file};

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, String) {
    let failing: Vec<String> = app
        .devices
        .iter()
        .filter_map(|d| {
            d.status()
                .probe_error
                .map(|e| format!("device {}: {e}", d.info.index))
        })
        .collect();
    let mut reasons = vec![];
    if !failing.is_empty() {
        reasons.push(format!("memory readings fail: {}", failing.join("; ")));
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
