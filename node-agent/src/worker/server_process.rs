//! A worker that supervises a model server (the `server` kind) instead of running a burn
//! model: it starts the catalog's command in a process group of its own, waits for its health
//! URL, reports the memory of the whole tree, and stops it (SIGTERM to the group and to every
//! descendant that left it, `stop_grace_s`, then SIGKILL).
//!
//! The tree is found by the marker every process inherits from the worker (agent id, run,
//! worker number: `probe::process`), so a descendant that called `setsid` is still ours.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use super::{
    engine::{Engine, Inference, LoadInfo},
    server_logs::{ServerLogs, Stream, log_file},
};
use crate::{
    args::WorkerArgs,
    models::{
        ModelKind, ModelSpec,
        server::{Placeholders, ServerSpec},
    },
    probe::process,
};

/// Lines of stderr quoted in an error.
const QUOTED_LINES: usize = 12;
/// How long the server's free path may take.
const FREE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long processes may take to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Who this worker is: what its tree's processes carry in their environment.
struct Identity {
    agent_id: String,
    instance: String,
    seq: u64,
}

/// The engine of a server model.
pub(crate) struct ServerEngine {
    identity: Option<Identity>,
    gpu: u32,
    gpu_uuid: String,
    log_dir: PathBuf,
    running: Option<Running>,
}

struct Running {
    child: Child,
    /// Set before the worker stops the server itself: its watcher then stands down.
    stopping: Arc<AtomicBool>,
    grace: Duration,
    /// `http://127.0.0.1:<port><free_path>`, when the server offers one.
    free_url: Option<String>,
}

impl ServerEngine {
    /// An engine for the worker started with `args`.
    pub(crate) fn new(args: &WorkerArgs) -> Self {
        let seq = std::env::var(process::SEQ_ENV)
            .ok()
            .and_then(|s| s.parse().ok());
        Self {
            identity: seq.map(|seq| Identity {
                agent_id: args.agent_id.clone(),
                instance: args.instance.clone(),
                seq,
            }),
            gpu: args.gpu,
            gpu_uuid: args.gpu_uuid.clone().unwrap_or_default(),
            log_dir: args.log_dir.clone(),
            running: None,
        }
    }

    /// The tree's processes but this worker.
    fn tree(&self) -> Vec<u32> {
        let me = std::process::id();
        match &self.identity {
            Some(id) => process::tree_of(&id.agent_id, &id.instance, id.seq)
                .into_iter()
                .filter(|pid| *pid != me)
                .collect(),
            None => self
                .running
                .as_ref()
                .map(|r| vec![r.child.id()])
                .unwrap_or_default(),
        }
    }

    fn signal_all(&mut self, signal: Signal) {
        // The group first (a server that forks workers keeps them in it), while its leader is
        // not reaped (so the group id names no one else); then whatever left the group.
        if let Some(running) = self.running.as_mut()
            && matches!(running.child.try_wait(), Ok(None))
        {
            let group = nix::unistd::Pid::from_raw(running.child.id() as i32);
            let _ = nix::sys::signal::killpg(group, signal);
        }
        for pid in self.tree() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Waits until every process of the tree is gone (reaping the server), up to `wait`.
    fn wait_gone(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(running) = self.running.as_mut() {
                let _ = running.child.try_wait();
            }
            if self.tree().is_empty() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server: SIGTERM, the grace period, SIGKILL; returns once the tree is gone
    /// (or SIGKILL could not end it).
    fn stop_server(&mut self) {
        let Some(grace) = self.running.as_ref().map(|r| r.grace) else {
            return;
        };
        if let Some(running) = &self.running {
            running.stopping.store(true, Ordering::SeqCst);
        }
        self.signal_all(Signal::SIGTERM);
        if !self.wait_gone(grace) {
            self.signal_all(Signal::SIGKILL);
            self.wait_gone(KILL_WAIT);
        }
        self.running = None;
    }

    fn start(&mut self, name: &str, spec: &ServerSpec) -> Result<LoadInfo, String> {
        let started = Instant::now();
        let port = free_port()?;
        let vars = Placeholders {
            port,
            gpu: self.gpu,
            gpu_uuid: self.gpu_uuid.clone(),
        };
        let (command, env) = spec.render(&vars);
        let logs = ServerLogs::new(log_file(&self.log_dir, name));
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "command not found: {:?} (not a file, nor on PATH={})",
                command[0],
                std::env::var("PATH").unwrap_or_default()
            ),
            _ => format!("cannot start {:?}: {e}", command[0]),
        })?;
        if let Some(out) = child.stdout.take() {
            logs.capture(Stream::Stdout, out);
        }
        if let Some(err) = child.stderr.take() {
            logs.capture(Stream::Stderr, err);
        }
        self.running = Some(Running {
            child,
            stopping: Arc::default(),
            grace: Duration::from_secs_f64(spec.stop_grace_s),
            free_url: spec
                .free_path
                .as_ref()
                .map(|p| format!("http://127.0.0.1:{port}{p}")),
        });
        let spawn_ms = crate::units::ms(started.elapsed());
        let url = format!("http://127.0.0.1:{port}{}", spec.health);
        match self.wait_healthy(&url, Duration::from_secs_f64(spec.ready_timeout_s), port) {
            Ok(()) => {
                // What it printed while starting is readable the moment its load returns.
                logs.flush();
                let running = self.running.as_ref().expect("started");
                watch_server(running.child.id(), running.stopping.clone(), logs);
                Ok(LoadInfo {
                    params: 0,
                    param_bytes: 0,
                    context_ms: spawn_ms,
                    weights_ms: 0.0,
                    warmup_ms: crate::units::ms(started.elapsed()) - spawn_ms,
                    read_bytes: 0,
                    port: Some(port),
                    working_bytes: None,
                })
            }
            Err(why) => {
                self.stop_server();
                // Whatever the server printed up to its end.
                std::thread::sleep(Duration::from_millis(50));
                logs.flush();
                let lines = logs.tail(Stream::Stderr, QUOTED_LINES);
                let port_taken = lines
                    .iter()
                    .any(|l| l.to_ascii_lowercase().contains("address already in use"));
                let hint = if port_taken {
                    " (a port it binds is taken: another process listens there)"
                } else {
                    ""
                };
                let quoted = if lines.is_empty() {
                    "; it printed nothing to stderr".to_string()
                } else {
                    format!("; last lines of its stderr:\n{}", lines.join("\n"))
                };
                Err(format!("{why}{hint}{quoted}"))
            }
        }
    }

    /// Polls the health URL until it answers 200, the server exits, or `timeout` passes.
    fn wait_healthy(&mut self, url: &str, timeout: Duration, port: u16) -> Result<(), String> {
        let (runtime, client) = http_client(Duration::from_secs(2))
            .map_err(|e| format!("cannot start the health poller: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut last;
        let mut pause = Duration::from_millis(20);
        loop {
            let running = self.running.as_mut().expect("started");
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!(
                    "the server exited during load ({})",
                    super::client::describe_exit(status)
                ));
            }
            match runtime.block_on(async { client.get(url).send().await }) {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    return self.check_port_is_ours(port);
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) if e.is_connect() => last = "connection refused".into(),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server was not healthy within ready_timeout_s = {} s (GET {url}: {last})",
                    timeout.as_secs_f64()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// A health answer proves nothing if another process holds the port: the requests the
    /// agent passes on would reach it.
    fn check_port_is_ours(&self, port: u16) -> Result<(), String> {
        let holders = process::listeners_on(port);
        if holders.is_empty() {
            // /proc/net cannot tell (another network namespace, say): trust the answer.
            return Ok(());
        }
        let tree = self.tree();
        if holders.iter().any(|pid| tree.contains(pid)) {
            return Ok(());
        }
        let names: Vec<String> = holders
            .iter()
            .map(|pid| format!("pid {pid} ({})", process::name(*pid)))
            .collect();
        Err(format!(
            "port {port} is taken: {} listens there, not the server",
            names.join(", ")
        ))
    }
}

/// A client for the server's port, with the runtime the worker's main thread blocks on
/// (the worker serves one request at a time on that thread); requests are made inside
/// `block_on`, where the runtime's timers exist.
fn http_client(timeout: Duration) -> Result<(tokio::runtime::Runtime, reqwest::Client), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = {
        let _inside = runtime.enter();
        reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?
    };
    Ok((runtime, client))
}

