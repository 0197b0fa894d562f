//! Switches between burn models and servers, stops, crashes, orphans and a server that keeps
//! its cache.

use super::*;

#[tokio::test]
async fn a_server_is_measured_as_its_whole_tree_and_switched_against_burn_and_servers() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let agent = agent_with(&[
        server(
            "srv-a",
            &[
                "--hold-mib",
                "60",
                "--child-mib",
                "80",
                "--escape-child",
                "--pid-file",
                pid_file.to_str().unwrap(),
            ],
            "stop_grace_s = 5",
        ),
        server("srv-b", &["--hold-mib", "30"], ""),
    ])
    .await;

    let (_, models) = agent.get("/v1/models").await;
    let entry = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "srv-a")
        .unwrap()
        .clone();
    assert_eq!(entry["kind"], "server");
    assert_eq!(entry["capabilities"], json!(["openai"]));

    // burn -> server: the tree's memory is at least what the server and its child hold.
    switch(&agent, "tiny-a").await;
    let switched = switch(&agent, "srv-a").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    let vram = switched["vram_mb"].as_f64().unwrap();
    let ram = switched["ram_mb"].as_f64().unwrap();
    assert!(
        vram >= 140.0,
        "tree memory {vram} MiB < 60 + 80 MiB held: {switched}"
    );
    assert!(ram >= 140.0, "tree RAM {ram} MiB: {switched}");
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let server_pid = processes_of(&agent, "srv-a")
        .into_iter()
        .find(|p| *p != child && pgid(*p) == Some(*p))
        .expect("the server leads its own process group");
    assert_ne!(
        pgid(child),
        pgid(server_pid),
        "the child left the server's group"
    );
    let device = agent.device().await;
    let record = device.models.iter().find(|m| m.name == "srv-a").unwrap();
    assert_eq!(record.vram_mb, Some(vram));

    // server -> server: the whole tree of the first is gone, the escaped child included.
    let switched = switch(&agent, "srv-b").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(
        !procs::is_alive(child),
        "the escaped child outlived the unload"
    );
    assert!(!procs::is_alive(server_pid));
    assert!(processes_of(&agent, "srv-a").is_empty());

    // server -> burn.
    let switched = switch(&agent, "tiny-b").await;
    assert_eq!(switched["release"]["verified"], true, "{switched}");
    assert!(processes_of(&agent, "srv-b").is_empty());
    let (code, _) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK);
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}

