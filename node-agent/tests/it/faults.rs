//! Worker faults: a load that crashes, hangs or is SIGKILLed leaves no worker and no memory; a
//! worker that ignores shutdown is killed; a worker SIGKILLed between or during inferences fails
//! only the request in flight and is replaced on the next one; failing device reads degrade the
//! agent; an agent killed mid-switch restarts with its records and frees what it left.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::{Agent, procs, wait::DEADLINE, wait_until};

#[tokio::test]
async fn a_worker_that_dies_during_load_leaves_nothing_behind() {
    let agent = Agent::small(&[]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    agent
        .post("/v1/debug/fault", json!({"fault": "crash-on-load"}))
        .await;
    let (code, body) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "load_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tiny-b") && message.contains("SIGABRT"),
        "{message}"
    );
    assert!(agent.workers().is_empty(), "no worker is left");
    let d = agent.device().await;
    assert_eq!(
        d.active_model, None,
        "unload before load: the old model is gone too"
    );
    assert!(d.memory.used_mb < 1.0, "no memory is left: {:?}", d.memory);
    assert!(d.last_switch.unwrap().error.unwrap().contains("SIGABRT"));
    // The next load works.
    let (code, _) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn a_load_that_hangs_times_out_and_is_killed() {
    let agent = Agent::small(&["--load-timeout-s", "2"]).await;
    agent
        .post("/v1/debug/fault", json!({"fault": "hang-on-load"}))
        .await;
    let (code, body) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer load within 2.0 s"),
        "{body}"
    );
    assert!(agent.workers().is_empty());
}

#[tokio::test]
async fn a_worker_that_ignores_shutdown_is_killed_and_reported() {
    let agent = Agent::small(&["--shutdown-grace-ms", "300"]).await;
    agent
        .post("/v1/debug/fault", json!({"fault": "ignore-shutdown"}))
        .await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let pid = agent.workers()[0].pid;
    let (code, body) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["release"]["killed"], true);
    assert_eq!(body["release"]["verified"], true);
    assert!(!procs::is_alive(pid));
}

#[tokio::test]
async fn failing_device_reads_degrade_the_agent_and_readyz_says_so() {
    let agent = Agent::small(&["--sample-ms", "100"]).await;
    assert_eq!(agent.get_text("/readyz").await.0, StatusCode::OK);
    agent.post("/v1/debug/probe", json!({"fail": true})).await;
    wait_until("readiness to drop", DEADLINE, || async {
        agent.get_text("/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, body) = agent.get_text("/readyz").await;
    assert!(
        body.contains("memory readings fail") && body.contains("injected fault"),
        "{body}"
    );
    let d = agent.device().await;
    assert!(d.probe_error.unwrap().contains("injected fault"));
    // Still serving: a switch works, measured by the worker itself, and says it could not
    // verify the release of what it unloaded.
    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert!(r["vram_mb"].as_f64().unwrap() > 1.0, "{r}");
    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["release"]["verified"], false);
    let (_, metrics) = agent.get_text("/metrics").await;
    assert!(
        !metrics.contains(r#"vramkeeper_probe_errors_total{gpu="0"} 0"#),
        "errors are counted"
    );
    // Readings come back: ready again.
    agent.post("/v1/debug/probe", json!({"fail": false})).await;
    wait_until("readiness to return", DEADLINE, || async {
        agent.get_text("/readyz").await.0 == StatusCode::OK
    })
    .await;
    assert!(agent.device().await.probe_error.is_none());
}

#[tokio::test]
async fn an_agent_killed_mid_switch_restarts_with_its_records_and_frees_the_orphan() {
    let mut agent = Agent::small(&[]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    agent
        .post("/v1/debug/fault", json!({"fault": "hang-on-load"}))
        .await;
    let url = agent.url.clone();
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/models/switch"))
            .json(&json!({"model": "tiny-b"}))
            .send()
            .await
    });
    wait_until("the switch to be loading tiny-b", DEADLINE, || async {
        agent
            .device()
            .await
            .busy_with
            .is_some_and(|b| b.contains("tiny-b"))
            && agent.workers().len() == 1
    })
    .await;
    let hung = agent.workers()[0].pid;
    agent.kill_agent_only();
    assert!(
        pending.await.unwrap().is_err(),
        "the client sees the agent go away"
    );
    assert!(
        procs::is_alive(hung),
        "the half-loaded worker outlives the agent"
    );

    let mut options = agent.restart_options();
    options.catalog = Some(vramkeeper_e2e::agent::SMALL_CATALOG.into());
    options.args = vec![
        "--enable-test-ops".into(),
        "--auto-free".into(),
        "false".into(),
    ];
    let again = Agent::start(options).await;
    let d = again.device().await;
    assert_eq!(d.active_model, None);
    let a = d.models.iter().find(|m| m.name == "tiny-a").unwrap();
    assert_eq!(
        (a.state, a.loads),
        (vramkeeper_crds::ModelState::Unloaded, 1),
        "records kept"
    );
    wait_until(
        "the hung worker attributed as an orphan",
        DEADLINE,
        || async {
            again.device().await.ghost.sources.iter().any(|s| {
                s.pid == Some(hung) && s.kind == vramkeeper_crds::GhostSourceKind::OrphanWorker
            })
        },
    )
    .await;
    let (_, r) = again.post("/v1/gpu/free", json!({})).await;
    assert_eq!(r["killed"][0]["pid"], hung);
    assert!(!procs::is_alive(hung));
    let (code, _) = again
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(code, StatusCode::OK, "the restarted agent serves");
}

/// A POST to `agent` sent from a task, answered later: `(status, JSON body)`.
fn in_flight(
    agent: &Agent,
    path: &str,
    body: serde_json::Value,
) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value)> {
    let url = format!("{}{path}", agent.url);
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    })
}

