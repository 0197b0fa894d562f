//! Free and reset: the two remedies for ghost memory, each measured before and after.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use vramkeeper_crds::{
    GhostSourceKind, SwitchTrigger,
    api::{GhostSource, KilledProcess, RemediationAction, RemediationReport, RemediationTrigger},
};

use super::{Device, OpGuard, Owner, Result, foreign};
use crate::{
    ghost::Holder,
    probe::{DeviceReading, process},
    units::{mib, ms},
    worker::client::{WorkerError, kill_pid},
};

/// How long a killed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

impl Device {
    /// Free: release pooled memory in the live worker, end this run's zombie workers and the
    /// orphans of earlier runs (and foreign processes, when policy allows).
    /// `kill_foreign`: the request's say on foreign processes (see `RemediateRequest`).
    pub(crate) async fn free(
        self: &Arc<Self>,
        trigger: RemediationTrigger,
        kill_foreign: Option<bool>,
    ) -> Result<RemediationReport> {
        self.detached(move |device| async move {
            let held = device.enter("freeing memory").await?;
            Ok(device.free_held(&held, trigger, kill_foreign).await)
        })
        .await
    }

    async fn free_held(
        &self,
        _held: &OpGuard<'_>,
        trigger: RemediationTrigger,
        kill_foreign: Option<bool>,
    ) -> RemediationReport {
        let started = Instant::now();
        let (used_before, ghost_before) = self.measure_ghost().await;
        let mut cleaned = 0;
        // Asked outside the slot's lock: a stopped worker must not hold up inference or status.
        if let Some(active) = self.current().filter(|a| a.healthy()) {
            let timeout = self.ctx.config.hang_timeout;
            match active.worker.cleanup(timeout).await {
                Ok(bytes) => cleaned = bytes,
                Err(e) => {
                    tracing::warn!(gpu = self.info.index, error = %e, "cleanup failed");
                    if matches!(e, WorkerError::Timeout { .. }) {
                        self.mark_hung(&active, &e);
                    }
                }
            }
            if let Ok(memory) = active.worker.memory(timeout).await {
                active.remember(&memory);
            }
        }
        let reading = self.read().await.ok();
        let (killed, spared) = self.end_strays(reading.as_ref(), false, kill_foreign).await;
        if let Some(reading) = &reading {
            self.wait_for_release_of(reading, &killed).await;
        }
        let (used_after, ghost_after) = self.measure_ghost().await;
        self.finish(RemediationReport {
            action: RemediationAction::Free,
            trigger,
            at: Timestamp::now().to_string(),
            used_before_mb: mib(used_before),
            used_after_mb: mib(used_after),
            ghost_before_mb: mib(ghost_before),
            ghost_after_mb: mib(ghost_after),
            cleaned_mb: mib(cleaned),
            killed,
            spared,
            reloaded: None,
            duration_ms: ms(started.elapsed()),
            at_baseline: None,
        })
    }

    /// Reset: end every worker, wait until memory is back at the baseline, reload the model
    /// that was active.
    /// `kill_foreign`: the request's say on foreign processes (see `RemediateRequest`).
    pub(crate) async fn reset(
        self: &Arc<Self>,
        trigger: RemediationTrigger,
        kill_foreign: Option<bool>,
    ) -> Result<RemediationReport> {
        self.detached(
            move |device| async move { device.reset_on_task(trigger, kill_foreign).await },
        )
        .await
    }

    async fn reset_on_task(
        self: &Arc<Self>,
        trigger: RemediationTrigger,
        kill_foreign: Option<bool>,
    ) -> Result<RemediationReport> {
        let held = self.enter("resetting").await?;
        let started = Instant::now();
        let (used_before, ghost_before) = self.measure_ghost().await;
        let active = self.active_model();
        if active.is_some() {
            self.set_busy("resetting: stopping the worker".into());
            self.unload_held(&held, SwitchTrigger::Reset).await?;
        }
        let reading = self.read().await.ok();
        let (killed, spared) = self.end_strays(reading.as_ref(), true, kill_foreign).await;
        self.set_busy("resetting: waiting for memory to return to the baseline".into());
        let spared_pids: Vec<u32> = spared.iter().filter_map(|s| s.pid).collect();
        let baseline = self.with_state(|s| s.baseline);
        let (_, at_baseline) = self
            .wait_for_level(
                baseline + self.ctx.config.release_tolerance,
                |r: &DeviceReading| spared_pids.iter().map(|p| r.usage_of(*p)).sum(),
            )
            .await;
        let mut reloaded = None;
        if let Some(model) = &active {
            self.set_busy(format!("resetting: reloading {model}"));
            match self.switch_held(&held, model, SwitchTrigger::Reset).await {
                Ok(_) => reloaded = Some(model.clone()),
                Err(e) => {
                    tracing::warn!(gpu = self.info.index, model, error = %e, "reload after reset failed")
                }
            }
        }
        let (used_after, ghost_after) = self.measure_ghost().await;
        Ok(self.finish(RemediationReport {
            action: RemediationAction::Reset,
            trigger,
            at: Timestamp::now().to_string(),
            used_before_mb: mib(used_before),
            used_after_mb: mib(used_after),
            ghost_before_mb: mib(ghost_before),
            ghost_after_mb: mib(ghost_after),
            cleaned_mb: 0.0,
            killed,
            spared,
            reloaded,
            duration_ms: ms(started.elapsed()),
            at_baseline: Some(at_baseline),
        }))
    }