/// How often a running server is checked for an exit of its own.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Watches a healthy server: if it exits on its own (a crash, the OOM killer), the worker
/// exits too, so that the agent sees the model gone at once (its reaper ends what is left of
/// the tree) instead of passing requests to a port nobody listens on.
fn watch_server(pid: u32, stopping: Arc<AtomicBool>, logs: ServerLogs) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(WATCH_EVERY);
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            if !process::is_alive(pid) {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!(pid, "the model server exited on its own: the worker ends");
                logs.flush();
                #[allow(unsafe_code)]
                // SAFETY: _exit ends the process; nothing runs after it.
                unsafe {
                    libc::_exit(SERVER_EXITED)
                }
            }
        }
    });
}

/// The worker's exit status when its server exited on its own.
const SERVER_EXITED: i32 = 4;

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

impl Engine for ServerEngine {
    fn backend(&self) -> &'static str {
        "process"
    }

    fn load(&mut self, spec: &ModelSpec) -> Result<LoadInfo, String> {
        let ModelKind::Server(server) = &spec.kind else {
            return Err(format!("{} is not a server model", spec.name));
        };
        self.stop_server();
        self.start(&spec.name, server)
    }

    fn infer(&mut self, _tokens: &[u32]) -> Result<Inference, String> {
        Err("a server model is reached through the OpenAI routes (POST /v1/...)".into())
    }

    fn embed(&mut self, _texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        Err("a server model is reached through the OpenAI routes (POST /v1/embeddings)".into())
    }

    fn allocator(&self) -> (u64, u64) {
        (0, 0)
    }

    fn idle(&mut self) {}

    fn cleanup(&mut self) {
        // The server's own way to return what it caches, if it offers one.
        let Some(url) = self.running.as_ref().and_then(|r| r.free_url.clone()) else {
            return;
        };
        let asked = http_client(FREE_TIMEOUT).and_then(|(runtime, client)| {
            let answer = runtime
                .block_on(async { client.post(&url).send().await })
                .map_err(|e| e.to_string())?;
            let status = answer.status();
            status
                .is_success()
                .then_some(())
                .ok_or_else(|| format!("HTTP {status}"))
        });
        if let Err(e) = asked {
            tracing::warn!(url, error = %e, "the server's free path failed");
        }
    }

    fn leak(&mut self, _bytes: u64, _pooled: bool) -> Result<(), String> {
        Err("the test-only leak op is for burn workers; a server leaks on its own".into())
    }

    fn leaked(&self) -> u64 {
        0
    }

    fn tree_rss(&self) -> u64 {
        self.tree()
            .into_iter()
            .filter_map(process::rss_bytes)
            .sum::<u64>()
            + process::rss_bytes(std::process::id()).unwrap_or(0)
    }

    fn stop(&mut self) {
        self.stop_server();
    }
}
