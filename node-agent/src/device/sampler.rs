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

impl Device {
    /// The ghost of a reading, given what the agent knows now.
    pub(crate) fn ghost_of(&self, reading: &DeviceReading) -> Ghost {
        let state = self.state.lock().unwrap();
        ghost::compute(
            reading,
            state.baseline,
            |pid| self.classify(&state, pid),
            process::name,
        )
    }

    /// One sampling tick.
    pub async fn sample(self: &Arc<Self>, tick: u64) {
        self.refresh_worker_memory().await;
        let Ok(reading) = self.read().await else {
            self.changed();
            return;
        };
        let ghost = self.ghost_of(&reading);
        let now = Timestamp::now();
        let active = self.with_state(|s| s.active.clone());
        let live = active.as_ref().map(|a| {
            let vram = reading.usage_of(a.pid);
            (
                a.model.clone(),
                vram,
                process::rss_bytes(a.pid).unwrap_or(vram),
            )
        });
        let policy = &self.ctx.config.policy;
        let idle = self.busy_with().is_none();
        let (change, auto_free, baseline, since) = self.with_state(|s| {
            if let Some((model, vram, ram)) = &live {
                s.tracker.live(model, *vram, *ram);
            }
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
            s.ghost = ghost.clone();
            let change = s.zombie.observe(ghost.bytes, policy, now);
            let due = idle && s.zombie.auto_free_due(policy, now);
            if due {
                s.zombie.auto_freed(now);
            }
            (change, due, s.baseline, s.zombie.over_since())
        });
        match change {
            Change::Flagged => tracing::warn!(
                gpu = self.info.index,
                ghost_mb = super::switch::mib(ghost.bytes),
                since = ?since,
                sources = ?ghost.sources.iter().map(|s| (s.kind.as_str(), s.pid, super::switch::mib(s.bytes))).collect::<Vec<_>>(),
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

    /// Asks the active worker for its allocator figures, unless it is serving a request.
    async fn refresh_worker_memory(&self) {
        let Ok(slot) = self.slot.try_read() else {
            return;
        };
        let Some(active) = slot.as_ref() else {
            return;
        };
        if let Some(Ok(memory)) = active
            .worker
            .try_memory(self.ctx.config.control_timeout)
            .await
        {
            self.with_state(|s| {
                if let Some(a) = s.active.as_mut().filter(|a| a.pid == active.worker.pid()) {
                    a.pooled_bytes = memory.pooled_bytes();
                }
            });
        }
    }

    fn unload_if_idle(self: &Arc<Self>) {
        let Some(limit) = self.ctx.config.idle_unload else {
            return;
        };
        let idle_for = match self.slot.try_read() {
            Ok(slot) => match slot.as_ref() {
                Some(active) => active.last_used.lock().unwrap().elapsed(),
                None => return,
            },
            Err(_) => return,
        };
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