/// After worker `dead` died: it is removed, no worker is left, and the next inference loads a
/// healthy one (trigger `auto`).
async fn replaced_on_the_next_inference(agent: &Agent, dead: u32) {
    wait_until("the dead worker to be removed", DEADLINE, || async {
        agent.device().await.active_model.is_none()
    })
    .await;
    assert!(agent.workers().is_empty(), "{:?}", agent.workers());
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["switched"]["trigger"], "auto");
    assert_ne!(agent.workers()[0].pid, dead);
}

/// Whether a worker of `agent` is stuck inside a request because of its hang fault.
fn hanging(agent: &Agent) -> bool {
    std::fs::read_dir(agent.state.path().join("state/run")).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.path().extension().is_some_and(|x| x == "hanging"))
    })
}

#[tokio::test]
async fn a_worker_sigkilled_mid_inference_fails_that_request_and_is_replaced() {
    let agent = Agent::small(&[]).await;
    agent
        .post("/v1/debug/fault", json!({"fault": "hang-on-infer"}))
        .await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let pid = agent.workers()[0].pid;
    let inflight = in_flight(
        &agent,
        "/v1/infer",
        json!({"model": "tiny-a", "tokens": [1, 2, 3]}),
    );
    wait_until(
        "the worker to be inside the inference",
        DEADLINE,
        || async { hanging(&agent) },
    )
    .await;
    procs::signal(pid, "KILL");
    let (code, body) = inflight.await.unwrap();
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("SIGKILL"), "{body}");
    // The fault was for that one worker: the next inference loads a healthy one.
    replaced_on_the_next_inference(&agent, pid).await;
}

#[tokio::test]
async fn a_worker_sigkilled_mid_load_fails_the_switch_and_leaves_nothing() {
    let agent = Agent::small(&["--load-timeout-s", "600"]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    agent
        .post("/v1/debug/fault", json!({"fault": "hang-on-load"}))
        .await;
    let switch = in_flight(&agent, "/v1/models/switch", json!({"model": "tiny-b"}));
    wait_until("the new worker to be inside its load", DEADLINE, || async {
        hanging(&agent)
    })
    .await;
    let workers = agent.workers();
    assert_eq!(workers.len(), 1, "tiny-a went first: {workers:?}");
    procs::signal(workers[0].pid, "KILL");
    let (code, body) = switch.await.unwrap();
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SIGKILL"),
        "{body}"
    );
    assert!(agent.workers().is_empty(), "{:?}", agent.workers());
    let device = agent.device().await;
    assert_eq!(device.active_model, None);
    assert!(
        !device.busy,
        "the device is free again: {:?}",
        device.busy_with
    );
}
