//! Access and bounds, against real agents over real HTTP: what needs a credential, which hosts
//! and origins are answered, what a client may claim, what refuses to start, and the bounds on
//! the work one request may ask for.

mod access;
mod bounds;
mod browsers;
mod ownership;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vramkeeper_e2e::{
    Agent, AgentOptions,
    agent::{SMALL_CATALOG, agent_bin},
};

pub const TOKEN: &str = "acting-token";

/// Asserts the status, the error code and that the message names `mentions`.
pub fn assert_error(code: StatusCode, body: &Value, want: StatusCode, error: &str, mentions: &str) {
    assert_eq!(code, want, "{body}");
    assert_eq!(body["error"]["code"], error, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

/// POSTs JSON with `bearer` (or none).
pub async fn post_as(
    agent: &Agent,
    bearer: Option<&str>,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", agent.url))
        .json(&body);
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    let r = r.send().await.expect("POST");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One HTTP/1.1 request written by hand, so that `Host` and `Origin` are exactly these.
pub async fn raw(
    agent: &Agent,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = agent.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(token) = &agent.token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = vec![];
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The JSON inside a (possibly chunked) raw body.
pub fn json_in(body: &str) -> Value {
    let start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).expect("a JSON body")
}

/// Runs the agent binary with `args` (on the CPU unless they name a `--device`) and a fresh
/// state directory; it must exit (not serve).
/// Returns its exit status and what it wrote on stderr.
pub async fn refused_start(args: &[&str], state_dir: &Path) -> (Option<i32>, String) {
    // The CPU unless the test names a device.
    let device: &[&str] = if args.contains(&"--device") {
        &[]
    } else {
        &["--device", "cpu"]
    };
    let mut child = Command::new(agent_bin())
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state_dir)
        .args(device)
        .args(args)
        .env_remove("VRAMKEEPER_TOKEN")
        .env("KUBECONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent started and served with {args:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub async fn small_with(args: &[&str], token: Option<&str>) -> Agent {
    Agent::start(AgentOptions {
        args: args.iter().map(|s| s.to_string()).collect(),
        catalog: Some(SMALL_CATALOG.into()),
        token: token.map(String::from),
        env: vec![("KUBECONFIG".into(), "/nonexistent".into())],
        ..Default::default()
    })
    .await
}
