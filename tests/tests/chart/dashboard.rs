//! The Grafana dashboard against a real agent's `/metrics`, and the rendered catalogs against
//! a real agent's catalog parser.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, AgentOptions, wait::DEADLINE};

use crate::{
    helm::{Rendered, VALUES, args, chart_dir, container, render},
    manifests::catalog_toml,
};

/// Labels Prometheus adds to every scraped series (`node` by the chart's monitors).
const TARGET_LABELS: &[&str] = &[
    "node",
    "instance",
    "job",
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
];

fn dashboard() -> Value {
    let path = chart_dir().join("dashboards/vramkeeper.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Panels, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = vec![];
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every PromQL expression with the legend-like formats that go with it.
fn queries(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a target without expr");
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            out.push((expr.to_string(), vec![legend.to_string()]));
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations")
    {
        if let Some(expr) = a["expr"].as_str() {
            let formats = ["titleFormat", "textFormat"]
                .iter()
                .filter_map(|f| a[*f].as_str().map(str::to_string))
                .collect();
            out.push((expr.to_string(), formats));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().expect("a variable query");
            assert_eq!(Some(q), v["definition"].as_str());
            out.push((q.to_string(), vec![]));
        }
    }
    out
}

/// A metric a query names, with the label names its matchers use.
#[derive(Debug)]
struct MetricRef {
    name: String,
    matchers: Vec<String>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn metric_refs(expr: &str) -> Vec<MetricRef> {
    let mut out = vec![];
    let mut rest = expr;
    while let Some(at) = rest.find("vramkeeper_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail.find(|c| !is_ident(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        let mut matchers = vec![];
        if before.is_none_or(|c| !is_ident(c)) {
            if let Some(body) = tail[end..].strip_prefix('{') {
                let close = body.find('}').expect("matchers close");
                for m in body[..close].split(',').filter(|m| !m.trim().is_empty()) {
                    let label = m.split(['=', '!']).next().unwrap().trim();
                    matchers.push(label.to_string());
                }
            }
            out.push(MetricRef {
                name: name.to_string(),
                matchers,
            });
        }
        rest = &tail[end..];
    }
    out
}

/// The label lists of `by (...)` clauses, in order.
fn grouping_clauses(expr: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    for (i, _) in expr.match_indices("by") {
        let before = expr[..i].chars().last();
        let after = expr[i + 2..].trim_start();
        if before.is_some_and(is_ident) || !after.starts_with('(') {
            continue;
        }
        let close = after.find(')').expect("by (...) closes");
        out.push(
            after[1..close]
                .split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
        );
    }
    out
}

/// `{{label}}` placeholders of a legend format.
fn placeholders(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_string()))
        .collect()
}

/// Sample names of OpenMetrics text, each with the label names its samples carry.
fn samples(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if let Some(body) = line[end..].strip_prefix('{') {
            // k="v",k="v"} value: values are quoted and may hold commas.
            let mut rest = body;
            while let Some((key, after)) = rest.split_once("=\"") {
                labels.insert(key.trim_start_matches(',').to_string());
                let mut escaped = false;
                let close = after
                    .char_indices()
                    .find(|&(_, c)| {
                        let hit = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        hit
                    })
                    .map(|(i, _)| i)
                    .expect("closing quote");
                rest = &after[close + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "vramkeeper");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24));
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{}: no query",
            p["title"]
        );
    }
    let titles: Vec<&str> = panels(&d)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "VRAM by model: $node, GPU $gpu",
        "Ghost memory by source",
        "Unverified releases (1 h)",
        "Marked Degraded (1 h)",
        "Operator steps",
        "Zombie memory",
        "Remediations",
        "Switch latency",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted}: {titles:?}");
    }

    // The chart ships the same JSON.
    let r = render("values-gpu.yaml");
    let cm = r.get("ConfigMap", "-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "GPUs");
    let shipped: Value = serde_json::from_str(cm["data"]["vramkeeper.json"].as_str().unwrap())
        .expect("the ConfigMap's dashboard parses");
    assert_eq!(shipped, d);
}

/// The stacked VRAM panel shows one GPU of one node: its row repeats per node and the panel
/// per GPU, so GPU N of two nodes is never stacked into one picture.
#[test]
fn vram_is_stacked_per_node_and_gpu() {
    let d = dashboard();
    let top = d["panels"].as_array().unwrap();
    let at = top
        .iter()
        .position(|p| p["title"] == "VRAM by model: $node, GPU $gpu")
        .unwrap();
    let panel = &top[at];
    assert_eq!(panel["repeat"], "gpu");
    let row = top[..at]
        .iter()
        .rev()
        .find(|p| p["type"] == "row")
        .expect("the panel's row");
    assert_eq!(row["repeat"], "node", "{}", row["title"]);
    assert_eq!(
        panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"],
        "normal"
    );
    for t in panel["targets"].as_array().unwrap() {
        let expr = t["expr"].as_str().unwrap();
        for m in metric_refs(expr) {
            for label in ["node", "gpu"] {
                assert!(m.matchers.contains(&label.to_string()), "{expr}: {label}");
            }
        }
    }
}

#[test]
fn query_parsing() {
    let refs = metric_refs(
        r#"sum by (node, model) (vramkeeper_a_bytes{node=~"$node",kind!="x"} * vramkeeper_b)"#,
    );
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0].name, "vramkeeper_a_bytes");
    assert_eq!(refs[0].matchers, ["node", "kind"]);
    assert!(refs[1].matchers.is_empty());
    assert_eq!(
        grouping_clauses("sum by (le, phase) (rate(x[5m])) / sum by(phase) (y) / nearby(z)"),
        [vec!["le", "phase"], vec!["phase"]]
    );
    assert_eq!(placeholders("{{node}}/{{ gpu }} x"), ["node", "gpu"]);
    let s = samples("# TYPE x counter\nx_total{gpu=\"0\",model=\"a,\\\"b\"} 1\ny 2\n# EOF\n");
    assert_eq!(s["x_total"], BTreeSet::from(["gpu".into(), "model".into()]));
    assert!(s["y"].is_empty());
}

