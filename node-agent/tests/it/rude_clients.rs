//! Rude clients: requests that give up at every point of every operation, many at once. After
//! each storm the agent's promises are checked against the process table: at most one worker,
//! none the status does not name, the status naming exactly the worker that runs, the ghost
//! within tolerance.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, wait::DEADLINE, wait_until};

/// Tolerance on the ghost once the device is quiet (page-granular RSS, allocator slack).
const GHOST_TOLERANCE_MB: f64 = 64.0;

/// One request that gives up after `timeout`: the client disconnects, whatever the agent was
/// doing. Returns the status when it got one.
async fn rude(agent: &Agent, path: &str, body: Value, timeout: Duration) -> Option<StatusCode> {
    reqwest::Client::new()
        .post(format!("{}{path}", agent.url))
        .timeout(timeout)
        .json(&body)
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// Waits until the device has nothing running or waiting, then checks every invariant.
async fn assert_settled(agent: &Agent) {
    wait_until("the device's queue to drain", DEADLINE, || async {
        let d = agent.device().await;
        !d.busy && d.queued.is_empty()
    })
    .await;
    // The status and the process table agree once the last release is verified.
    wait_until(
        "the status to match the process table",
        DEADLINE,
        || async {
            let d = agent.device().await;
            let workers = agent.workers();
            let loaded: Vec<_> = d.models.iter().filter_map(|m| m.pid).collect();
            let named = workers.iter().all(|w| loaded.contains(&w.pid));
            workers.len() == loaded.len() && named && workers.len() == d.active_model.iter().count()
        },
    )
    .await;
    let workers = agent.workers();
    assert!(workers.len() <= 1, "at most one worker: {workers:?}");
    wait_until("the ghost to be within tolerance", DEADLINE, || async {
        agent.device().await.ghost.total_mb < GHOST_TOLERANCE_MB
    })
    .await;
}

#[tokio::test]
async fn inference_clients_that_time_out_mid_switch_leave_one_worker() {
    let agent = Agent::small(&["--sample-ms", "50"]).await;
    let models = ["tiny-a", "tiny-b"];
    let mut clients = vec![];
    for c in 0..8u64 {
        let agent_url = agent.url.clone();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..12u64 {
                // Timeouts from 1 ms to ~0.3 s: every point of a switch gets cut.
                let timeout = Duration::from_millis(1 + (c * 37 + i * 53) % 300);
                let model = models[((c + i) % 2) as usize];
                let _ = client
                    .post(format!("{agent_url}/v1/infer"))
                    .timeout(timeout)
                    .json(&json!({"model": model, "tokens": [1, 2]}))
                    .send()
                    .await;
            }
        }));
    }
    // Watch the process table while the storm runs: never two workers.
    let mut most = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        most = most.max(agent.workers().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    assert!(most <= 1, "{most} workers ran at once");
    assert_settled(&agent).await;
    // The agent still serves both models, each answer from the model asked for.
    for model in models {
        let (code, body) = agent
            .post("/v1/infer", json!({"model": model, "tokens": [1]}))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["model"], model);
    }
    assert_settled(&agent).await;
}

#[tokio::test]
async fn acting_clients_that_disconnect_at_every_step_leave_a_true_status() {
    let agent = Agent::small(&["--sample-ms", "50"]).await;
    let steps = [
        ("/v1/models/switch", json!({"model": "tiny-a"})),
        ("/v1/models/unload", json!({})),
        ("/v1/models/switch", json!({"model": "tiny-b"})),
        ("/v1/models/test-load", json!({})),
        ("/v1/gpu/free", json!({})),
        ("/v1/gpu/reset", json!({})),
    ];
    for round in 0..4u64 {
        for (i, (path, body)) in steps.iter().enumerate() {
            let timeout = Duration::from_millis(1 + (round * 41 + i as u64 * 29) % 120);
            rude(&agent, path, body.clone(), timeout).await;
        }
    }
    assert_settled(&agent).await;
    // What the clients left recorded: every operation ran to completion.
    let (_, history) = agent.get("/v1/history?window=3600").await;
    let switches = history["switches"].as_array().unwrap();
    assert!(
        switches.iter().all(|s| s["error"].is_null()),
        "no switch was cut short: {switches:?}"
    );
    // And the agent answers the next polite request.
    let (code, body) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_settled(&agent).await;
    assert_eq!(agent.device().await.active_model.as_deref(), Some("tiny-a"));
}

