//! The zombie ladder escalates across flickers and keeps its budget across an operator
//! restart, with the agent writing status as in a cluster (`NODE_NAME` set).
//!
//! A ghost that a free clears for a moment and that comes back within `persistSeconds` is the
//! same episode: the next step is a reset, not another free. After an operator restart, the
//! hour's reset budget (one here) is still spent, read from `status.ladder`: the next episode
//! goes free -> Degraded (`ResetBudgetSpent`).

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, ApiServerDouble, wait::DEADLINE, wait_until};

use super::common::*;

const GM: &str = "node-f-gpu0";

fn gm(double: &ApiServerDouble) -> Value {
    double
        .get("vramkeeper.dev", "gpumodels", None, GM)
        .unwrap_or(Value::Null)
}

async fn remedies(agent: &Agent) -> Vec<(Value, Value)> {
    let (_, history) = agent.get("/v1/history?window=3600").await;
    history["remediations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["action"].clone(), x["trigger"].clone()))
        .collect()
}

async fn leak(agent: &Agent) {
    let (code, body) = agent
        .post("/v1/debug/leak", json!({"mib": 300, "pooled": true}))
        .await;
    assert!(code.is_success(), "{body}");
}

fn op(action: &str) -> (Value, Value) {
    (json!(action), json!("operator"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flickering_ghost_escalates_and_the_budget_survives_a_restart() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::start(&double, "replica-f").await;
    let agent = Agent::start(in_cluster(agent_options(), &double, "node-f", dir.path())).await;
    double.create(agent_pod("agent-node-f", "node-f", &agent.url));
    let mut object = gpumodel(GM, "node-f", Some("tiny-a"));
    object["spec"]["zombie"] = json!({
        "thresholdMiB": 100,
        "persistSeconds": 8,
        "freeCooldownSeconds": 2,
        "resetAfterFree": true,
        "maxResetsPerHour": 1,
    });
    double.create(object);
    wait_until("tiny-a loaded and reported", DEADLINE, || async {
        let g = gm(&double);
        active(&agent).await.as_deref() == Some("tiny-a")
            && condition(&g, "Ready").is_some_and(|(s, _)| s == "True")
            && g["status"]["reportedAt"].is_string()
    })
    .await;

    // A ghost a free clears, back at once: one free, then a reset.
    leak(&agent).await;
    wait_until("a free", DEADLINE, || async {
        remedies(&agent).await == [op("free")]
    })
    .await;
    leak(&agent).await;
    wait_until("a reset after the flicker", DEADLINE, || async {
        remedies(&agent).await.len() >= 2
    })
    .await;
    assert_eq!(remedies(&agent).await, [op("free"), op("reset")]);
    // The operator writes the reset into status.ladder once the agent answered.
    wait_until("the reset in status.ladder", DEADLINE, || async {
        gm(&double)["status"]["ladder"]["resets"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    })
    .await;
    let ladder = gm(&double)["status"]["ladder"].clone();
    assert!(ladder["lastFree"].is_string(), "{ladder}");

    // The episode ends once the ghost stayed under the threshold for persistSeconds.
    wait_until("the episode over", DEADLINE, || async {
        let g = gm(&double);
        g["status"]["ladder"]["episodeSince"].is_null()
            && condition(&g, "Ready").is_some_and(|(s, _)| s == "True")
    })
    .await;

    // The operator restarts: its in-memory journal is gone, status.ladder is not.
    operator.stop().await.expect("a clean stop");
    let operator = Operator::start(&double, "replica-f").await;
    leak(&agent).await;
    wait_until("a free in the new episode", DEADLINE, || async {
        remedies(&agent).await.len() >= 3
    })
    .await;
    leak(&agent).await;
    wait_until("Degraded: the reset budget is spent", DEADLINE, || async {
        condition(&gm(&double), "Degraded")
            .is_some_and(|(s, r)| s == "True" && r == "ResetBudgetSpent")
    })
    .await;
    assert_eq!(
        remedies(&agent).await,
        [op("free"), op("reset"), op("free")],
        "no second reset within the hour, across the restart"
    );
    assert_eq!(gm(&double)["status"]["phase"], "Degraded");
    let e = events(&double, GM);
    assert!(
        e.iter().any(|(t, r, _)| t == "Warning" && r == "Degraded"),
        "{e:?}"
    );

    drop(agent);
    operator.stop().await.expect("a clean stop");
    assert_rbac_covers(&double);
}
