//! A failed load is retried when what it depended on changes, not only on a spec change: the
//! agent Pod rolls with a catalog that now has the model, and the operator loads it.

use serde_json::Value;
use vramkeeper_e2e::{
    Agent, AgentOptions, ApiServerDouble, agent::SMALL_CATALOG, wait::DEADLINE, wait_until,
};

use super::common::*;

const GM: &str = "node-u-gpu0";

fn ready(double: &ApiServerDouble) -> Option<(String, String)> {
    double
        .get("vramkeeper.dev", "gpumodels", None, GM)
        .and_then(|g| condition(&g, "Ready"))
}

/// The small catalog plus `tiny-z`.
fn catalog_with_z() -> String {
    format!(
        "{SMALL_CATALOG}\n[[model]]\nname = \"tiny-z\"\nkind = \"synthetic\"\nparams = 2_000_000\nlayers = 2\nvocab = 512\ncontext = 64\nseed = 3\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_loads_once_the_agent_rolls_with_it_in_the_catalog() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let operator = Operator::start(&double, "replica-u").await;
    let options = agent_options();
    let mut agent = Agent::start(options.clone()).await;
    double.create(agent_pod("agent-node-u", "node-u", &agent.url));
    double.create(gpumodel(GM, "node-u", Some("tiny-z")));
    wait_until("Ready=False UnknownModel", DEADLINE, || async {
        ready(&double).is_some_and(|(s, r)| s == "False" && r == "UnknownModel")
    })
    .await;
    let generation =
        double.get("vramkeeper.dev", "gpumodels", None, GM).unwrap()["metadata"]["generation"]
            .clone();

    // The agent rolls (a new Pod) with a catalog that has tiny-z; the spec does not change.
    let rolled = Agent::start(AgentOptions {
        catalog: Some(catalog_with_z()),
        ..options.clone()
    })
    .await;
    // The new Pod is Ready before the old one goes (a rolling update): the operator never
    // sees the node without a reachable agent, so only the catalog can tell it to retry.
    double.create(agent_pod("agent-node-u-2", "node-u", &rolled.url));
    double.delete("", "pods", Some(NS), "agent-node-u");
    agent.terminate();
    wait_until("tiny-z loaded without a spec change", DEADLINE, || async {
        active(&rolled).await.as_deref() == Some("tiny-z")
            && ready(&double).is_some_and(|(s, _)| s == "True")
    })
    .await;
    let g = double.get("vramkeeper.dev", "gpumodels", None, GM).unwrap();
    assert_eq!(g["metadata"]["generation"], generation);
    assert_eq!(g["status"]["phase"], Value::from("Ready"));
    let r = reasons(&double, GM);
    assert!(r.contains(&"UnknownModel".to_string()), "{r:?}");
    assert!(r.contains(&"Loaded".to_string()), "{r:?}");

    drop(agent);
    drop(rolled);
    operator.stop().await.expect("a clean stop");
}