#[tokio::test]
async fn an_unload_whose_client_left_mid_way_still_unloads_and_inference_reloads() {
    // A worker that ignores shutdown keeps the unload busy for the grace period.
    let agent = Agent::small(&["--shutdown-grace-ms", "3000"]).await;
    agent
        .post("/v1/debug/fault", json!({"fault": "ignore-shutdown"}))
        .await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let url = agent.url.clone();
    let client = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/models/unload"))
            .json(&json!({}))
            .send()
            .await
    });
    wait_until("the unload to be under way", DEADLINE, || async {
        agent
            .device()
            .await
            .busy_with
            .is_some_and(|b| b.contains("unloading"))
    })
    .await;
    // The client gives up: its connection is closed mid-unload.
    client.abort();
    let _ = client.await;
    wait_until(
        "the unload to finish without its client",
        DEADLINE,
        || async { agent.device().await.active_model.is_none() },
    )
    .await;
    assert_settled(&agent).await;
    let (_, history) = agent.get("/v1/history?window=3600").await;
    let last = history["switches"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (
            last["from"].as_str(),
            last["to"].as_str(),
            last["release_verified"].as_bool()
        ),
        (Some("tiny-a"), None, Some(true)),
        "recorded for the client that left: {last}"
    );
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["switched"]["trigger"], "auto");
}

#[tokio::test]
async fn explicit_operations_get_their_turn_among_auto_switches() {
    let agent = Agent::small(&[]).await;
    let mut clients = vec![];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for c in 0..2usize {
        let (url, stop) = (agent.url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let model = ["tiny-a", "tiny-b"][c];
            // Bounded: at most 400 requests a client.
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let _ = client
                    .post(format!("{url}/v1/infer"))
                    .json(&json!({"model": model, "tokens": [1]}))
                    .send()
                    .await;
            }
        }));
    }
    // Both clients are switching the device back and forth.
    wait_until("auto-switches to happen", DEADLINE, || async {
        agent.status().await.devices[0].implicit_switches >= 4
    })
    .await;
    let (code, body) = agent.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "a free waits its turn: {body}");
    let (code, body) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK, "an unload waits its turn: {body}");
    assert_eq!(body["release"]["verified"], true, "{body}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_settled(&agent).await;
}

#[tokio::test]
async fn a_full_queue_answers_409_naming_what_is_ahead() {
    let agent = Agent::small(&["--queue-capacity", "1", "--load-timeout-s", "600"]).await;
    agent
        .post("/v1/debug/fault", json!({"fault": "hang-on-load"}))
        .await;
    let url = agent.url.clone();
    let first = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/models/switch"))
            .json(&json!({"model": "tiny-a"}))
            .send()
            .await
            .map(|r| r.status())
    });
    wait_until("the first switch to run", DEADLINE, || async {
        agent.device().await.busy_with.is_some() && agent.workers().len() == 1
    })
    .await;
    let url = agent.url.clone();
    let second = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/models/switch"))
            .json(&json!({"model": "tiny-b"}))
            .send()
            .await
            .map(|r| r.status())
    });
    wait_until("the second switch to wait", DEADLINE, || async {
        agent.device().await.queued.len() == 1
    })
    .await;
    let (code, body) = agent.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "busy");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("queue is full")
            && message.contains("1 waiting ahead: switching to tiny-b")
            && message.contains("→ tiny-a"),
        "{message}"
    );
    // End the hung load: the queue moves on in order.
    let hung = agent.workers()[0].pid;
    vramkeeper_e2e::procs::kill(hung);
    assert_eq!(first.await.unwrap().unwrap(), StatusCode::BAD_GATEWAY);
    assert_eq!(second.await.unwrap().unwrap(), StatusCode::OK);
    assert_settled(&agent).await;
    assert_eq!(agent.device().await.active_model.as_deref(), Some("tiny-b"));
}
