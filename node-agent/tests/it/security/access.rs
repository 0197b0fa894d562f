//! Credentials: the token and inference keys, their limits, what a client may claim, and
//! secrets that refuse to start.

use reqwest::StatusCode;
use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG};

use super::{TOKEN, assert_error, post_as, refused_start, small_with};

#[tokio::test]
async fn with_a_token_inference_needs_the_token_or_a_key() {
    let agent = small_with(
        &["--api-key", "key-one", "--api-key", "key-two"],
        Some(TOKEN),
    )
    .await;
    let infer = json!({"model": "tiny-a", "tokens": [1, 2]});

    // Without a credential, or with a wrong one, nothing loads.
    let (c, b) = post_as(&agent, None, "/v1/infer", infer.clone()).await;
    assert_error(c, &b, StatusCode::UNAUTHORIZED, "unauthorized", "--api-key");
    let (c, _) = post_as(&agent, Some("key-three"), "/v1/infer", infer.clone()).await;
    assert_eq!(c, StatusCode::UNAUTHORIZED);
    let (c, b) = post_as(
        &agent,
        None,
        "/v1/embeddings",
        json!({"model": "tiny-a", "input": "x"}),
    )
    .await;
    assert_error(
        c,
        &b,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "inference key",
    );
    assert!(agent.device().await.active_model.is_none());
    assert!(agent.workers().is_empty(), "no worker was started");

    // A key infers (and switches); the token too.
    let (c, b) = post_as(&agent, Some("key-two"), "/v1/infer", infer.clone()).await;
    assert_eq!(c, StatusCode::OK, "{b}");
    let (c, b) = post_as(
        &agent,
        Some(TOKEN),
        "/v1/infer",
        json!({"model": "tiny-b", "tokens": [3]}),
    )
    .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    // A key does not act.
    let (c, _) = post_as(&agent, Some("key-one"), "/v1/models/unload", json!({})).await;
    assert_eq!(c, StatusCode::UNAUTHORIZED);
    assert_eq!(agent.device().await.active_model.as_deref(), Some("tiny-b"));
    let log = agent.log();
    for secret in [TOKEN, "key-one", "key-two"] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
}

