//! One device (a GPU, or the CPU) and everything the agent does on it: its worker, switches,
//! memory readings, ghost detection and remediation.
//!
//! Device operations (switch, unload, test-load, free, reset, and the load behind an
//! auto-switch) run on their own tasks, so a client that gives up never cuts one short; they
//! take turns through one FIFO queue (`queue`), so they never interleave and none starves.
//! Inference holds a read lock on `slot`, so a switch waits for in-flight requests and new
//! ones wait for the switch. Every worker is watched: its exit is known at once, and
//! one that stops answering is marked hung and replaced at the next request (`health`).

mod admission;
mod error;
mod faults;
mod foreign;
mod health;
mod managed;
mod process_tree;
mod queue;
mod remediate;
mod residency;
#[cfg(test)]
mod residency_tests;
mod sampler;
mod serve;
mod status;
mod switch;

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use jiff::Timestamp;
use tokio::sync::{RwLock, watch};

use self::process_tree::fold_trees;

use crate::{
    ghost::{self, Ghost, Holder},
    metrics::Metrics,
    models::{Catalog, ModelKind, ModelSpec},
    probe::{DeviceInfo, DeviceProbe, DeviceReading, ProbeError, process},
    state_file::StateStore,
    tracker::Tracker,
    units::mib,
    worker::{
        client::{WorkerHandle, WorkerLaunch},
        protocol::WorkerMemory,
    },
    zombie::{ZombieDetector, ZombiePolicy},
};

pub(crate) use error::{DeviceError, Result};
pub(crate) use faults::{FaultHooks, SpawnHook};
pub(crate) use managed::ManagedBy;
pub(crate) use serve::{GenEvent, Generation};

/// Timeouts and tolerances of device operations.
#[derive(Debug, Clone)]
pub(crate) struct DeviceConfig {
    /// A model load, warm-up included.
    pub load_timeout: Duration,
    /// One inference request.
    pub infer_timeout: Duration,
    /// Small requests (memory, cleanup).
    pub control_timeout: Duration,
    /// How long a worker may take to exit when asked before it is killed (a server model's
    /// `stop_grace_s` comes on top).
    pub shutdown_grace: Duration,
    /// How long an unload waits for in-flight requests (streams) before it ends them.
    pub drain_timeout: Duration,
    /// How long to wait for released memory to show in the readings.
    pub verify_timeout: Duration,
    /// How far above the pre-load level memory may stay and the release still count.
    pub release_tolerance: u64,
    /// Kept free beyond a model's footprint when a load is admitted.
    pub headroom: u64,
    /// Unload a model that served nothing for this long.
    pub idle_unload: Option<Duration>,
    /// How long an operation may wait for its turn in the device's queue.
    pub queue_timeout: Duration,
    /// How many operations may wait in the device's queue.
    pub queue_capacity: usize,
    /// How long an idle worker may take to answer a memory poll before it is marked hung.
    pub hang_timeout: Duration,
    /// `--kill-foreign-matching`: only foreign processes whose command line matches may be
    /// ended.
    pub foreign_matching: Option<regex::Regex>,
    /// Zombie policy.
    pub policy: ZombiePolicy,
}

