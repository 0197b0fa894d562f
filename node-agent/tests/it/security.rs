//! Access: what needs a credential, which hosts and origins are answered, what a client may
//! claim, what refuses to start, and the bounds on the work one request may ask for.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vramkeeper_e2e::{
    Agent, AgentOptions,
    agent::{SMALL_CATALOG, agent_bin},
};

const TOKEN: &str = "acting-token";

/// Asserts the status, the error code and that the message names `mentions`.
fn assert_error(code: StatusCode, body: &Value, want: StatusCode, error: &str, mentions: &str) {
    assert_eq!(code, want, "{body}");
    assert_eq!(body["error"]["code"], error, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

/// POSTs JSON with `bearer` (or none).
async fn post_as(
    agent: &Agent,
    bearer: Option<&str>,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", agent.url))
        .json(&body);
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let r = r.send().await.expect("POST");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One HTTP/1.1 request written by hand, so that `Host` and `Origin` are exactly these.
async fn raw(
    agent: &Agent,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = agent.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(token) = &agent.token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = vec![];
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The JSON inside a (possibly chunked) raw body.
fn json_in(body: &str) -> Value {
    let start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).expect("a JSON body")
}

/// Runs the agent binary with `args` and a fresh state directory; it must exit (not serve).
/// Returns its exit status and what it wrote on stderr.
async fn refused_start(args: &[&str], state_dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(agent_bin())
        .args(["--listen", "127.0.0.1:0", "--device", "cpu", "--state-dir"])
        .arg(state_dir)
        .args(args)
        .env_remove("VRAMKEEPER_TOKEN")
        .env("KUBECONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent started and served with {args:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn small_with(args: &[&str], token: Option<&str>) -> Agent {
    Agent::start(AgentOptions {
        args: args.iter().map(|s| s.to_string()).collect(),
        catalog: Some(SMALL_CATALOG.into()),
        token: token.map(String::from),
        env: vec![("KUBECONFIG".into(), "/nonexistent".into())],
        ..Default::default()
    })
    .await
}

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
