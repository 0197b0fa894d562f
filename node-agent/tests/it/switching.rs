//! Switches, test-load, auto-switch, idle unload: the numbers agree with /proc.

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::{Agent, AgentOptions, procs, wait::DEADLINE, wait_until};

const MIB: f64 = (1u64 << 20) as f64;

#[tokio::test]
async fn switch_measures_the_worker_as_proc_does() {
    let agent = Agent::small(&[]).await;
    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["to"], "tiny-b");
    assert_eq!(r["from"], serde_json::Value::Null);
    assert_eq!(r["trigger"], "api");
    let workers = agent.workers();
    assert_eq!(workers.len(), 1, "one worker per loaded model");
    let rss = procs::rss_bytes(workers[0].pid) as f64 / MIB;
    let vram = r["vram_mb"].as_f64().unwrap();
    let ram = r["ram_mb"].as_f64().unwrap();
    assert!(
        vram > 10.0,
        "a model with 4M f32 parameters holds more than 10 MiB: {vram}"
    );
    // RSS moves a little while the worker idles; the agent read it moments ago.
    assert!(
        (rss - vram).abs() < 4.0,
        "/proc says {rss} MiB, the agent {vram} MiB"
    );
    assert!(
        (rss - ram).abs() < 4.0,
        "/proc says {rss} MiB, the agent {ram} MiB"
    );
    assert!(r["load_ms"].as_f64().unwrap() > 0.0);
    // The footprint's parts add up to it: the weights are the parameters' bytes on the CPU,
    // and a synthetic model's working memory is estimated (one sequence at its longest).
    let part = |k: &str| {
        r["footprint"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {r}"))
    };
    let parts = part("weights_mb") + part("pool_mb") + part("context_mb");
    assert!(
        (parts - vram).abs() < 0.01,
        "{parts} MiB of parts, {vram} MiB in all: {r}"
    );
    let param_mb = r["phases"]["param_bytes"].as_f64().unwrap() / MIB;
    assert!((part("weights_mb") - param_mb).abs() < 0.01, "{r}");
    assert!(
        part("context_mb") > 0.0,
        "a process holds more than its weights: {r}"
    );
    assert!(part("working_estimate_mb") > 0.0, "{r}");
    let status = agent.device().await;
    let record = status.models.iter().find(|m| m.name == "tiny-b").unwrap();
    assert_eq!(
        serde_json::to_value(&record.footprint).unwrap(),
        r["footprint"],
        "the model's record keeps what the switch measured"
    );
    assert_eq!(
        serde_json::to_value(&status.last_switch.unwrap().footprint).unwrap(),
        r["footprint"]
    );

    // Switching away unloads first and verifies the release.
    let (code, r) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["from"], "tiny-b");
    assert_eq!(r["release"]["model"], "tiny-b");
    assert_eq!(r["release"]["verified"], true);
    assert_eq!(r["release"]["killed"], false);
    assert!(!procs::is_alive(workers[0].pid), "the old worker is gone");
    let device = agent.device().await;
    assert_eq!(device.active_model.as_deref(), Some("tiny-a"));
    let b = device.models.iter().find(|m| m.name == "tiny-b").unwrap();
    assert_eq!(b.state, vramkeeper_crds::ModelState::Unloaded);
    assert!(b.vram_mb.unwrap() > 10.0, "last-known figures are kept");
    assert!(b.last_unloaded.is_some());
    assert_eq!(device.last_switch.unwrap().to.as_deref(), Some("tiny-a"));

    // Switching to the active model does nothing.
    let (_, r) = agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(r["already_active"], true);

    // Unload leaves no worker.
    let (code, r) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["release"]["verified"], true);
    assert!(agent.workers().is_empty());
    let (_, r) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(r["release"], serde_json::Value::Null, "nothing to unload");
}

