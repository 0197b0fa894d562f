//! What the agent reports, in the shape of the GpuModel status; and the remediation history
//! the zombie ladder counts.
//!
//! The executor reads the agent's `GET /v1/status` on every reconcile and plans on that live
//! view, not on the agent's last status write (which may be seconds old): the planner must not
//! load on a stale "memory came back".

use std::collections::BTreeMap;

use jiff::Timestamp;
use vramkeeper_crds::{
    GpuModelStatus, RemediationStatus,
    api::{DeviceStatus, RemediationTrigger},
    observed::merge_remediations,
};

use crate::planner::{Remediation, parse_time};

/// The status the agent would report for `device` at `now`, with the operator's own fields
/// (`phase`, `observedGeneration`, `conditions`, and its memory: `ladder`, `unknownModel`,
/// `switchSummary`, `conflictWith`) taken from `stored`.
pub fn status_from_agent(
    device: &DeviceStatus,
    stored: Option<&GpuModelStatus>,
    now: Timestamp,
) -> GpuModelStatus {
    let stored = stored.cloned().unwrap_or_default();
    GpuModelStatus {
        observed_generation: stored.observed_generation,
        phase: stored.phase,
        conditions: stored.conditions,
        ladder: stored.ladder,
        unknown_model: stored.unknown_model,
        switch_summary: stored.switch_summary,
        conflict_with: stored.conflict_with,
        remediations: merge_remediations(
            stored.remediations,
            device.zombie.last_remediation.as_ref(),
        ),
        reported_at: Some(now.to_string()),
        ..GpuModelStatus::observed(device)
    }
}

/// One remediation as the planner counts it, when its time parses.
pub fn remediation(r: &RemediationStatus) -> Option<Remediation> {
    Some(Remediation {
        kind: r.action,
        at: parse_time(&r.at)?,
        by_operator: r.trigger == RemediationTrigger::Operator,
    })
}

/// The history the ladder counts: what the agent recorded, what the operator's own
/// `status.ladder` remembers (durable across restarts of either side), plus what this operator
/// did itself (its journal covers the gap until the status write), without duplicates.
pub fn history(status: &GpuModelStatus, journal: &[Remediation]) -> Vec<Remediation> {
    let mut seen = BTreeMap::new();
    let remembered = status
        .ladder
        .as_ref()
        .map(crate::planner::ladder::remembered)
        .unwrap_or_default();
    for r in status
        .remediations
        .iter()
        .filter_map(remediation)
        .chain(remembered)
        .chain(journal.iter().cloned())
    {
        seen.entry((r.at, r.kind)).or_insert(r);
    }
    seen.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::RemedyKind;
    use vramkeeper_crds::{
        GhostSourceKind, ModelState, SwitchTrigger,
        api::{
            DeviceMemoryReport, GhostReport, GhostSource, ModelRecord, RemediationAction,
            RemediationReport, RemediationTrigger, SwitchRecord, ZombieStatus,
        },
    };

    fn device() -> DeviceStatus {
        DeviceStatus {
            gpu: 0,
            name: "cpu".into(),
            backend: "flex".into(),
            memory: DeviceMemoryReport {
                total_mb: 16000.4,
                used_mb: 2100.6,
                free_mb: 13899.8,
                reserved_mb: 0.0,
                baseline_mb: 100.0,
            },
            ghost: GhostReport {
                total_mb: 1999.5,
                sources: vec![GhostSource {
                    kind: GhostSourceKind::WorkerGrowth,
                    mb: 1999.5,
                    pid: Some(42),
                    name: Some("tiny-a".into()),
                    reason: None,
                }],
            },
            zombie: ZombieStatus {
                flagged: true,
                over_threshold_since: Some("2026-01-01T00:00:00Z".into()),
                threshold_mb: 1536.0,
                persist_seconds: 30,
                auto_free: false,
                next_auto_free_at: None,
                last_remediation: Some(RemediationReport {
                    action: RemediationAction::Free,
                    trigger: RemediationTrigger::Operator,
                    at: "2026-01-01T00:01:00Z".into(),
                    used_before_mb: 2100.0,
                    used_after_mb: 2100.0,
                    ghost_before_mb: 2000.0,
                    ghost_after_mb: 1999.5,
                    cleaned_mb: 0.0,
                    killed: vec![],
                    spared: vec![],
                    reloaded: None,
                    duration_ms: 3.0,
                    at_baseline: None,
                }),
            },
            active_model: Some("tiny-a".into()),
            busy: false,
            busy_with: None,
            queued: vec![],
            models: vec![ModelRecord {
                footprint: None,
                name: "tiny-a".into(),
                kind: "synthetic".into(),
                state: ModelState::Loaded,
                vram_mb: Some(8.2),
                ram_mb: Some(9.0),
                expected_mb: Some(8.0),
                load_ms: Some(120.4),
                loads: 1,
                crashes: 0,
                hung: false,
                last_loaded: Some("2026-01-01T00:00:00Z".into()),
                last_unloaded: None,
                last_trigger: Some(SwitchTrigger::Spec),
                pid: Some(42),
                requests: 0,
                last_used: None,
            }],
            last_switch: Some(SwitchRecord {
                footprint: None,
                at: "2026-01-01T00:00:00Z".into(),
                from: None,
                to: Some("tiny-a".into()),
                trigger: SwitchTrigger::Spec,
                unload_ms: 0.0,
                load_ms: 120.4,
                vram_mb: Some(8.2),
                ram_mb: Some(9.0),
                release_verified: None,
                error: None,
            }),
            implicit_switches: 0,
            probe_error: None,
        }
    }

    #[test]
    fn agent_status_maps_onto_the_gpumodel_status() {
        let now: Timestamp = "2026-01-01T00:02:00Z".parse().unwrap();
        let s = status_from_agent(&device(), None, now);
        assert_eq!(s.active_model.as_deref(), Some("tiny-a"));
        let d = s.device.as_ref().unwrap();
        assert_eq!((d.used_mib, d.ghost_mib, d.baseline_mib), (2101, 2000, 100));
        assert_eq!(s.models[0].vram_mib, Some(8));
        assert_eq!(s.ghost_sources[0].pid, Some(42));
        assert_eq!(s.zombie_since.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(s.last_switch.as_ref().unwrap().load_ms, 120);
        assert_eq!(s.remediations.len(), 1);
        assert_eq!(s.reported_at.as_deref(), Some("2026-01-01T00:02:00Z"));
        // The remediation the agent reports once is counted once.
        let h = history(
            &s,
            &[Remediation {
                kind: RemedyKind::Free,
                at: "2026-01-01T00:01:00Z".parse().unwrap(),
                by_operator: true,
            }],
        );
        assert_eq!(h.len(), 1);
        assert!(h[0].by_operator);
    }
}
