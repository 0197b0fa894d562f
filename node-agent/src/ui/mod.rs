//! The status page, served at `/`: the models, the device's memory and ghost, zombie memory with
//! its remedies, and the memory history. Static files compiled into the binary (no network,
//! nothing to install); the page reads `/v1/status` and `/v1/history` and acts through the same
//! `/v1` routes as any client, with the token the user gives it.

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::app::App;

/// Only this origin's own files; no inline code, no other hosts.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its text and content type.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("index.html"),
    content_type: "text/html; charset=utf-8",
};

/// `/ui/<name>` files.
const ASSETS: &[(&str, Asset)] = &[
    ("/ui/app.js", js(include_str!("app.js"))),
    ("/ui/chart.js", js(include_str!("chart.js"))),
    ("/ui/util.js", js(include_str!("util.js"))),
    ("/ui/view.js", js(include_str!("view.js"))),
    (
        "/ui/style.css",
        Asset {
            body: include_str!("style.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
    (
        "/ui/favicon.svg",
        Asset {
            body: include_str!("favicon.svg"),
            content_type: "image/svg+xml",
        },
    ),
];

const fn js(body: &'static str) -> Asset {
    Asset {
        body,
        content_type: "text/javascript; charset=utf-8",
    }
}

fn serve(asset: &Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The files change with the binary; revalidating keeps an upgraded agent's page current.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The page's routes.
pub(crate) fn router() -> Router<Arc<App>> {
    let mut router = Router::new().route("/", get(|| async { serve(&INDEX) }));
    for (path, asset) in ASSETS {
        router = router.route(path, get(move || async move { serve(asset) }));
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_embedded_files() {
        for src in ["/ui/app.js", "/ui/style.css", "/ui/favicon.svg"] {
            assert!(INDEX.body.contains(src), "index.html should load {src}");
        }
        assert!(!INDEX.body.contains("http://") && !INDEX.body.contains("https://"));
        for (path, asset) in ASSETS {
            for import in asset.body.split("from './").skip(1) {
                let file = import.split('\'').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|(p, _)| *p == format!("/ui/{file}")),
                    "{path} imports {file}, which is not served"
                );
            }
        }
    }
}
