//! Inference on a GPU the operator manages: no request causes more than one switch. The agent
//! (writing status as in a cluster, `NODE_NAME` set) knows its GPU's GpuModel from the watch it
//! reports through, and refuses an inference request for another model with `409
//! not_desired` naming the GpuModel instead of switching (which the operator would revert:
//! three switches). The desired model is served; after a spec change the new model is; once
//! the GpuModel is gone the agent auto-switches freely again.

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, ApiServerDouble, wait::DEADLINE, wait_until};

use super::common::*;

const GM: &str = "node-i-gpu0";

fn gm(double: &ApiServerDouble) -> Option<Value> {
    double.get("vramkeeper.dev", "gpumodels", None, GM)
}

async fn infer(agent: &Agent, model: &str) -> (reqwest::StatusCode, Value) {
    agent
        .post("/v1/infer", json!({"model": model, "tokens": [1, 2, 3]}))
        .await
}

/// Every switch the agent recorded: `(to, trigger)`, oldest first.
async fn switches(agent: &Agent) -> Vec<(Value, Value)> {
    let (_, history) = agent.get("/v1/history?window=3600").await;
    history["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["to"].clone(), s["trigger"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_never_switches_a_gpu_away_from_its_gpumodel() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::start(&double, "replica-i").await;
    let agent = Agent::start(in_cluster(agent_options(), &double, "node-i", dir.path())).await;
    double.create(agent_pod("agent-node-i", "node-i", &agent.url));
    double.create(gpumodel(GM, "node-i", Some("tiny-a")));
    wait_until("tiny-a loaded and reported", DEADLINE, || async {
        let g = gm(&double).unwrap_or(Value::Null);
        active(&agent).await.as_deref() == Some("tiny-a")
            && condition(&g, "Ready").is_some_and(|(s, _)| s == "True")
            && g["status"]["reportedAt"].is_string()
    })
    .await;

    // Another model: refused, naming the GpuModel and what it wants; nothing switches.
    let (code, body) = infer(&agent, "tiny-b").await;
    assert_eq!(code, reqwest::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_desired", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(GM) && message.contains("wants tiny-a"),
        "{message}"
    );
    // The desired model is served, without a switch.
    let (code, body) = infer(&agent, "tiny-a").await;
    assert!(code.is_success(), "{body}");
    assert_eq!(body["switched"], Value::Null);
    assert_eq!(switches(&agent).await, [(json!("tiny-a"), json!("spec"))]);
    assert_eq!(active(&agent).await.as_deref(), Some("tiny-a"));

    // The spec changes: the operator switches, and the new model is the one served.
    double.merge_patch(
        "vramkeeper.dev",
        "gpumodels",
        None,
        GM,
        &json!({"spec": {"model": "tiny-b"}}),
    );
    wait_until(
        "tiny-b served by the operator's switch",
        DEADLINE,
        || async {
            active(&agent).await.as_deref() == Some("tiny-b")
                && gm(&double)
                    .and_then(|g| condition(&g, "Ready"))
                    .is_some_and(|(s, _)| s == "True")
        },
    )
    .await;
    wait_until("the agent refuses tiny-a now", DEADLINE, || async {
        infer(&agent, "tiny-a").await.1["error"]["code"] == "not_desired"
    })
    .await;
    let (code, body) = infer(&agent, "tiny-b").await;
    assert!(code.is_success(), "{body}");
    assert!(
        switches(&agent)
            .await
            .iter()
            .all(|(_, trigger)| trigger == "spec"),
        "no inference request switched: {:?}",
        switches(&agent).await
    );

    // The GpuModel goes: the GPU is nobody's, and inference switches it again.
    double.delete("vramkeeper.dev", "gpumodels", None, GM);
    wait_until("the GpuModel gone", DEADLINE, || async {
        gm(&double).is_none()
    })
    .await;
    wait_until("tiny-a served by an auto-switch", DEADLINE, || async {
        infer(&agent, "tiny-a").await.0.is_success()
    })
    .await;
    assert_eq!(
        switches(&agent).await.last(),
        Some(&(json!("tiny-a"), json!("auto")))
    );

    drop(agent);
    operator.stop().await.expect("a clean stop");
    assert_rbac_covers(&double);
}
