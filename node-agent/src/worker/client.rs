//! The agent's side of a worker: start the process, talk to it, end it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    process::{Child, Command},
    sync::Mutex,
};

use super::protocol::{self, Request, Response, WorkerMemory};
use crate::probe::{BackendKind, process};

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// The agent binary (workers are the same binary, `worker` subcommand).
    pub exe: PathBuf,
    /// The agent's stable id (the marker orphans are found by).
    pub agent_id: String,
    /// This run's instance id.
    pub instance: String,
    /// Where sockets live.
    pub run_dir: PathBuf,
    /// cubecl's kernel and autotune caches.
    pub cache_dir: PathBuf,
    /// Allow the test-only ops (leak, hang).
    pub test_ops: bool,
    /// How long a worker may take to start listening.
    pub start_timeout: Duration,
}

/// Why talking to a worker failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkerError {
    /// The process could not be started.
    #[error("cannot start worker: {0}")]
    Spawn(String),
    /// The process exited (or was killed).
    #[error("worker (pid {pid}) died during {op}: {status}")]
    Died {
        /// Its pid.
        pid: u32,
        /// What it was doing.
        op: &'static str,
        /// How it ended (`exit status 3`, `signal 9 (SIGKILL)`).
        status: String,
    },
    /// It did not answer in time.
    #[error("worker (pid {pid}) did not answer {op} within {seconds:.1} s")]
    Timeout {
        /// Its pid.
        pid: u32,
        /// What it was asked.
        op: &'static str,
        /// The deadline.
        seconds: f64,
    },
    /// It answered with an error.
    #[error("{message}")]
    Failed {
        /// The worker's message.
        message: String,
        /// The worker cannot go on.
        fatal: bool,
    },
    /// It answered something that makes no sense for the request.
    #[error("worker (pid {pid}) broke the protocol during {op}: {detail}")]
    Protocol {
        /// Its pid.
        pid: u32,
        /// What it was asked.
        op: &'static str,
        /// What went wrong.
        detail: String,
    },
}

/// A running worker process.
pub struct WorkerHandle {
    pid: u32,
    child: Mutex<Child>,
    conn: Mutex<Option<UnixStream>>,
    socket: PathBuf,
    backend: BackendKind,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// It did not exit when asked and was killed.
    pub killed: bool,
}

