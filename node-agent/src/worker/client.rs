//! The agent's side of a worker: start the process, talk to it, end it.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    process::{Child, Command},
    sync::{Mutex, mpsc, watch},
};

use super::protocol::{self, Request, Response, WorkerMemory};
use crate::probe::{BackendKind, DeviceInfo, process};

/// How to start workers.
#[derive(Debug, Clone)]
pub(crate) struct WorkerLaunch {
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

impl WorkerLaunch {
    /// Where model servers' output is mirrored, one `<model>.log` each.
    pub(crate) fn log_dir(&self) -> PathBuf {
        self.run_dir.join("logs")
    }
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
    /// It refused the request as asked (the client's mistake); it is fine.
    #[error("{0}")]
    Rejected(String),
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

/// The CUDA device ordinal a worker of `device` opens, and the environment that makes it the
/// GPU NVML measures. CUDA numbers GPUs fastest first unless told otherwise, NVML by PCI bus:
/// on a mixed machine the same index can name two cards. So the worker sees only its GPU,
/// named by UUID (`CUDA_VISIBLE_DEVICES=GPU-...`), as its device 0; without a UUID, the NVML
/// index in PCI bus order (`CUDA_DEVICE_ORDER=PCI_BUS_ID`, NVML's order). CPU workers get
/// nothing.
pub(crate) fn cuda_selection(device: &DeviceInfo) -> (u32, Vec<(&'static str, String)>) {
    if device.backend != BackendKind::Cuda {
        return (0, vec![]);
    }
    let order = ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string());
    match &device.uuid {
        Some(uuid) => (0, vec![("CUDA_VISIBLE_DEVICES", uuid.clone()), order]),
        None => (device.index, vec![order]),
    }
}

/// A running worker process.
///
/// The process is owned by a reaper task: it learns of the exit the moment it happens (the
/// agent is the parent), publishes how it ended, and is the only one that signals the child,
/// so a kill can never hit a reused pid. Dropping the handle kills the worker: no path of the
/// agent's own request handling can orphan one.
pub(crate) struct WorkerHandle {
    pid: u32,
    seq: u64,
    kill: mpsc::UnboundedSender<()>,
    exit: watch::Receiver<Option<String>>,
    conn: Mutex<Option<UnixStream>>,
    socket: PathBuf,
    backend: BackendKind,
}

/// Which worker a reaper sweeps up after: every process carrying its marker.
struct Tree {
    agent_id: String,
    instance: String,
    seq: u64,
}

impl Tree {
    /// SIGKILLs whatever of the tree outlived the worker (a model server, its engine
    /// processes, one that left the process group) and waits, up to `wait`, until it is gone.
    async fn sweep(self, wait: Duration) {
        let swept = tokio::task::spawn_blocking(move || {
            let mut killed: Vec<u32> = vec![];
            let deadline = Instant::now() + wait;
            loop {
                let left = process::signal_tree(
                    &self.agent_id,
                    &self.instance,
                    self.seq,
                    nix::sys::signal::Signal::SIGKILL,
                    None,
                );
                for pid in &left {
                    if !killed.contains(pid) {
                        killed.push(*pid);
                    }
                }
                if left.is_empty() || Instant::now() > deadline {
                    return (killed, left);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await;
        if let Ok((killed, left)) = swept {
            if !killed.is_empty() {
                tracing::info!(?killed, "ended what a worker left running");
            }
            if !left.is_empty() {
                tracing::warn!(?left, "processes of an ended worker survive SIGKILL");
            }
        }
    }
}

/// How long the sweep after a worker's exit waits for its leftovers to vanish.
const SWEEP_WAIT: Duration = Duration::from_secs(5);

/// Owns the child: waits for it, kills it when asked or when the handle is dropped, then
/// ends whatever of its tree outlived it; the exit is published after that sweep.
fn spawn_reaper(
    mut child: Child,
    tree: Tree,
) -> (mpsc::UnboundedSender<()>, watch::Receiver<Option<String>>) {
    let (kill_tx, mut kill_rx) = mpsc::unbounded_channel::<()>();
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            // Asked to kill, or the handle is gone (the channel closed): either way, end it.
            _ = kill_rx.recv() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let how = match status {
            Ok(status) => describe_exit(status),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        tree.sweep(SWEEP_WAIT).await;
        exit_tx.send_replace(Some(how));
    });
    (kill_tx, exit_rx)
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended {
    /// It did not exit when asked and was killed.
    pub killed: bool,
}

impl WorkerHandle {
    /// Starts worker `seq` for `model` on `device` and waits until it answers.
    pub(crate) async fn spawn(
        launch: &WorkerLaunch,
        device: &DeviceInfo,
        seq: u64,
        model: &str,
        fault: Option<&str>,
    ) -> Result<Self, WorkerError> {
        let backend = device.backend;
        let (cuda_ordinal, cuda_env) = cuda_selection(device);
        std::fs::create_dir_all(&launch.run_dir)
            .map_err(|e| WorkerError::Spawn(format!("{}: {e}", launch.run_dir.display())))?;
        let short = &launch.instance[..8.min(launch.instance.len())];
        let socket = launch.run_dir.join(format!("w-{short}-{seq}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&launch.exe);
        // The marker that makes the worker this agent's: in its environment, read back from
        // /proc only for processes of the agent's own user (a command line proves nothing).
        // Every process the worker starts inherits it, with the worker's number and model.
        cmd.env(
            process::MARKER_ENV,
            process::marker_value(&launch.agent_id, &launch.instance),
        )
        .env(process::SEQ_ENV, seq.to_string())
        .env(process::MODEL_ENV, model)
        .arg("worker")
        .args(["--agent-id", &launch.agent_id])
        .args(["--instance", &launch.instance])
        .arg("--socket")
        .arg(&socket)
        .args(["--backend", backend.as_str()])
        .envs(cuda_env)
        .args(["--device-index", &cuda_ordinal.to_string()])
        .arg("--cache-dir")
        .arg(&launch.cache_dir)
        .args(["--gpu", &device.index.to_string()])
        .arg("--log-dir")
        .arg(launch.log_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Its own process group: a Ctrl-C at the agent's terminal is the agent's to handle.
        .process_group(0)
        .kill_on_drop(false);
        if let Some(uuid) = &device.uuid {
            cmd.args(["--gpu-uuid", uuid]);
        }
        if launch.test_ops {
            cmd.arg("--test-ops");
            if let Some(fault) = fault {
                cmd.args(["--fault", fault]);
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| WorkerError::Spawn(format!("{}: {e}", launch.exe.display())))?;
        let pid = child.id().unwrap_or_default();
        let tree = Tree {
            agent_id: launch.agent_id.clone(),
            instance: launch.instance.clone(),
            seq,
        };
        let (kill, exit) = spawn_reaper(child, tree);
        let mut handle = Self {
            pid,
            seq,
            kill,
            exit,
            conn: Mutex::new(None),
            socket,
            backend,
        };
        let deadline = Instant::now() + launch.start_timeout;
        let conn = loop {
            if let Ok(conn) = UnixStream::connect(&handle.socket).await {
                break conn;
            }
            if let Some(status) = handle.exit_status() {
                handle.remove_socket();
                return Err(WorkerError::Died {
                    pid,
                    op: "start",
                    status,
                });
            }
            if Instant::now() > deadline {
                handle.kill().await;
                return Err(WorkerError::Timeout {
                    pid,
                    op: "start",
                    seconds: launch.start_timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        *handle.conn.get_mut() = Some(conn);
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
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Its number among the workers of this run (its processes' marker).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The backend it runs.
    pub(crate) fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Sends one request and waits for the answer. After a timeout or a broken connection
    /// the worker is unusable: the caller ends it.
    pub(crate) async fn call(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, WorkerError> {
        let mut guard = self.conn.lock().await;
        self.exchange(&mut guard, request, timeout).await
    }

    /// Reads the worker's memory figures unless another request holds the connection.
    pub(crate) async fn try_memory(
        &self,
        timeout: Duration,
    ) -> Option<Result<WorkerMemory, WorkerError>> {
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
        self.converse(conn, request, timeout, &mut |_| true).await
    }

    /// Sends a generation request; gives each piece of text to `piece`, which answers
    /// whether anyone still wants more (on the first `false` the worker is told to stop, and
    /// the rest of its answer is read and dropped). `timeout` bounds each wait for a frame.
    pub(crate) async fn generate(
        &self,
        request: Request,
        timeout: Duration,
        piece: &mut (dyn FnMut(String) -> bool + Send),
    ) -> Result<Response, WorkerError> {
        let mut guard = self.conn.lock().await;
        self.converse(&mut guard, request, timeout, piece).await
    }

    /// One request and its answer: pieces (only a generation sends them) then a final frame.
    async fn converse(
        &self,
        conn: &mut Option<UnixStream>,
        request: Request,
        timeout: Duration,
        piece: &mut (dyn FnMut(String) -> bool + Send),
    ) -> Result<Response, WorkerError> {
        let op = request.op();
        let Some(stream) = conn.as_mut() else {
            return Err(self.died(op).await);
        };
        let sent = tokio::time::timeout(timeout, stream.write_all(&protocol::encode(&request)))
            .await
            .map(|r| r.map_err(protocol::FrameError::from));
        let mut wanted = true;
        let answer = match sent {
            Ok(Ok(())) => loop {
                match tokio::time::timeout(timeout, read_response(stream)).await {
                    Ok(Ok(Response::Piece { text })) => {
                        if wanted && !piece(text) {
                            wanted = false;
                            let cancel = protocol::encode(&Request::Cancel);
                            if let Err(e) = stream.write_all(&cancel).await {
                                break Ok(Err(e.into()));
                            }
                        }
                    }
                    other => break other,
                }
            },
            failed => failed.map(|r| r.map(|()| Response::Ok)),
        };
        match answer {
            Ok(Ok(Response::Error { message, fatal })) => {
                if fatal {
                    *conn = None;
                }
                Err(WorkerError::Failed { message, fatal })
            }
            Ok(Ok(Response::Rejected { message })) => Err(WorkerError::Rejected(message)),
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
    pub(crate) async fn memory(&self, timeout: Duration) -> Result<WorkerMemory, WorkerError> {
        match self.call(Request::Memory, timeout).await? {
            Response::Memory(m) => Ok(m),
            other => Err(self.unexpected("memory", other)),
        }
    }

    /// Asks the worker to release pooled memory; returns the bytes released.
    pub(crate) async fn cleanup(&self, timeout: Duration) -> Result<u64, WorkerError> {
        match self.call(Request::Cleanup, timeout).await? {
            Response::Cleaned {
                reserved_before,
                reserved_after,
            } => Ok(reserved_before.saturating_sub(reserved_after)),
            other => Err(self.unexpected("cleanup", other)),
        }
    }

    /// An answer of the wrong kind.
    pub(crate) fn unexpected(&self, op: &'static str, response: Response) -> WorkerError {
        WorkerError::Protocol {
            pid: self.pid,
            op,
            detail: format!("unexpected answer {response:?}"),
        }
    }

    /// Asks the worker to exit, waits up to `grace`, then kills it; returns once it is reaped.
    pub(crate) async fn shutdown(&self, grace: Duration) -> Ended {
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
        if self.exit_status().is_some()
            || (asked && tokio::time::timeout(grace, self.exited()).await.is_ok())
        {
            self.remove_socket();
            return Ended { killed: false };
        }
        self.kill().await;
        Ended { killed: true }
    }

    /// Kills the worker at once and returns once it is reaped.
    pub(crate) async fn kill(&self) {
        *self.conn.lock().await = None;
        let _ = self.kill.send(());
        self.exited().await;
        self.remove_socket();
    }

    /// How the process ended, once it has (`None` while it runs).
    pub(crate) fn exit_status(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Resolves when the process has exited (and been reaped), with how it ended.
    pub(crate) async fn exited(&self) -> String {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(status) => status.clone().unwrap_or_default(),
            // The reaper never drops its sender before publishing.
            Err(_) => "unknown exit".into(),
        }
    }

    /// A receiver that sees the exit, for watchers that outlive a borrow of the handle.
    pub(crate) fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    async fn died(&self, op: &'static str) -> WorkerError {
        // The connection broke: give the process a moment to finish exiting, then say how.
        let status = match tokio::time::timeout(Duration::from_secs(2), self.exited()).await {
            Ok(status) => status,
            Err(_) => "connection lost while the process still runs".to_string(),
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
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
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

/// Reads one frame of the worker's.
async fn read_response(stream: &mut UnixStream) -> Result<Response, protocol::FrameError> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let len = protocol::frame_len(prefix)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    protocol::decode::<Response>(&body)
}

/// Kills a process that is not our child (an orphan or a foreign process) and waits, up to
/// `wait`, until it is gone. True when it is gone.
pub(crate) async fn kill_pid(pid: u32, wait: Duration) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: Option<&str>) -> DeviceInfo {
        DeviceInfo {
            index,
            name: "NVIDIA H100".into(),
            backend: BackendKind::Cuda,
            uuid: uuid.map(str::to_string),
        }
    }

    #[test]
    fn a_gpu_worker_sees_only_its_gpu_by_uuid_as_device_0() {
        let (ordinal, env) =
            cuda_selection(&gpu(3, Some("GPU-8e3c1a2b-0000-4d5e-9f00-123456789abc")));
        assert_eq!(ordinal, 0);
        assert_eq!(
            env,
            [
                (
                    "CUDA_VISIBLE_DEVICES",
                    "GPU-8e3c1a2b-0000-4d5e-9f00-123456789abc".to_string()
                ),
                ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string()),
            ]
        );
    }

    #[test]
    fn without_a_uuid_cuda_counts_in_nvmls_order() {
        let (ordinal, env) = cuda_selection(&gpu(3, None));
        assert_eq!(ordinal, 3);
        assert_eq!(env, [("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string())]);
    }

    #[test]
    fn cpu_workers_get_no_cuda_environment() {
        let cpu = DeviceInfo {
            index: 0,
            name: "cpu".into(),
            backend: BackendKind::Flex,
            uuid: None,
        };
        assert_eq!(cuda_selection(&cpu), (0, vec![]));
    }
}