/// Shared by every device of the agent.
pub(crate) struct AgentContext {
    /// How to start workers.
    pub launch: WorkerLaunch,
    /// Loadable models.
    pub catalog: Catalog,
    /// Timeouts and policy.
    pub config: DeviceConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The worker of the active model.
pub(crate) struct Active {
    /// The worker process.
    pub worker: WorkerHandle,
    /// The port of the model's own server (server models), on 127.0.0.1.
    pub port: Option<u16>,
    /// Set when the model is about to be unloaded and its in-flight streams had their
    /// bounded time to finish: they end now.
    pub drain: watch::Sender<bool>,
    /// Its model.
    pub spec: ModelSpec,
    /// Device memory right after load and cleanup.
    pub expected_bytes: u64,
    /// Device memory in use before it was loaded: the level its unload must return to.
    pub pre_load_used: u64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// When it last answered one (or was loaded).
    pub last_used: Mutex<Instant>,
    /// It stopped answering: the next request replaces it.
    pub hung: AtomicBool,
    /// Freed-but-kept allocator bytes at its last memory report.
    pub pooled_bytes: AtomicU64,
    /// Resident memory of the worker and everything it started, at its last memory report.
    pub rss_bytes: AtomicU64,
    /// Requests holding it now (their working memory is not ghost).
    pub in_flight: AtomicU64,
}

impl Active {
    /// Whether it can serve: alive and answering.
    pub(crate) fn healthy(&self) -> bool {
        !self.hung.load(Ordering::Relaxed) && self.worker.exit_status().is_none()
    }

    /// Keeps what a memory report of its worker says.
    pub(crate) fn remember(&self, memory: &WorkerMemory) {
        self.pooled_bytes
            .store(memory.pooled_bytes(), Ordering::Relaxed);
        self.rss_bytes.store(memory.rss_bytes, Ordering::Relaxed);
    }

    /// Its model's name.
    pub(crate) fn model(&self) -> &str {
        &self.spec.name
    }

    /// Its worker's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.worker.pid()
    }

    /// When it last answered a request (or was loaded), on the wall clock.
    pub(crate) fn last_used_at(&self) -> Timestamp {
        let ago = self.last_used.lock().unwrap().elapsed();
        jiff::SignedDuration::try_from(ago)
            .ok()
            .and_then(|ago| Timestamp::now().checked_sub(ago).ok())
            .unwrap_or_else(Timestamp::now)
    }
}

/// Mutable state read by status routes (never held across an await).
#[derive(Default)]
pub(crate) struct DeviceState {
    pub tracker: Tracker,
    pub baseline: u64,
    pub reading: Option<DeviceReading>,
    pub ghost: Ghost,
    pub zombie: ZombieDetector,
    pub probe_error: Option<String>,
    /// The active worker (the one in the slot once its load is done; status reads it here,
    /// never waiting on the slot).
    pub active: Option<Arc<Active>>,
    /// A worker being started or loaded (its memory is not ghost).
    pub loading_pid: Option<u32>,
    /// A worker being ended on purpose: its exit is no crash, its memory is on its way out
    /// (not ghost) and it is not sampled as its model's figure.
    pub releasing_pid: Option<u32>,
    /// Workers of this run that should be gone but are not.
    pub zombies: Vec<(u32, String)>,
    /// What is known of each listed process's use of the device (foreign-kill rules).
    pub activity: std::collections::HashMap<u32, foreign::Activity>,
}

/// Whose a process is (see [`Device::owner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A worker of this run of the agent, with the model it was started for when recorded.
    ThisRun {
        /// Its model.
        model: Option<String>,
    },
    /// A worker of an earlier run of this agent (an orphan).
    EarlierRun {
        /// Its model.
        model: Option<String>,
    },
    /// Nothing the agent can prove is its own.
    NotOurs,
}

/// One device.
pub(crate) struct Device {
    /// What it is.
    pub info: DeviceInfo,
    probe: Arc<dyn DeviceProbe>,
    ctx: Arc<AgentContext>,
    queue: queue::OpQueue,
    /// A worker poll is in flight (one at a time, off the sampling tick).
    polling: AtomicBool,
    /// The active worker; read-held by every request in flight on it (a stream holds it
    /// until it ends), write-held by a switch.
    slot: Arc<RwLock<Option<Arc<Active>>>>,
    pub(crate) state: Mutex<DeviceState>,
    seq: AtomicU64,
    changes: watch::Sender<u64>,
    store: StateStore,
    /// The GpuModel that owns this device (set by the report loop).
    managed: Mutex<Option<ManagedBy>>,
    /// Test-only faults (`--test-ops`): the probe above is wrapped by them, and each worker
    /// start asks them for a fault.
    faults: Option<Arc<FaultHooks>>,
}