#[tokio::test]
async fn keys_from_the_environment_and_a_limit_per_credential() {
    let agent = Agent::start(AgentOptions {
        args: ["--inference-rate-limit", "2"].map(String::from).to_vec(),
        catalog: Some(SMALL_CATALOG.into()),
        token: Some(TOKEN.into()),
        env: vec![("VRAMKEEPER_API_KEYS".into(), "key-one, key-two".into())],
        ..Default::default()
    })
    .await;
    // Unknown models answer fast, without loading: only the limiter is measured.
    let nope = json!({"model": "nope", "tokens": [1]});
    let mut codes = vec![];
    for _ in 0..6 {
        codes.push(
            post_as(&agent, Some("key-one"), "/v1/infer", nope.clone())
                .await
                .0,
        );
    }
    assert!(codes.contains(&StatusCode::TOO_MANY_REQUESTS), "{codes:?}");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/infer", agent.url))
        .bearer_auth("key-one")
        .json(&nope)
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::TOO_MANY_REQUESTS {
        assert!(r.headers().contains_key("retry-after"));
        let b: Value = r.json().await.unwrap();
        assert_error(
            StatusCode::TOO_MANY_REQUESTS,
            &b,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "credential",
        );
    }
    // Another key has its own budget; the token too (key-two came from the list's second item,
    // its space trimmed).
    let (c, b) = post_as(&agent, Some("key-two"), "/v1/infer", nope.clone()).await;
    assert_error(c, &b, StatusCode::NOT_FOUND, "unknown_model", "nope");
    let (c, _) = post_as(&agent, Some(TOKEN), "/v1/infer", nope.clone()).await;
    assert_eq!(c, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn inference_without_auth_opts_out_for_inference_only() {
    let agent = small_with(&["--inference-without-auth"], Some(TOKEN)).await;
    let (c, b) = post_as(
        &agent,
        None,
        "/v1/infer",
        json!({"model": "tiny-a", "tokens": [1]}),
    )
    .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    let (c, _) = post_as(&agent, None, "/v1/models/unload", json!({})).await;
    assert_eq!(
        c,
        StatusCode::UNAUTHORIZED,
        "acting routes still need the token"
    );
    assert!(
        agent.log().contains("--inference-without-auth"),
        "warned at start"
    );
}

#[tokio::test]
async fn clients_cannot_claim_the_agents_own_triggers() {
    let agent = Agent::small(&[]).await;
    for (path, body, trigger) in [
        (
            "/v1/models/switch",
            json!({"model": "tiny-a", "trigger": "auto"}),
            "auto",
        ),
        (
            "/v1/models/switch",
            json!({"model": "tiny-a", "trigger": "reset"}),
            "reset",
        ),
        (
            "/v1/models/switch",
            json!({"model": "tiny-a", "trigger": "idle"}),
            "idle",
        ),
        ("/v1/models/unload", json!({"trigger": "auto"}), "auto"),
        ("/v1/models/unload", json!({"trigger": "reset"}), "reset"),
    ] {
        let (c, b) = agent.post(path, body).await;
        assert_error(
            c,
            &b,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            &format!("trigger {trigger} cannot be named by a client"),
        );
    }
    assert!(
        agent.device().await.active_model.is_none(),
        "nothing loaded"
    );
    let (_, history) = agent.get("/v1/history?window=3600").await;
    assert_eq!(
        history["switches"].as_array().map(Vec::len),
        Some(0),
        "{history}"
    );

    // The operator's triggers are kept: spec on switch, spec and idle on unload.
    let (c, b) = agent
        .post(
            "/v1/models/switch",
            json!({"model": "tiny-a", "trigger": "spec"}),
        )
        .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    assert_eq!(b["trigger"], "spec");
    let (c, b) = agent
        .post("/v1/models/unload", json!({"trigger": "idle"}))
        .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    let (c, b) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    assert_eq!(b["trigger"], "api", "absent means api");
    // The status page drives its test-load cycle one switch at a time.
    let (c, b) = agent
        .post(
            "/v1/models/switch",
            json!({"model": "tiny-a", "trigger": "test-load"}),
        )
        .await;
    assert_eq!(c, StatusCode::OK, "{b}");
    assert_eq!(b["trigger"], "test-load");
    let metrics = agent.get_text("/metrics").await.1;
    assert!(
        metrics.contains(r#"vramkeeper_switches_total{gpu="0",trigger="auto",outcome="ok"} 0"#),
        "no forged auto switch in the metrics"
    );
}

#[tokio::test]
async fn empty_or_whitespace_secrets_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, " \n\t\n").unwrap();
    let file = file.to_str().unwrap();
    for (args, names) in [
        (vec!["--token", ""], "--token"),
        (vec!["--token", "   "], "--token"),
        (vec!["--token-file", file], "the token file"),
        (
            vec!["--api-key", "k", "--api-key", " "],
            "--api-key number 2",
        ),
    ] {
        let (code, stderr) = refused_start(&args, &dir.path().join("state")).await;
        assert_ne!(code, Some(0), "{args:?}");
        assert!(
            stderr.contains(names) && stderr.contains("empty or only whitespace"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn configured_secrets_are_trimmed_as_presented_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-secret\n").unwrap();
    let mut agent = small_with(&["--token-file", file.to_str().unwrap()], None).await;
    agent.token = Some("from-a-secret".into());
    let (c, b) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(
        c,
        StatusCode::OK,
        "the file's newline is not part of the token: {b}"
    );

    let mut padded = small_with(&[], Some("  padded  ")).await;
    padded.token = Some("padded".into());
    let (c, b) = padded.post("/v1/models/unload", json!({})).await;
    assert_eq!(c, StatusCode::OK, "{b}");
}

/// A token file changed under a running agent (a Secret rotated, a GitOps sync drawing a new
/// token): the next request is checked against the new token and the old one is refused, with
/// no restart; a file emptied meanwhile keeps the last token.
#[tokio::test]
async fn a_changed_token_file_is_followed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "before-rotation\n").unwrap();
    let agent = small_with(&["--token-file", file.to_str().unwrap()], None).await;
    let acting =
        |bearer: &'static str| post_as(&agent, Some(bearer), "/v1/models/unload", json!({}));
    assert_eq!(acting("before-rotation").await.0, StatusCode::OK);
    assert_eq!(acting("after-rotation").await.0, StatusCode::UNAUTHORIZED);

    // Replaced as kubelet replaces a Secret's file: written aside, renamed over.
    let aside = dir.path().join("token.new");
    std::fs::write(&aside, "after-rotation\n").unwrap();
    std::fs::rename(&aside, &file).unwrap();
    let (c, b) = acting("after-rotation").await;
    assert_eq!(c, StatusCode::OK, "the new token at once: {b}");
    let (c, b) = acting("before-rotation").await;
    assert_error(c, &b, StatusCode::UNAUTHORIZED, "unauthorized", "token");
    // Inference follows too: it takes the token.
    let (c, b) = post_as(
        &agent,
        Some("after-rotation"),
        "/v1/infer",
        json!({"model": "tiny-a", "tokens": [1]}),
    )
    .await;
    assert_eq!(c, StatusCode::OK, "{b}");

    // Emptied mid-rotation: the last token stays, rather than locking everyone out.
    std::fs::write(&file, "").unwrap();
    assert_eq!(acting("after-rotation").await.0, StatusCode::OK);
    let log = agent.log();
    assert!(log.contains("the token file changed"), "{log}");
    assert!(!log.contains("after-rotation") && !log.contains("before-rotation"));
}
