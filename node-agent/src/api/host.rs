//! Browser attacks on an agent that listens on a trusted address.
//!
//! - DNS rebinding: a page on `evil.example` re-points its name at 127.0.0.1 and calls the
//!   agent from the browser, same-origin as far as the browser knows. Its requests carry
//!   `Host: evil.example`, so the agent answers only requests addressed to an IP literal,
//!   `localhost`, its node name or a name in `--allowed-hosts` (port ignored); others get 421.
//!   Every route, `/healthz` and `/readyz` included (kubelet probes by IP).
//! - Cross-site request forgery: a page of another origin may send a POST without preflight
//!   (no body, or a form's content type). Browsers say whose page it is in `Origin`; a
//!   state-changing request whose `Origin` is not the agent's own is refused (403). Clients
//!   that are not browsers send no `Origin` and are not affected.
//!
//! A request without a `Host` (HTTP/1.0) comes from no browser and is answered.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{
        Method,
        header::{HOST, ORIGIN},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{app::App, error::ApiError};

/// The host names the agent answers for.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    names: Vec<String>,
}

impl HostPolicy {
    /// `localhost`, the node name and the allowed names; each allowed name must be a host name
    /// (a port, if given, is dropped).
    pub fn new(node: Option<&str>, allowed: &[String]) -> anyhow::Result<Self> {
        let mut names = vec!["localhost".to_string()];
        names.extend(node.map(normalise));
        for name in allowed {
            let n = normalise(host_part(name.trim()));
            if n.is_empty() || n.contains(['/', ' ', '@']) {
                anyhow::bail!(
                    "--allowed-hosts {name:?} is not a host name (give names like \
                     agent.example.com, without a scheme or path)"
                );
            }
            names.push(n);
        }
        Ok(Self { names })
    }

    /// Whether a request addressed to `host` (a `Host` header) is answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_part(host);
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalise(name);
        self.names.contains(&name)
    }
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The host of `host[:port]` or `[v6][:port]`.
fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

/// The `host[:port]` of an `Origin` (`scheme://host[:port]`), lower case.
fn origin_authority(origin: &str) -> Option<String> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/').to_ascii_lowercase())
}

/// 421 for hosts the agent does not answer for; 403 for state-changing requests from a page
/// of another origin.
pub async fn check_host_and_origin(
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
    fn ip_literals_localhost_node_and_allowed_names_pass() {
        let p = HostPolicy::new(Some("gpu-node-7"), &["Agent.Example.com".into()]).unwrap();
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8470",
            "10.2.3.4:80",
            "[::1]:8470",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST:8470",
            "localhost.",
            "gpu-node-7:8470",
            "agent.example.com",
            "agent.example.com.:9000",
        ] {
            assert!(p.allows(ok), "{ok} is answered");
        }
        for refused in [
            "evil.example",
            "evil.example:8470",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "gpu-node-7.evil.example",
            "example.com",
            "",
        ] {
            assert!(!p.allows(refused), "{refused} is refused");
        }
    }

    #[test]
    fn allowed_names_are_host_names() {
        assert!(HostPolicy::new(None, &["http://x/".into()]).is_err());
        assert!(HostPolicy::new(None, &["".into()]).is_err());
        let p = HostPolicy::new(None, &["svc.local:8470".into()]).unwrap();
        assert!(p.allows("svc.local:1"));
    }

    #[test]
    fn origins_compare_by_authority() {
        assert_eq!(
            origin_authority("http://127.0.0.1:8470").as_deref(),
            Some("127.0.0.1:8470")
        );
        assert_eq!(origin_authority("null"), None);
    }
}
