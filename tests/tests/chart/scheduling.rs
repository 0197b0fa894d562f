//! Where the agents run and how they start: a node affinity with alternatives in GPU mode
//! (replaced, never merged, by the user's own), GPU taints tolerated, node-critical priority,
//! and an init container that waits for NVIDIA's driver and toolkit.

use serde_json::{Value, json};

use crate::{
    helm::{container, env, init_container, render, render_with},
    manifests::{mount_of, volume},
};

fn pod_spec(r: &crate::helm::Rendered) -> &Value {
    &r.agent()["spec"]["template"]["spec"]
}

#[test]
fn gpu_nodes_are_found_by_any_of_several_labels() {
    let r = render("values-default.yaml");
    let pod = pod_spec(&r);
    assert!(
        pod["nodeSelector"].is_null(),
        "no single GPU-operator label"
    );
    let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .unwrap();
    // Terms are ORed: each is one alternative on its own.
    let keys: Vec<&str> = terms
        .iter()
        .map(|t| {
            let exprs = t["matchExpressions"].as_array().unwrap();
            assert_eq!(exprs.len(), 1, "{t}");
            exprs[0]["key"].as_str().unwrap()
        })
        .collect();
    for key in [
        "feature.node.kubernetes.io/pci-10de.present",
        "nvidia.com/gpu.present",
        "cloud.google.com/gke-accelerator",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists"}]),
        "GPU taints of any effect"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
}

#[test]
fn the_users_placement_replaces_the_default() {
    let r = render_with("values-default.yaml", &["agent.nodeSelector.pool=a100"]);
    let pod = pod_spec(&r);
    assert_eq!(pod["nodeSelector"], json!({"pool": "a100"}));
    assert!(pod["affinity"].is_null(), "not ANDed with the default");

    let r = render_with(
        "values-default.yaml",
        &[
            "agent.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=gpu",
            "agent.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        ],
    );
    let terms = &pod_spec(&r)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms,
        &json!([{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}])
    );

    let r = render_with(
        "values-default.yaml",
        &[
            "agent.tolerations[0].key=dedicated",
            "agent.tolerations[0].operator=Exists",
        ],
    );
    assert_eq!(
        pod_spec(&r)["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );

    // On the CPU: every node.
    let cpu = render("values-cpu.yaml");
    assert!(pod_spec(&cpu)["affinity"].is_null() && pod_spec(&cpu)["nodeSelector"].is_null());
    assert!(pod_spec(&cpu)["priorityClassName"].is_null());
}

#[test]
fn gpu_mode_waits_for_the_nvidia_driver_and_toolkit() {
    let r = render("values-default.yaml");
    let agent = r.agent();
    let inits: Vec<&str> = pod_spec(&r)["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["wait-for-nvidia", "prepare-host-dirs"]);
    let wait = init_container(agent, "wait-for-nvidia").unwrap();
    let script = wait["command"][2].as_str().unwrap();
    assert!(script.contains("nvidia-smi -L"), "{script}");
    assert!(!script.contains("validations"), "{script}");
    // It sees what the agent will see: the same image and NVIDIA variables ...
    let c = container(agent, "agent");
    assert_eq!(wait["image"], c["image"]);
    for var in ["NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"] {
        assert_eq!(env(wait, var), env(c, var), "{var}");
    }
    // ... unprivileged.
    let security = &wait["securityContext"];
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert!(security["capabilities"]["add"].is_null());
    assert_eq!(security["allowPrivilegeEscalation"], false);

    // The GPU operator's validator, and the GPUs the device plugin gives the agent.
    let r = render("values-gpu.yaml");
    let agent = r.agent();
    let wait = init_container(agent, "wait-for-nvidia").unwrap();
    let script = wait["command"][2].as_str().unwrap();
    assert!(
        script.contains("until [ -f \"/run/nvidia/validations/toolkit-ready\" ]"),
        "{script}"
    );
    assert_eq!(
        mount_of(wait, "nvidia-validations"),
        "/run/nvidia/validations"
    );
    assert_eq!(
        volume(agent, "nvidia-validations")["hostPath"]["path"],
        "/run/nvidia/validations"
    );
    assert_eq!(wait["resources"]["limits"]["nvidia.com/gpu"], 2);

    // Not on the CPU, nor when turned off.
    for (values, sets) in [
        ("values-cpu.yaml", &[][..]),
        (
            "values-default.yaml",
            &["agent.waitForNvidia.enabled=false"],
        ),
    ] {
        let r = render_with(values, sets);
        assert!(
            init_container(r.agent(), "wait-for-nvidia").is_none(),
            "{values} {sets:?}"
        );
    }
}
