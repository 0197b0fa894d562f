//! Bounds on work, checked before any of it starts; one agent per state directory; readiness
//! that says when state cannot be written.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::{Agent, AgentOptions};

use super::{assert_error, refused_start};

/// A catalog with an embedding model (its files absent: it never loads, and nothing is
/// fetched) and a model no machine here can hold.
const BOUNDS_CATALOG: &str = r#"
[[model]]
name = "minilm"
kind = "minilm"
dir = "/nonexistent/minilm"

[[model]]
name = "tiny-a"
kind = "synthetic"
params = 2_000_000
layers = 2
vocab = 512
context = 64

[[model]]
name = "colossal"
kind = "synthetic"
params = 90_000_000_000
layers = 8
"#;

#[tokio::test]
async fn bounds_on_work_are_checked_before_any_of_it_starts() {
    let agent = Agent::start(AgentOptions {
        catalog: Some(BOUNDS_CATALOG.into()),
        ..Default::default()
    })
    .await;
    // Embeddings: inputs per request, characters in all.
    let many: Vec<String> = (0..257).map(|i| format!("text {i}")).collect();
    let (c, b) = agent
        .post("/v1/embeddings", json!({"model": "minilm", "input": many}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over_limit",
        "limit of 256",
    );
    let long = "word ".repeat(30_000);
    let (c, b) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "minilm", "input": [long.clone(), long]}),
        )
        .await;
    assert_error(c, &b, StatusCode::PAYLOAD_TOO_LARGE, "over_limit", "262144");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("characters")
    );

    // Test-load lists: no longer than the catalog, each name once.
    let (c, b) = agent
        .post(
            "/v1/models/test-load",
            json!({"models": ["tiny-a", "minilm", "colossal", "tiny-a"]}),
        )
        .await;
    assert_error(
        c,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over_limit",
        "limit of 3",
    );
    let (c, b) = agent
        .post(
            "/v1/models/test-load",
            json!({"models": ["tiny-a", "tiny-a"]}),
        )
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
        "more than once",
    );

    // A model over the device's total is refused before a worker starts, however asked for.
    let (c, b) = agent
        .post("/v1/models/switch", json!({"model": "colossal"}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_big_for_device",
        "colossal",
    );
    assert!(b["error"]["message"].as_str().unwrap().contains("MiB"));
    let (c, b) = agent
        .post("/v1/infer", json!({"model": "colossal", "tokens": [1]}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_big_for_device",
        "total",
    );
    let (c, b) = agent
        .post("/v1/models/test-load", json!({"models": ["colossal"]}))
        .await;
    assert_error(
        c,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_big_for_device",
        "colossal",
    );
    assert!(agent.workers().is_empty(), "no worker was started");
    assert_eq!(
        agent
            .device()
            .await
            .models
            .iter()
            .map(|m| m.loads)
            .sum::<u64>(),
        0
    );
    let (_, history) = agent.get("/v1/history?window=3600").await;
    assert_eq!(
        history["switches"].as_array().map(Vec::len),
        Some(0),
        "{history}"
    );

    // The whole-catalog cycle loads what fits and reports what does not.
    let (c, b) = agent
        .post("/v1/models/test-load", json!({"models": null}))
        .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    let results = b["results"].as_array().unwrap();
    let colossal = results.iter().find(|e| e["model"] == "colossal").unwrap();
    assert_eq!(colossal["error"]["code"], "too_big_for_device", "{b}");
    let tiny = results.iter().find(|e| e["model"] == "tiny-a").unwrap();
    assert_eq!(tiny["result"]["trigger"], "test-load", "{b}");
}

#[tokio::test]
async fn a_second_agent_on_one_state_directory_refuses_to_start() {
    let first = Agent::small(&[]).await;
    let pid = first.pid().unwrap();
    let (code, stderr) = refused_start(&[], &first.state.path().join("state")).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&format!("pid {pid}")) && stderr.contains("--state-dir"),
        "names the other agent: {stderr}"
    );
    // The first one is untouched.
    assert_eq!(first.get_text("/healthz").await.0, StatusCode::OK);
    // Once it is gone, the directory is free (a crash leaves no stale lock).
    let mut first = first;
    first.kill_agent_only();
    let second = Agent::start(first.restart_options()).await;
    assert_eq!(second.get_text("/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn readyz_says_when_the_state_directory_is_not_writable() {
    let agent = Agent::small(&[]).await;
    assert_eq!(agent.get_text("/readyz").await.0, StatusCode::OK);
    // Root writes through permission bits, so take the directory away instead: a file where
    // it was fails every write as a read-only mount does.
    let dir = agent.state.path().join("state");
    let aside = agent.state.path().join("state.aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, b"").unwrap();
    let (code, body) = agent.get_text("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("not writable") && body.contains(dir.to_str().unwrap()),
        "{body}"
    );
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    assert_eq!(agent.get_text("/readyz").await.0, StatusCode::OK);
}
