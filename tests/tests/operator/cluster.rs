//! Tests that need a real cluster (kind, k3s, or any with the chart installed and a GPU node
//! labelled for the agent). They are ignored by default; run them with:
//!
//! ```sh
//! KUBECONFIG=~/.kube/config cargo test -p vramkeeper-e2e --test operator -- --ignored cluster
//! ```
//!
//! They expect the vramkeeper chart installed in the `vramkeeper` namespace, and
//! `VRAMKEEPER_E2E_NODE` naming a node that runs an agent.

use std::time::Duration;

use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use vramkeeper_crds::GpuModel;
use vramkeeper_e2e::{wait::DEADLINE, wait_until};

#[tokio::test]
#[ignore = "needs a cluster with the vramkeeper chart installed (see the module docs)"]
async fn cluster_loads_switches_and_unloads() {
    let node = std::env::var("VRAMKEEPER_E2E_NODE").expect("VRAMKEEPER_E2E_NODE names a node");
    let client = Client::try_default().await.expect("a kubeconfig");
    let api: Api<GpuModel> = Api::all(client);
    let name = format!("e2e-{node}-gpu0");
    let gm: GpuModel = serde_json::from_value(json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "gpu": 0, "model": "synthetic-small"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &gm)
        .await
        .expect("create");
    let ready = |model: &'static str| {
        let api = api.clone();
        let name = name.clone();
        async move {
            api.get(&name)
                .await
                .ok()
                .and_then(|g| g.status)
                .is_some_and(|s| {
                    s.active_model.as_deref() == Some(model)
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        }
    };
    wait_until("synthetic-small active", DEADLINE, || {
        ready("synthetic-small")
    })
    .await;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": "synthetic-medium"}})),
    )
    .await
    .expect("patch");
    wait_until("synthetic-medium active", DEADLINE, || {
        ready("synthetic-medium")
    })
    .await;
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    wait_until("the GpuModel gone", Duration::from_secs(300), || async {
        api.get_opt(&name).await.ok().flatten().is_none()
    })
    .await;
}
