//! What a device reports: status, model records, history.

use std::sync::atomic::Ordering;

use vramkeeper_crds::{
    ModelState,
    api::{
        DeviceMemoryReport, DeviceStatus, GhostReport, GhostSource, HistoryResponse, MemorySample,
        ModelRecord, ZombieStatus,
    },
};

use super::Device;
use crate::units::mib;

impl Device {
    /// The device's whole state.
    pub(crate) fn status(&self) -> DeviceStatus {
        let policy = &self.ctx.config.policy;
        let busy_with = self.busy_with();
        let s = self.state.lock().unwrap();
        // The reading and the ghost below were stored together (`observe`).
        let reading = s.reading.clone().unwrap_or_default();
        DeviceStatus {
            gpu: self.info.index,
            name: self.info.name.clone(),
            backend: self.info.backend.as_str().to_string(),
            memory: DeviceMemoryReport {
                total_mb: mib(reading.total_bytes),
                used_mb: mib(reading.used_bytes),
                free_mb: mib(reading.free_bytes),
                reserved_mb: mib(reading.reserved_bytes),
                baseline_mb: mib(s.baseline),
            },
            ghost: GhostReport {
                total_mb: mib(s.ghost.bytes),
                sources: s
                    .ghost
                    .sources
                    .iter()
                    .map(|g| GhostSource {
                        kind: g.kind,
                        mb: mib(g.bytes),
                        pid: g.pid,
                        name: g.name.clone(),
                        reason: None,
                    })
                    .collect(),
            },
            zombie: ZombieStatus {
                flagged: s.zombie.flagged(),
                over_threshold_since: s.zombie.over_since().map(|t| t.to_string()),
                threshold_mb: mib(policy.threshold_bytes),
                persist_seconds: policy.persist.as_secs(),
                auto_free: policy.auto_free,
                next_auto_free_at: s.zombie.next_auto_free_at(policy).map(|t| t.to_string()),
                last_remediation: s.tracker.remediations.back().cloned(),
            },
            active_model: s.active.as_ref().map(|a| a.model().to_string()),
            busy: busy_with.is_some(),
            busy_with,
            queued: self.queued(),
            models: self.records_locked(&s),
            last_switch: s.tracker.switches.back().cloned(),
            implicit_switches: s.tracker.implicit_switches,
            probe_error: s.probe_error.clone(),
        }
    }

    fn records_locked(&self, s: &super::DeviceState) -> Vec<ModelRecord> {
        self.ctx
            .catalog
            .models()
            .iter()
            .map(|spec| {
                let r = s
                    .tracker
                    .models
                    .get(&spec.name)
                    .cloned()
                    .unwrap_or_default();
                let active = s.active.as_ref().filter(|a| a.model() == spec.name);
                let state = r.state(active.is_some());
                ModelRecord {
                    name: spec.name.clone(),
                    kind: spec.kind.name().to_string(),
                    state,
                    vram_mb: r.vram_bytes.map(mib),
                    ram_mb: r.ram_bytes.map(mib),
                    expected_mb: r.expected_bytes.map(mib),
                    load_ms: r.load_ms,
                    loads: r.loads,
                    crashes: r.crashes,
                    hung: active.is_some_and(|a| a.hung.load(Ordering::Relaxed)),
                    last_loaded: r.last_loaded.map(|t| t.to_string()),
                    last_unloaded: r.last_unloaded.map(|t| t.to_string()),
                    last_trigger: r.last_trigger,
                    pid: active.map(|a| a.pid()),
                    requests: active.map_or(0, |a| a.requests.load(Ordering::Relaxed)),
                    last_used: active.map(|a| a.last_used_at().to_string()),
                    footprint: r.footprint.clone(),
                }
            })
            .collect()
    }

    /// The state of one model.
    pub(crate) fn model_state(&self, model: &str) -> ModelState {
        let s = self.state.lock().unwrap();
        let loaded = s.active.as_ref().is_some_and(|a| a.model() == model);
        s.tracker
            .models
            .get(model)
            .cloned()
            .unwrap_or_default()
            .state(loaded)
    }

    /// Memory samples, switches and remediations of the last `window_s` seconds.
    pub(crate) fn history(&self, window_s: u64) -> HistoryResponse {
        let now = jiff::Timestamp::now();
        let window_ms = (window_s as i64).saturating_mul(1000);
        let from = now.as_millisecond() - window_ms;
        let in_window = |at: &str| {
            at.parse::<jiff::Timestamp>()
                .is_ok_and(|t| t.as_millisecond() >= from)
        };
        let s = self.state.lock().unwrap();
        HistoryResponse {
            gpu: self.info.index,
            samples: s
                .tracker
                .history
                .window(now.as_millisecond(), window_ms)
                .into_iter()
                .map(|x| MemorySample {
                    t_ms: x.t_ms,
                    used_mb: mib(x.used),
                    baseline_mb: mib(x.baseline),
                    ghost_mb: mib(x.ghost),
                    models: x.models.into_iter().map(|(k, v)| (k, mib(v))).collect(),
                })
                .collect(),
            switches: s
                .tracker
                .switches
                .iter()
                .filter(|r| in_window(&r.at))
                .cloned()
                .collect(),
            remediations: s
                .tracker
                .remediations
                .iter()
                .filter(|r| in_window(&r.at))
                .cloned()
                .collect(),
        }
    }
}
