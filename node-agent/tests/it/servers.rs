//! Model servers (`kind = "server"`) as managed workers, against a fixture OpenAI-compatible
//! server the tests own (`tests/fixtures/openai_server.py`, Python standard library): its
//! whole process tree measured and released (a child that left the process group included),
//! requests and streams passed through, failures named with nothing left running, orphans of
//! a killed agent named by their model and freed.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use vramkeeper_crds::GhostSourceKind;
use vramkeeper_e2e::{
    Agent, AgentOptions, agent::SMALL_CATALOG, procs, wait::DEADLINE, wait_for, wait_until,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/openai_server.py"
);

/// A catalog entry running the fixture with `args` (plus its port), and `extra` TOML lines.
fn server(name: &str, args: &[&str], extra: &str) -> String {
    let mut command = vec![
        "python3".to_string(),
        FIXTURE.to_string(),
        "--port".into(),
        "{port}".into(),
        "--model".into(),
        name.to_string(),
    ];
    command.extend(args.iter().map(|a| a.to_string()));
    format!(
        "\n[[model]]\nname = \"{name}\"\nkind = \"server\"\ncommand = {}\n{extra}\n",
        serde_json::to_string(&command).unwrap()
    )
}

async fn agent_with(entries: &[String]) -> Agent {
    Agent::start(AgentOptions {
        args: vec!["--enable-test-ops".into()],
        catalog: Some(format!("{SMALL_CATALOG}{}", entries.concat())),
        ..Default::default()
    })
    .await
}

/// The processes of the agent's tree that serve `model` (its worker included).
fn processes_of(agent: &Agent, model: &str) -> Vec<u32> {
    procs::marked_by(&agent.agent_id)
        .into_iter()
        .filter(|(_, m)| m.as_deref() == Some(model))
        .map(|(pid, _)| pid)
        .collect()
}

/// The fixture's port, from the line it printed (`GET /v1/models/{name}/logs`).
async fn fixture_port(agent: &Agent, model: &str) -> u16 {
    wait_for(
        "the fixture's listening line in its log",
        DEADLINE,
        || async {
            let (code, logs) = agent.get(&format!("/v1/models/{model}/logs")).await;
            assert_eq!(code, StatusCode::OK, "{logs}");
            logs["lines"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|l| l["text"].as_str())
                .rev()
                .find_map(|t| {
                    let rest = t.strip_prefix("fixture: listening on 127.0.0.1:")?;
                    rest.split_whitespace().next()?.parse().ok()
                })
        },
    )
    .await
}

/// Switches to `model`, which must succeed; returns the switch's answer.
async fn switch(agent: &Agent, model: &str) -> Value {
    let (code, switched) = agent
        .post("/v1/models/switch", json!({ "model": model }))
        .await;
    assert_eq!(code, StatusCode::OK, "switch to {model}: {switched}");
    switched
}

async fn fixture_stats(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/stats"))
        .await
        .expect("fixture stats")
        .json()
        .await
        .unwrap()
}

fn chat(model: &str, tokens: u32, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": tokens,
        "stream": stream,
    })
}

