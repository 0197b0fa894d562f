//! Model servers (`kind = "server"`) as managed workers, against a fixture OpenAI-compatible
//! server the tests own (`tests/fixtures/openai_server.py`, Python standard library): its
//! whole process tree measured and released (a child that left the process group included),
//! requests and streams passed through, failures named with nothing left running, orphans of
//! a killed agent named by their model and freed.
//!
//! One file per area: `lifecycle` (switches, stops, crashes, orphans, leaks), `passing`
//! (requests and streams passed through), `failures` (starts that fail), `llama` (a real
//! third-party server).

mod failures;
mod lifecycle;
mod llama;
mod passing;

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

/// `POST /v1/chat/completions` through the agent, its answer unread (a stream is read as it
/// comes).
async fn post_chat(agent: &Agent, model: &str, tokens: u32, stream: bool) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", agent.url))
        .json(&chat(model, tokens, stream))
        .send()
        .await
        .expect("POST /v1/chat/completions")
}

fn chat(model: &str, tokens: u32, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": tokens,
        "stream": stream,
    })
}

/// The parent of a process (a server's escaped child leads its own group too, but its parent
/// is the server, or init once the server is gone).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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
