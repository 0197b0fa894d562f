//! The middleware of each auth class but `Open` (see [`AuthClass`](super::route::AuthClass)):
//! what each class requires is described in `crate::access`, which holds the secrets and
//! their limits.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::ApiError;
use crate::app::App;

fn presented(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn authorized(app: &App, request: &Request) -> bool {
    let Some(source) = &app.token else {
        return true;
    };
    let token = source.current();
    presented(request).is_some_and(|p| token.matches(p))
}

/// Acting routes: the token when one is configured, and the rate limit.
pub(crate) async fn require_token(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if !authorized(&app, &request) {
        return ApiError::Unauthorized.into_response();
    }
    if let Err(retry_after_s) = app.acting_limiter.check() {
        return ApiError::RateLimited {
            what: "requests to acting routes",
            retry_after_s,
        }
        .into_response();
    }
    next.run(request).await
}

/// Inference routes: the token or a key when either is configured (and not waived), each
/// credential rate limited on its own.
pub(crate) async fn require_credential_for_inference(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if !app.access.inference_needs_auth(app.token.is_some()) {
        return next.run(request).await;
    }
    let credential = presented(&request).and_then(|p| app.access.credential(app.token.as_ref(), p));
    let Some(credential) = credential else {
        return ApiError::UnauthorizedInference.into_response();
    };
    if let Err(retry_after_s) = app.access.check_inference_rate(credential) {
        return ApiError::RateLimited {
            what: "inference requests with this credential",
            retry_after_s,
        }
        .into_response();
    }
    next.run(request).await
}

/// Read routes: the token only with `--auth-reads`.
pub(crate) async fn require_token_for_reads(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if app.auth_reads && !authorized(&app, &request) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}
