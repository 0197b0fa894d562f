//! Issue 20's scenarios, as a cluster user meets them: two GpuModels naming one GPU (one owner,
//! a `Conflict` on the other, deleting it touches nothing), a switch made outside the operator
//! (a Warning `Drift` before the revert), and a deletion the agent cannot finish (a
//! `Terminating` condition and a Warning naming why).

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, ApiServerDouble, wait::DEADLINE, wait_until};

use super::common::*;

fn gm(double: &ApiServerDouble, name: &str) -> Option<Value> {
    double.get("vramkeeper.dev", "gpumodels", None, name)
}

fn ready(double: &ApiServerDouble, name: &str) -> Option<(String, String)> {
    gm(double, name).and_then(|g| condition(&g, "Ready"))
}

async fn start_agent() -> Agent {
    Agent::start(agent_options()).await
}

/// The operator's reconciles so far (its `reconciles` counter).
fn reconciles(operator: &Operator) -> u64 {
    operator
        .running
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("vramkeeper_operator_reconciles_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gpumodels_for_one_gpu_one_owner_and_a_conflict() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let operator = Operator::start(&double, "replica-c").await;
    let agent = start_agent().await;
    double.create(agent_pod("agent-node-c", "node-c", &agent.url));
    double.create(gpumodel("gm-old", "node-c", Some("tiny-a")));
    wait_until("tiny-a loaded for gm-old", DEADLINE, || async {
        active(&agent).await.as_deref() == Some("tiny-a")
            && ready(&double, "gm-old").is_some_and(|(s, _)| s == "True")
    })
    .await;

    // A second GpuModel for the same GPU: Conflict, naming the owner; nothing switches.
    double.create(gpumodel("gm-new", "node-c", Some("tiny-b")));
    wait_until("Ready=False Conflict on gm-new", DEADLINE, || async {
        ready(&double, "gm-new").is_some_and(|(s, r)| s == "False" && r == "Conflict")
    })
    .await;
    let g = gm(&double, "gm-new").unwrap();
    let message = g["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["message"]
        .clone();
    assert!(message.as_str().unwrap().contains("gm-old"), "{message}");
    assert_eq!(g["status"]["phase"], "Failed");
    let e = events(&double, "gm-new");
    assert!(
        e.iter()
            .any(|(t, r, note)| t == "Warning" && r == "Conflict" && note.contains("gm-old")),
        "{e:?}"
    );
    // Several more reconciles of both: still one switch, the owner still Ready.
    let seen = reconciles(&operator);
    wait_until("more reconciles", DEADLINE, || async {
        reconciles(&operator) >= seen + 6
    })
    .await;
    assert_eq!(
        spec_switches(&agent).await,
        [(Value::Null, json!("tiny-a"))],
        "no flapping between the two GpuModels"
    );
    assert_eq!(ready(&double, "gm-old").unwrap().0, "True");

    // Deleting the conflicting one never touches the owner's model.
    double.delete("vramkeeper.dev", "gpumodels", None, "gm-new");
    wait_until("gm-new gone", DEADLINE, || async {
        gm(&double, "gm-new").is_none()
    })
    .await;
    assert_eq!(active(&agent).await.as_deref(), Some("tiny-a"));
    assert_eq!(spec_switches(&agent).await.len(), 1);

    // A switch made through the agent's API is drift: a Warning before the revert.
    let (code, body) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert!(code.is_success(), "{body}");
    wait_until("the drift reverted", DEADLINE, || async {
        active(&agent).await.as_deref() == Some("tiny-a")
            && seen_before(&double, "gm-old", "Drift", "Loaded")
    })
    .await;
    let drift = events(&double, "gm-old")
        .into_iter()
        .find(|(_, r, _)| r == "Drift")
        .unwrap();
    assert_eq!(drift.0, "Warning");
    assert!(drift.2.contains("tiny-b"), "{drift:?}");
    // The revert is the operator's unload and load after the Warning.
    assert!(
        seen_before(&double, "gm-old", "Drift", "Unloaded"),
        "{:?}",
        timeline(&double, "gm-old")
    );

    drop(agent);
    operator.stop().await.expect("a clean stop");
    assert_rbac_covers(&double);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_the_agent_cannot_finish_says_why() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let operator = Operator::start(&double, "replica-t").await;
    let mut agent = start_agent().await;
    double.create(agent_pod("agent-node-t", "node-t", &agent.url));
    double.create(gpumodel("gm-t", "node-t", Some("tiny-a")));
    wait_until("tiny-a loaded", DEADLINE, || async {
        active(&agent).await.as_deref() == Some("tiny-a")
            && ready(&double, "gm-t").is_some_and(|(s, _)| s == "True")
    })
    .await;

    // The change log is compacted and the watches break (as in an API server restart): the
    // operator's watches come back from a version that is gone, get 410, and list again.
    double.compact();
    double.set_down(true);
    wait_until("a refused request", DEADLINE, || async {
        double.refused() > 0
    })
    .await;
    double.set_down(false);

    // The agent stops answering while its Pod stays Ready; the object is deleted.
    agent.terminate();
    double.delete("vramkeeper.dev", "gpumodels", None, "gm-t");
    wait_until("Terminating=True UnloadBlocked", DEADLINE, || async {
        gm(&double, "gm-t")
            .and_then(|g| condition(&g, "Terminating"))
            .is_some_and(|(s, r)| s == "True" && r == "UnloadBlocked")
    })
    .await;
    assert_eq!(
        ready(&double, "gm-t"),
        Some(("False".into(), "Terminating".into())),
        "Ready is no longer the stale ModelActive"
    );
    let blocked: Vec<_> = events(&double, "gm-t")
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "DeletionBlocked")
        .collect();
    assert_eq!(blocked.len(), 1, "{blocked:?}");

    // The Pod goes (the node is drained): nothing left to unload, the deletion finishes.
    double.delete("", "pods", Some(NS), "agent-node-t");
    wait_until("gm-t gone", DEADLINE, || async {
        gm(&double, "gm-t").is_none()
    })
    .await;
    drop(agent);
    operator.stop().await.expect("a clean stop");
}
