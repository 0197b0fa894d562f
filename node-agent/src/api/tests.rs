//! The router built from the table, in process: every route of the table is reached, each
//! behind its class's check, with the credentials that class takes and refused without them.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{
        Method, Request, StatusCode,
        header::{AUTHORIZATION, CONTENT_TYPE, HOST},
    },
};
use clap::Parser;
use serde_json::Value;
use tower::ServiceExt;

use super::{
    route::{AuthClass, Route},
    router, routes,
};
use crate::{app::App, args::Cli};

const TOKEN: &str = "the-token";
const KEY: &str = "an-inference-key";

/// A catalog with a model of each kind that needs no file (`{name}` in a route's path is the
/// server model).
const CATALOG: &str = r#"
[[model]]
name = "tiny"
kind = "synthetic"
params = 1_000_000

[[model]]
name = "srv"
kind = "server"
command = ["some-server", "--port", "{port}"]
"#;

/// An agent's state on the CPU with test ops and `flags`, in a state directory of its own.
fn app(flags: &[&str]) -> (Arc<App>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let catalog = catalog.to_str().unwrap().to_string();
    let mut argv = vec![
        "vramkeeper-agent",
        "--catalog",
        &catalog,
        "--device",
        "cpu",
        "--enable-test-ops",
        "--rate-limit",
        "1000",
        "--state-dir",
        &path,
        "--cache-dir",
        &path,
    ];
    argv.extend(flags);
    let cli = Cli::try_parse_from(argv).unwrap();
    (crate::serve::build(&cli.serve).unwrap(), dir)
}

/// A request to `route` that changes nothing: a GET, or a POST whose body is a JSON string,
/// which no request type is (its handler's extractor refuses it, 422).
fn request(method: &Method, path: &str, bearer: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path.replace("{name}", "srv"))
        .header(HOST, "127.0.0.1");
    if let Some(bearer) = bearer {
        builder = builder.header(AUTHORIZATION, format!("Bearer {bearer}"));
    }
    if method == Method::POST {
        builder
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(r#""not an object""#))
    } else {
        builder.body(Body::empty())
    }
    .unwrap()
}

async fn call(router: &Router, method: &Method, path: &str, bearer: Option<&str>) -> Answer {
    let response = router
        .clone()
        .oneshot(request(method, path, bearer))
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        code: serde_json::from_slice::<Value>(&bytes).unwrap_or_default()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    code: String,
}

/// The route's handler answered: a GET succeeded, a POST's body was refused by its extractor.
fn assert_reached(route: &Route, answer: &Answer, who: &str) {
    let want = if route.method == Method::POST {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    assert_eq!(
        answer.status, want,
        "{} {} {who}: {answer:?}",
        route.method, route.path
    );
}

fn assert_refused(route: &Route, answer: &Answer, who: &str) {
    assert_eq!(
        (answer.status, answer.code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "{} {} {who}",
        route.method,
        route.path
    );
}

#[tokio::test]
async fn with_a_token_and_a_key_each_class_takes_its_credentials() {
    let (app, _dir) = app(&["--token", TOKEN, "--api-key", KEY]);
    let router = router(app);
    let table = routes(true);
    assert!(table.iter().any(|r| r.path.starts_with("/v1/debug/")));
    for route in &table {
        let (method, path) = (&route.method, route.path);
        assert_reached(
            route,
            &call(&router, method, path, Some(TOKEN)).await,
            "token",
        );
        let anonymous = call(&router, method, path, None).await;
        let wrong = call(&router, method, path, Some("wrong")).await;
        let key = call(&router, method, path, Some(KEY)).await;
        match route.auth {
            AuthClass::Open | AuthClass::Read => {
                assert_reached(route, &anonymous, "anonymous");
                assert_reached(route, &wrong, "a wrong token");
                assert_reached(route, &key, "key");
            }
            AuthClass::Acting => {
                assert_refused(route, &anonymous, "anonymous");
                assert_refused(route, &wrong, "a wrong token");
                assert_refused(route, &key, "an inference key");
            }
            AuthClass::Inference => {
                assert_refused(route, &anonymous, "anonymous");
                assert_refused(route, &wrong, "a wrong token");
                assert_reached(route, &key, "an inference key");
            }
        }
    }
}

#[tokio::test]
async fn with_auth_reads_reads_need_the_token_too() {
    let (app, _dir) = app(&["--token", TOKEN, "--auth-reads"]);
    let router = router(app);
    let table = routes(true);
    assert!(table.iter().any(|r| r.auth == AuthClass::Read));
    for route in &table {
        let (method, path) = (&route.method, route.path);
        assert_reached(
            route,
            &call(&router, method, path, Some(TOKEN)).await,
            "token",
        );
        let anonymous = call(&router, method, path, None).await;
        match route.auth {
            AuthClass::Open => assert_reached(route, &anonymous, "anonymous"),
            _ => assert_refused(route, &anonymous, "anonymous"),
        }
    }
}

#[tokio::test]
async fn with_no_secret_configured_every_route_is_open() {
    let (app, _dir) = app(&[]);
    let router = router(app);
    for route in &routes(true) {
        let anonymous = call(&router, &route.method, route.path, None).await;
        assert_reached(route, &anonymous, "anonymous");
    }
}

#[tokio::test]
async fn a_wrong_method_or_path_is_answered_before_any_check() {
    let (app, _dir) = app(&["--token", TOKEN, "--auth-reads"]);
    let router = router(app);
    for route in &routes(true) {
        let other = if route.method == Method::POST {
            Method::GET
        } else {
            Method::POST
        };
        let answer = call(&router, &other, route.path, None).await;
        assert_eq!(
            (answer.status, answer.code.as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            "{other} {}",
            route.path
        );
    }
    let answer = call(&router, &Method::GET, "/v1/nothing", None).await;
    assert_eq!(
        (answer.status, answer.code.as_str()),
        (StatusCode::NOT_FOUND, "no_route")
    );
}

#[test]
fn the_test_only_routes_come_only_with_test_ops() {
    let without: Vec<&str> = routes(false).iter().map(|r| r.path).collect();
    assert!(!without.iter().any(|p| p.starts_with("/v1/debug/")));
    assert!(without.contains(&"/v1/models/switch"));
}
