//! `spec.idleUnloadSeconds` with a real agent: the operator unloads a model that served
//! nothing for that long, does not load it back by itself, and leaves the next inference
//! request to load it on demand.

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, ApiServerDouble, wait::DEADLINE, wait_until};

use super::common::*;

const GM: &str = "node-a-gpu0";

fn ready_reason(double: &ApiServerDouble) -> Option<String> {
    double
        .get("vramkeeper.dev", "gpumodels", None, GM)
        .and_then(|g| condition(&g, "Ready"))
        .filter(|(s, _)| s == "True")
        .map(|(_, r)| r)
}

fn idle_unloads(double: &ApiServerDouble) -> usize {
    reasons(double, GM)
        .iter()
        .filter(|r| *r == "IdleUnloaded")
        .count()
}

/// Every switch the agent recorded: `(from, to, trigger)`, oldest first.
async fn switches(agent: &Agent) -> Vec<(Value, Value, Value)> {
    let (_, history) = agent.get("/v1/history?window=3600").await;
    history["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["from"].clone(), s["to"].clone(), s["trigger"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_model_is_unloaded_and_loaded_again_only_on_demand() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let operator = Operator::start(&double, "replica-a").await;
    let agent = Agent::start(agent_options()).await;
    double.create(agent_pod("agent-node-a", "node-a", &agent.url));
    let mut gm = gpumodel(GM, "node-a", Some("tiny-a"));
    gm["spec"]["idleUnloadSeconds"] = json!(2);
    double.create(gm);

    // Loaded by the spec, then unloaded for idleness; Ready stays True and says why.
    wait_until("an idle unload", DEADLINE, || async {
        idle_unloads(&double) == 1 && ready_reason(&double).as_deref() == Some("IdleUnloaded")
    })
    .await;
    assert_eq!(active(&agent).await, None);
    let g = double.get("vramkeeper.dev", "gpumodels", None, GM).unwrap();
    assert_eq!(g["status"]["phase"], "Ready");

    // A request names the model: the agent loads it on demand (trigger auto) and answers.
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-a", "tokens": [1, 2, 3]}))
        .await;
    assert!(code.is_success(), "{body}");
    assert_eq!(active(&agent).await.as_deref(), Some("tiny-a"));
    // Nudge a reconcile (an annotation changes no generation): the operator sees it in sync,
    // and unloads it again once it has been idle for 2 s.
    double.merge_patch(
        "vramkeeper.dev",
        "gpumodels",
        None,
        GM,
        &json!({"metadata": {"annotations": {"test/nudge": "1"}}}),
    );
    // (The agent's record counts: repeated Events fold into one series.)
    wait_until("the second idle unload", DEADLINE, || async {
        switches(&agent).await.len() >= 4
    })
    .await;

    // The operator never loaded it back by itself: one load by the spec, the rest on demand.
    let idle = json!("idle");
    assert_eq!(
        switches(&agent).await,
        [
            (Value::Null, json!("tiny-a"), json!("spec")),
            (json!("tiny-a"), Value::Null, idle.clone()),
            (Value::Null, json!("tiny-a"), json!("auto")),
            (json!("tiny-a"), Value::Null, idle),
        ]
    );
    let e = events(&double, GM);
    assert!(
        e.iter().any(|(_, r, note)| r == "IdleUnloaded"
            && note.contains("served nothing for")
            && note.contains("memory came back")),
        "{e:?}"
    );
    operator.stop().await.expect("a clean stop");
}
