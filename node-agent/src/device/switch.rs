//! Switching models: unload (and verify the release) before load; load, clean, measure.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
    time::{Duration, Instant},
};

use jiff::Timestamp;
use tokio::sync::watch;
use vramkeeper_crds::{
    SwitchTrigger,
    api::{
        Footprint, LoadPhases, ReleaseReport, SwitchRecord, SwitchResponse, TestLoadEntry,
        TestLoadResponse,
    },
};

use super::{Active, Device, DeviceError, OpGuard, Result, SpawnHook, residency::Mode};
use crate::{
    models::{ModelKind, ModelSpec},
    probe::{BackendKind, process},
    tracker::SpawnRecord,
    units::{MIB, mib, ms},
    worker::{
        client::{WorkerError, WorkerHandle},
        protocol::{Request, Response, WorkerMemory},
    },
};

/// A loaded model: its worker and what the load measured.
struct Loaded {
    active: Arc<Active>,
    load_ms: f64,
    phases: LoadPhases,
    /// Used device memory after the load minus before it.
    device_delta: i64,
    /// What the model's memory is made of (absent for model servers).
    footprint: Option<Footprint>,
}

/// What a load measured: the worker's memory, the device's, and what the worker said.
struct Measured {
    /// The worker's memory on the device (its footprint).
    expected: u64,
    /// The device's used memory.
    used_after: u64,
    /// A model server's port.
    port: Option<u16>,
    /// The worker's resident host memory.
    rss: u64,
    /// What it is made of (absent for model servers).
    footprint: Option<Footprint>,
}

/// Splits a worker's measured memory (`total`) into weights, pool and context: on a GPU the
/// allocator's bytes in use are the weights, what it reserves beyond them its pool, and the
/// rest the context; on the CPU the parameters' bytes are the weights.
fn footprint(
    backend: BackendKind,
    total: u64,
    memory: &WorkerMemory,
    param_bytes: u64,
    working: Option<u64>,
) -> Footprint {
    let weights = match backend {
        BackendKind::Cuda => memory.in_use_bytes,
        BackendKind::Flex => param_bytes,
    }
    .min(total);
    let pool = memory.pooled_bytes().min(total - weights);
    Footprint {
        weights_mb: mib(weights),
        pool_mb: mib(pool),
        context_mb: mib(total - weights - pool),
        working_estimate_mb: working.map(mib),
    }
}

