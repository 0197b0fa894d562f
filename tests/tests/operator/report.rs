//! The agent's own status reporting: a real agent, told its node name and given a kubeconfig for
//! the API server double, writes what it observes into its node's GpuModel by server-side apply
//! under the field manager `vramkeeper-agent`, touches no other node's GpuModel, never writes
//! the operator's fields, and reports a change of state without waiting for its heartbeat.

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, AgentOptions, ApiServerDouble, wait::DEADLINE, wait_until};

use super::common::*;

fn status(double: &ApiServerDouble, name: &str) -> Value {
    double
        .get("vramkeeper.dev", "gpumodels", None, name)
        .map(|g| g["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_into_its_nodes_gpumodels() {
    let double = ApiServerDouble::start().await;
    double.create(gpumodel("node-r-gpu0", "node-r", Some("tiny-a")));
    double.create(gpumodel("elsewhere-gpu0", "node-x", Some("tiny-a")));
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(in_cluster(
        AgentOptions {
            token: None,
            ..agent_options()
        },
        &double,
        "node-r",
        dir.path(),
    ))
    .await;

    wait_until("a first report", DEADLINE, || async {
        status(&double, "node-r-gpu0")["reportedAt"].is_string()
    })
    .await;
    let first = status(&double, "node-r-gpu0");
    assert!(first["activeModel"].is_null(), "{first}");
    assert!(first["device"]["totalMiB"].as_u64().unwrap() > 0, "{first}");

    // A switch is a change of state: reported at once (the heartbeat is 30 s).
    let (code, body) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert!(code.is_success(), "{body}");
    wait_until("the switch reported", DEADLINE, || async {
        let s = status(&double, "node-r-gpu0");
        s["activeModel"] == "tiny-a" && s["lastSwitch"]["to"] == "tiny-a"
    })
    .await;
    let s = status(&double, "node-r-gpu0");
    let models = s["models"].as_array().unwrap();
    let a = models.iter().find(|m| m["name"] == "tiny-a").unwrap();
    assert_eq!(a["state"], "Loaded", "{s}");

    // Only this node's GpuModel, only the agent's fields, only through its field manager.
    assert!(
        status(&double, "elsewhere-gpu0").is_null(),
        "another node's GpuModel untouched"
    );
    for field in ["phase", "conditions", "observedGeneration"] {
        assert!(
            s[field].is_null(),
            "the agent wrote the operator's {field}: {s}"
        );
    }
    let writes: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(!writes.is_empty());
    for w in &writes {
        assert_eq!(
            (w.verb.as_str(), w.resource.as_str()),
            ("patch", "gpumodels/status"),
            "{w:?}"
        );
        assert_eq!(
            w.field_manager.as_deref(),
            Some("vramkeeper-agent"),
            "{w:?}"
        );
        assert!(w.uri.contains("/gpumodels/node-r-gpu0/status"), "{w:?}");
    }
    drop(agent);
}
