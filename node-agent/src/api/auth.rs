//! Bearer tokens: required on acting routes whenever one is configured (and on reads too with
//! `--auth-reads`), compared in constant time, never logged.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use crate::{app::App, error::ApiError};

/// A secret that does not print.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn authorized(app: &App, request: &Request) -> bool {
    let Some(token) = &app.token else {
        return true;
    };
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| token.matches(presented.trim()))
}

/// Acting routes: the token when one is configured, and the rate limit.
pub async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if !authorized(&app, &request) {
        return ApiError::Unauthorized.into_response();
    }
    if let Err(retry_after_s) = app.acting_limiter.check() {
        return ApiError::RateLimited { retry_after_s }.into_response();
    }
    next.run(request).await
}

/// Read routes: the token only with `--auth-reads`.
pub async fn require_token_for_reads(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if app.auth_reads && !authorized(&app, &request) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_and_never_print() {
        let t = Token::new("s3cret".into());
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3cres"));
        assert!(!t.matches("s3cret-longer"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