impl Device {
    /// Switches to `model` with the device already held; returns what the API answers.
    pub(crate) async fn switch_held(
        self: &Arc<Self>,
        _held: &OpGuard<'_>,
        model: &str,
        trigger: SwitchTrigger,
    ) -> Result<SwitchResponse> {
        let spec = self.spec(model)?;
        let from = self.active_model();
        let serving = self
            .slot
            .read()
            .await
            .as_ref()
            .is_some_and(|a| a.spec.name == model && a.healthy());
        if serving {
            return Ok(self.already_active(model, trigger));
        }
        // Refused before anything is unloaded. An inference call adds its model (with one
        // resident per device, in place of the other, drained first); a switch replaces.
        let mode = match trigger {
            SwitchTrigger::Auto => Mode::Add { drain_busy: true },
            _ => Mode::Replace,
        };
        if let Err(e) = self.admit(&spec, mode).await {
            tracing::warn!(gpu = self.info.index, model, error = %e, "load refused");
            return Err(e);
        }
        self.set_busy(format!(
            "switching {} → {model}",
            from.as_deref().unwrap_or("(none)")
        ));
        let started = Instant::now();
        let mut slot = self.drained_slot().await;
        let release = match slot.take() {
            Some(old) => Some(self.release(old).await),
            None => None,
        };
        let unload_ms = ms(started.elapsed());
        let loaded = self.load(&spec).await;
        let now = Timestamp::now();
        let record = |to: Option<String>, vram, ram, load_ms, error, footprint| SwitchRecord {
            at: now.to_string(),
            from: from.clone(),
            to,
            trigger,
            unload_ms,
            load_ms,
            vram_mb: vram,
            ram_mb: ram,
            release_verified: release.as_ref().map(|r| r.verified),
            error,
            footprint,
        };
        match loaded {
            Ok(Loaded {
                active,
                load_ms,
                phases,
                device_delta,
                footprint,
            }) => {
                let vram = active.expected_bytes;
                let ram = active.rss_bytes.load(std::sync::atomic::Ordering::Relaxed);
                let response = SwitchResponse {
                    from: from.clone(),
                    to: model.to_string(),
                    trigger,
                    unload_ms,
                    verify_ms: release.as_ref().map_or(0.0, |r| r.elapsed_ms),
                    load_ms,
                    vram_mb: mib(vram),
                    ram_mb: mib(ram),
                    release: release.clone(),
                    already_active: false,
                    phases: Some(phases),
                    device_delta_mb: device_delta as f64 / MIB,
                    footprint: footprint.clone(),
                };
                self.with_state(|s| {
                    s.active = Some(active.clone());
                    s.loading_pid = None;
                    s.tracker.loaded(model, trigger, vram, ram, load_ms, now);
                    s.tracker.record(model).footprint = footprint.clone();
                    s.tracker.push_switch(record(
                        Some(model.into()),
                        Some(mib(vram)),
                        Some(mib(ram)),
                        load_ms,
                        None,
                        footprint,
                    ));
                });
                *slot = Some(active);
                drop(slot);
                self.observe().await;
                self.ctx
                    .metrics
                    .switched(self.info.index, trigger, true, unload_ms, load_ms);
                tracing::info!(
                    gpu = self.info.index, from = ?from, to = model, trigger = trigger.as_str(),
                    unload_ms, load_ms, vram_mb = mib(vram), "switched"
                );
                self.save_state();
                Ok(response)
            }
            Err(e) => {
                drop(slot);
                self.observe().await;
                self.with_state(|s| {
                    s.loading_pid = None;
                    s.tracker
                        .push_switch(record(None, None, None, 0.0, Some(e.to_string()), None));
                });
                self.ctx
                    .metrics
                    .switched(self.info.index, trigger, false, unload_ms, 0.0);
                tracing::warn!(gpu = self.info.index, model, error = %e, "load failed");
                self.save_state();
                Err(e)
            }
        }
    }

    /// Switches to `model` on a task of its own, after the operations queued before it.
    pub(crate) async fn switch(
        self: &Arc<Self>,
        model: &str,
        trigger: SwitchTrigger,
    ) -> Result<SwitchResponse> {
        self.spec(model)?;
        let model = model.to_string();
        self.detached(move |device| async move {
            let held = device.enter(format!("switching to {model}")).await?;
            device.switch_held(&held, &model, trigger).await
        })
        .await
    }

    /// Unloads the active model (if any), on a task of its own.
    pub(crate) async fn unload(
        self: &Arc<Self>,
        trigger: SwitchTrigger,
    ) -> Result<Option<ReleaseReport>> {
        self.detached(move |device| async move {
            let held = device.enter("unloading").await?;
            device.unload_held(&held, trigger).await
        })
        .await
    }

    /// Unloads the active model with the device already held.
    pub(crate) async fn unload_held(
        &self,
        _held: &OpGuard<'_>,
        trigger: SwitchTrigger,
    ) -> Result<Option<ReleaseReport>> {
        let Some(model) = self.active_model() else {
            return Ok(None);
        };
        self.set_busy(format!("unloading {model}"));
        let started = Instant::now();
        let mut slot = self.drained_slot().await;
        let Some(old) = slot.take() else {
            return Ok(None);
        };
        let release = self.release(old).await;
        drop(slot);
        self.observe().await;
        let now = Timestamp::now();
        self.with_state(|s| {
            s.tracker.push_switch(SwitchRecord {
                at: now.to_string(),
                from: Some(model.clone()),
                to: None,
                trigger,
                unload_ms: ms(started.elapsed()),
                load_ms: 0.0,
                vram_mb: None,
                ram_mb: None,
                release_verified: Some(release.verified),
                error: None,
                footprint: None,
            })
        });
        self.save_state();
        Ok(Some(release))
    }

