//! A real `vramkeeper-agent` process for tests.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
};

use reqwest::StatusCode;
use serde_json::Value;
use vramkeeper_crds::api::{DeviceStatus, StatusResponse};

use crate::procs;

/// How to start an agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// A catalog (TOML text); the built-in one when absent.
    pub catalog: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// Reuse this state directory and agent id (a restart); fresh ones when absent.
    pub reuse: Option<(Arc<tempfile::TempDir>, String)>,
    /// Cache directory (weights, kernels); one inside the state directory when absent.
    pub cache_dir: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// A cache directory shared by every test of this build (`target/vramkeeper-test-cache`), so
/// MiniLM's weights are downloaded once per machine, not once per test.
pub fn shared_cache_dir() -> PathBuf {
    let dir = agent_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target/")
        .join("vramkeeper-test-cache");
    std::fs::create_dir_all(&dir).expect("create the shared cache");
    dir
}

/// A running agent; dropping it ends the agent and every worker of its agent id.
pub struct Agent {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its agent id (the marker on its workers).
    pub agent_id: String,
    /// Its state directory (kept alive while any agent uses it).
    pub state: Arc<tempfile::TempDir>,
    /// The token, if any.
    pub token: Option<String>,
    client: reqwest::Client,
}

/// The agent binary: `$VRAMKEEPER_AGENT_BIN`, or `vramkeeper-agent` next to the test's
/// `deps/` directory (cargo builds it for the node agent's own tests).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VRAMKEEPER_AGENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join("vramkeeper-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p vramkeeper-node-agent` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// A catalog of small synthetic models for fast tests.
pub const SMALL_CATALOG: &str = r#"
[[model]]
name = "tiny-a"
kind = "synthetic"
params = 2_000_000
layers = 2
vocab = 512
context = 64
seed = 1

[[model]]
name = "tiny-b"
kind = "synthetic"
params = 4_000_000
layers = 2
vocab = 512
context = 64
seed = 2
"#;

impl Agent {
    /// Starts an agent and waits until it listens.
    pub async fn start(options: AgentOptions) -> Agent {
        let (state, agent_id) = options.reuse.clone().unwrap_or_else(|| {
            let dir = tempfile::Builder::new()
                .prefix("vk-")
                .tempdir()
                .expect("temp dir");
            let id = format!("t{}", uuid_like());
            (Arc::new(dir), id)
        });
        let mut cmd = Command::new(agent_bin());
        cmd.args(["--listen", "127.0.0.1:0", "--device", "cpu"])
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .arg("--cache-dir")
            .arg(
                options
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| state.path().join("cache")),
            )
            .args(["--agent-id", &agent_id])
            .args(&options.args)
            .env("RUST_LOG", "info,tower_http=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(state.path()));
        if let Some(catalog) = &options.catalog {
            let path = state.path().join("catalog.toml");
            std::fs::write(&path, catalog).expect("write catalog");
            cmd.arg("--catalog").arg(path);
        }
        if let Some(token) = &options.token {
            cmd.env("VRAMKEEPER_TOKEN", token);
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("start vramkeeper-agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let first = tokio::task::spawn_blocking(move || rx.recv_timeout(crate::wait::DEADLINE))
            .await
            .unwrap();
        let Ok(first) = first else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent did not start; its log:\n{}",
                read_log(state.path())
            );
        };
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Agent {
            child: Some(child),
            url: format!("http://{addr}"),
            agent_id,
            state,
            token: options.token,
            client: reqwest::Client::new(),
        }
    }

    /// Starts an agent with the small test catalog and test ops, plus `args`.
    pub async fn small(args: &[&str]) -> Agent {
        let mut all = vec!["--enable-test-ops".to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        Agent::start(AgentOptions {
            args: all,
            catalog: Some(SMALL_CATALOG.into()),
            ..Default::default()
        })
        .await
    }

    /// Options that restart this agent: same state directory and agent id.
    pub fn restart_options(&self) -> AgentOptions {
        AgentOptions {
            reuse: Some((self.state.clone(), self.agent_id.clone())),
            token: self.token.clone(),
            ..Default::default()
        }
    }

    /// SIGKILLs the agent process alone: its workers stay, as after a crash.
    pub fn kill_agent_only(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the agent to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        procs::signal(child.id(), "TERM");
        child.wait().ok()?.code()
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        read_log(self.state.path())
    }

    /// The live workers of this agent id.
    pub fn workers(&self) -> Vec<procs::WorkerProc> {
        procs::workers_of(&self.agent_id)
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET, returning the status and the JSON body (`Value::Null` when not JSON).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .auth(self.client.get(format!("{}{path}", self.url)))
            .send()
            .await
            .expect("GET");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GET, returning the status and the body text.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .auth(self.client.get(format!("{}{path}", self.url)))
            .send()
            .await
            .expect("GET");
        (r.status(), r.text().await.unwrap_or_default())
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .auth(self.client.post(format!("{}{path}", self.url)))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST raw bytes with a content type (and no token unless `auth`).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        auth: bool,
    ) -> (StatusCode, Value) {
        let mut r = self.client.post(format!("{}{path}", self.url)).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        if auth {
            r = self.auth(r);
        }
        let r = r.send().await.expect("POST");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/status`, typed.
    pub async fn status(&self) -> StatusResponse {
        let (code, body) = self.get("/v1/status").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        serde_json::from_value(body).expect("status body")
    }

    /// Device 0's status.
    pub async fn device(&self) -> DeviceStatus {
        self.status().await.devices.remove(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill_agent_only();
        // Only when no other agent shares the state (a restart keeps the workers' agent id).
        if Arc::strong_count(&self.state) == 1 {
            for w in procs::workers_of(&self.agent_id) {
                procs::kill(w.pid);
            }
            // Model servers and their children, wherever they moved in the process tree.
            for (pid, _) in procs::marked_by(&self.agent_id) {
                procs::kill(pid);
            }
        }
    }
}

fn log_file(dir: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}
