//! Upgrades: Pod templates change only when what the Pods run changes (so a chart bump or a
//! second render restarts no agent and unloads no model); the operator rolls out without two
//! replicas acting at once, and drains keep it within its disruption budget.

use std::path::Path;

use serde_json::Value;

use crate::{
    helm::{Rendered, chart_dir, name, parse_yaml_stream, render, render_with, template_of},
    manifests::labels_match,
};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn templates(objects: &[Value]) -> Vec<(String, Value)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet" || o["kind"] == "Deployment")
        .map(|o| (name(o).to_string(), o["spec"]["template"].clone()))
        .collect()
}

#[test]
fn a_chart_version_bump_leaves_the_pod_templates_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bumped = dir.path().join("vramkeeper");
    copy_dir(&chart_dir(), &bumped);
    let chart_yaml = bumped.join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).unwrap();
    assert!(text.contains("\nversion: 0.1.0\n") && text.contains("\nappVersion: \"0.1.0\"\n"));
    let text = text
        .replace("\nversion: 0.1.0\n", "\nversion: 0.2.0\n")
        .replace("\nappVersion: \"0.1.0\"\n", "\nappVersion: \"0.1.1\"\n");
    std::fs::write(&chart_yaml, text).unwrap();

    // Images pinned, as a production install does: the chart bump alone.
    let pinned = ["agent.image.tag=0.1.0", "operator.image.tag=0.1.0"];
    let api = ["--api-versions", crate::helm::MONITORING_API];
    let before = template_of(&chart_dir(), "values-gpu.yaml", &pinned, &api);
    let after = template_of(&bumped, "values-gpu.yaml", &pinned, &api);
    assert!(before.ok && after.ok, "{}{}", before.stderr, after.stderr);
    let (before, after) = (
        parse_yaml_stream(&before.stdout),
        parse_yaml_stream(&after.stdout),
    );
    // The objects do say the new version ...
    let chart_label = |objects: &[Value]| {
        objects.iter().find(|o| o["kind"] == "DaemonSet").unwrap()["metadata"]["labels"]
            ["helm.sh/chart"]
            .clone()
    };
    assert_ne!(chart_label(&before), chart_label(&after));
    // ... their Pod templates do not.
    let (t_before, t_after) = (templates(&before), templates(&after));
    assert_eq!(t_before.len(), 2);
    assert_eq!(t_before, t_after, "a chart bump would restart the Pods");
    for (workload, template) in &t_after {
        let labels = template["metadata"]["labels"].as_object().unwrap();
        for versioned in ["helm.sh/chart", "app.kubernetes.io/version"] {
            assert!(
                !labels.contains_key(versioned),
                "{workload}: {versioned} in the Pod template"
            );
        }
    }
}

#[test]
fn a_second_render_leaves_the_pod_templates_alone() {
    // Each `helm template` draws a new token (no cluster to look the old one up in): no Pod
    // template may depend on it, or every GitOps sync would restart every agent.
    let first = render("values-default.yaml");
    let second = render("values-default.yaml");
    let token = |r: &Rendered| r.get("Secret", "-token")["data"]["token"].clone();
    assert_ne!(token(&first), token(&second));
    assert_eq!(templates(&first.objects), templates(&second.objects));
}

#[test]
fn the_operator_never_runs_twice_without_leader_election() {
    let elected = render("values-gpu.yaml");
    let strategy = &elected.operator().unwrap()["spec"]["strategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    // The new Pod waits on the Lease; the old one keeps leading until it stops.
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1);

    let alone = render_with("values-default.yaml", &["operator.leaderElect=false"]);
    let strategy = &alone.operator().unwrap()["spec"]["strategy"];
    assert_eq!(strategy["type"], "Recreate");
    assert!(strategy["rollingUpdate"].is_null());
}

#[test]
fn drains_take_one_operator_replica_at_a_time() {
    let r = render("values-gpu.yaml");
    let pdb = r.get("PodDisruptionBudget", "-operator");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"]["minAvailable"].is_null());
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        &r.operator().unwrap()["spec"]["template"]["metadata"]["labels"]
    ));
    let off = render_with(
        "values-default.yaml",
        &["operator.podDisruptionBudget.enabled=false"],
    );
    assert!(off.of_kind("PodDisruptionBudget").is_empty());
    let no_operator = render("values-cpu.yaml");
    assert!(no_operator.of_kind("PodDisruptionBudget").is_empty());
}
