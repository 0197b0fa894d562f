//! Browser attacks on an agent that listens on a trusted address.
//!
//! - DNS rebinding: a page on `evil.example` re-points its name at 127.0.0.1 and calls the
//!   agent from the browser, same-origin as far as the browser knows. Its requests carry
//!   `Host: evil.example`, so the agent answers only requests addressed to an IP literal,
//!   `localhost`, its node name or a name in `--allowed-hosts` (port ignored; the policy is
//!   `crate::access::host`); others get 421. Every route, `/healthz` and `/readyz` included
//!   (kubelet probes by IP).
//! - Cross-site request forgery: a page of another origin may send a POST without preflight
//!   (no body, or a form's content type). Browsers say whose page it is in `Origin`; a
//!   state-changing request whose `Origin` is not the agent's own is refused (403). Clients
//!   that are not browsers send no `Origin` and are not affected.
//!
//! A request without a `Host` (HTTP/1.0) comes from no browser and is answered.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{
        Method,
        header::{HOST, ORIGIN},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{access::host::host_part, api::error::ApiError, app::App};

/// The `host[:port]` of an `Origin` (`scheme://host[:port]`), lower case.
fn origin_authority(origin: &str) -> Option<String> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/').to_ascii_lowercase())
}

/// 421 for hosts the agent does not answer for; 403 for state-changing requests from a page
/// of another origin.
pub(crate) async fn check_host_and_origin(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    if let Some(host) = &host
        && !app.access.hosts.allows(host)
    {
        return ApiError::MisdirectedHost {
            host: host_part(host).to_string(),
        }
        .into_response();
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && let Some(origin) = request.headers().get(ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes()).to_string();
        let same = origin_authority(&origin)
            .zip(host.as_deref())
            .is_some_and(|(o, h)| o == h.to_ascii_lowercase());
        if !same {
            return ApiError::CrossOrigin {
                origin,
                method: request.method().to_string(),
            }
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_by_authority() {
        assert_eq!(
            origin_authority("http://127.0.0.1:8470").as_deref(),
            Some("127.0.0.1:8470")
        );
        assert_eq!(origin_authority("null"), None);
    }
}