/// An agent started as the chart starts it (`values-cpu.yaml`: its flags, catalog and token),
/// on this machine's CPU: the paths and the address are the harness's own.
async fn agent_like_the_chart(r: &Rendered) -> Agent {
    let argv = args(container(r.agent(), "agent"));
    let harness_owned = [
        "--listen",
        "--device",
        "--state-dir",
        "--cache-dir",
        "--catalog",
        "--token-file",
    ];
    let mut kept = vec![];
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        if harness_owned.contains(&a.as_str()) {
            it.next();
        } else {
            kept.push(a);
        }
    }
    Agent::start(AgentOptions {
        args: kept,
        catalog: Some(catalog_toml(r)),
        token: r.value("auth.token").as_str().map(str::to_string),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_served_by_the_agent() {
    let r = render("values-cpu.yaml");
    let agent = agent_like_the_chart(&r).await;
    // Switches (and a verified release), an inference and a free give every family samples.
    for model in ["tiny-a", "tiny-b"] {
        let (code, body) = agent
            .post("/v1/models/switch", json!({"model": model}))
            .await;
        assert_eq!(code, StatusCode::OK, "switch to {model}: {body}");
    }
    let (code, body) = agent
        .post("/v1/infer", json!({"model": "tiny-b", "tokens": [1, 2, 3]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = agent.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    let d = dashboard();
    let mut queries = queries(&d);
    // The alerts' expressions too (their templates use $labels, not legends).
    let gpu = render("values-gpu.yaml");
    for a in crate::monitoring::alerts(&gpu) {
        queries.push((a["expr"].as_str().unwrap().to_string(), vec![]));
    }
    // The operator's metrics come from the operator's registry, every family given samples.
    let operator = vramkeeper_operator::metrics::Metrics::new();
    operator.step("mark_degraded");
    operator.agent_call("switch", true, Duration::from_millis(5));
    operator.reconcile_failed("kube");
    operator.set_leader(true);
    let operator_served = samples(&operator.render());
    let (operator_queries, queries): (Vec<_>, Vec<_>) = queries
        .into_iter()
        .partition(|(q, _)| q.contains("vramkeeper_operator_"));
    assert!(operator_queries.len() >= 4, "{operator_queries:?}");
    check_queries(&operator_queries, &operator_served);
    let wanted: BTreeSet<String> = queries
        .iter()
        .flat_map(|(q, _)| metric_refs(q))
        .map(|m| m.name)
        .collect();
    assert!(wanted.len() >= 10, "{wanted:?}");
    // The memory gauges are set by the sampler: wait for a sample with the model loaded.
    let end = Instant::now() + DEADLINE;
    let served = loop {
        let (code, text) = agent.get_text("/metrics").await;
        assert_eq!(code, StatusCode::OK);
        let served = samples(&text);
        if wanted.iter().all(|w| served.contains_key(w)) || Instant::now() > end {
            break served;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<&String> = wanted.iter().filter(|w| !served.contains_key(*w)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the agent does not serve: {missing:?}\nserved: {:?}",
        served.keys().collect::<Vec<_>>()
    );

    check_queries(&queries, &served);
}

/// Every metric a query names is served with the labels its matchers and groupings use, and
/// every legend placeholder survives the query's grouping.
fn check_queries(queries: &[(String, Vec<String>)], served: &BTreeMap<String, BTreeSet<String>>) {
    for (expr, formats) in queries {
        let refs = metric_refs(expr);
        let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for m in &refs {
            let labels = served
                .get(&m.name)
                .unwrap_or_else(|| panic!("`{expr}`: {} is not served", m.name));
            for l in &m.matchers {
                assert!(
                    labels.contains(l) || TARGET_LABELS.contains(&l.as_str()),
                    "`{expr}`: {} has no label {l} (it has {labels:?})",
                    m.name
                );
            }
            available.extend(labels.iter().cloned());
        }
        let clauses = grouping_clauses(expr);
        for l in clauses.iter().flatten() {
            assert!(
                available.contains(l),
                "`{expr}`: grouping by unknown label {l}"
            );
        }
        // What the result keeps: the outermost (first) grouping, the buckets' `le` consumed by
        // histogram_quantile; without a grouping, the series' own labels.
        let kept: BTreeSet<String> = match clauses.first() {
            Some(first) => first.iter().filter(|l| *l != "le").cloned().collect(),
            None => available.clone(),
        };
        for f in formats {
            for p in placeholders(f) {
                assert!(
                    kept.contains(&p),
                    "`{expr}`: the legend uses {p}, which it drops"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_catalog_is_the_agents_catalog() {
    for values in VALUES {
        let r = render(values);
        let mut expected: Vec<String> = match r.value("catalog.models").as_array() {
            Some(models) => models.clone(),
            None => {
                let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
                let defaults: Value = serde_yaml_ng::from_str(&text).unwrap();
                defaults["catalog"]["models"].as_array().unwrap().clone()
            }
        }
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
        let agent = Agent::start(AgentOptions {
            catalog: Some(catalog_toml(&r)),
            ..Default::default()
        })
        .await;
        let (code, body) = agent.get("/v1/models").await;
        assert_eq!(code, StatusCode::OK, "{values}: {body}\n{}", agent.log());
        let mut served: Vec<String> = body["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        served.sort();
        expected.sort();
        assert_eq!(served, expected, "{values}");
    }
}