/// Holds the device for one operation: its turn in the queue.
pub(crate) struct OpGuard<'a> {
    device: &'a Device,
    _turn: queue::Turn<'a>,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.device.changed();
    }
}

impl Device {
    /// A device with its probe; reads the baseline now (no worker of this run exists yet).
    /// With `faults`, its readings and worker starts can be made to fail (`--test-ops`).
    pub(crate) fn new(
        probe: Arc<dyn DeviceProbe>,
        ctx: Arc<AgentContext>,
        store: StateStore,
        mut tracker: Tracker,
        faults: Option<Arc<FaultHooks>>,
    ) -> std::result::Result<Self, ProbeError> {
        let probe = match &faults {
            Some(hooks) => hooks.wrap(probe),
            None => probe,
        };
        let reading = probe.read()?;
        tracker.restarted(Timestamp::now());
        // Spawn records of processes that are gone (or whose pid now names another) prove
        // nothing any more.
        tracker
            .spawned
            .retain(|r| process::start_ticks(r.pid) == Some(r.start_ticks));
        let state = DeviceState {
            tracker,
            baseline: ghost::baseline_of(&reading),
            reading: Some(reading),
            ..Default::default()
        };
        Ok(Self {
            info: probe.info().clone(),
            probe,
            queue: queue::OpQueue::new(ctx.config.queue_capacity),
            ctx,
            polling: AtomicBool::new(false),
            slot: Arc::new(RwLock::new(None)),
            state: Mutex::new(state),
            seq: AtomicU64::new(0),
            changes: watch::channel(0).0,
            store,
            managed: Mutex::new(None),
            faults,
        })
    }

    /// Its fault switches, when the agent runs with `--test-ops`.
    pub(crate) fn faults(&self) -> Option<&FaultHooks> {
        self.faults.as_deref()
    }

    /// The shared context.
    pub(crate) fn ctx(&self) -> &AgentContext {
        &self.ctx
    }

