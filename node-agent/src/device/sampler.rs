//! The sampling tick: read the device, compute the ghost, keep the history, detect zombie
//! memory, run automatic frees and idle unloads.

use std::{collections::BTreeMap, sync::Arc};

use jiff::Timestamp;
use vramkeeper_crds::{SwitchTrigger, api::RemediationTrigger};

use super::Device;
use crate::{
    ghost::{self, Ghost},
    history::Sample,
    probe::{DeviceReading, process},
    zombie::Change,
};

/// Ticks between state-file writes (the coarse history changes once a minute).
const SAVE_EVERY: u64 = 60;

/// One consistent view of the device: a reading, the ghost computed from it with what the
/// agent knew at that moment, and the active model's live figures from the same reading.
pub(crate) struct Snapshot {
    /// The reading.
    pub reading: DeviceReading,
    /// Its ghost.
    pub ghost: Ghost,
    /// The active model, its device memory in this reading (up to its footprint) and its
    /// worker's resident memory;
    /// `None` while no model is loaded or its worker is being ended.
    pub live: Option<(String, u64, u64)>,
    /// What the zombie detector made of it.
    pub change: Change,
}

impl Device {
    /// Reads the device and stores the reading together with its ghost (under one lock, so
    /// status never pairs figures of different moments). `None` when the device cannot be
    /// read.
    pub(crate) async fn observe(&self) -> Option<Snapshot> {
        let reading = self.read().await.ok()?;
        let policy = &self.ctx.config.policy;
        let now = Timestamp::now();
        let mut state = self.state.lock().unwrap();
        let ghost = ghost::compute(
            &reading,
            state.baseline,
            |pid| self.classify(&state, pid),
            process::name,
        );
        let live = state
            .active
            .as_ref()
            .filter(|a| state.releasing_pid != Some(a.pid()))
            .map(|a| {
                // What it holds beyond its footprint is growth, reported as ghost.
                let vram = reading.usage_of(a.pid()).min(a.expected_bytes);
                (
                    a.model().to_string(),
                    vram,
                    match a.rss_bytes.load(std::sync::atomic::Ordering::Relaxed) {
                        0 => process::rss_bytes(a.pid()).unwrap_or(vram),
                        tree => tree,
                    },
                )
            });
        let change = state.zombie.observe(ghost.bytes, policy, now);
        state.reading = Some(reading.clone());
        state.ghost = ghost.clone();
        Some(Snapshot {
            reading,
            ghost,
            live,
            change,
        })
    }

    /// One sampling tick. It never waits on a worker: the allocator poll runs on its own task.
    pub(crate) async fn sample(self: &Arc<Self>, tick: u64) {
        self.poll_worker();
        let Some(Snapshot {
            reading,
            ghost,
            live,
            change,
        }) = self.observe().await
        else {
            self.changed();
            return;
        };
        self.track_activity(&reading).await;
        let now = Timestamp::now();
        let policy = &self.ctx.config.policy;
        let idle = self.busy_with().is_none();
        let (auto_free, baseline, since) = self.with_state(|s| {
            s.tracker.history.push(Sample {
                t_ms: now.as_millisecond(),
                used: reading.used_bytes,
                baseline: s.baseline,
                ghost: ghost.bytes,
                models: live
                    .iter()
                    .map(|(m, vram, _)| (m.clone(), *vram))
                    .collect::<BTreeMap<_, _>>(),
            });
            let due = idle && s.zombie.auto_free_due(policy, now);
            if due {
                s.zombie.auto_freed(now);
            }
            (due, s.baseline, s.zombie.over_since())
        });
        match change {
            Change::Flagged => tracing::warn!(
                gpu = self.info.index,
                ghost_mb = crate::units::mib(ghost.bytes),
                since = ?since,
                sources = ?ghost.sources.iter().map(|s| (s.kind.as_str(), s.pid, crate::units::mib(s.bytes))).collect::<Vec<_>>(),
                "zombie memory detected"
            ),
            Change::Cleared => tracing::info!(gpu = self.info.index, "zombie memory cleared"),
            Change::None => {}
        }
        let flagged = self.with_state(|s| s.zombie.flagged());
        self.ctx.metrics.observe_device(
            self.info.index,
            &reading,
            baseline,
            &ghost,
            flagged,
            live.as_ref(),
        );
        if auto_free {
            let device = self.clone();
            tokio::spawn(async move {
                if let Err(e) = device.free(RemediationTrigger::Auto, None).await {
                    tracing::info!(gpu = device.info.index, error = %e, "automatic free skipped");
                }
            });
        } else if idle {
            self.unload_if_idle();
        }
        if tick.is_multiple_of(SAVE_EVERY) {
            self.save_state();
        }
        self.changed();
    }

    /// Notes which listed processes used the device since the last tick (the foreign-kill
    /// rules spare any that did within the persistence window).
    async fn track_activity(&self, reading: &DeviceReading) {
        let probe = self.probe.clone();
        let busy = tokio::task::spawn_blocking(move || probe.busy_pids())
            .await
            .ok()
            .flatten();
        let pids: Vec<u32> = reading.processes.iter().map(|p| p.pid).collect();
        let now = std::time::Instant::now();
        self.with_state(|s| {
            super::foreign::track(&mut s.activity, &pids, busy.as_ref(), now, |pid| {
                (process::start_ticks(pid), process::cpu_ticks(pid))
            })
        });
    }

    fn unload_if_idle(self: &Arc<Self>) {
        let Some(limit) = self.ctx.config.idle_unload else {
            return;
        };
        let Some(active) = self.current() else {
            return;
        };
        let idle_for = active.last_used.lock().unwrap().elapsed();
        drop(active);
        if idle_for < limit {
            return;
        }
        let device = self.clone();
        tokio::spawn(async move {
            if let Ok(Some(release)) = device.unload(SwitchTrigger::Idle).await {
                tracing::info!(
                    gpu = device.info.index,
                    model = release.model,
                    idle_s = idle_for.as_secs(),
                    "unloaded an idle model"
                );
            }
        });
    }
}
