//! Ghost memory: detected, attributed to the right source, freed (or reset) until it is back
//! under the threshold.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_crds::{GhostSourceKind, api::DeviceStatus};
use vramkeeper_e2e::{Agent, wait::DEADLINE, wait_for};

const ZOMBIE: &[&str] = &[
    "--zombie-threshold-mib",
    "100",
    "--zombie-persist-s",
    "1",
    "--sample-ms",
    "200",
];

fn source(d: &DeviceStatus, kind: GhostSourceKind) -> Option<f64> {
    d.ghost
        .sources
        .iter()
        .find(|s| s.kind == kind)
        .map(|s| s.mb)
}

#[tokio::test]
async fn a_pooled_leak_is_allocator_cache_and_free_clears_it() {
    let mut args = ZOMBIE.to_vec();
    args.extend(["--auto-free", "false"]);
    let agent = Agent::small(&args).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    let pid = agent.workers()[0].pid;
    let (code, r) = agent
        .post("/v1/debug/leak", json!({"mib": 300, "pooled": true}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    let d = wait_for("zombie memory to be flagged", DEADLINE, || async {
        let d = agent.device().await;
        d.zombie.flagged.then_some(d)
    })
    .await;
    let cache = d
        .ghost
        .sources
        .iter()
        .find(|s| s.kind == GhostSourceKind::AllocatorCache);
    let cache = cache.unwrap_or_else(|| panic!("no allocator-cache source: {:?}", d.ghost));
    assert_eq!(cache.pid, Some(pid));
    assert_eq!(cache.name.as_deref(), Some("tiny-a"));
    assert!((cache.mb - 300.0).abs() < 30.0, "{cache:?}");
    assert!(d.zombie.over_threshold_since.is_some());

    let (code, r) = agent.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["action"], "free");
    assert!(r["ghost_before_mb"].as_f64().unwrap() > 250.0, "{r}");
    assert!(r["ghost_after_mb"].as_f64().unwrap() < 100.0, "{r}");
    assert!(r["used_after_mb"].as_f64().unwrap() < r["used_before_mb"].as_f64().unwrap() - 250.0);
    let d = wait_for("the flag to clear", DEADLINE, || async {
        let d = agent.device().await;
        (!d.zombie.flagged).then_some(d)
    })
    .await;
    assert!(d.ghost.total_mb < 100.0);
    assert_eq!(agent.workers()[0].pid, pid, "free keeps the live worker");
    let (_, metrics) = agent.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"vramkeeper_remediations_total{gpu="0",action="free",trigger="api"} 1"#)
    );
}

#[tokio::test]
async fn held_memory_is_worker_growth_that_only_a_reset_clears() {
    let mut args = ZOMBIE.to_vec();
    args.extend(["--auto-free", "false"]);
    let agent = Agent::small(&args).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    let pid = agent.workers()[0].pid;
    agent
        .post("/v1/debug/leak", json!({"mib": 300, "pooled": false}))
        .await;
    let d = wait_for("worker growth to be seen", DEADLINE, || async {
        let d = agent.device().await;
        source(&d, GhostSourceKind::WorkerGrowth)
            .is_some_and(|mb| mb > 250.0)
            .then_some(d)
    })
    .await;
    assert!(
        source(&d, GhostSourceKind::AllocatorCache).unwrap_or(0.0) < 50.0,
        "{:?}",
        d.ghost
    );
    let (_, r) = agent.post("/v1/gpu/free", json!({})).await;
    assert!(
        r["ghost_after_mb"].as_f64().unwrap() > 250.0,
        "free cannot release it: {r}"
    );
    let (code, r) = agent.post("/v1/gpu/reset", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["action"], "reset");
    assert_eq!(r["at_baseline"], true);
    assert_eq!(r["reloaded"], "tiny-b");
    assert!(r["ghost_after_mb"].as_f64().unwrap() < 50.0, "{r}");
    let workers = agent.workers();
    assert_eq!(workers.len(), 1);
    assert_ne!(workers[0].pid, pid, "reset replaced the worker");
    assert_eq!(agent.device().await.active_model.as_deref(), Some("tiny-b"));
}

#[tokio::test]
async fn zombie_memory_is_freed_automatically_with_a_cooldown() {
    let mut args = ZOMBIE.to_vec();
    args.extend(["--auto-free", "true", "--free-cooldown-s", "3600"]);
    let agent = Agent::small(&args).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    agent
        .post("/v1/debug/leak", json!({"mib": 300, "pooled": true}))
        .await;
    let d = wait_for("an automatic free", DEADLINE, || async {
        let d = agent.device().await;
        d.zombie.last_remediation.is_some().then_some(d)
    })
    .await;
    let last = d.zombie.last_remediation.unwrap();
    assert_eq!(last.trigger, vramkeeper_crds::api::RemediationTrigger::Auto);
    assert!(last.ghost_after_mb < 100.0, "{last:?}");
    // A second leak is flagged, but the cooldown holds the next automatic free back.
    agent
        .post("/v1/debug/leak", json!({"mib": 300, "pooled": true}))
        .await;
    let d = wait_for("the second zombie flag", DEADLINE, || async {
        let d = agent.device().await;
        d.zombie.flagged.then_some(d)
    })
    .await;
    assert!(d.zombie.next_auto_free_at.is_some());
    let (_, h) = agent.get("/v1/history?window=900").await;
    assert_eq!(
        h["remediations"].as_array().unwrap().len(),
        1,
        "no second free inside the cooldown"
    );
    assert!(!h["samples"].as_array().unwrap().is_empty());
}