impl WorkerHandle {
    /// Starts a worker for device `index` and waits until it answers.
    pub async fn spawn(
        launch: &WorkerLaunch,
        backend: BackendKind,
        index: u32,
        seq: u64,
        fault: Option<&str>,
    ) -> Result<Self, WorkerError> {
        std::fs::create_dir_all(&launch.run_dir)
            .map_err(|e| WorkerError::Spawn(format!("{}: {e}", launch.run_dir.display())))?;
        let short = &launch.instance[..8.min(launch.instance.len())];
        let socket = launch.run_dir.join(format!("w-{short}-{seq}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&launch.exe);
        cmd.arg("worker")
            .args(["--agent-id", &launch.agent_id])
            .args(["--instance", &launch.instance])
            .arg("--socket")
            .arg(&socket)
            .args(["--backend", backend.as_str()])
            .args(["--device-index", &index.to_string()])
            .arg("--cache-dir")
            .arg(&launch.cache_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C at the agent's terminal is the agent's to handle.
            .process_group(0)
            .kill_on_drop(false);
        if launch.test_ops {
            cmd.arg("--test-ops");
            if let Some(fault) = fault {
                cmd.args(["--fault", fault]);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| WorkerError::Spawn(format!("{}: {e}", launch.exe.display())))?;
        let pid = child.id().unwrap_or_default();
        let deadline = Instant::now() + launch.start_timeout;
        let conn = loop {
            if let Ok(conn) = UnixStream::connect(&socket).await {
                break conn;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(WorkerError::Died {
                    pid,
                    op: "start",
                    status: describe_exit(status),
                });
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(WorkerError::Timeout {
                    pid,
                    op: "start",
                    seconds: launch.start_timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let handle = Self {
            pid,
            child: Mutex::new(child),
            conn: Mutex::new(Some(conn)),
            socket,
            backend,
        };
        match handle.call(Request::Hello, launch.start_timeout).await {
            Ok(Response::Hello { .. }) => Ok(handle),
            Ok(other) => {
                handle.kill().await;
                Err(WorkerError::Protocol {
                    pid,
                    op: "hello",
                    detail: format!("unexpected {other:?}"),
                })
            }
            Err(e) => {
                handle.kill().await;
                Err(e)
            }
        }
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The backend it runs.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Sends one request and waits for the answer. After a timeout or a broken connection
    /// the worker is unusable: the caller ends it.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, WorkerError> {
        let mut guard = self.conn.lock().await;
        self.exchange(&mut guard, request, timeout).await
    }

    /// Reads the worker's memory figures unless another request holds the connection.
    pub async fn try_memory(&self, timeout: Duration) -> Option<Result<WorkerMemory, WorkerError>> {
        let mut guard = self.conn.try_lock().ok()?;
        Some(
            match self.exchange(&mut guard, Request::Memory, timeout).await {
                Ok(Response::Memory(m)) => Ok(m),
                Ok(other) => Err(self.unexpected("memory", other)),
                Err(e) => Err(e),
            },
        )
    }

    async fn exchange(
        &self,
        conn: &mut Option<UnixStream>,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, WorkerError> {
        let op = request.op();
        let Some(stream) = conn.as_mut() else {
            return Err(self.died(op).await);
        };
        let exchange = async {
            stream.write_all(&protocol::encode(&request)).await?;
            let mut prefix = [0u8; 4];
            stream.read_exact(&mut prefix).await?;
            let len = protocol::frame_len(prefix)?;
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await?;
            protocol::decode::<Response>(&body)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Response::Error { message, fatal })) => {
                if fatal {
                    *conn = None;
                }
                Err(WorkerError::Failed { message, fatal })
            }
            Ok(Ok(response)) => Ok(response),
            Ok(Err(protocol::FrameError::Malformed(e))) => {
                *conn = None;
                Err(WorkerError::Protocol {
                    pid: self.pid,
                    op,
                    detail: e.to_string(),
                })
            }
            Ok(Err(_)) => {
                *conn = None;
                Err(self.died(op).await)
            }
            Err(_) => {
                *conn = None;
                Err(WorkerError::Timeout {
                    pid: self.pid,
                    op,
                    seconds: timeout.as_secs_f64(),
                })
            }
        }
    }

    /// Reads the worker's memory figures.
    pub async fn memory(&self, timeout: Duration) -> Result<WorkerMemory, WorkerError> {
        match self.call(Request::Memory, timeout).await? {
            Response::Memory(m) => Ok(m),
            other => Err(self.unexpected("memory", other)),
        }
    }

    /// Asks the worker to release pooled memory; returns the bytes released.
    pub async fn cleanup(&self, timeout: Duration) -> Result<u64, WorkerError> {
        match self.call(Request::Cleanup, timeout).await? {
            Response::Cleaned {
                reserved_before,
                reserved_after,
            } => Ok(reserved_before.saturating_sub(reserved_after)),
            other => Err(self.unexpected("cleanup", other)),
        }
    }

    /// An answer of the wrong kind.
    pub fn unexpected(&self, op: &'static str, response: Response) -> WorkerError {
        WorkerError::Protocol {
            pid: self.pid,
            op,
            detail: format!("unexpected answer {response:?}"),
        }
    }

    /// Asks the worker to exit, waits up to `grace`, then kills it; always reaps it.
    pub async fn shutdown(&self, grace: Duration) -> Ended {
        let asked = {
            let mut guard = self.conn.lock().await;
            match guard.as_mut() {
                Some(conn) => {
                    let frame = protocol::encode(&Request::Shutdown);
                    let sent = tokio::time::timeout(grace, conn.write_all(&frame)).await;
                    *guard = None;
                    matches!(sent, Ok(Ok(())))
                }
                None => false,
            }
        };
        let mut child = self.child.lock().await;
        if asked && matches!(tokio::time::timeout(grace, child.wait()).await, Ok(Ok(_))) {
            self.remove_socket();
            return Ended { killed: false };
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        self.remove_socket();
        Ended { killed: true }
    }

    /// Kills the worker at once and reaps it.
    pub async fn kill(&self) {
        *self.conn.lock().await = None;
        let mut child = self.child.lock().await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        self.remove_socket();
    }

    /// Whether the process is still running.
    pub async fn is_running(&self) -> bool {
        matches!(self.child.lock().await.try_wait(), Ok(None))
    }

    async fn died(&self, op: &'static str) -> WorkerError {
        let mut child = self.child.lock().await;
        // The connection broke: give the process a moment to finish exiting, then say how.
        let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            _ => "connection lost while the process still runs".to_string(),
        };
        WorkerError::Died {
            pid: self.pid,
            op,
            status,
        }
    }

    fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `exit status 3`, or `signal 9 (SIGKILL)`.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("signal {sig} ({name})")
        }
        _ => "unknown exit".into(),
    }
}

/// Kills a process that is not our child (an orphan or a foreign process) and waits, up to
/// `wait`, until it is gone. True when it is gone.
pub async fn kill_pid(pid: u32, wait: Duration) -> bool {
    use nix::{sys::signal, unistd::Pid};
    let _ = signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGKILL);
    let deadline = Instant::now() + wait;
    while process::is_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Removes stale sockets of earlier runs from the run directory.
pub fn clean_run_dir(run_dir: &Path, instance: &str) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    let short = &instance[..8.min(instance.len())];
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".sock") && !name.starts_with(&format!("w-{short}-")) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
