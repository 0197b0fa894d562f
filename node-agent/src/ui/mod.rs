//! The status page, served at `/`.

use std::sync::Arc;

use axum::{Router, response::Html, routing::get};

use crate::app::App;

/// The page's routes.
pub fn router() -> Router<Arc<App>> {
    Router::new().route("/", get(|| async { Html(include_str!("index.html")) }))
}
