//! What a browser can be made to send: DNS rebinding (421), cross-origin POSTs (403); and
//! the answers a new user meets first: unknown routes, bodiless POSTs.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::Agent;

use super::{assert_error, json_in, raw, small_with};

#[tokio::test]
async fn hosts_other_than_ip_localhost_node_or_allowed_get_421() {
    let agent = small_with(
        &[
            "--node-name",
            "gpu-node-7",
            "--allowed-hosts",
            "agent.example.com",
        ],
        None,
    )
    .await;
    let port = agent.url.rsplit(':').next().unwrap().to_string();
    let rebound = format!("evil.example:{port}");
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v1/status"),
        ("GET", "/"),
        ("GET", "/nope"),
    ] {
        let (status, body) = raw(&agent, method, path, &[("Host", &rebound)], "").await;
        assert_eq!(status, 421, "{method} {path}: {body}");
        let body = json_in(&body);
        assert_eq!(body["error"]["code"], "misdirected_host", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("\"evil.example\"")
                && message.contains("--allowed-hosts evil.example"),
            "{message}"
        );
    }
    // An acting request from a rebinding page changes nothing.
    let (status, _) = raw(
        &agent,
        "POST",
        "/v1/models/switch",
        &[("Host", &rebound), ("Content-Type", "application/json")],
        r#"{"model":"tiny-a"}"#,
    )
    .await;
    assert_eq!(status, 421);
    assert!(agent.device().await.active_model.is_none());
    assert!(agent.workers().is_empty());

    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "10.0.0.9".to_string(),
        format!("localhost:{port}"),
        format!("GPU-node-7:{port}"),
        "agent.example.com".to_string(),
    ] {
        let (status, body) = raw(&agent, "GET", "/healthz", &[("Host", &host)], "").await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    let (status, _) = raw(&agent, "GET", "/readyz", &[("Host", "10.0.0.9:8470")], "").await;
    assert_eq!(status, 200, "kubelet probes by IP");
}

#[tokio::test]
async fn cross_origin_posts_are_refused_and_empty_bodies_read_as_empty_objects() {
    let agent = Agent::small(&[]).await;
    let port = agent.url.rsplit(':').next().unwrap().to_string();
    let host = format!("127.0.0.1:{port}");
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    // A page elsewhere posts without preflight (no body, no content type): refused.
    let (status, body) = raw(
        &agent,
        "POST",
        "/v1/models/unload",
        &[("Host", &host), ("Origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let body = json_in(&body);
    assert_eq!(body["error"]["code"], "cross_origin", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.example")
    );
    let (status, _) = raw(
        &agent,
        "POST",
        "/v1/gpu/reset",
        &[("Host", &host), ("Origin", "null")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(agent.device().await.active_model.as_deref(), Some("tiny-a"));
    // Reads from other origins are answered (the browser keeps the answer from the page).
    let (status, _) = raw(
        &agent,
        "GET",
        "/v1/status",
        &[("Host", &host), ("Origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 200);

    // The agent's own page (same origin) acts; an empty body with no content type is `{}`.
    let (status, body) = raw(
        &agent,
        "POST",
        "/v1/models/unload",
        &[("Host", &host), ("Origin", &format!("http://{host}"))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_in(&body)["release"]["model"], "tiny-a");
    // curl -X POST: no Origin, no body.
    let (c, b) = agent.post_raw("/v1/gpu/free", None, vec![], true).await;
    assert_eq!(c, StatusCode::OK, "{b}");
    // A body that is there still needs its content type.
    let (c, b) = agent
        .post_raw("/v1/gpu/free", None, b"{}".to_vec(), true)
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    );
    // An empty switch reads as `{}`, which names no model: 422, not 415.
    let (c, b) = agent
        .post_raw("/v1/models/switch", None, vec![], true)
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "model",
    );
}

#[tokio::test]
async fn unknown_routes_answer_404_with_json() {
    let agent = Agent::small(&[]).await;
    let (c, b) = agent.get("/v1/nope").await;
    assert_error(c, &b, StatusCode::NOT_FOUND, "no_route", "/v1/nope");
    let (c, b) = agent
        .post("/v1/models/swtich", json!({"model": "tiny-a"}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::NOT_FOUND,
        "no_route",
        "POST /v1/models/swtich",
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/openapi.json")
    );
    let (c, b) = agent.get("/v1/models/switch").await;
    assert_error(
        c,
        &b,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "does not answer GET",
    );
}
