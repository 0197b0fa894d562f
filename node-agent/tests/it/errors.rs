//! Bad requests get a clear JSON error with the right status, and change nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG};

/// What must not change when a request is rejected.
async fn snapshot(agent: &Agent) -> Value {
    let d = agent.device().await;
    json!({
        "active": d.active_model,
        "loads": d.models.iter().map(|m| m.loads).collect::<Vec<_>>(),
        "switches": agent.get("/v1/history?window=3600").await.1["switches"].as_array().map(Vec::len),
        "workers": agent.workers().iter().map(|w| w.pid).collect::<Vec<_>>(),
    })
}

fn assert_error(code: StatusCode, body: &Value, want: StatusCode, error: &str, mentions: &str) {
    assert_eq!(code, want, "{body}");
    assert_eq!(body["error"]["code"], error, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn bad_requests_are_rejected_clearly_and_change_nothing() {
    let agent = Agent::small(&[]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let before = snapshot(&agent).await;

    let (c, b) = agent
        .post("/v1/models/switch", json!({"model": "gpt-5"}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::NOT_FOUND,
        "unknown_model",
        "tiny-a, tiny-b",
    );
    let (c, b) = agent
        .post("/v1/infer", json!({"model": "nope", "tokens": [1]}))
        .await;
    assert_error(c, &b, StatusCode::NOT_FOUND, "unknown_model", "\"nope\"");
    let (c, b) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b", "gpu": 3}))
        .await;
    assert_error(c, &b, StatusCode::NOT_FOUND, "unknown_device", "device 3");

    let (c, b) = agent
        .post_raw(
            "/v1/models/switch",
            Some("application/json"),
            b"{\"model\": ".to_vec(),
            true,
        )
        .await;
    assert_error(c, &b, StatusCode::BAD_REQUEST, "malformed_body", "EOF");
    let (c, b) = agent
        .post_raw(
            "/v1/models/switch",
            None,
            b"{\"model\":\"tiny-b\"}".to_vec(),
            true,
        )
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    );
    // Just over the limit: a much larger body would still be in flight when the 413 comes.
    let huge = format!("{{\"model\": \"{}\"}}", "x".repeat((1 << 20) + 1000));
    let (c, b) = agent
        .post_raw(
            "/v1/models/switch",
            Some("application/json"),
            huge.into_bytes(),
            true,
        )
        .await;
    assert_error(
        c,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "limit",
    );

    let (c, b) = agent.post("/v1/models/switch", json!({"model": ""})).await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "model",
    );
    let (c, b) = agent.post("/v1/models/switch", json!({"model": 7})).await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "model",
    );
    let (c, b) = agent
        .post(
            "/v1/models/switch",
            json!({"model": "tiny-b", "force": true}),
        )
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "force",
    );
    let (c, b) = agent
        .post("/v1/infer", json!({"model": "tiny-b", "tokens": [99999]}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "99999",
    );
    let (c, b) = agent
        .post("/v1/infer", json!({"model": "tiny-b", "tokens": []}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "empty",
    );
    let many: Vec<u32> = (0..65).collect();
    let (c, b) = agent
        .post("/v1/infer", json!({"model": "tiny-b", "tokens": many}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "context of 64",
    );
    let (c, b) = agent
        .post("/v1/models/test-load", json!({"models": []}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "at least one",
    );
    let (c, b) = agent.post("/v1/gpu/free", json!({"trigger": "auto"})).await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "auto",
    );
    let (c, b) = agent.get("/v1/history?window=0").await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "window",
    );
    let (c, b) = agent.get("/v1/history?window=abc").await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "window",
    );

    assert_eq!(
        snapshot(&agent).await,
        before,
        "rejected requests changed the state"
    );
}

#[tokio::test]
async fn a_request_that_waits_past_the_queue_bound_answers_409() {
    let agent = Agent::small(&["--queue-timeout-s", "1"]).await;
    // A worker that hangs on load keeps the device busy until the load times out.
    agent
        .post("/v1/debug/fault", json!({"fault": "hang-on-load"}))
        .await;
    let slow = {
        let url = agent.url.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/models/switch"))
                .json(&json!({"model": "tiny-a"}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    vramkeeper_e2e::wait_until(
        "the device to be busy",
        vramkeeper_e2e::wait::DEADLINE,
        || async { agent.device().await.busy },
    )
    .await;
    let (c, b) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::CONFLICT,
        "busy",
        "switching (none) → tiny-a",
    );
    assert_error(c, &b, StatusCode::CONFLICT, "busy", "waited 1 s");
    let (c, b) = agent.post("/v1/gpu/free", json!({})).await;
    assert_error(c, &b, StatusCode::CONFLICT, "busy", "retry");
    // Turned away, it changed nothing: no model, one (hung) worker.
    assert_eq!(agent.device().await.active_model, None);
    assert_eq!(agent.workers().len(), 1);
    slow.abort();
}

#[tokio::test]
async fn acting_routes_need_the_token() {
    let agent = Agent::start(AgentOptions {
        catalog: Some(SMALL_CATALOG.into()),
        token: Some("correct horse".into()),
        ..Default::default()
    })
    .await;
    let (c, b) = agent
        .post_raw(
            "/v1/models/switch",
            Some("application/json"),
            br#"{"model":"tiny-a"}"#.to_vec(),
            false,
        )
        .await;
    assert_error(c, &b, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/gpu/reset", agent.url))
        .bearer_auth("correct horsf")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(agent.device().await.active_model.is_none());
    // Reads stay open; the right token acts.
    assert_eq!(agent.get("/v1/status").await.0, StatusCode::OK);
    let (c, b) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    assert!(agent.status().await.agent.auth_required);
    assert!(
        !agent.log().contains("correct horse"),
        "the token never reaches the log"
    );
}

#[tokio::test]
async fn acting_routes_are_rate_limited() {
    let agent = Agent::small(&["--rate-limit", "2"]).await;
    let mut codes = vec![];
    for _ in 0..6 {
        codes.push(agent.post("/v1/models/unload", json!({})).await.0);
    }
    assert!(codes.contains(&StatusCode::TOO_MANY_REQUESTS), "{codes:?}");
    assert_eq!(
        agent.get("/v1/status").await.0,
        StatusCode::OK,
        "reads are not limited"
    );
}
