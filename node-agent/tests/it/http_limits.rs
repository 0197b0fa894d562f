//! The HTTP server against slow, idle and greedy clients, and the agent's start and stop:
//! header and idle timeouts, a connection cap that still answers `/healthz`, a shutdown that a
//! half-sent request cannot hold up, and a taken port that fails the start with no worker.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::json;
use vramkeeper_e2e::{Agent, agent::agent_bin, procs, wait::DEADLINE, wait_until};

fn connect(agent: &Agent) -> TcpStream {
    let addr = agent.url.strip_prefix("http://").unwrap();
    TcpStream::connect(addr).expect("connect")
}

/// Whether the server closed `stream` (a read returns end of file or a reset).
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_and_healthz_answers_over_the_cap() {
    let agent = Agent::small(&["--header-timeout-s", "1", "--max-connections", "8"]).await;
    // Twenty connections, over the cap of eight: some idle, some with half a request.
    let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(&agent)).collect();
    for c in conns.iter_mut().step_by(2) {
        c.write_all(b"POST /v1/models/switch HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
    }
    let (code, _) = agent.get_text("/healthz").await;
    assert_eq!(code, StatusCode::OK, "answered over the connection cap");
    let mut conns2 = conns.split_off(0);
    wait_until("every slow connection to be closed", DEADLINE, || {
        let all = conns2.iter_mut().all(closed);
        async move { all }
    })
    .await;
    let (code, _) = agent.get_text("/healthz").await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn a_half_sent_request_does_not_hold_up_shutdown_and_no_worker_outlives_it() {
    let mut agent = Agent::small(&["--header-timeout-s", "600", "--shutdown-timeout-s", "1"]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-a"}))
        .await;
    assert_eq!(agent.workers().len(), 1);
    let mut c = connect(&agent);
    c.write_all(b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let code = tokio::task::spawn_blocking(move || agent_exit(&mut agent))
        .await
        .unwrap();
    assert_eq!(code.0, Some(0), "a clean exit");
    assert!(code.1.is_empty(), "no worker left: {:?}", code.1);
}

fn agent_exit(agent: &mut Agent) -> (Option<i32>, Vec<procs::WorkerProc>) {
    let code = agent.terminate();
    (code, agent.workers())
}

#[tokio::test]
async fn a_taken_port_fails_the_start_before_anything_is_loaded() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let state = tempfile::tempdir().unwrap();
    let catalog = state.path().join("catalog.toml");
    std::fs::write(&catalog, vramkeeper_e2e::agent::SMALL_CATALOG).unwrap();
    let agent_id = format!("port{}", std::process::id());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(agent_bin())
            .args(["--listen", &addr, "--device", "cpu", "--load", "tiny-a"])
            .arg("--catalog")
            .arg(&catalog)
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .arg("--cache-dir")
            .arg(state.path().join("cache"))
            .args(["--agent-id", &agent_id])
            .stdin(Stdio::null())
            .output()
            .map(|o| (o, agent_id))
    })
    .await
    .unwrap()
    .unwrap();
    let (out, agent_id) = out;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(
        procs::workers_of(&agent_id).is_empty(),
        "no worker was started"
    );
    drop(taken);
}