    /// Ends zombie workers and orphans, and the fewest foreign processes (largest first) that
    /// bring the ghost under the threshold when policy allows (`foreign`). With
    /// `all_orphans`, also orphans that hold nothing on this device now.
    async fn end_strays(
        &self,
        reading: Option<&DeviceReading>,
        all_orphans: bool,
        asked: Option<bool>,
    ) -> (Vec<KilledProcess>, Vec<GhostSource>) {
        let policy = self.foreign_policy(asked);
        let mut targets: Vec<(u32, GhostSourceKind, u64)> = vec![];
        let mut spared = vec![];
        if let Some(reading) = reading {
            let now = std::time::Instant::now();
            let (own, candidates, ghost) = {
                let state = self.state.lock().unwrap();
                let mut own = vec![];
                let mut candidates = vec![];
                for p in &reading.processes {
                    match self.classify(&state, p.pid) {
                        Holder::Zombie { .. } => {
                            own.push((p.pid, GhostSourceKind::ZombieWorker, p.used_bytes))
                        }
                        Holder::Orphan { .. } => {
                            own.push((p.pid, GhostSourceKind::OrphanWorker, p.used_bytes))
                        }
                        Holder::Foreign => candidates.push(foreign::Candidate {
                            pid: p.pid,
                            bytes: p.used_bytes,
                            cmdline: process::cmdline(p.pid),
                            age: process::age(p.pid),
                            idle_for: state
                                .activity
                                .get(&p.pid)
                                .map(|a| now.saturating_duration_since(a.last_busy)),
                        }),
                        Holder::Active { .. } => {}
                    }
                }
                (own, candidates, state.ghost.bytes)
            };
            let own_bytes: u64 = own.iter().map(|t| t.2).sum();
            let (end, spare) =
                foreign::choose(&candidates, ghost.saturating_sub(own_bytes), &policy);
            targets.extend(own);
            let bytes_of = |pid: u32| reading.usage_of(pid);
            targets.extend(
                end.into_iter()
                    .map(|pid| (pid, GhostSourceKind::ForeignProcess, bytes_of(pid))),
            );
            spared.extend(spare.into_iter().map(|(pid, why)| GhostSource {
                kind: GhostSourceKind::ForeignProcess,
                mb: mib(bytes_of(pid)),
                pid: Some(pid),
                name: Some(process::name(pid)),
                reason: Some(why.describe().into()),
            }));
        }
        if all_orphans {
            for (pid, marker) in process::workers_of(&self.ctx.launch.agent_id) {
                let ours = marker.instance == self.ctx.launch.instance;
                if !ours && !targets.iter().any(|t| t.0 == pid) {
                    targets.push((pid, GhostSourceKind::OrphanWorker, 0));
                }
            }
        }
        let mut killed = vec![];
        for (pid, kind, bytes) in targets {
            // Proven again right before the signal: the pid may have been reused meanwhile.
            let owner = self.with_state(|s| self.owner(s, pid));
            // A model server's processes are named by the model they served.
            let name = match &owner {
                Owner::ThisRun { model: Some(m) } | Owner::EarlierRun { model: Some(m) } => {
                    format!("{m} ({})", process::name(pid))
                }
                _ => process::name(pid),
            };
            if !may_end(kind, &owner, policy.allowed) {
                tracing::warn!(
                    gpu = self.info.index,
                    pid,
                    name,
                    kind = kind.as_str(),
                    "not ended: the process is not attributable to this agent (no spawn record \
                     and no marker of ours in its environment under our user; a reused pid, or a \
                     host pid seen without hostPID)"
                );
                spared.push(GhostSource {
                    kind: GhostSourceKind::Unattributed,
                    mb: mib(bytes),
                    pid: Some(pid),
                    name: Some(name),
                    reason: Some("not attributable to this agent".into()),
                });
                continue;
            }
            if kill_pid(pid, KILL_WAIT).await {
                tracing::info!(
                    gpu = self.info.index,
                    pid,
                    name,
                    kind = kind.as_str(),
                    "ended"
                );
                killed.push(KilledProcess {
                    pid,
                    name,
                    kind,
                    mb: mib(bytes),
                });
            } else {
                tracing::warn!(
                    gpu = self.info.index,
                    pid,
                    name,
                    "could not end the process"
                );
            }
        }
        let gone: Vec<u32> = killed.iter().map(|k| k.pid).collect();
        self.with_state(|s| s.zombies.retain(|(pid, _)| !gone.contains(pid)));
        (killed, spared)
    }

