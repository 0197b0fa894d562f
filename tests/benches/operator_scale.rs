//! Scale benchmark of the operator on the in-memory API server double: 1,000 GpuModels
//! (125 nodes x 8 GPUs by default), each node's agent a light fake that answers at once.
//! The operator is the release binary, in its own process, so that its memory is its own.
//!
//! ```sh
//! cargo build --release -p vramkeeper-operator
//! cargo bench -p vramkeeper-e2e --bench operator_scale
//! # VK_BENCH_NODES=125 VK_BENCH_GPUS=8 VK_BENCH_STEADY_S=60 VK_BENCH_RATE=100 to change the shape;
//! # VK_BENCH_ACT_MS=2000 makes each fake switch and unload take that long (real ones do);
//! # VRAMKEEPER_OPERATOR_CONCURRENCY (and the operator's other variables) pass through.
//! ```
//!
//! It prints reconciles per second (converging, steady, under a burst of spec changes), the
//! operator's resident memory (now and peak), and the time from a spec change to the first
//! agent call for that GPU (p50, p99, max), for a burst of 1,000 changes and for changes at
//! a steady rate.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, routing::get, routing::post};
use serde_json::{Value, json};
use vramkeeper_e2e::ApiServerDouble;

const NS: &str = "vramkeeper";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One fake agent's devices and the first call each device got since the last mark.
#[derive(Default)]
struct Node {
    active: Vec<Option<String>>,
    first_act: Vec<Option<Instant>>,
    calls: u64,
}

type Fleet = Arc<Vec<Mutex<Node>>>;

fn device(gpu: usize, active: &Option<String>) -> Value {
    json!({
        "gpu": gpu, "name": "fake", "backend": "flex",
        "memory": {"total_mb": 81920.0, "used_mb": 1000.0, "free_mb": 80920.0, "reserved_mb": 0.0, "baseline_mb": 500.0},
        "ghost": {"total_mb": 0.0, "sources": []},
        "zombie": {"flagged": false, "over_threshold_since": null, "threshold_mb": 1536.0, "persist_seconds": 30,
                   "auto_free": false, "next_auto_free_at": null, "last_remediation": null},
        "active_model": active, "busy": false, "busy_with": null, "models": [], "last_switch": null,
        "implicit_switches": 0, "probe_error": null,
    })
}

async fn status(State((fleet, i)): State<(Fleet, usize)>) -> Json<Value> {
    let mut node = fleet[i].lock().unwrap();
    node.calls += 1;
    let devices: Vec<Value> = node
        .active
        .iter()
        .enumerate()
        .map(|(g, a)| device(g, a))
        .collect();
    Json(json!({
        "agent": {"version": "0.1.0", "instance": "bench", "started_at": "2027-01-01T00:00:00Z",
                  "node": null, "device_reason": "fake", "auth_required": false},
        "devices": devices,
    }))
}

/// How long a fake switch or unload takes (`VK_BENCH_ACT_MS`, default 0: at once).
fn act_delay() -> Duration {
    Duration::from_millis(env("VK_BENCH_ACT_MS", 0))
}

fn touch(node: &mut Node, gpu: usize) {
    node.calls += 1;
    let now = Instant::now();
    node.first_act[gpu].get_or_insert(now);
}

async fn switch(State((fleet, i)): State<(Fleet, usize)>, Json(body): Json<Value>) -> Json<Value> {
    let gpu = body["gpu"].as_u64().unwrap_or(0) as usize;
    let model = body["model"].as_str().unwrap_or_default().to_string();
    touch(&mut fleet[i].lock().unwrap(), gpu);
    tokio::time::sleep(act_delay()).await;
    let mut node = fleet[i].lock().unwrap();
    let from = node.active[gpu].replace(model.clone());
    Json(json!({
        "from": from, "to": model, "trigger": "spec", "unload_ms": 0.0, "verify_ms": 0.0,
        "load_ms": 1.0, "vram_mb": 100.0, "ram_mb": 100.0, "release": null, "already_active": false,
    }))
}

