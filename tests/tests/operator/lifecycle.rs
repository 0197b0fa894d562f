//! Apply, switch, zombie memory, agent restart, delete: the operator's whole job with a real
//! agent.

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, ApiServerDouble, agent::SMALL_CATALOG, wait::DEADLINE, wait_until};

use super::common::*;

const GM: &str = "node-a-gpu0";

fn gm(double: &ApiServerDouble) -> Option<Value> {
    double.get("vramkeeper.dev", "gpumodels", None, GM)
}

fn is(double: &ApiServerDouble, type_: &str, status: &str) -> bool {
    gm(double)
        .and_then(|g| condition(&g, type_))
        .is_some_and(|(s, _)| s == status)
}

async fn start_agent() -> Agent {
    Agent::start(agent_options()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_drives_a_real_agent_through_the_whole_lifecycle() {
    let double = ApiServerDouble::start().await;
    double.create(token_secret());
    let operator = Operator::start(&double, "replica-a").await;
    wait_until("the operator to lead", DEADLINE, || async {
        operator.leads()
    })
    .await;

    // A GpuModel whose node has no agent yet: reported, and nothing else.
    double.create(gpumodel(GM, "node-a", Some("tiny-a")));
    wait_until("Ready=False AgentNotFound", DEADLINE, || async {
        gm(&double)
            .and_then(|g| condition(&g, "Ready"))
            .is_some_and(|(s, r)| s == "False" && r == "AgentNotFound")
    })
    .await;
    let finalizers = gm(&double).unwrap()["metadata"]["finalizers"].clone();
    assert_eq!(finalizers, json!(["vramkeeper.dev/unload"]));

    // The agent appears: its Pod triggers the reconcile, the model loads.
    let mut agent = start_agent().await;
    double.create(agent_pod("agent-node-a", "node-a", &agent.url));
    wait_until("tiny-a to load", DEADLINE, || async {
        active(&agent).await.as_deref() == Some("tiny-a") && is(&double, "Ready", "True")
    })
    .await;
    let g = gm(&double).unwrap();
    assert_eq!(g["status"]["phase"], "Ready");
    assert_eq!(g["status"]["observedGeneration"], 1);
    assert!(reasons(&double, GM).contains(&"Loaded".to_string()));

    // spec.model changes: the unload is observed before the load.
    double.merge_patch(
        "vramkeeper.dev",
        "gpumodels",
        None,
        GM,
        &json!({"spec": {"model": "tiny-b"}}),
    );
    wait_until("tiny-b to load", DEADLINE, || async {
        active(&agent).await.as_deref() == Some("tiny-b") && is(&double, "Ready", "True")
    })
    .await;
    assert_eq!(
        spec_switches(&agent).await,
        [
            (Value::Null, json!("tiny-a")),
            (json!("tiny-a"), Value::Null),
            (Value::Null, json!("tiny-b")),
        ],
        "the agent's record of the operator's switches"
    );
    assert!(
        seen_before(&double, GM, "Unloaded", "Loaded"),
        "{:?}",
        timeline(&double, GM)
    );
    assert_eq!(gm(&double).unwrap()["status"]["observedGeneration"], 2);

    // Zombie memory only a reset clears: free, then reset, in that order, with their Events.
    let (code, body) = agent
        .post("/v1/debug/leak", json!({"mib": 300, "pooled": false}))
        .await;
    assert!(code.is_success(), "{body}");
    wait_until("free, then reset", DEADLINE, || async {
        seen_before(&double, GM, "Freed", "Reset")
    })
    .await;
    wait_until("Ready again, the ghost gone", DEADLINE, || async {
        is(&double, "Ready", "True") && is(&double, "ZombieMemory", "False")
    })
    .await;
    let r = reasons(&double, GM);
    assert!(r.contains(&"ZombieMemory".to_string()), "{r:?}");
    assert!(!r.contains(&"Degraded".to_string()), "{r:?}");
    let (_, history) = agent.get("/v1/history?window=3600").await;
    let remedies: Vec<(Value, Value)> = history["remediations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["action"].clone(), x["trigger"].clone()))
        .collect();
    assert_eq!(
        remedies,
        [
            (json!("free"), json!("operator")),
            (json!("reset"), json!("operator"))
        ]
    );
    assert_eq!(active(&agent).await.as_deref(), Some("tiny-b"));

    // The agent restarts (a new Pod, another port): the operator loads the model again.
    let options = agent.restart_options();
    agent.terminate();
    let mut options = options;
    options.args = AGENT_ARGS.iter().map(|s| s.to_string()).collect();
    options.catalog = Some(SMALL_CATALOG.into());
    let restarted = Agent::start(options).await;
    double.delete("", "pods", Some(NS), "agent-node-a");
    double.create(agent_pod("agent-node-a-2", "node-a", &restarted.url));
    wait_until("tiny-b on the restarted agent", DEADLINE, || async {
        active(&restarted).await.as_deref() == Some("tiny-b") && is(&double, "Ready", "True")
    })
    .await;
    drop(agent);
    let agent = restarted;

    // Delete: the model is unloaded, then the finalizer goes, then the object.
    double.delete("vramkeeper.dev", "gpumodels", None, GM);
    wait_until("the GpuModel to be gone", DEADLINE, || async {
        gm(&double).is_none()
    })
    .await;
    assert_eq!(active(&agent).await, None);
    let e = events(&double, GM);
    assert!(
        e.iter()
            .any(|(_, r, note)| r == "Unloaded" && note.starts_with("deleted: unloaded tiny-b")),
        "{e:?}"
    );

    operator.stop().await.expect("a clean stop");
    let lease = double
        .get(
            "coordination.k8s.io",
            "leases",
            Some(NS),
            "vramkeeper-operator",
        )
        .expect("the Lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
    assert_rbac_covers(&double);
}