    /// The foreign-process rules for one free or reset: the request may narrow the agent's
    /// policy, never widen it.
    fn foreign_policy(&self, asked: Option<bool>) -> foreign::ForeignPolicy {
        let config = &self.ctx.config;
        foreign::ForeignPolicy {
            allowed: foreign_allowed(config.policy.kill_foreign, asked),
            threshold_bytes: config.policy.threshold_bytes,
            persist: config.policy.persist,
            matching: config.foreign_matching.clone(),
        }
    }

    /// Waits (up to the verify timeout) until the memory the killed processes held is gone
    /// from the readings: a process's device memory is freed as it exits, a moment after the
    /// signal.
    async fn wait_for_release_of(&self, before: &DeviceReading, killed: &[KilledProcess]) {
        let held: u64 = killed.iter().map(|k| before.usage_of(k.pid)).sum();
        if held == 0 {
            return;
        }
        let level = before.used_bytes.saturating_sub(held) + self.ctx.config.release_tolerance;
        let (_, released) = self.wait_for_level(level, |_| 0).await;
        if !released {
            tracing::warn!(
                gpu = self.info.index,
                "memory of ended processes did not come back in time"
            );
        }
    }

    /// Reads the device and computes its ghost now: (used, ghost) bytes.
    pub(crate) async fn measure_ghost(&self) -> (u64, u64) {
        match self.observe().await {
            Some(snapshot) => (snapshot.reading.used_bytes, snapshot.ghost.bytes),
            None => self.with_state(|s| {
                (
                    s.reading.as_ref().map_or(0, |r| r.used_bytes),
                    s.ghost.bytes,
                )
            }),
        }
    }

    fn finish(&self, report: RemediationReport) -> RemediationReport {
        tracing::info!(
            gpu = self.info.index,
            action = ?report.action,
            trigger = ?report.trigger,
            ghost_before_mb = report.ghost_before_mb,
            ghost_after_mb = report.ghost_after_mb,
            killed = report.killed.len(),
            "remediated"
        );
        self.ctx
            .metrics
            .remediated(self.info.index, report.action, report.trigger);
        self.with_state(|s| s.tracker.push_remediation(report.clone()));
        self.save_state();
        report
    }
}

/// Whether foreign processes may be ended: the agent's policy is the ceiling, and a request
/// (the operator sends its GpuModel's `killForeignProcesses`) may only narrow it.
fn foreign_allowed(policy: bool, asked: Option<bool>) -> bool {
    policy && asked.unwrap_or(true)
}

/// Whether the agent may end `pid`, classified as `kind`: its own workers (zombies, orphans)
/// only while it can prove they are its own (a spawn record, or its marker under its user), so
/// a pid reused by another process, or a host pid that means another process in this pid
/// namespace, is never killed; a foreign process only when the rules chose it.
fn may_end(kind: GhostSourceKind, owner: &Owner, kill_foreign: bool) -> bool {
    match kind {
        GhostSourceKind::ZombieWorker | GhostSourceKind::OrphanWorker => {
            !matches!(owner, Owner::NotOurs)
        }
        GhostSourceKind::ForeignProcess => kill_foreign && matches!(owner, Owner::NotOurs),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_narrows_the_foreign_policy_and_never_widens_it() {
        assert!(foreign_allowed(true, None));
        assert!(foreign_allowed(true, Some(true)));
        assert!(!foreign_allowed(true, Some(false)));
        assert!(!foreign_allowed(false, None));
        assert!(!foreign_allowed(false, Some(true)));
    }

    #[test]
    fn only_attributable_processes_are_ended() {
        use GhostSourceKind::*;
        let this_run = Owner::ThisRun { model: None };
        let earlier = Owner::EarlierRun {
            model: Some("tiny-a".into()),
        };
        for kind in [ZombieWorker, OrphanWorker] {
            assert!(may_end(kind, &this_run, false));
            assert!(may_end(kind, &earlier, false));
            assert!(
                !may_end(kind, &Owner::NotOurs, true),
                "a reused pid, another agent's or another user's process"
            );
        }
        assert!(
            !may_end(ForeignProcess, &Owner::NotOurs, false),
            "policy forbids"
        );
        assert!(
            may_end(ForeignProcess, &Owner::NotOurs, true),
            "policy allows"
        );
        assert!(
            !may_end(ForeignProcess, &this_run, true),
            "ours is never foreign"
        );
        for kind in [AllocatorCache, WorkerGrowth, Unattributed] {
            assert!(!may_end(kind, &this_run, true));
        }
    }
}
