//! [`ApiJson`]: the JSON extractor and response of every route.
//!
//! Rejections are [`ApiError`]s, classified by what is wrong with the body rather than by
//! where serde happened to stop: a body that is not JSON at all (bad syntax, invalid UTF-8)
//! is 400, JSON of the wrong shape or values is 422 with the path of the offending field, a
//! body over [`BODY_LIMIT`] is 413 and a missing JSON content type 415. An empty body with no
//! content type (or a JSON one) reads as `{}`.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use super::BODY_LIMIT;
use crate::api::error::ApiError;

/// A JSON request body or response.
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = content_type(req.headers());
        let json = content_type.is_some_and(is_json);
        let untyped = content_type.is_none();
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if !json {
                ApiError::NotJson
            } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge { limit: BODY_LIMIT }
            } else {
                ApiError::Malformed(e.body_text())
            }
        })?;
        // `curl -X POST .../v1/models/unload`: no body means no options.
        if bytes.is_empty() && (json || untyped) {
            return parse(b"{}").map(ApiJson);
        }
        if !json {
            return Err(ApiError::NotJson);
        }
        parse(&bytes).map(ApiJson)
    }
}

/// Reads a body: 400 when it is not JSON, 422 (with the field path) when it is JSON that
/// does not fit `T`.
pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut de);
    if let Err(syntax) = well_formed(bytes) {
        return Err(ApiError::Malformed(syntax));
    }
    parsed.map_err(invalid)
}

/// Reads a body already parsed as JSON: 422 (with the field path) when it does not fit `T`.
pub(super) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(invalid)
}

/// A 422 naming the field that did not fit.
fn invalid(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    ApiError::Invalid(if path == "." {
        format!("invalid request: {inner}")
    } else {
        format!("invalid request: {path}: {inner}")
    })
}

/// `Ok` when the bytes are one well-formed JSON document, else what is wrong with them.
fn well_formed(bytes: &[u8]) -> Result<(), String> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(format!("not UTF-8: {e}"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The `Content-Type` header (`Some("")` when it is there but not text).
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default())
}

/// `application/json` or any `application/*+json`, parameters allowed.
fn is_json(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use vramkeeper_crds::api::SwitchRequest;

    use super::*;

    #[test]
    fn not_json_is_400_and_wrong_json_is_422() {
        let status = |b: &[u8]| parse::<SwitchRequest>(b).unwrap_err().status();
        assert_eq!(status(b"{\"model\":"), StatusCode::BAD_REQUEST);
        assert_eq!(status(b"{\"\x80odel\":\"a\"}"), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(b"{\"model\":\"a\"} trailing"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(b"[0, false]"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(b"{\"model\":7}"), StatusCode::UNPROCESSABLE_ENTITY);
        let msg = parse::<SwitchRequest>(b"{\"model\":7}")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("model"), "{msg}");
    }
}
