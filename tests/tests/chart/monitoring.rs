//! Monitoring in every combination: the Prometheus Operator's objects only where its API is
//! served, one kind of monitor, the scraper admitted by the NetworkPolicies, the alerts aimed
//! at the Pods the chart runs.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    helm::{
        NAMESPACE, Rendered, chart_dir, name, parse_yaml_stream, render, render_with, template_of,
    },
    manifests::labels_match,
};

/// `networkPolicy.scraperFrom` as values.yaml has it.
pub fn default_scraper_from() -> Value {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let values: Value = serde_yaml_ng::from_str(&text).unwrap();
    values["networkPolicy"]["scraperFrom"].clone()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn monitoring_objects_need_the_prometheus_operator_api() {
    let monitoring = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];
    // No --api-versions: a cluster without the Prometheus Operator's CRDs.
    let out = template_of(&chart_dir(), "values-gpu.yaml", &[], &[]);
    assert!(out.ok, "{}", out.stderr);
    let without = parse_yaml_stream(&out.stdout);
    for kind in monitoring {
        assert!(!kinds(&without).contains(kind), "{kind} without the API");
    }
    // Nor is the scraper admitted then: nothing scrapes.
    let np = without
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy" && name(o).ends_with("-agent"))
        .unwrap();
    assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 1);

    let with = render("values-gpu.yaml");
    let found = kinds(&with.objects);
    assert!(found.contains("ServiceMonitor") && found.contains("PrometheusRule"));
}

#[test]
fn the_scraper_is_admitted_whenever_a_monitor_is_rendered() {
    // The agents alone, no peers listed: before, this blocked every scrape silently.
    let r = render_with(
        "values-cpu.yaml",
        &[
            "networkPolicy.agentFrom=null",
            "monitoring.podMonitor.enabled=true",
        ],
    );
    let np = r.get("NetworkPolicy", "-agent");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!(ingress[0]["from"], default_scraper_from());
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "http", "protocol": "TCP"}])
    );
    let pm = r.get("PodMonitor", "-agent");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "http");

    // The operator too, with no operatorFrom.
    let r = render_with(
        "values-default.yaml",
        &[
            "networkPolicy.enabled=true",
            "monitoring.serviceMonitor.enabled=true",
        ],
    );
    let np = r.get("NetworkPolicy", "-operator");
    assert_eq!(np["spec"]["ingress"][0]["from"], default_scraper_from());
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "metrics");

    // Without monitoring, nobody but the operator reaches the agents.
    let r = render_with("values-default.yaml", &["networkPolicy.enabled=true"]);
    let ingress = r.get("NetworkPolicy", "-agent")["spec"]["ingress"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["from"].as_array().unwrap().len(), 1);
    assert_eq!(
        r.get("NetworkPolicy", "-operator")["spec"]["ingress"],
        json!([])
    );
}

/// The PrometheusRule's alerts by name.
pub fn alerts(r: &Rendered) -> Vec<&Value> {
    r.get("PrometheusRule", "")["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect()
}

/// The value of the `pod=~"..."` matcher of an expression.
fn pod_pattern(expr: &str) -> &str {
    let start = expr.find("pod=~\"").expect("a pod matcher") + 6;
    let len = expr[start..].find('"').unwrap();
    &expr[start..start + len]
}

#[test]
fn the_alerts_cover_zombies_releases_degraded_models_and_missing_agents() {
    let r = render("values-gpu.yaml");
    let rule = r.get("PrometheusRule", "");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let all = alerts(&r);
    let names: BTreeSet<&str> = all.iter().map(|a| a["alert"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "VramkeeperZombieMemory",
            "VramkeeperUnverifiedRelease",
            "VramkeeperGpuModelDegraded",
            "VramkeeperOperatorDown",
            "VramkeeperAgentDown",
            "VramkeeperAgentsAbsent",
        ])
    );
    for a in &all {
        let expr = a["expr"].as_str().unwrap();
        assert!(
            expr.contains(&format!("namespace=\"{NAMESPACE}\"")),
            "{expr}: this release's series only"
        );
        assert!(a["labels"]["severity"].is_string(), "{}", a["alert"]);
        assert!(a["annotations"]["summary"].is_string(), "{}", a["alert"]);
    }
    // The `up` matchers name the Pods the DaemonSet and the Deployment create
    // (`<name>-<suffix>`), and no other workload's.
    let by_name = |n: &str| *all.iter().find(|a| a["alert"] == n).unwrap();
    let agent_pods = pod_pattern(by_name("VramkeeperAgentDown")["expr"].as_str().unwrap());
    assert_eq!(agent_pods, format!("{}-[a-z0-9]+", name(r.agent())));
    let operator_pods = pod_pattern(by_name("VramkeeperOperatorDown")["expr"].as_str().unwrap());
    assert_eq!(operator_pods, format!("{}-.+", name(r.operator().unwrap())));
    assert_eq!(by_name("VramkeeperZombieMemory")["for"], "10m");

    // Without the operator, no alert on its metrics.
    let cpu = render_with(
        "values-cpu.yaml",
        &["monitoring.prometheusRule.enabled=true"],
    );
    let names: BTreeSet<&str> = alerts(&cpu)
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert!(!names.contains("VramkeeperGpuModelDegraded"));
    assert!(!names.contains("VramkeeperOperatorDown"));
    assert!(names.contains("VramkeeperAgentDown"));
}

#[test]
fn monitors_select_what_the_alerts_watch() {
    // Both monitor kinds label series with the Pod's node, which the alerts group by.
    for sets in [
        &["monitoring.serviceMonitor.enabled=true"][..],
        &["monitoring.podMonitor.enabled=true"],
    ] {
        let r = render_with("values-default.yaml", sets);
        let monitors: Vec<&Value> = r
            .objects
            .iter()
            .filter(|o| o["kind"] == "ServiceMonitor" || o["kind"] == "PodMonitor")
            .collect();
        assert_eq!(monitors.len(), 2, "{sets:?}: the agents and the operator");
        let agent = monitors
            .iter()
            .find(|m| name(m).ends_with("-agent"))
            .unwrap();
        assert!(labels_match(
            &agent["spec"]["selector"]["matchLabels"],
            &r.agent()["spec"]["template"]["metadata"]["labels"]
        ));
    }
}
