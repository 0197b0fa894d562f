//! Faults around the operator: the API server going away (the operator backs off, loses and
//! regains its lease, and acts once on its return, no step repeated), and its agent becoming
//! unreachable (reported, retried, resumed when the agent is back).

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, ApiServerDouble, wait::DEADLINE, wait_until};

use super::common::*;

const GM: &str = "node-o-gpu0";

fn ready(double: &ApiServerDouble) -> Option<(String, String)> {
    double
        .get("vramkeeper.dev", "gpumodels", None, GM)
        .and_then(|g| condition(&g, "Ready"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_and_an_unreachable_agent() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let operator = Operator::start(&double, "replica-o").await;
    let options = agent_options();
    let mut agent = Agent::start(options.clone()).await;
    double.create(agent_pod("agent-node-o", "node-o", &agent.url));
    double.create(gpumodel(GM, "node-o", Some("tiny-a")));
    wait_until("tiny-a loaded", DEADLINE, || async {
        active(&agent).await.as_deref() == Some("tiny-a")
            && ready(&double).is_some_and(|(s, _)| s == "True")
    })
    .await;

    // The API server goes away; the spec changes meanwhile (in the double's store, which no
    // client can reach). The operator keeps trying, backs off, and loses its lease.
    double.set_down(true);
    double.merge_patch(
        "vramkeeper.dev",
        "gpumodels",
        None,
        GM,
        &json!({"spec": {"model": "tiny-b"}}),
    );
    wait_until(
        "the operator to notice the outage and lose its lease",
        DEADLINE,
        || async { double.refused() >= 5 && !operator.leads() },
    )
    .await;
    assert!(
        operator.stop().await.is_err(),
        "a lost lease ends the operator (its Pod restarts and campaigns again)"
    );
    assert_eq!(
        active(&agent).await.as_deref(),
        Some("tiny-a"),
        "nothing acts on a spec nobody could read"
    );

    // The API server returns; the restarted operator takes the lease again, sees the change,
    // and acts on it once.
    double.set_down(false);
    let operator = Operator::start(&double, "replica-o").await;
    wait_until("tiny-b loaded after the outage", DEADLINE, || async {
        active(&agent).await.as_deref() == Some("tiny-b")
            && ready(&double).is_some_and(|(s, _)| s == "True")
            && double.get("vramkeeper.dev", "gpumodels", None, GM).unwrap()["status"]
                ["observedGeneration"]
                == 2
    })
    .await;
    assert!(operator.leads());
    assert_eq!(
        spec_switches(&agent).await,
        [
            (Value::Null, json!("tiny-a")),
            (json!("tiny-a"), Value::Null),
            (Value::Null, json!("tiny-b")),
        ],
        "each step once: no duplicate action after the outage"
    );
    let loaded_b = events(&double, GM)
        .iter()
        .filter(|(_, r, note)| r == "Loaded" && note.contains("tiny-b"))
        .count();
    assert_eq!(loaded_b, 1, "{:?}", events(&double, GM));

    // The agent stops answering while its Pod remains: reported as unreachable.
    agent.terminate();
    double.merge_patch(
        "vramkeeper.dev",
        "gpumodels",
        None,
        GM,
        &json!({"spec": {"model": "tiny-a"}}),
    );
    wait_until("Ready=False AgentUnreachable", DEADLINE, || async {
        ready(&double).is_some_and(|(s, r)| s == "False" && r == "AgentUnreachable")
    })
    .await;

    // It comes back (another port, a new Pod): the operator resumes and loads tiny-a.
    let mut restart = agent.restart_options();
    restart.args = options.args.clone();
    restart.catalog = options.catalog.clone();
    let back = Agent::start(restart).await;
    double.delete("", "pods", Some(NS), "agent-node-o");
    double.create(agent_pod("agent-node-o-2", "node-o", &back.url));
    wait_until("tiny-a on the agent that came back", DEADLINE, || async {
        active(&back).await.as_deref() == Some("tiny-a")
            && ready(&double).is_some_and(|(s, _)| s == "True")
    })
    .await;

    drop(agent);
    operator.stop().await.expect("a clean stop");
    assert_rbac_covers(&double);
}
