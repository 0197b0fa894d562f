//! One device (a GPU, or the CPU) and everything the agent does on it: its worker, switches,
//! memory readings, ghost detection and remediation.
//!
//! Acting operations (switch, unload, test-load, free, reset) hold `op` for their whole run, so
//! they never interleave; inference holds a read lock on `slot`, so a switch waits for
//! in-flight requests and new ones wait for the switch.

mod remediate;
mod sampler;
mod serve;
mod status;
mod switch;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use jiff::Timestamp;
use tokio::sync::{OwnedMutexGuard, RwLock, watch};
use vramkeeper_crds::SwitchTrigger;

use crate::{
    error::{ApiError, Result},
    ghost::{self, Ghost, Holder},
    metrics::Metrics,
    models::{Catalog, ModelSpec},
    probe::{DeviceInfo, DeviceProbe, DeviceReading, ProbeError, process},
    state_file::StateStore,
    tracker::Tracker,
    worker::client::{WorkerHandle, WorkerLaunch},
    zombie::{ZombieDetector, ZombiePolicy},
};

pub use switch::SwitchOutcome;

/// Timeouts and tolerances of device operations.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// A model load, warm-up included.
    pub load_timeout: Duration,
    /// One inference request.
    pub infer_timeout: Duration,
    /// Small requests (memory, cleanup).
    pub control_timeout: Duration,
    /// How long a worker may take to exit when asked before it is killed.
    pub shutdown_grace: Duration,
    /// How long to wait for released memory to show in the readings.
    pub verify_timeout: Duration,
    /// How far above the pre-load level memory may stay and the release still count.
    pub release_tolerance: u64,
    /// Unload a model that served nothing for this long.
    pub idle_unload: Option<Duration>,
    /// How long an inference call waits for a busy device before it gives up.
    pub queue_timeout: Duration,
    /// Zombie policy.
    pub policy: ZombiePolicy,
}

/// Shared by every device of the agent.
pub struct AgentContext {
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
pub struct Active {
    /// The worker process.
    pub worker: WorkerHandle,
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
}

/// What the device is doing, for busy answers.
#[derive(Debug, Clone)]
struct Busy {
    doing: String,
    since: Instant,
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
    /// The active worker: model, pid, expected bytes, pooled bytes of its last report.
    pub active: Option<ActiveView>,
    /// A worker being started or loaded (its memory is not ghost).
    pub loading_pid: Option<u32>,
    /// Workers of this run that should be gone but are not.
    pub zombies: Vec<(u32, String)>,
}

/// What status readers need of the active worker.
#[derive(Debug, Clone)]
pub(crate) struct ActiveView {
    pub model: String,
    pub pid: u32,
    pub expected_bytes: u64,
    pub pooled_bytes: u64,
    pub requests: u64,
    /// When it last answered a request (or was loaded).
    pub last_used: jiff::Timestamp,
}

/// One device.
pub struct Device {
    /// What it is.
    pub info: DeviceInfo,
    probe: Arc<dyn DeviceProbe>,
    ctx: Arc<AgentContext>,
    op: Arc<tokio::sync::Mutex<()>>,
    busy: Mutex<Option<Busy>>,
    slot: RwLock<Option<Arc<Active>>>,
    pub(crate) state: Mutex<DeviceState>,
    seq: AtomicU64,
    changes: watch::Sender<u64>,
    store: StateStore,
    /// Test-only: the fault the next worker is started with.
    pub(crate) next_fault: Mutex<Option<crate::args::Fault>>,
    /// Test-only: make every device reading fail.
    pub(crate) probe_fault: std::sync::atomic::AtomicBool,
}

/// Holds the device for one acting operation.
pub struct OpGuard<'a> {
    device: &'a Device,
    _lock: OwnedMutexGuard<()>,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        *self.device.busy.lock().unwrap() = None;
        self.device.changed();
    }
}