#[tokio::test]
async fn memory_follows_model_size() {
    let catalog = r#"
[[model]]
name = "floor"
kind = "synthetic"
params = 200_000
layers = 1
vocab = 256
context = 16

[[model]]
name = "small"
kind = "synthetic"
params = 12_000_000
layers = 2
vocab = 1024
context = 32

[[model]]
name = "large"
kind = "synthetic"
params = 48_000_000
layers = 2
vocab = 1024
context = 32
"#;
    let agent = Agent::start(AgentOptions {
        catalog: Some(catalog.into()),
        ..Default::default()
    })
    .await;
    let (_, models) = agent.get("/v1/models").await;
    let param_mb = |name: &str| {
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["param_bytes"]
            .as_f64()
            .unwrap()
            / MIB
    };
    let mut vram = std::collections::HashMap::new();
    for name in ["floor", "small", "large"] {
        let (code, r) = agent
            .post("/v1/models/switch", json!({"model": name}))
            .await;
        assert_eq!(code, StatusCode::OK, "{r}");
        vram.insert(name, r["vram_mb"].as_f64().unwrap());
    }
    // What a worker holds without its weights: the floor model minus its own parameters.
    let overhead = vram["floor"] - param_mb("floor");
    let measured = (vram["large"] - overhead) / (vram["small"] - overhead);
    let expected = param_mb("large") / param_mb("small");
    assert!(
        (measured / expected - 1.0).abs() < 0.15,
        "memory ratio {measured:.2} vs parameter ratio {expected:.2} ({vram:?}, overhead {overhead:.1} MiB)"
    );
}

#[tokio::test]
async fn test_load_measures_every_model_and_restores_the_active_one() {
    let agent = Agent::small(&[]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    let (code, r) = agent.post("/v1/models/test-load", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    let results = r["results"].as_array().unwrap();
    let names: Vec<_> = results
        .iter()
        .map(|e| e["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-a", "tiny-b"]);
    for e in results {
        assert!(e["result"]["vram_mb"].as_f64().unwrap() > 1.0, "{e}");
        assert_eq!(e["result"]["trigger"], "test-load");
    }
    assert_eq!(r["restored"], "tiny-b");
    let device = agent.device().await;
    assert_eq!(device.active_model.as_deref(), Some("tiny-b"));
    assert_eq!(agent.workers().len(), 1);
    let loads: Vec<u64> = device.models.iter().map(|m| m.loads).collect();
    assert_eq!(
        loads,
        [1, 2],
        "tiny-b: the first switch and the cycle; the restore finds it active"
    );

    // With nothing active before, nothing is active after.
    agent.post("/v1/models/unload", json!({})).await;
    let (_, r) = agent
        .post("/v1/models/test-load", json!({"models": ["tiny-a"]}))
        .await;
    assert_eq!(r["restored"], serde_json::Value::Null);
    assert!(agent.workers().is_empty());
}

#[tokio::test]
async fn inference_switches_implicitly_and_counts_it() {
    let agent = Agent::small(&[]).await;
    let (code, r) = agent
        .post(
            "/v1/infer",
            json!({"model": "tiny-a", "tokens": [1, 2, 3, 4]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["next_tokens"].as_array().unwrap().len(), 4);
    assert_eq!(r["switched"]["trigger"], "auto");
    let checksum = r["checksum"].as_f64().unwrap();
    // The same input gives the same output; the model is active now, no switch.
    let (_, again) = agent
        .post(
            "/v1/infer",
            json!({"model": "tiny-a", "tokens": [1, 2, 3, 4]}),
        )
        .await;
    assert_eq!(again["switched"], serde_json::Value::Null);
    assert_eq!(again["checksum"].as_f64().unwrap(), checksum);
    // Another model: another implicit switch.
    let (_, r) = agent
        .post("/v1/infer", json!({"model": "tiny-b", "tokens": [5]}))
        .await;
    assert_eq!(r["switched"]["from"], "tiny-a");
    let device = agent.device().await;
    assert_eq!(device.implicit_switches, 2);
    assert_eq!(
        device.last_switch.unwrap().trigger,
        vramkeeper_crds::SwitchTrigger::Auto
    );
    let b = device.models.iter().find(|m| m.name == "tiny-b").unwrap();
    assert_eq!(b.last_trigger, Some(vramkeeper_crds::SwitchTrigger::Auto));
    assert_eq!(b.requests, 1);
    let (_, metrics) = agent.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"vramkeeper_switches_total{gpu="0",trigger="auto",outcome="ok"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_idle_model_is_unloaded() {
    let agent = Agent::small(&["--idle-unload-s", "1", "--sample-ms", "200"]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    wait_until("the idle model to be unloaded", DEADLINE, || async {
        agent.device().await.active_model.is_none()
    })
    .await;
    let device = agent.device().await;
    assert_eq!(
        device.last_switch.unwrap().trigger,
        vramkeeper_crds::SwitchTrigger::Idle
    );
    assert!(agent.workers().is_empty());
}
