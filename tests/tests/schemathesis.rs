//! Schemathesis against a live agent: the agent's own OpenAPI document (`GET /openapi.json`,
//! generated from the crds types) drives a bounded number of generated requests, valid and
//! invalid, at every route. Checks: no 5xx, status codes and content types as documented,
//! responses that match their schemas, invalid data rejected. Afterwards the agent still runs,
//! is ready, logged no panic, and holds at most one worker.
//!
//! The document is fetched from the agent and the `model` fields of the switch and infer
//! requests are narrowed to the catalog's names, so that generated valid requests reach real
//! switches and real inference rather than 404s. Reports go to `artifacts/schemathesis/`.
//!
//! Needs schemathesis in `.tools/venv` (`scripts/install-test-tools`; `scripts/test` runs it).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG};

const TOKEN: &str = "schemathesis-test-token";
/// Generated cases per operation and phase (bounded: the whole run is a few hundred requests).
const MAX_EXAMPLES: &str = "25";
/// The run's deadline; it takes well under a minute on a quiet 2-core machine.
const DEADLINE: Duration = Duration::from_secs(480);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn schemathesis() -> PathBuf {
    let st = std::env::var_os("VK_SCHEMATHESIS")
        .map_or_else(|| workspace().join(".tools/venv/bin/st"), PathBuf::from);
    assert!(
        st.is_file(),
        "{} is missing: scripts/install-test-tools installs schemathesis (scripts/test runs it)",
        st.display()
    );
    st
}

/// Narrows `components.schemas.<name>.properties.model` to `models`.
fn narrow_models(doc: &mut Value, schemas: &[&str], models: &[&str]) {
    for name in schemas {
        let model = &mut doc["components"]["schemas"][name]["properties"]["model"];
        assert!(model.is_object(), "{name}.model is in the document");
        model["enum"] = json!(models);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let st = schemathesis();
    let agent = Agent::start(AgentOptions {
        catalog: Some(SMALL_CATALOG.into()),
        token: Some(TOKEN.into()),
        // Generated requests come faster than the default acting rate; 429 is tested elsewhere.
        args: ["--rate-limit", "100000", "--inference-rate-limit", "100000"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;

    let (status, mut doc) = agent.get("/openapi.json").await;
    assert_eq!(status, 200, "the agent serves its OpenAPI document");
    assert_eq!(doc["openapi"], "3.1.0");
    narrow_models(
        &mut doc,
        &["SwitchRequest", "InferRequest"],
        &["tiny-a", "tiny-b"],
    );
    let artifacts = workspace().join("artifacts/schemathesis");
    std::fs::create_dir_all(&artifacts).expect("artifacts/schemathesis");
    let doc_path = artifacts.join("openapi.json");
    std::fs::write(&doc_path, serde_json::to_vec_pretty(&doc).unwrap()).expect("write document");

    let mut child = Command::new(&st)
        .arg("run")
        .arg(&doc_path)
        .args(["--url", &agent.url])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,negative_data_rejection",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", "20261127"])
        .args(["--workers", "1", "--request-timeout", "120"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start schemathesis");
    let end = Instant::now() + DEADLINE;
    while child.try_wait().expect("wait for schemathesis").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran past {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = child.wait_with_output().expect("schemathesis output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(artifacts.join("output.txt"), &text).expect("write output");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("passed"), "schemathesis ran no case:\n{text}");

    let (ready, _) = agent.get_text("/readyz").await;
    assert_eq!(ready, 200, "the agent is ready after the run");
    let log = agent.log();
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    assert!(
        agent.workers().len() <= 1,
        "more than one worker: {:?}",
        agent.workers()
    );
}
