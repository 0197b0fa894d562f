//! A real third-party OpenAI-compatible server: llama-cpp-python's, on a tiny random GGUF.

use super::*;

/// The virtual environment `scripts/install-test-tools` puts llama-cpp-python in.
fn llama_python() -> std::path::PathBuf {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/llama/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-tools (scripts/test does)",
        python.display()
    );
    python
}

#[tokio::test]
async fn a_real_llama_cpp_server_is_switched_against_burn_and_the_fixture() {
    let python = llama_python();
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-llama.gguf");
    let made = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/make-tiny-gguf.py"
        ))
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let command = json!([
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        gguf,
        "--model_alias",
        "llama",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--n_ctx",
        "256",
        "--interrupt_requests",
        "False",
        "--verbose",
        "False"
    ]);
    let llama = format!(
        "\n[[model]]\nname = \"llama\"\nkind = \"server\"\ncommand = {command}\nhealth = \"/v1/models\"\nready_timeout_s = 300\n"
    );
    let agent = agent_with(&[llama, server("srv-a", &["--hold-mib", "20"], "")]).await;

    // burn -> llama.cpp: measured, and its streamed answer passes through.
    switch(&agent, "tiny-a").await;
    let (code, switched) = agent
        .post("/v1/models/switch", json!({"model": "llama"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{switched}\n{}", agent.log());
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(switched["vram_mb"].as_f64().unwrap() >= 20.0, "{switched}");
    let tree = processes_of(&agent, "llama");
    let r = post_chat(&agent, "llama", 16, true).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let chunks = text
        .lines()
        .filter(|l| l.starts_with("data: {") && l.contains("\"content\""))
        .count();
    assert!(chunks >= 8, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // llama.cpp -> fixture: its memory is released, its process gone.
    let switched = switch(&agent, "srv-a").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(tree.iter().all(|p| !procs::is_alive(*p)), "{tree:?}");

    // A completion for it switches back (trigger auto).
    let (code, completion) = agent
        .post(
            "/v1/completions",
            json!({"model": "llama", "prompt": "hello", "max_tokens": 4}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{completion}");
    assert!(completion["choices"][0]["text"].is_string(), "{completion}");
    let (code, _) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK);
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}
