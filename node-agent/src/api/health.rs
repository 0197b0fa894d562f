//! `/healthz` (the process answers) and `/readyz` (every device can be read).

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::app::App;

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
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: memory readings fail: {}\n", failing.join("; ")),
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