    /// Ends a worker and waits until its memory is back at the level before it was loaded.
    pub(crate) async fn release(&self, old: Arc<Active>) -> ReleaseReport {
        let model = old.spec.name.clone();
        let pid = old.worker.pid();
        let started = Instant::now();
        let before = self.last_used();
        self.with_state(|s| s.releasing_pid = Some(pid));
        let ended = old.worker.shutdown(self.shutdown_grace(&old.spec)).await;
        // A model server's processes that outlived even the sweep after its worker's exit.
        let launch = &self.ctx.launch;
        let leftovers: Vec<u32> =
            process::tree_of(&launch.agent_id, &launch.instance, old.worker.seq());
        let target = old.pre_load_used;
        let tolerance = self.ctx.config.release_tolerance;
        let (after, verified) = self.wait_for_level(target + tolerance, |_| 0).await;
        let elapsed_ms = ms(started.elapsed());
        let now = Timestamp::now();
        self.with_state(|s| {
            s.releasing_pid = None;
            if s.active.as_ref().is_some_and(|a| a.pid() == pid) {
                s.active = None;
            }
            if process::is_alive(pid) {
                s.zombies.push((pid, model.clone()));
            }
            for left in &leftovers {
                if *left != pid {
                    s.zombies.push((*left, model.clone()));
                }
            }
            s.tracker.unloaded(&model, now);
        });
        self.ctx
            .metrics
            .released(self.info.index, verified, elapsed_ms);
        if !verified {
            tracing::warn!(
                gpu = self.info.index,
                model,
                after_mb = mib(after),
                target_mb = mib(target),
                "memory did not come back after the unload"
            );
        }
        ReleaseReport {
            model,
            before_mb: mib(before),
            after_mb: mib(after),
            target_mb: mib(target),
            tolerance_mb: mib(tolerance),
            verified,
            killed: ended.killed,
            elapsed_ms,
        }
    }