    /// A receiver that ticks whenever the device's state changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Waits for the device's turn (arrival order, every kind of operation alike); refused
    /// only when the queue is full or the wait passes the queue timeout.
    pub(crate) async fn enter(&self, doing: impl Into<String>) -> Result<OpGuard<'_>> {
        let doing = doing.into();
        let pending = self.queue.enter(doing, self.ctx.config.queue_timeout);
        self.changed();
        match pending.await {
            Ok(turn) => {
                self.changed();
                Ok(OpGuard {
                    device: self,
                    _turn: turn,
                })
            }
            Err(refused) => Err(DeviceError::Busy {
                gpu: self.info.index,
                doing: refused.doing,
                secs: refused.secs,
                ahead: refused.ahead,
                why: refused.why,
            }),
        }
    }

    /// Runs a device operation on its own task: it completes whatever happens to the request
    /// that started it (a client that leaves finds it recorded), and a panic in it is an
    /// internal error, not a lost lock.
    pub(crate) async fn detached<T, F>(
        self: &Arc<Self>,
        op: impl FnOnce(Arc<Self>) -> F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        tokio::spawn(op(self.clone()))
            .await
            .unwrap_or_else(|e| Err(DeviceError::Internal(e.to_string())))
    }

    fn set_busy(&self, doing: String) {
        self.queue.set_doing(doing);
        self.changed();
    }

    /// What the device is doing, if anything.
    pub(crate) fn busy_with(&self) -> Option<String> {
        self.queue.doing()
    }

    /// What waits for the device, oldest first.
    pub(crate) fn queued(&self) -> Vec<String> {
        self.queue.waiting()
    }

    /// The catalog entry of `model`, or a 404 naming the catalog.
    pub(crate) fn spec(&self, model: &str) -> Result<ModelSpec> {
        self.ctx
            .catalog
            .get(model)
            .cloned()
            .ok_or_else(|| DeviceError::UnknownModel {
                model: model.to_string(),
                known: self
                    .ctx
                    .catalog
                    .models()
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Refuses a model whose estimate alone exceeds the device's total memory: loading it
    /// could only end with the worker killed by the kernel or the driver.
    pub(crate) fn fits(&self, spec: &ModelSpec) -> Result<()> {
        // The last reading's total: this runs before every request, so it builds no status.
        let total = self.with_state(|s| s.reading.as_ref().map_or(0, |r| r.total_bytes));
        let estimate = spec.estimated_bytes();
        if total > 0 && estimate > total {
            return Err(DeviceError::TooBigForDevice {
                model: spec.name.clone(),
                estimate_mb: mib(estimate),
                gpu: self.info.index,
                total_mb: mib(total),
            });
        }
        Ok(())
    }

    /// The active model's name.
    pub(crate) fn active_model(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .active
            .as_ref()
            .map(|a| a.model().to_string())
    }

    /// Reads the probe off the async runtime; failures are recorded for status and readiness.
    pub(crate) async fn read(&self) -> std::result::Result<DeviceReading, ProbeError> {
        let probe = self.probe.clone();
        let roots = self.tree_roots();
        let instance = self.ctx.launch.instance.clone();
        let result = tokio::task::spawn_blocking(move || {
            probe.read().map(|mut reading| {
                fold_trees(&mut reading, &instance, &roots);
                reading
            })
        })
        .await
        .unwrap_or_else(|e| Err(ProbeError(format!("probe task failed: {e}"))));
        let mut state = self.state.lock().unwrap();
        match &result {
            // The reading is stored with the ghost computed from it (`observe`), never alone:
            // status must not show used memory of one moment with the ghost of another.
            Ok(_) => {
                state.probe_error = None;
            }
            Err(e) => {
                if state.probe_error.is_none() {
                    tracing::warn!(gpu = self.info.index, error = %e, "device reading failed");
                }
                state.probe_error = Some(e.to_string());
                self.ctx.metrics.probe_errors(self.info.index);
            }
        }
        result
    }

    /// Who holds a pid, as the ghost computation needs it.
    pub(crate) fn classify(&self, state: &DeviceState, pid: u32) -> Holder {
        if let Some(a) = state.active.as_ref().filter(|a| a.pid() == pid) {
            return Holder::Active {
                model: a.model().to_string(),
                expected_bytes: a.expected_bytes,
                pooled_bytes: a.pooled_bytes.load(Ordering::Relaxed),
                busy: a.in_flight.load(Ordering::Relaxed) > 0,
            };
        }
        if state.loading_pid == Some(pid) || state.releasing_pid == Some(pid) {
            // Its figures are not known yet: what it holds is what it should hold.
            let used = state.reading.as_ref().map_or(0, |r| r.usage_of(pid));
            return Holder::Active {
                model: if state.loading_pid == Some(pid) {
                    "(loading)".into()
                } else {
                    "(unloading)".into()
                },
                expected_bytes: used,
                pooled_bytes: 0,
                busy: false,
            };
        }
        if let Some((_, model)) = state.zombies.iter().find(|(p, _)| *p == pid) {
            return Holder::Zombie {
                model: model.clone(),
            };
        }
        match self.owner(state, pid) {
            // A worker of this run that is no longer in the slot: should be gone.
            Owner::ThisRun { model } => Holder::Zombie {
                model: model.unwrap_or_else(|| "(unloaded)".into()),
            },
            Owner::EarlierRun { model } => Holder::Orphan { model },
            Owner::NotOurs => Holder::Foreign,
        }
    }

    /// Whose a process is, as far as the agent can prove it: recorded at spawn (pid and start
    /// time, in the state file), or carrying this agent's marker in its environment while it
    /// runs as the agent's user. A command line decides nothing.
    pub(crate) fn owner(&self, state: &DeviceState, pid: u32) -> Owner {
        let launch = &self.ctx.launch;
        if let Some(r) = state.tracker.spawn_of(pid, process::start_ticks(pid)) {
            let model = Some(r.model.clone());
            return if r.instance == launch.instance {
                Owner::ThisRun { model }
            } else {
                Owner::EarlierRun { model }
            };
        }
        match process::worker_marker(pid) {
            Some(m) if m.agent_id == launch.agent_id && m.instance == launch.instance => {
                Owner::ThisRun { model: m.model }
            }
            Some(m) if m.agent_id == launch.agent_id => Owner::EarlierRun { model: m.model },
            _ => Owner::NotOurs,
        }
    }

    /// The live workers of this run, by number: each one's tree is measured as one holder.
    fn tree_roots(&self) -> Vec<(u64, u32)> {
        let instance = &self.ctx.launch.instance;
        self.with_state(|s| {
            s.tracker
                .spawned
                .iter()
                .filter(|r| &r.instance == instance)
                .filter_map(|r| Some((r.seq?, r.pid)))
                .collect()
        })
    }

    /// How long a worker of `spec` may take to exit when asked: a model server gets its
    /// `stop_grace_s` on top (its worker waits that long between SIGTERM and SIGKILL).
    pub(crate) fn shutdown_grace(&self, spec: &ModelSpec) -> Duration {
        let own = self.ctx.config.shutdown_grace;
        match &spec.kind {
            ModelKind::Server(server) => {
                own + Duration::from_secs_f64(server.stop_grace_s) + process_tree::KILL_MARGIN
            }
            _ => own,
        }
    }

    /// How long a load of `spec` may take: a model server gets at least its own
    /// `ready_timeout_s` (its worker gives up at that point and says why).
    pub(crate) fn load_timeout(&self, spec: &ModelSpec) -> Duration {
        let own = self.ctx.config.load_timeout;
        match &spec.kind {
            ModelKind::Server(server) => own.max(
                Duration::from_secs_f64(server.ready_timeout_s)
                    + Duration::from_secs_f64(server.stop_grace_s)
                    + process_tree::KILL_MARGIN,
            ),
            _ => own,
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Writes the device's state file; a failure is logged, never fatal.
    pub(crate) fn save_state(&self) {
        let saved = self
            .store
            .save_snapshot(|| self.state.lock().unwrap().tracker.clone());
        if let Err(e) = saved {
            tracing::warn!(gpu = self.info.index, path = %self.store.path().display(), error = %e, "cannot write the state file");
        }
    }

    /// Runs `f` on the state.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut DeviceState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Records that an inference was answered (for idle unload and status).
    pub(crate) fn touch(&self, active: &Active) {
        active.requests.fetch_add(1, Ordering::Relaxed);
        *active.last_used.lock().unwrap() = Instant::now();
    }

    /// The slot for a switch or an unload: waits for the requests in flight on the active
    /// model, up to the drain timeout, then tells those left (streams) to end, and waits for
    /// them to let go.
    pub(crate) async fn drained_slot(
        &self,
    ) -> tokio::sync::RwLockWriteGuard<'_, Option<Arc<Active>>> {
        let drain = self.ctx.config.drain_timeout;
        match tokio::time::timeout(drain, self.slot.write()).await {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(active) = self.with_state(|s| s.active.clone()) {
                    tracing::warn!(
                        gpu = self.info.index,
                        model = active.model(),
                        drain_s = drain.as_secs_f64(),
                        "ending the requests still in flight after the drain timeout"
                    );
                    active.drain.send_replace(true);
                }
                self.slot.write().await
            }
        }
    }

    /// The worker in the slot now, without waiting for in-flight requests or a switch.
    fn current(&self) -> Option<Arc<Active>> {
        self.slot.try_read().ok().and_then(|slot| slot.clone())
    }
}
