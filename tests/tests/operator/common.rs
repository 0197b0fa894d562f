//! Objects and an operator handle shared by the operator's end-to-end tests.

use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use vramkeeper_e2e::{Agent, AgentOptions, ApiServerDouble, agent::SMALL_CATALOG};
use vramkeeper_operator::{Args, Running};

/// The namespace of the agents, their token Secret and the Lease.
pub const NS: &str = "vramkeeper";
/// The agents' bearer token.
pub const TOKEN: &str = "e2e-token";

/// An agent Pod on `node` answering at `url` (`http://127.0.0.1:PORT`).
pub fn agent_pod(name: &str, node: &str, url: &str) -> Value {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app.kubernetes.io/name": "vramkeeper-agent"},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "agent", "ports": [{"name": "http", "containerPort": port}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// The token Secret.
pub fn token_secret() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "agent-token", "namespace": NS},
        "stringData": {"token": TOKEN},
    })
}

/// A GpuModel for GPU 0 of `node`, with a zombie policy fast enough for tests.
pub fn gpumodel(name: &str, node: &str, model: Option<&str>) -> Value {
    json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "gpu": 0,
            "model": model,
            "zombie": {
                "thresholdMiB": 100,
                "persistSeconds": 1,
                "freeCooldownSeconds": 2,
                "resetAfterFree": true,
                "maxResetsPerHour": 2,
            },
        },
    })
}

/// The agent flags an operator-managed agent runs with here: no automatic free, fast zombie
/// detection at the GpuModels' threshold.
pub const AGENT_ARGS: &[&str] = &[
    "--enable-test-ops",
    "--auto-free",
    "false",
    "--zombie-threshold-mib",
    "100",
    "--zombie-persist-s",
    "1",
    "--sample-ms",
    "200",
];

/// An agent as the operator tests run it: [`AGENT_ARGS`], the small catalog, the token.
pub fn agent_options() -> AgentOptions {
    AgentOptions {
        args: AGENT_ARGS.iter().map(|s| s.to_string()).collect(),
        catalog: Some(SMALL_CATALOG.into()),
        token: Some(TOKEN.into()),
        ..Default::default()
    }
}

/// `options` for an agent that writes status as in a cluster: `NODE_NAME` is `node`, and its
/// kubeconfig (written into `dir`) points at `double`.
pub fn in_cluster(
    mut options: AgentOptions,
    double: &ApiServerDouble,
    node: &str,
    dir: &std::path::Path,
) -> AgentOptions {
    let kubeconfig = dir.join("kubeconfig");
    double.write_kubeconfig(&kubeconfig);
    options.env.push(("NODE_NAME".into(), node.into()));
    options
        .env
        .push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    options
}

/// A condition's `(status, reason)`.
pub fn condition(gm: &Value, type_: &str) -> Option<(String, String)> {
    gm["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// The Events about `name`: `(type, reason, note)`, oldest first.
pub fn events(double: &ApiServerDouble, name: &str) -> Vec<(String, String, String)> {
    double
        .list("events.k8s.io", "events", Some("default"))
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

/// When each Event about `name` was seen, as `(time, reason)`, in time order: an Event's first
/// time, and for a series (kube's recorder folds repeats into one Event) its last time too.
pub fn timeline(double: &ApiServerDouble, name: &str) -> Vec<(jiff::Timestamp, String)> {
    let mut out = vec![];
    for e in double
        .list("events.k8s.io", "events", Some("default"))
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
    {
        let reason = e["reason"].as_str().unwrap_or_default().to_string();
        let time = |v: &Value| v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
        if let Some(t) = time(&e["eventTime"]) {
            out.push((t, reason.clone()));
        }
        if let Some(t) = time(&e["series"]["lastObservedTime"]) {
            out.push((t, reason));
        }
    }
    out.sort();
    out
}

/// Whether, on the timeline, `first` was seen before `then` was (last) seen.
pub fn seen_before(double: &ApiServerDouble, name: &str, first: &str, then: &str) -> bool {
    let t = timeline(double, name);
    let a = t.iter().position(|(_, r)| r == first);
    let b = t.iter().rposition(|(_, r)| r == then);
    matches!((a, b), (Some(a), Some(b)) if a < b)
}

/// Reasons of the Events about `name`, oldest first.
pub fn reasons(double: &ApiServerDouble, name: &str) -> Vec<String> {
    events(double, name).into_iter().map(|e| e.1).collect()
}

/// A running operator (the library's `run`, in this process).
pub struct Operator {
    /// Its handles.
    pub running: Running,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<vramkeeper_operator::Result<()>>>,
}

impl Operator {
    /// Starts one against `double`, as replica `identity`.
    pub async fn start(double: &ApiServerDouble, identity: &str) -> Operator {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let args = Args::parse_from([
            "vramkeeper-operator",
            "--listen",
            "127.0.0.1:0",
            "--agent-namespace",
            NS,
            "--agent-token-secret",
            "agent-token",
            "--lease-namespace",
            NS,
            "--identity",
            identity,
            "--lease-duration-s",
            "3",
            "--lease-renew-s",
            "1",
            "--backoff-cap-s",
            "5",
            // No agent status reports reach the double: look at the agent often.
            "--max-recheck-s",
            "2",
        ]);
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(vramkeeper_operator::run(
            args,
            double.client(),
            shutdown.clone(),
            Some(tx),
        ));
        let running = rx.await.expect("the operator started");
        Operator {
            running,
            shutdown,
            task: Some(task),
        }
    }

    /// Whether it leads now (its `leader` gauge).
    pub fn leads(&self) -> bool {
        self.running
            .metrics
            .render()
            .lines()
            .any(|l| l == "vramkeeper_operator_leader 1")
    }

    /// Stops it gracefully; returns what `run` returned.
    pub async fn stop(mut self) -> vramkeeper_operator::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the operator stopped")
            .expect("the operator task did not panic")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts that every request the double served is granted by the operator's RBAC rules.
pub fn assert_rbac_covers(double: &ApiServerDouble) {
    for r in double.requests() {
        assert!(
            vramkeeper_operator::rbac::allows(&r.group, &r.resource, &r.verb),
            "{} {} needs {} on {:?}/{}, which RBAC_RULES do not grant",
            r.method,
            r.uri,
            r.verb,
            r.group,
            r.resource
        );
    }
}

/// The agent's active model on GPU 0.
pub async fn active(agent: &Agent) -> Option<String> {
    agent.device().await.active_model
}

/// The operator's switches as the agent recorded them: `(from, to)`, oldest first.
pub async fn spec_switches(agent: &Agent) -> Vec<(Value, Value)> {
    let (_, history) = agent.get("/v1/history?window=3600").await;
    history["switches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["trigger"] == "spec")
        .map(|s| (s["from"].clone(), s["to"].clone()))
        .collect()
}
