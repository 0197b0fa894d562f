//! Starts that fail: each names its cause and leaves nothing running.

use super::*;

#[tokio::test]
async fn failed_starts_name_their_cause_and_leave_nothing_running() {
    // A server told to bind a port another process holds (the agent's port goes unused).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let busy = format!(
        "\n[[model]]\nname = \"busy\"\nkind = \"server\"\ncommand = {}\nenv = {{ UNUSED = \"{{port}}\" }}\n",
        serde_json::to_string(&[
            "python3",
            FIXTURE,
            "--port",
            &taken_port,
            "--child-mib",
            "10"
        ])
        .unwrap()
    );
    let agent = agent_with(&[
        busy,
        server("never", &["--never-healthy", "--child-mib", "20"], "ready_timeout_s = 2"),
        server("dies", &["--die-during-load"], ""),
        "\n[[model]]\nname = \"missing\"\nkind = \"server\"\ncommand = [\"vk-no-such-server\", \"--port\", \"{port}\"]\n"
            .to_string(),
    ])
    .await;
    let cases = [
        ("never", "not healthy within ready_timeout_s = 2 s"),
        ("dies", "fixture: CUDA error: out of memory (simulated)"),
        ("missing", "command not found: \"vk-no-such-server\""),
        ("busy", "a port it binds is taken"),
    ];
    for (model, cause) in cases {
        let (code, body) = agent
            .post("/v1/models/switch", json!({"model": model}))
            .await;
        assert_eq!(code, StatusCode::BAD_GATEWAY, "{model}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(cause), "{model}: {message}");
        assert!(
            procs::marked_by(&agent.agent_id).is_empty(),
            "{model} left {:?}",
            procs::marked_by(&agent.agent_id)
        );
    }
    let (_, dies) = agent.get("/v1/models/dies/logs").await;
    let texts: Vec<&str> = dies["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    assert!(texts.contains(&"fixture: giving up"), "{dies}");
    let (code, err) = agent.get("/v1/models/tiny-a/logs").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let (code, _) = agent.get("/v1/models/nope/logs").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // The agent still works.
    switch(&agent, "tiny-a").await;
}
