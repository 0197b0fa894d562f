//! Worker faults: a load that crashes or hangs leaves no worker and no memory; a worker that
//! ignores shutdown is killed; a worker killed mid-service is replaced on the next request.

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
async fn a_worker_killed_while_serving_is_replaced() {
    let agent = Agent::small(&[]).await;
    agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1]}))
        .await;
    let pid = agent.workers()[0].pid;
    procs::kill(pid);
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1]}))
        .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SIGKILL"),
        "{body}"
    );
    wait_until("the dead worker to be removed", DEADLINE, || async {
        agent.device().await.active_model.is_none()
    })
    .await;
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["switched"]["trigger"], "auto");
    assert_ne!(agent.workers()[0].pid, pid);
}
