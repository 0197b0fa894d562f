//! Admission by footprint on the CPU device under `--memory-budget-mib`: a load the device
//! has no room for is refused with the figures before anything is unloaded; a model's
//! measured footprint, once known, is what admission uses instead of its estimate.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG};

/// tiny-a's weights (2 M f32) and tiny-b's (4 M f32), in MiB.
const TINY_A_WEIGHTS: f64 = 8e6 / 1048576.0;
const TINY_B_WEIGHTS: f64 = 16e6 / 1048576.0;
/// A CPU worker's overhead in the estimate (`device/admission.rs`).
const CPU_OVERHEAD: f64 = 32.0;

fn pids(agent: &Agent) -> Vec<u32> {
    agent.workers().iter().map(|w| w.pid).collect()
}

#[tokio::test]
async fn a_switch_the_budget_cannot_hold_is_refused_with_the_figures_and_changes_nothing() {
    // Room for tiny-a's estimate (weights + overhead), not for tiny-b's.
    let budget = (TINY_A_WEIGHTS + CPU_OVERHEAD).ceil() as u64 + 4;
    assert!((budget as f64) < TINY_B_WEIGHTS + CPU_OVERHEAD);
    let agent = Agent::small(&["--memory-budget-mib", &budget.to_string()]).await;
    let device = agent.device().await;
    assert_eq!(
        device.memory.total_mb, budget as f64,
        "the budget is the total"
    );

    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    let before = pids(&agent);
    assert_eq!(before.len(), 1);

    for (path, body) in [
        ("/v1/models/switch", json!({"model": "tiny-b"})),
        ("/v1/infer", json!({"model": "tiny-b", "tokens": [1, 2, 3]})),
    ] {
        let (code, r) = agent.post(path, body).await;
        assert_eq!(code, StatusCode::CONFLICT, "{path}: {r}");
        assert_eq!(r["error"]["code"], "insufficient_memory", "{path}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        for part in [
            "tiny-b needs",
            "estimated footprint",
            "MiB is free",
            "nothing was changed",
        ] {
            assert!(message.contains(part), "{path}: {part:?} not in {message}");
        }
        // Nothing changed: the same worker serves the same model.
        assert_eq!(pids(&agent), before, "{path}");
        let device = agent.device().await;
        assert_eq!(device.active_model.as_deref(), Some("tiny-a"), "{path}");
    }
    let (code, r) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1, 2, 3]}))
        .await;
    assert_eq!(code, StatusCode::OK, "tiny-a still serves: {r}");
}

#[tokio::test]
async fn a_measured_footprint_replaces_the_estimate() {
    let mut agent = Agent::small(&[]).await;
    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    let measured = r["vram_mb"].as_f64().unwrap();
    let budget = measured.ceil() as u64 + 4;
    assert!(
        (budget as f64) < TINY_B_WEIGHTS + CPU_OVERHEAD,
        "this test needs tiny-b's worker ({measured} MiB) under its estimate"
    );
    assert_eq!(agent.terminate(), Some(0));

    // Restarted under a budget its estimate exceeds but its measured footprint fits.
    let mut options: AgentOptions = agent.restart_options();
    options.catalog = Some(SMALL_CATALOG.into());
    options.args = vec!["--memory-budget-mib".into(), budget.to_string()];
    let again = Agent::start(options).await;
    let (code, r) = again
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "admitted by its measured {measured} MiB: {r}"
    );
    // tiny-a was never loaded here: its estimate counts, and it does not fit.
    assert!((budget as f64) < TINY_A_WEIGHTS + CPU_OVERHEAD);
    let (code, r) = again
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("estimated"), "{message}");
    assert_eq!(again.device().await.active_model.as_deref(), Some("tiny-b"));
}
