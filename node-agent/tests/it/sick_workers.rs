//! Sick workers: one that dies while idle is noticed at once (the agent is its parent) and
//! reloaded by the next request without an error; one that stops answering is marked hung,
//! stalls nothing, and is replaced at the next request.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::{Agent, procs, wait::DEADLINE, wait_for, wait_until};

#[tokio::test]
async fn a_worker_killed_while_idle_is_noticed_and_reloaded_without_an_error() {
    let agent = Agent::small(&[]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let pid = agent.workers()[0].pid;
    procs::kill(pid);
    // No request is needed for the agent to know: status, records, history and metrics.
    wait_until("the crash to be recorded", DEADLINE, || async {
        agent.device().await.active_model.is_none()
    })
    .await;
    let d = agent.device().await;
    let a = d.models.iter().find(|m| m.name == "tiny-a").unwrap();
    assert_eq!(
        (a.state, a.crashes, a.pid),
        (vramkeeper_crds::ModelState::Unloaded, 1, None)
    );
    let last = d.last_switch.unwrap();
    assert_eq!(last.trigger, vramkeeper_crds::SwitchTrigger::Crash);
    assert_eq!(last.from.as_deref(), Some("tiny-a"));
    assert!(last.error.unwrap().contains("SIGKILL"));
    wait_until("the metrics to say so", DEADLINE, || async {
        let (_, metrics) = agent.get_text("/metrics").await;
        metrics.contains(r#"vramkeeper_model_loaded{gpu="0",model="tiny-a"} 0"#)
            && metrics.contains(
                r#"vramkeeper_worker_failures_total{gpu="0",model="tiny-a",failure="crashed"} 1"#,
            )
    })
    .await;
    // The next request loads it again and is answered.
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["switched"]["trigger"], "auto");
    assert_ne!(agent.workers()[0].pid, pid);
}

#[tokio::test]
async fn a_stopped_worker_is_marked_hung_stalls_nothing_and_is_replaced() {
    let agent = Agent::small(&["--sample-ms", "100", "--hang-timeout-s", "1"]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let pid = agent.workers()[0].pid;
    procs::signal(pid, "STOP");
    wait_until("the worker to be marked hung", DEADLINE, || async {
        agent
            .device()
            .await
            .models
            .iter()
            .any(|m| m.name == "tiny-a" && m.hung)
    })
    .await;
    // Sampling goes on while the worker is stopped: the history keeps growing.
    let samples = || async {
        agent.get("/v1/history?window=3600").await.1["samples"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let before = samples().await;
    wait_until("sampling to go on", DEADLINE, || async {
        samples().await >= before + 5
    })
    .await;
    // A switch is not held up by the stopped worker's lock either.
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1]}))
        .await;
    assert_eq!(code, StatusCode::OK, "replaced at the next request: {body}");
    assert!(!procs::is_alive(pid), "the hung worker was ended");
    let new = wait_for("one worker", DEADLINE, || async {
        let w = agent.workers();
        (w.len() == 1).then(|| w[0].pid)
    })
    .await;
    assert_ne!(new, pid);
    let (_, metrics) = agent.get_text("/metrics").await;
    assert!(
        metrics.contains(
            r#"vramkeeper_worker_failures_total{gpu="0",model="tiny-a",failure="hung"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_model_keeps_its_footprint_and_growth_shows_as_ghost() {
    let agent = Agent::small(&["--sample-ms", "50", "--auto-free", "false"]).await;
    let (_, switched) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let footprint = switched["vram_mb"].as_f64().unwrap();
    agent
        .post("/v1/debug/leak", json!({"mib": 96, "pooled": false}))
        .await;
    wait_until("the growth to show as ghost", DEADLINE, || async {
        agent
            .device()
            .await
            .ghost
            .sources
            .iter()
            .any(|s| s.kind == vramkeeper_crds::GhostSourceKind::WorkerGrowth && s.mb > 80.0)
    })
    .await;
    let record = |d: vramkeeper_crds::api::DeviceStatus| {
        d.models
            .into_iter()
            .find(|m| m.name == "tiny-a")
            .unwrap()
            .vram_mb
            .unwrap()
    };
    assert_eq!(record(agent.device().await), footprint, "fixed at load");
    agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(
        record(agent.device().await),
        footprint,
        "the last known figure is the footprint, not footprint + growth"
    );
    // No sample ever showed the model at more than its footprint or, while it was being
    // unloaded, at 0.
    let (_, history) = agent.get("/v1/history?window=3600").await;
    for s in history["samples"].as_array().unwrap() {
        if let Some(mb) = s["models"]["tiny-a"].as_f64() {
            assert!(mb > 0.0 && mb <= footprint + 0.01, "sample {s}");
        }
    }
}