fn pgid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_server_is_measured_as_its_whole_tree_and_switched_against_burn_and_servers() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let agent = agent_with(&[
        server(
            "srv-a",
            &[
                "--hold-mib",
                "60",
                "--child-mib",
                "80",
                "--escape-child",
                "--pid-file",
                pid_file.to_str().unwrap(),
            ],
            "stop_grace_s = 5",
        ),
        server("srv-b", &["--hold-mib", "30"], ""),
    ])
    .await;

    let (_, models) = agent.get("/v1/models").await;
    let entry = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "srv-a")
        .unwrap()
        .clone();
    assert_eq!(entry["kind"], "server");
    assert_eq!(entry["capabilities"], json!(["openai"]));

    // burn -> server: the tree's memory is at least what the server and its child hold.
    switch(&agent, "tiny-a").await;
    let switched = switch(&agent, "srv-a").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    let vram = switched["vram_mb"].as_f64().unwrap();
    let ram = switched["ram_mb"].as_f64().unwrap();
    assert!(
        vram >= 140.0,
        "tree memory {vram} MiB < 60 + 80 MiB held: {switched}"
    );
    assert!(ram >= 140.0, "tree RAM {ram} MiB: {switched}");
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let server_pid = processes_of(&agent, "srv-a")
        .into_iter()
        .find(|p| *p != child && pgid(*p) == Some(*p))
        .expect("the server leads its own process group");
    assert_ne!(
        pgid(child),
        pgid(server_pid),
        "the child left the server's group"
    );
    let device = agent.device().await;
    let record = device.models.iter().find(|m| m.name == "srv-a").unwrap();
    assert_eq!(record.vram_mb, Some(vram));

    // server -> server: the whole tree of the first is gone, the escaped child included.
    let switched = switch(&agent, "srv-b").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(
        !procs::is_alive(child),
        "the escaped child outlived the unload"
    );
    assert!(!procs::is_alive(server_pid));
    assert!(processes_of(&agent, "srv-a").is_empty());

    // server -> burn.
    let switched = switch(&agent, "tiny-b").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(processes_of(&agent, "srv-b").is_empty());
    let (code, _) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK);
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}

