//! Restarts: records survive through the state file; the workers of a killed agent are found
//! as orphans and freed; a corrupt state file means a clean start, never a crash.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_crds::{GhostSourceKind, ModelState};
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG, procs, wait::DEADLINE, wait_for};

fn restart(agent: &Agent, args: &[&str]) -> AgentOptions {
    let mut o = agent.restart_options();
    o.catalog = Some(SMALL_CATALOG.into());
    o.args = ["--enable-test-ops"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    o
}

#[tokio::test]
async fn records_survive_a_graceful_restart() {
    let mut agent = Agent::small(&[]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    let before = agent.device().await;
    assert_eq!(agent.terminate(), Some(0), "SIGTERM ends the agent cleanly");
    assert!(
        agent.workers().is_empty(),
        "a graceful shutdown stops the workers"
    );

    let again = Agent::start(restart(&agent, &[])).await;
    let after = again.device().await;
    assert_eq!(after.active_model, None);
    for name in ["tiny-a", "tiny-b"] {
        let b = before.models.iter().find(|m| m.name == name).unwrap();
        let a = after.models.iter().find(|m| m.name == name).unwrap();
        assert_eq!(a.state, ModelState::Unloaded, "{name}");
        assert_eq!(a.loads, b.loads, "{name}");
        assert_eq!(a.vram_mb, b.vram_mb, "{name}: last-known figures");
        assert_eq!(a.last_loaded, b.last_loaded, "{name}");
    }
    let (_, h) = again.get("/v1/history?window=3600").await;
    let tos: Vec<_> = h["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["to"].clone())
        .collect();
    assert!(
        tos.ends_with(&[json!("tiny-a"), json!("tiny-b"), serde_json::Value::Null]),
        "{tos:?}"
    );
}

#[tokio::test]
async fn workers_of_a_killed_agent_are_orphans_that_get_freed() {
    let mut agent = Agent::small(&["--auto-free", "false"]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    agent
        .post("/v1/debug/leak", json!({"mib": 300, "pooled": false}))
        .await;
    let stale = agent.workers();
    assert_eq!(stale.len(), 1);
    agent.kill_agent_only();
    assert!(
        procs::is_alive(stale[0].pid),
        "the worker outlives its agent"
    );

    let again = Agent::start(restart(
        &agent,
        &[
            "--zombie-threshold-mib",
            "100",
            "--zombie-persist-s",
            "1",
            "--sample-ms",
            "200",
            "--auto-free",
            "false",
        ],
    ))
    .await;
    // Detected and attributed: an orphan of an earlier run, with its pid and size.
    let d = wait_for("the orphan to be flagged", DEADLINE, || async {
        let d = again.device().await;
        d.zombie.flagged.then_some(d)
    })
    .await;
    let orphan = d
        .ghost
        .sources
        .iter()
        .find(|s| s.kind == GhostSourceKind::OrphanWorker)
        .unwrap_or_else(|| panic!("no orphan source: {:?}", d.ghost));
    assert_eq!(orphan.pid, Some(stale[0].pid));
    let rss = procs::rss_bytes(stale[0].pid) as f64 / (1u64 << 20) as f64;
    assert!(
        (orphan.mb - rss).abs() < 8.0,
        "orphan {} MiB, /proc {rss} MiB",
        orphan.mb
    );
    assert!(orphan.mb > 300.0);
    // Free ends it (the automatic free is the same step; see the ghost tests).
    let (code, report) = again.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{report}");
    let killed = report["killed"].as_array().unwrap();
    assert_eq!(killed.len(), 1, "{report}");
    assert_eq!(killed[0]["pid"], stale[0].pid);
    assert_eq!(killed[0]["kind"], "orphan-worker");
    assert!(
        report["ghost_after_mb"].as_f64().unwrap() < 100.0,
        "{report}"
    );
    assert!(!procs::is_alive(stale[0].pid));
    let d = wait_for("the flag to clear", DEADLINE, || async {
        let d = again.device().await;
        (!d.zombie.flagged).then_some(d)
    })
    .await;
    assert!(d.ghost.total_mb < 100.0);
    // The records of the earlier run are kept.
    let b = d.models.iter().find(|m| m.name == "tiny-b").unwrap();
    assert_eq!((b.state, b.loads), (ModelState::Unloaded, 1));
}

#[tokio::test]
async fn a_corrupt_state_file_means_a_clean_start() {
    let mut agent = Agent::small(&[]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    agent.terminate();
    let file = agent.state.path().join("state/device-0.json");
    assert!(file.exists());
    std::fs::write(&file, b"{\"version\": 1, \"tracker\": {\"models\": [").unwrap();
    let again = Agent::start(restart(&agent, &[])).await;
    let d = again.device().await;
    assert!(d.models.iter().all(|m| m.state == ModelState::NeverLoaded));
    assert!(again.log().contains("ignored"), "{}", again.log());
    assert!(
        agent
            .state
            .path()
            .join("state/device-0.json.corrupt")
            .exists()
    );
    let (code, _) = again
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(code, StatusCode::OK);
}
