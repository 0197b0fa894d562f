//! The agent's HTTP API (axum). Routes live in one file per group; this module merges them,
//! and holds what they share: the JSON extractor, the access middleware (`auth`, `host`; the
//! configuration they check is `crate::access`), and the bounds on work (`limits`).

pub mod auth;
mod debug;
mod embeddings;
mod gpu;
mod health;
pub mod host;
mod infer;
mod json;
pub mod limits;
mod models;
mod openapi;
mod status;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{Method, Uri},
    middleware,
};
use tower_http::trace::TraceLayer;

use crate::{app::App, error::ApiError};

/// The largest request body accepted (embedding batches are the largest).
pub const BODY_LIMIT: usize = 1 << 20;

pub use json::ApiJson;

/// Every route of the agent.
pub fn router(app: Arc<App>) -> Router {
    let acting = Router::new()
        .merge(models::router())
        .merge(gpu::router())
        .merge(debug::router(app.test_ops))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ));
    let reads = Router::new()
        .merge(status::router())
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token_for_reads,
        ));
    let inference = Router::new()
        .merge(infer::router())
        .merge(embeddings::router())
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_credential_for_inference,
        ));
    Router::new()
        .merge(acting)
        .merge(reads)
        .merge(inference)
        .merge(health::router())
        .merge(openapi::router())
        .merge(crate::ui::router())
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::NoRoute {
                method: method.to_string(),
                path: uri.path().to_string(),
            }
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_string(),
            }
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            host::check_host_and_origin,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}