async fn unload(State((fleet, i)): State<(Fleet, usize)>, Json(body): Json<Value>) -> Json<Value> {
    let gpu = body["gpu"].as_u64().unwrap_or(0) as usize;
    touch(&mut fleet[i].lock().unwrap(), gpu);
    tokio::time::sleep(act_delay()).await;
    let from = fleet[i].lock().unwrap().active[gpu].take();
    Json(json!({"release": from.map(|m| json!({
        "model": m, "before_mb": 1100.0, "after_mb": 1000.0, "target_mb": 1000.0, "tolerance_mb": 64.0,
        "verified": true, "killed": false, "elapsed_ms": 1.0,
    }))}))
}

async fn start_fleet(nodes: usize, gpus: usize) -> (Fleet, Vec<u16>) {
    let fleet: Fleet = Arc::new(
        (0..nodes)
            .map(|_| {
                Mutex::new(Node {
                    active: vec![None; gpus],
                    first_act: vec![None; gpus],
                    calls: 0,
                })
            })
            .collect(),
    );
    let mut ports = vec![];
    for i in 0..nodes {
        let app = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/models/switch", post(switch))
            .route("/v1/models/unload", post(unload))
            .with_state((fleet.clone(), i));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
    }
    (fleet, ports)
}

fn mark(fleet: &Fleet) {
    for n in fleet.iter() {
        let mut n = n.lock().unwrap();
        n.first_act.iter_mut().for_each(|t| *t = None);
    }
}

fn all_active(fleet: &Fleet, model: &str) -> bool {
    fleet.iter().all(|n| {
        n.lock()
            .unwrap()
            .active
            .iter()
            .all(|a| a.as_deref() == Some(model))
    })
}

fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VRAMKEEPER_OPERATOR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("vramkeeper-operator");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p vramkeeper-operator` first",
        bin.display()
    );
    bin
}

/// Resident memory of a process now and at its peak, in MiB (from /proc/PID/status).
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Open file descriptors of a process (its sockets, mostly).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

async fn reconciles(metrics: &str) -> f64 {
    let Ok(r) = reqwest::get(metrics).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("vramkeeper_operator_reconciles_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Changes every GpuModel to `model`, `rate` per second (0: all at once); returns, per GPU,
/// the time from its change to its first acting agent call.
async fn change_all(
    double: &ApiServerDouble,
    fleet: &Fleet,
    names: &[(String, usize, usize)],
    model: &str,
    rate: u64,
) -> (Vec<Duration>, Duration) {
    mark(fleet);
    let started = Instant::now();
    let mut changed: HashMap<(usize, usize), Instant> = HashMap::new();
    for (k, (name, node, gpu)) in names.iter().enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(k as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        changed.insert((*node, *gpu), Instant::now());
        double.merge_patch(
            "vramkeeper.dev",
            "gpumodels",
            None,
            name,
            &json!({"spec": {"model": model}}),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while !all_active(fleet, model) {
        assert!(
            Instant::now() < deadline,
            "the fleet did not converge on {model}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let mut act = vec![];
    for ((node, gpu), t0) in &changed {
        let n = fleet[*node].lock().unwrap();
        if let Some(t) = n.first_act[*gpu] {
            act.push(t.saturating_duration_since(*t0));
        }
    }
    act.sort();
    (act, took)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let nodes = env("VK_BENCH_NODES", 125) as usize;
    let gpus = env("VK_BENCH_GPUS", 8) as usize;
    let steady_s = env("VK_BENCH_STEADY_S", 60);
    let rate = env("VK_BENCH_RATE", 100);
    let total = nodes * gpus;

    let double = ApiServerDouble::start().await;
    let (fleet, ports) = start_fleet(nodes, gpus).await;
    for (i, port) in ports.iter().enumerate() {
        double.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("agent-{i}"), "namespace": NS,
                         "labels": {"app.kubernetes.io/name": "vramkeeper-agent"}},
            "spec": {"nodeName": format!("node-{i}"),
                     "containers": [{"name": "agent", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    double.write_kubeconfig(&kubeconfig);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let child = Command::new(operator_bin())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--agent-namespace",
            NS,
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", NS)
        .env("POD_NAME", "bench-operator")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the operator");
    let operator = Operator(child);
    let pid = operator.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(&metrics).await.is_err() {
        assert!(Instant::now() < deadline, "the operator did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (idle_rss, _) = memory_mib(pid);

    // Create every GpuModel; converge.
    let mut names = vec![];
    let started = Instant::now();
    let r0 = reconciles(&metrics).await;
    for node in 0..nodes {
        for gpu in 0..gpus {
            let name = format!("node-{node}-gpu{gpu}");
            double.create(json!({
                "apiVersion": "vramkeeper.dev/v1alpha1", "kind": "GpuModel",
                "metadata": {"name": name},
                "spec": {"nodeName": format!("node-{node}"), "gpu": gpu, "model": "model-a"},
            }));
            names.push((name, node, gpu));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while !all_active(&fleet, "model-a") {
        assert!(Instant::now() < deadline, "the fleet did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settle: the Ready status of the last ones is written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let converge = started.elapsed();
    let r1 = reconciles(&metrics).await;
    let (converged_rss, _) = memory_mib(pid);
    let converged_fds = fds(pid);

    // Steady state.
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(steady_s)).await;
    let r2 = reconciles(&metrics).await;
    let steady_rate = (r2 - r1) / t.elapsed().as_secs_f64();
    let (steady_rss, _) = memory_mib(pid);
    let steady_fds = fds(pid);

    // A burst: every GpuModel changes at once.
    let r3 = reconciles(&metrics).await;
    let (burst_act, burst_took) = change_all(&double, &fleet, &names, "model-b", 0).await;
    let r4 = reconciles(&metrics).await;
    let burst_rate = (r4 - r3) / burst_took.as_secs_f64();

    // Changes at a steady rate.
    let (rate_act, rate_took) = change_all(&double, &fleet, &names, "model-a", rate).await;
    let (end_rss, peak_rss) = memory_mib(pid);
    let end_fds = fds(pid);
    let calls: u64 = fleet.iter().map(|n| n.lock().unwrap().calls).sum();
    drop(operator);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "operator scale on the in-memory API server double: {total} GpuModels ({nodes} nodes x {gpus} GPUs), {cores} CPU cores, agent acts take {} ms, concurrency {}",
        act_delay().as_millis(),
        std::env::var("VRAMKEEPER_OPERATOR_CONCURRENCY").unwrap_or_else(|_| "default".into())
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| converge: create {total}, all loaded | {:.1} s, {:.0} reconciles/s |",
        converge.as_secs_f64(),
        (r1 - r0) / converge.as_secs_f64()
    );
    println!("| steady state ({steady_s} s, in sync) | {steady_rate:.1} reconciles/s |");
    println!(
        "| burst: {total} spec changes at once, all switched | {:.1} s, {burst_rate:.0} reconciles/s |",
        burst_took.as_secs_f64()
    );
    println!(
        "| burst: spec change -> first acting agent call | p50 {}, p99 {}, max {} (n={}) |",
        ms(percentile(&burst_act, 0.5)),
        ms(percentile(&burst_act, 0.99)),
        ms(*burst_act.last().unwrap_or(&Duration::ZERO)),
        burst_act.len()
    );
    println!(
        "| {rate}/s: spec change -> first acting agent call | p50 {}, p99 {}, max {} (n={}, {:.1} s) |",
        ms(percentile(&rate_act, 0.5)),
        ms(percentile(&rate_act, 0.99)),
        ms(*rate_act.last().unwrap_or(&Duration::ZERO)),
        rate_act.len(),
        rate_took.as_secs_f64()
    );
    println!(
        "| operator RSS: idle / converged / steady / end | {idle_rss:.1} / {converged_rss:.1} / {steady_rss:.1} / {end_rss:.1} MiB |"
    );
    println!("| operator peak RSS (VmHWM) | {peak_rss:.1} MiB |");
    println!("| agent calls in all | {calls} |");
    println!(
        "| operator open file descriptors: converged / steady / end | {converged_fds} / {steady_fds} / {end_fds} |"
    );
    println!(
        "| goals | memory < 100 MB: {}; p99 < 1 s: {} |",
        if peak_rss * 1.048_576 < 100.0 {
            "met"
        } else {
            "MISSED"
        },
        if percentile(&burst_act, 0.99) < Duration::from_secs(1)
            && percentile(&rate_act, 0.99) < Duration::from_secs(1)
        {
            "met"
        } else {
            "MISSED"
        }
    );
}
