//! The agent's HTTP API (axum). Routes live in one file per group, each exporting its route
//! table (`routes()`: path, handler, auth class and OpenAPI operation, declared together);
//! this module joins the tables, builds the router from them, and holds what the routes share:
//! the JSON extractor, the access middleware (`auth`, `host`) and the bounds on work
//! (`limits`).
//!
//! ```text
//!   health, openapi, status, models, gpu, infer, embeddings, debug ::routes()
//!        |  routes(): one table
//!        +--> router(): each route guarded by its class's middleware, + the status page
//!        '--> openapi::document(): each route's operation
//! ```

pub(crate) mod auth;
mod completions;
mod debug;
mod embeddings;
pub(crate) mod error;
mod gpu;
mod health;
pub(crate) mod host;
mod infer;
mod json;
pub(crate) mod limits;
mod models;
mod openai;
mod openapi;
pub(crate) mod route;
mod status;
#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{Method, Uri},
    middleware,
    routing::MethodRouter,
};
use tower_http::trace::TraceLayer;

use self::error::{ApiError, Result};
use self::route::{AuthClass, Route};
use crate::{app::App, device::Device};

/// The largest request body accepted (embedding batches are the largest).
pub const BODY_LIMIT: usize = 1 << 20;

pub use json::ApiJson;

/// Every route of the API (the status page's files aside), the test-only `/v1/debug/*` ones
/// only with `test_ops`.
pub(crate) fn routes(test_ops: bool) -> Vec<Route> {
    let mut routes: Vec<Route> = [
        health::routes(),
        openapi::routes(),
        status::routes(),
        models::routes(),
        gpu::routes(),
        infer::routes(),
        embeddings::routes(),
        openai::routes(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if test_ops {
        routes.extend(debug::routes());
    }
    routes
}

/// The router of the whole table and the status page.
pub(crate) fn router(app: Arc<App>) -> Router {
    LazyLock::force(&openapi::DOCUMENT);
    let mut router = Router::new();
    for route in routes(app.test_ops) {
        router = router.route(route.path, guard(route.handler, route.auth, &app));
    }
    router
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

/// `handler` behind the middleware of `auth`: it runs only for the route's own method (a
/// wrong method is answered 405 whoever asks, as before any check).
fn guard(
    handler: MethodRouter<Arc<App>>,
    auth: AuthClass,
    app: &Arc<App>,
) -> MethodRouter<Arc<App>> {
    let app = app.clone();
    match auth {
        AuthClass::Open => handler,
        AuthClass::Read => handler.route_layer(middleware::from_fn_with_state(
            app,
            auth::require_token_for_reads,
        )),
        AuthClass::Acting => {
            handler.route_layer(middleware::from_fn_with_state(app, auth::require_token))
        }
        AuthClass::Inference => handler.route_layer(middleware::from_fn_with_state(
            app,
            auth::require_credential_for_inference,
        )),
    }
}

impl App {
    /// The device of index `gpu`, or a 404 naming the ones there are.
    pub(crate) fn device(&self, gpu: u32) -> Result<&Arc<Device>> {
        self.devices
            .iter()
            .find(|d| d.info.index == gpu)
            .ok_or_else(|| ApiError::UnknownDevice {
                gpu,
                known: self
                    .devices
                    .iter()
                    .map(|d| d.info.index.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