    /// Polls the device until `used - spared(reading)` is at most `level`, or the verify
    /// timeout passes. Returns the last reading's used bytes and whether the level was reached.
    pub(crate) async fn wait_for_level(
        &self,
        level: u64,
        spared: impl Fn(&crate::probe::DeviceReading) -> u64,
    ) -> (u64, bool) {
        let deadline = Instant::now() + self.ctx.config.verify_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Ok(reading) = self.read().await {
                let used = reading.used_bytes.saturating_sub(spared(&reading));
                if used <= level {
                    return (reading.used_bytes, true);
                }
                if Instant::now() > deadline {
                    return (reading.used_bytes, false);
                }
            } else {
                // Without readings nothing can be verified; say so at once.
                return (self.last_used(), false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Memory in use at the last good reading.
    pub(crate) fn last_used(&self) -> u64 {
        self.with_state(|s| s.reading.as_ref().map_or(0, |r| r.used_bytes))
    }

    /// Starts a worker, loads the model, cleans the pool and measures. On any failure the
    /// worker is ended and its memory verified gone.
    async fn load(self: &Arc<Self>, spec: &ModelSpec) -> Result<Loaded> {
        let started = Instant::now();
        let pre_load_used = match self.read().await {
            Ok(r) => r.used_bytes,
            Err(_) => self.last_used(),
        };
        let fail = |reason: String| DeviceError::LoadFailed {
            model: spec.name.clone(),
            reason,
        };
        let spec = &self.resolve(spec).await.map_err(fail)?;
        let fault = self.faults.as_ref().and_then(|hook| hook.worker_fault());
        let mut phases = LoadPhases::default();
        let spawn = Instant::now();
        let worker = WorkerHandle::spawn(
            &self.ctx.launch,
            &self.info,
            self.next_seq(),
            &spec.name,
            fault.map(|f| f.as_arg()),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        phases.spawn_ms = ms(spawn.elapsed());
        let pid = worker.pid();
        self.with_state(|s| {
            s.loading_pid = Some(pid);
            // The record that proves the process is ours, even to a restarted agent.
            if let Some(start_ticks) = process::start_ticks(pid) {
                s.tracker.spawned(SpawnRecord {
                    pid,
                    start_ticks,
                    instance: self.ctx.launch.instance.clone(),
                    model: spec.name.clone(),
                    seq: Some(worker.seq()),
                });
            }
        });
        self.save_state();
        self.watch_worker(&worker, &spec.name);
        match self.load_in(&worker, spec, &mut phases).await {
            Ok(Measured {
                expected: expected_bytes,
                used_after,
                port,
                rss,
                footprint,
            }) => {
                let load_ms = ms(started.elapsed());
                let active = Arc::new(Active {
                    worker,
                    port,
                    drain: watch::channel(false).0,
                    spec: spec.clone(),
                    expected_bytes,
                    pre_load_used,
                    requests: AtomicU64::new(0),
                    last_used: Mutex::new(Instant::now()),
                    hung: AtomicBool::new(false),
                    pooled_bytes: AtomicU64::new(0),
                    rss_bytes: AtomicU64::new(rss),
                    in_flight: AtomicU64::new(0),
                });
                Ok(Loaded {
                    active,
                    load_ms,
                    phases,
                    device_delta: used_after as i64 - pre_load_used as i64,
                    footprint,
                })
            }
            Err(e) => {
                worker.kill().await;
                let level = pre_load_used + self.ctx.config.release_tolerance;
                let (after, verified) = self.wait_for_level(level, |_| 0).await;
                let leftover = if verified {
                    String::new()
                } else {
                    format!(
                        "; {:.0} MiB above the pre-load level remain in use",
                        mib(after.saturating_sub(pre_load_used))
                    )
                };
                Err(fail(format!("{e}{leftover}")))
            }
        }
    }

    /// Fills in what the worker needs and cannot fetch itself (MiniLM's files, downloaded
    /// into the cache on first use).
    async fn resolve(&self, spec: &ModelSpec) -> std::result::Result<ModelSpec, String> {
        let mut resolved = spec.clone();
        let progress = |what: &str| self.set_busy(format!("loading {}: {what}", spec.name));
        resolved
            .kind
            .resolve(&self.ctx.launch.cache_dir, &progress)
            .await?;
        Ok(resolved)
    }

    /// Load, clean, measure: the model's device memory once it answered, the device's used
    /// memory then, and where the time went.
    async fn load_in(
        &self,
        worker: &WorkerHandle,
        spec: &ModelSpec,
        phases: &mut LoadPhases,
    ) -> Result<Measured, WorkerError> {
        let cfg = &self.ctx.config;
        let port;
        let working;
        match worker
            .call(
                Request::Load { spec: spec.clone() },
                self.load_timeout(spec),
            )
            .await?
        {
            Response::Loaded {
                params,
                param_bytes,
                context_ms,
                weights_ms,
                warmup_ms,
                read_bytes,
                port: server_port,
                working_bytes,
            } => {
                working = working_bytes;
                phases.weights_read_bytes = read_bytes;
                if read_bytes > 0 && weights_ms > 0.0 {
                    phases.weights_gb_per_s = read_bytes as f64 / weights_ms / 1e6;
                }
                port = server_port;
                phases.params = params;
                phases.param_bytes = param_bytes;
                phases.context_ms = context_ms;
                phases.weights_ms = weights_ms;
                phases.warmup_ms = warmup_ms;
            }
            other => return Err(worker.unexpected("load", other)),
        }
        // The seed's post-load cleanup: what the load left in the pool is not the model's.
        let cleanup = Instant::now();
        worker.cleanup(cfg.control_timeout).await?;
        phases.cleanup_ms = ms(cleanup.elapsed());
        let measure = Instant::now();
        let memory = worker.memory(cfg.control_timeout).await?;
        phases.allocator_in_use_mb = mib(memory.in_use_bytes);
        phases.allocator_reserved_mb = mib(memory.reserved_bytes);
        let measured = match self.read().await {
            Ok(reading) => (reading.usage_of(worker.pid()), reading.used_bytes),
            Err(e) => {
                // Degraded: the device cannot be read, the worker still can. Its own figure
                // (resident memory on the CPU, the allocator's reservation on a GPU) stands in.
                let own = match worker.backend() {
                    BackendKind::Flex => memory.rss_bytes,
                    BackendKind::Cuda => memory.reserved_bytes,
                };
                tracing::warn!(gpu = self.info.index, error = %e, "device unreadable: the model's memory is the worker's own figure");
                (own, self.last_used() + own)
            }
        };
        phases.measure_ms = ms(measure.elapsed());
        Ok(Measured {
            expected: measured.0,
            used_after: measured.1,
            port,
            rss: memory.rss_bytes,
            // A model server's memory is its process tree's, with no allocator to split it.
            footprint: (!matches!(spec.kind, ModelKind::Server(_))).then(|| {
                footprint(
                    worker.backend(),
                    measured.0,
                    &memory,
                    phases.param_bytes,
                    working,
                )
            }),
        })
    }

    fn already_active(&self, model: &str, trigger: SwitchTrigger) -> SwitchResponse {
        let (vram, ram, footprint) = self.with_state(|s| {
            let r = s.tracker.models.get(model).cloned().unwrap_or_default();
            (
                r.vram_bytes.unwrap_or(0),
                r.ram_bytes.unwrap_or(0),
                r.footprint,
            )
        });
        SwitchResponse {
            from: Some(model.to_string()),
            to: model.to_string(),
            trigger,
            unload_ms: 0.0,
            verify_ms: 0.0,
            load_ms: 0.0,
            vram_mb: mib(vram),
            ram_mb: mib(ram),
            release: None,
            already_active: true,
            phases: None,
            device_delta_mb: 0.0,
            footprint,
        }
    }

    /// Loads every catalog model (or the given ones) in turn, then makes the model that was
    /// active before active again (or unloads, if none was).
    pub(crate) async fn test_load(
        self: &Arc<Self>,
        models: Option<Vec<String>>,
    ) -> Result<TestLoadResponse> {
        let names: Vec<String> = match models {
            Some(names) => {
                for n in &names {
                    self.spec(n)?;
                }
                names
            }
            None => self
                .ctx
                .catalog
                .models()
                .iter()
                .map(|m| m.name.clone())
                .collect(),
        };
        self.detached(move |device| async move { device.test_load_all(names).await })
            .await
    }

    async fn test_load_all(self: &Arc<Self>, names: Vec<String>) -> Result<TestLoadResponse> {
        let held = self.enter("test-load").await?;
        let before = self.active_model();
        let mut results = vec![];
        for name in names {
            // Measure every model from a fresh load, the active one included.
            if self.active_model().as_deref() == Some(name.as_str()) {
                self.unload_held(&held, SwitchTrigger::TestLoad).await?;
            }
            let entry = match self
                .switch_held(&held, &name, SwitchTrigger::TestLoad)
                .await
            {
                Ok(response) => TestLoadEntry {
                    model: name,
                    result: Some(response),
                    error: None,
                },
                Err(e) => TestLoadEntry {
                    model: name,
                    result: None,
                    error: Some(e.detail()),
                },
            };
            results.push(entry);
        }
        let restored = match &before {
            Some(model) => Some(
                self.switch_held(&held, model, SwitchTrigger::TestLoad)
                    .await?
                    .to,
            ),
            None => {
                self.unload_held(&held, SwitchTrigger::TestLoad).await?;
                None
            }
        };
        Ok(TestLoadResponse { results, restored })
    }
}