#[tokio::test]
async fn a_server_that_ignores_sigterm_is_killed_after_its_grace() {
    let agent = agent_with(&[server(
        "stubborn",
        &["--ignore-sigterm", "--child-mib", "20"],
        "stop_grace_s = 1",
    )])
    .await;
    switch(&agent, "stubborn").await;
    let (code, unloaded) = agent.post("/v1/models/unload", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{unloaded}");
    assert_eq!(unloaded["release"]["verified"], true, "{unloaded}");
    assert!(procs::marked_by(&agent.agent_id).is_empty());
}

#[tokio::test]
async fn a_killed_worker_takes_its_server_along() {
    let agent = agent_with(&[server(
        "srv-a",
        &["--child-mib", "20", "--escape-child"],
        "",
    )])
    .await;
    switch(&agent, "srv-a").await;
    let tree = processes_of(&agent, "srv-a");
    assert!(tree.len() >= 3, "worker, server, child: {tree:?}");
    let worker = agent.workers()[0].pid;
    procs::kill(worker);
    // A request at once, while the agent may not have seen the death yet: it is answered by
    // the server started again, never by a 502 for a port nobody listens on.
    let (code, body) = agent
        .post("/v1/chat/completions", chat("srv-a", 2, false))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    wait_until(
        "the old server and its child end with their worker",
        DEADLINE,
        || async { tree.iter().all(|p| !procs::is_alive(*p)) },
    )
    .await;

    // The server dies on its own (a crash, the OOM killer), its worker alive: the worker ends
    // with it, the agent records the crash, and the next request starts it again.
    let worker = agent.workers()[0].pid;
    let tree = processes_of(&agent, "srv-a");
    let server_pid = tree
        .iter()
        .copied()
        .find(|p| parent(*p) == Some(worker))
        .expect("the worker's child: the server");
    procs::kill(server_pid);
    wait_until("the agent sees the model gone", DEADLINE, || async {
        agent.device().await.active_model.is_none()
    })
    .await;
    wait_until("the rest of its tree ends", DEADLINE, || async {
        tree.iter().all(|p| !procs::is_alive(*p))
    })
    .await;
    let (code, body) = agent
        .post("/v1/chat/completions", chat("srv-a", 2, false))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_agent_killed_with_a_server_loaded_finds_it_named_by_its_model_and_frees_it() {
    let mut agent = agent_with(&[server(
        "srv-a",
        &["--hold-mib", "40", "--child-mib", "30", "--escape-child"],
        "",
    )])
    .await;
    switch(&agent, "srv-a").await;
    let tree = processes_of(&agent, "srv-a");
    agent.kill_agent_only();
    assert!(
        tree.iter().all(|p| procs::is_alive(*p)),
        "a crash leaves the server running"
    );

    let mut options = agent.restart_options();
    options.args = vec!["--enable-test-ops".into()];
    options.catalog = Some(format!(
        "{SMALL_CATALOG}{}",
        server(
            "srv-a",
            &["--hold-mib", "40", "--child-mib", "30", "--escape-child"],
            ""
        )
    ));
    let again = Agent::start(options).await;
    let ghost = wait_for("the orphans in the ghost", DEADLINE, || async {
        let device = again.device().await;
        let orphans: Vec<_> = device
            .ghost
            .sources
            .iter()
            .filter(|s| s.kind == GhostSourceKind::OrphanWorker)
            .cloned()
            .collect();
        (orphans.len() >= 3).then_some(orphans)
    })
    .await;
    for source in &ghost {
        assert_eq!(source.name.as_deref(), Some("srv-a"), "{source:?}");
    }
    let (code, freed) = again.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{freed}");
    for killed in freed["killed"].as_array().unwrap() {
        assert!(
            killed["name"].as_str().unwrap().starts_with("srv-a ("),
            "{killed}"
        );
    }
    wait_until("the orphans are gone", DEADLINE, || async {
        tree.iter().all(|p| !procs::is_alive(*p))
    })
    .await;
}

/// The seed's leak: the server "unloads" internally but keeps its cache.
async fn leak(port: u16, mib: u64) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/admin/leak"))
        .json(&json!({ "mib": mib }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn growth_shows(agent: &Agent, at_least_mb: f64) {
    wait_until("the growth shows as ghost", DEADLINE, || async {
        agent
            .device()
            .await
            .ghost
            .sources
            .iter()
            .any(|s| s.kind == GhostSourceKind::WorkerGrowth && s.mb >= at_least_mb)
    })
    .await;
}

#[tokio::test]
async fn a_server_that_keeps_its_cache_is_worker_growth_cleared_by_free_then_by_reset() {
    let agent = agent_with(&[server(
        "srv-a",
        &["--hold-mib", "20"],
        "free_path = \"/admin/empty_cache\"",
    )])
    .await;
    switch(&agent, "srv-a").await;
    let port = fixture_port(&agent, "srv-a").await;

    // Free VRAM asks the server, through its free_path, to return its cache.
    leak(port, 300).await;
    growth_shows(&agent, 250.0).await;
    let (code, freed) = agent.post("/v1/gpu/free", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{freed}");
    wait_until("free returned the cache", DEADLINE, || async {
        agent.device().await.ghost.total_mb < 100.0
    })
    .await;
    assert_eq!(agent.device().await.active_model.as_deref(), Some("srv-a"));

    // Reset restarts the server, which returns everything.
    leak(port, 300).await;
    growth_shows(&agent, 250.0).await;
    let (code, reset) = agent.post("/v1/gpu/reset", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{reset}");
    assert_eq!(reset["reloaded"], "srv-a", "{reset}");
    wait_until("the reset returned the cache", DEADLINE, || async {
        agent.device().await.ghost.total_mb < 100.0
    })
    .await;
}