impl Device {
    /// A device with its probe; reads the baseline now (no worker of this run exists yet).
    pub fn new(
        probe: Arc<dyn DeviceProbe>,
        ctx: Arc<AgentContext>,
        store: StateStore,
        mut tracker: Tracker,
    ) -> std::result::Result<Self, ProbeError> {
        let reading = probe.read()?;
        tracker.restarted(Timestamp::now());
        let state = DeviceState {
            tracker,
            baseline: ghost::baseline_of(&reading),
            reading: Some(reading),
            ..Default::default()
        };
        Ok(Self {
            info: probe.info().clone(),
            probe,
            ctx,
            op: Arc::new(tokio::sync::Mutex::new(())),
            busy: Mutex::new(None),
            slot: RwLock::new(None),
            state: Mutex::new(state),
            seq: AtomicU64::new(0),
            changes: watch::channel(0).0,
            store,
            next_fault: Mutex::new(None),
            probe_fault: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The shared context.
    pub fn ctx(&self) -> &AgentContext {
        &self.ctx
    }

    /// A receiver that ticks whenever the device's state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Takes the device for an acting operation, or answers busy at once.
    pub fn try_op(&self, doing: impl Into<String>) -> Result<OpGuard<'_>> {
        match self.op.clone().try_lock_owned() {
            Ok(lock) => Ok(self.hold(lock, doing.into())),
            Err(_) => Err(self.busy_error()),
        }
    }

    /// Takes the device for an acting operation, waiting up to the queue timeout.
    pub async fn wait_op(&self, doing: impl Into<String>) -> Result<OpGuard<'_>> {
        let timeout = self.ctx.config.queue_timeout;
        match tokio::time::timeout(timeout, self.op.clone().lock_owned()).await {
            Ok(lock) => Ok(self.hold(lock, doing.into())),
            Err(_) => Err(self.busy_error()),
        }
    }

    fn hold(&self, lock: OwnedMutexGuard<()>, doing: String) -> OpGuard<'_> {
        *self.busy.lock().unwrap() = Some(Busy {
            doing,
            since: Instant::now(),
        });
        self.changed();
        OpGuard {
            device: self,
            _lock: lock,
        }
    }

    fn set_busy(&self, doing: String) {
        if let Some(b) = self.busy.lock().unwrap().as_mut() {
            b.doing = doing;
        }
        self.changed();
    }

    fn busy_error(&self) -> ApiError {
        let busy = self.busy.lock().unwrap().clone();
        ApiError::Busy {
            gpu: self.info.index,
            doing: busy
                .as_ref()
                .map_or("another operation".into(), |b| b.doing.clone()),
            secs: busy.map_or(0.0, |b| b.since.elapsed().as_secs_f64()),
        }
    }

    /// What the device is doing, if anything.
    pub fn busy_with(&self) -> Option<String> {
        self.busy.lock().unwrap().as_ref().map(|b| b.doing.clone())
    }

    /// The catalog entry of `model`, or a 404 naming the catalog.
    pub fn spec(&self, model: &str) -> Result<ModelSpec> {
        self.ctx
            .catalog
            .get(model)
            .cloned()
            .ok_or_else(|| ApiError::UnknownModel {
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

    /// The active model's name.
    pub fn active_model(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .active
            .as_ref()
            .map(|a| a.model.clone())
    }

    /// Reads the probe off the async runtime; failures are recorded for status and readiness.
    pub async fn read(&self) -> std::result::Result<DeviceReading, ProbeError> {
        let probe = self.probe.clone();
        let result = if self.probe_fault.load(Ordering::Relaxed) {
            Err(ProbeError("injected fault: device reads fail".into()))
        } else {
            tokio::task::spawn_blocking(move || probe.read())
                .await
                .unwrap_or_else(|e| Err(ProbeError(format!("probe task failed: {e}"))))
        };
        let mut state = self.state.lock().unwrap();
        match &result {
            Ok(reading) => {
                state.reading = Some(reading.clone());
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
        if let Some(a) = state.active.as_ref().filter(|a| a.pid == pid) {
            return Holder::Active {
                model: a.model.clone(),
                expected_bytes: a.expected_bytes,
                pooled_bytes: a.pooled_bytes,
            };
        }
        if state.loading_pid == Some(pid) {
            // Its figures are not known yet: what it holds is what it should hold.
            let used = state.reading.as_ref().map_or(0, |r| r.usage_of(pid));
            return Holder::Active {
                model: "(loading)".into(),
                expected_bytes: used,
                pooled_bytes: 0,
            };
        }
        if let Some((_, model)) = state.zombies.iter().find(|(p, _)| *p == pid) {
            return Holder::Zombie {
                model: model.clone(),
            };
        }
        match process::worker_marker(pid) {
            Some(m) if m.agent_id == self.ctx.launch.agent_id => {
                if m.instance == self.ctx.launch.instance {
                    // A worker of this run that is no longer in the slot: should be gone.
                    Holder::Zombie {
                        model: "(unloaded)".into(),
                    }
                } else {
                    Holder::Orphan
                }
            }
            _ => Holder::Foreign,
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Writes the device's state file; a failure is logged, never fatal.
    pub(crate) fn save_state(&self) {
        let tracker = self.state.lock().unwrap().tracker.clone();
        if let Err(e) = self.store.save(&tracker) {
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
        if let Some(a) = self.state.lock().unwrap().active.as_mut() {
            a.requests = active.requests.load(Ordering::Relaxed);
            a.last_used = jiff::Timestamp::now();
        }
    }

    /// Default trigger of a request.
    pub fn trigger_or_api(t: Option<SwitchTrigger>) -> SwitchTrigger {
        t.unwrap_or(SwitchTrigger::Api)
    }
}