#[tokio::test]
async fn requests_pass_through_and_streams_arrive_chunk_by_chunk() {
    let agent = agent_with(&[server("srv-a", &["--token-delay-ms", "40"], "")]).await;

    // Not loaded: the request switches first (trigger auto), as every inference route does.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", agent.url))
        .json(&chat("srv-a", 3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-vramkeeper-switched"], "none -> srv-a");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    let (_, h) = agent.get("/v1/history?window=3600").await;
    assert_eq!(
        h["switches"].as_array().unwrap().last().unwrap()["trigger"],
        "auto"
    );

    let (code, completion) = agent
        .post(
            "/v1/completions",
            json!({"model": "srv-a", "prompt": "x", "max_tokens": 2}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{completion}");
    assert_eq!(completion["choices"][0]["text"], "tok0 tok1 ");
    let (code, embedded) = agent
        .post(
            "/v1/embeddings",
            json!({"model": "srv-a", "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{embedded}");
    assert_eq!(embedded["data"].as_array().unwrap().len(), 2);

    // A stream: the first chunk reaches the client before the server produced the last
    // token (each chunk says when it was produced), so nothing buffers the stream.
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", agent.url))
        .json(&chat("srv-a", 12, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let mut first_seen_at = None;
    while let Some(chunk) = r.chunk().await.unwrap() {
        if first_seen_at.is_none() && !chunk.is_empty() {
            first_seen_at = Some(now_s());
        }
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), 13, "12 tokens and the final chunk: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let last_produced = events.last().unwrap()["created"].as_f64().unwrap();
    assert!(
        first_seen_at.unwrap() < last_produced,
        "the first chunk arrived only after the last token was produced: buffered"
    );

    // Requests are counted per model.
    let (_, metrics) = agent.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("model=\"srv-a\"") && l.contains("request")),
        "{metrics}"
    );
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let agent = agent_with(&[server("srv-a", &["--token-delay-ms", "100"], "")]).await;
    switch(&agent, "srv-a").await;
    let port = fixture_port(&agent, "srv-a").await;
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", agent.url))
        .json(&chat("srv-a", 1000, true))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    wait_until("the stream runs upstream", DEADLINE, || async {
        fixture_stats(port).await["in_flight"] == 1
    })
    .await;
    drop(r);
    wait_until(
        "the server sees the request cancelled",
        DEADLINE,
        || async {
            let stats = fixture_stats(port).await;
            stats["cancelled"] == 1 && stats["in_flight"] == 0
        },
    )
    .await;
    // The model is free again: a switch does not wait for a drain.
    switch(&agent, "tiny-a").await;
}

#[tokio::test]
async fn an_unload_ends_a_stream_that_outlasts_the_drain_timeout() {
    let agent = Agent::start(AgentOptions {
        args: vec![
            "--enable-test-ops".into(),
            "--drain-timeout-s".into(),
            "1".into(),
        ],
        catalog: Some(format!(
            "{SMALL_CATALOG}{}",
            server("srv-a", &["--token-delay-ms", "100"], "")
        )),
        ..Default::default()
    })
    .await;
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", agent.url))
        .json(&chat("srv-a", 100_000, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.chunk().await.unwrap().expect("a first chunk");
    let (code, unloaded) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{unloaded}");
    assert_eq!(unloaded["release"]["verified"], true, "{unloaded}");
    // The stream ended (cut short: no [DONE]) rather than holding the model forever.
    let mut rest = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!rest.contains("[DONE]"));
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}

#[tokio::test]
async fn failed_starts_name_their_cause_and_leave_nothing_running() {
    // A server told to bind a port another process holds (the agent's port goes unused).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let busy = format!(
        "\n[[model]]\nname = \"busy\"\nkind = \"server\"\ncommand = {}\nenv = {{ UNUSED = \"{{port}}\" }}\n",
        serde_json::to_string(&[
            "python3",
            FIXTURE,
            "--port",
            &taken_port,
            "--child-mib",
            "10"
        ])
        .unwrap()
    );
    let agent = agent_with(&[
        busy,
        server("never", &["--never-healthy", "--child-mib", "20"], "ready_timeout_s = 2"),
        server("dies", &["--die-during-load"], ""),
        "\n[[model]]\nname = \"missing\"\nkind = \"server\"\ncommand = [\"vk-no-such-server\", \"--port\", \"{port}\"]\n"
            .to_string(),
    ])
    .await;
    let cases = [
        ("never", "not healthy within ready_timeout_s = 2 s"),
        ("dies", "fixture: CUDA error: out of memory (simulated)"),
        ("missing", "command not found: \"vk-no-such-server\""),
        ("busy", "a port it binds is taken"),
    ];
    for (model, cause) in cases {
        let (code, body) = agent
            .post("/v1/models/switch", json!({"model": model}))
            .await;
        assert_eq!(code, StatusCode::BAD_GATEWAY, "{model}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(cause), "{model}: {message}");
        assert!(
            procs::marked_by(&agent.agent_id).is_empty(),
            "{model} left {:?}",
            procs::marked_by(&agent.agent_id)
        );
    }
    let (_, dies) = agent.get("/v1/models/dies/logs").await;
    let texts: Vec<&str> = dies["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    assert!(texts.contains(&"fixture: giving up"), "{dies}");
    let (code, err) = agent.get("/v1/models/tiny-a/logs").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let (code, _) = agent.get("/v1/models/nope/logs").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // The agent still works.
    switch(&agent, "tiny-a").await;
}

#[tokio::test]
async fn a_server_that_ignores_sigterm_is_killed_after_its_grace() {
    let agent = agent_with(&[server(
        "stubborn",
        &["--ignore-sigterm", "--child-mib", "20"],
        "stop_grace_s = 1",
    )])
    .await;
    switch(&agent, "stubborn").await;
    let (code, unloaded) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{unloaded}");
    assert_eq!(unloaded["release"]["verified"], true, "{unloaded}");
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}

#[tokio::test]
async fn a_killed_worker_takes_its_server_along() {
    let agent = agent_with(&[server(
        "srv-a",
        &["--child-mib", "20", "--escape-child"],
        "",
    )])
    .await;
    switch(&agent, "srv-a").await;
    let tree = processes_of(&agent, "srv-a");
    assert!(tree.len() >= 3, "worker, server, child: {tree:?}");
    let worker = agent.workers()[0].pid;
    procs::kill(worker);
    // A request at once, while the agent may not have seen the death yet: it is answered by
    // the server started again, never by a 502 for a port nobody listens on.
    let (code, body) = agent
        .post("/v1/chat/completions", chat("srv-a", 2, false))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    wait_until(
        "the old server and its child end with their worker",
        DEADLINE,
        || async { tree.iter().all(|p| !procs::is_alive(*p)) },
    )
    .await;

    // The server dies on its own (a crash, the OOM killer), its worker alive: the worker ends
    // with it, the agent records the crash, and the next request starts it again.
    let worker = agent.workers()[0].pid;
    let tree = processes_of(&agent, "srv-a");
    let server_pid = tree
        .iter()
        .copied()
        .find(|p| *p != worker && pgid(*p) == Some(*p))
        .expect("the server leads its group");
    procs::kill(server_pid);
    wait_until("the agent sees the model gone", DEADLINE, || async {
        agent.device().await.active_model.is_none()
    })
    .await;
    wait_until("the rest of its tree ends", DEADLINE, || async {
        tree.iter().all(|p| !procs::is_alive(*p))
    })
    .await;
    let (code, body) = agent
        .post("/v1/chat/completions", chat("srv-a", 2, false))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_agent_killed_with_a_server_loaded_finds_it_named_by_its_model_and_frees_it() {
    let mut agent = agent_with(&[server(
        "srv-a",
        &["--hold-mib", "40", "--child-mib", "30", "--escape-child"],
        "",
    )])
    .await;
    switch(&agent, "srv-a").await;
    let tree = processes_of(&agent, "srv-a");
    agent.kill_agent_only();
    assert!(
        tree.iter().all(|p| procs::is_alive(*p)),
        "a crash leaves the server running"
    );

    let mut options = agent.restart_options();
    options.args = vec!["--enable-test-ops".into()];
    options.catalog = Some(format!(
        "{SMALL_CATALOG}{}",
        server(
            "srv-a",
            &["--hold-mib", "40", "--child-mib", "30", "--escape-child"],
            ""
        )
    ));
    let again = Agent::start(options).await;
    let ghost = wait_for("the orphans in the ghost", DEADLINE, || async {
        let device = again.device().await;
        let orphans: Vec<_> = device
            .ghost
            .sources
            .iter()
            .filter(|s| s.kind == GhostSourceKind::OrphanWorker)
            .cloned()
            .collect();
        (orphans.len() >= 3).then_some(orphans)
    })
    .await;
    for source in &ghost {
        assert_eq!(source.name.as_deref(), Some("srv-a"), "{source:?}");
    }
    let (code, freed) = again.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{freed}");
    for killed in freed["killed"].as_array().unwrap() {
        assert!(
            killed["name"].as_str().unwrap().starts_with("srv-a ("),
            "{killed}"
        );
    }
    wait_until("the orphans are gone", DEADLINE, || async {
        tree.iter().all(|p| !procs::is_alive(*p))
    })
    .await;
}

/// The seed's leak: the server "unloads" internally but keeps its cache.
async fn leak(port: u16, mib: u64) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/admin/leak"))
        .json(&json!({ "mib": mib }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn growth_shows(agent: &Agent, at_least_mb: f64) {
    wait_until("the growth shows as ghost", DEADLINE, || async {
        agent
            .device()
            .await
            .ghost
            .sources
            .iter()
            .any(|s| s.kind == GhostSourceKind::WorkerGrowth && s.mb >= at_least_mb)
    })
    .await;
}

#[tokio::test]
async fn a_server_that_keeps_its_cache_is_worker_growth_cleared_by_free_then_by_reset() {
    let agent = agent_with(&[server(
        "srv-a",
        &["--hold-mib", "20"],
        "free_path = \"/admin/empty_cache\"",
    )])
    .await;
    switch(&agent, "srv-a").await;
    let port = fixture_port(&agent, "srv-a").await;

    // Free VRAM asks the server, through its free_path, to return its cache.
    leak(port, 300).await;
    growth_shows(&agent, 250.0).await;
    let (code, freed) = agent.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{freed}");
    wait_until("free returned the cache", DEADLINE, || async {
        agent.device().await.ghost.total_mb < 100.0
    })
    .await;
    assert_eq!(agent.device().await.active_model.as_deref(), Some("srv-a"));

    // Reset restarts the server, which returns everything.
    leak(port, 300).await;
    growth_shows(&agent, 250.0).await;
    let (code, reset) = agent.post("/v1/gpu/reset", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{reset}");
    assert_eq!(reset["reloaded"], "srv-a", "{reset}");
    wait_until("the reset returned the cache", DEADLINE, || async {
        agent.device().await.ghost.total_mb < 100.0
    })
    .await;
}

#[tokio::test]
async fn concurrent_requests_for_two_servers_never_put_both_up() {
    let agent = agent_with(&[
        server("srv-a", &["--hold-mib", "10"], ""),
        server("srv-b", &["--hold-mib", "10"], ""),
    ])
    .await;
    let url = agent.url.clone();
    let client = reqwest::Client::new();
    let requests = (0..12).map(|i| {
        let client = client.clone();
        let url = url.clone();
        let model = if i % 2 == 0 { "srv-a" } else { "srv-b" };
        tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat(model, 2, true))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            (status, text)
        })
    });
    let requests: Vec<_> = requests.collect();
    let agent_id = agent.agent_id.clone();
    let both = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (both, stop) = (both.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let models: Vec<Option<String>> = procs::marked_by(&agent_id)
                    .into_iter()
                    .map(|(_, m)| m)
                    .collect();
                let up = |name: &str| models.iter().any(|m| m.as_deref() == Some(name));
                if up("srv-a") && up("srv-b") {
                    both.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    for r in requests {
        let (status, text) = r.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "{status}: {text}"
        );
        if status == StatusCode::OK {
            assert!(text.contains("[DONE]"), "{text}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert_eq!(
        both.load(Ordering::Relaxed),
        0,
        "both servers' processes were seen up at once"
    );
    let models: Vec<_> = procs::marked_by(&agent.agent_id);
    assert!(models.len() <= 2, "{models:?}");
}

/// The virtual environment `scripts/install-test-tools` puts llama-cpp-python in.
fn llama_python() -> std::path::PathBuf {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/llama/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-tools (scripts/test does)",
        python.display()
    );
    python
}

#[tokio::test]
async fn a_real_llama_cpp_server_is_switched_against_burn_and_the_fixture() {
    let python = llama_python();
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-llama.gguf");
    let made = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/make-tiny-gguf.py"
        ))
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let command = json!([
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        gguf,
        "--model_alias",
        "llama",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--n_ctx",
        "256",
        "--interrupt_requests",
        "False",
        "--verbose",
        "False"
    ]);
    let llama = format!(
        "\n[[model]]\nname = \"llama\"\nkind = \"server\"\ncommand = {command}\nhealth = \"/v1/models\"\nready_timeout_s = 300\n"
    );
    let agent = agent_with(&[llama, server("srv-a", &["--hold-mib", "20"], "")]).await;

    // burn -> llama.cpp: measured, and its streamed answer passes through.
    switch(&agent, "tiny-a").await;
    let (code, switched) = agent
        .post("/v1/models/switch", json!({"model": "llama"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{switched}\n{}", agent.log());
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(switched["vram_mb"].as_f64().unwrap() >= 20.0, "{switched}");
    let tree = processes_of(&agent, "llama");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", agent.url))
        .json(&chat("llama", 16, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let chunks = text
        .lines()
        .filter(|l| l.starts_with("data: {") && l.contains("\"content\""))
        .count();
    assert!(chunks >= 8, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // llama.cpp -> fixture: its memory is released, its process gone.
    let switched = switch(&agent, "srv-a").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(tree.iter().all(|p| !procs::is_alive(*p)), "{tree:?}");

    // A completion for it switches back (trigger auto).
    let (code, completion) = agent
        .post(
            "/v1/completions",
            json!({"model": "llama", "prompt": "hello", "max_tokens": 4}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{completion}");
    assert!(completion["choices"][0]["text"].is_string(), "{completion}");
    let (code, _) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK);
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}
