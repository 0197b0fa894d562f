//! A load's admission on this device: the facts [`residency::decide`] needs, from a fresh
//! reading, the loaded worker and the model's records; a refusal as the API answers it.
//! Checked before anything is unloaded, so a refused load changes nothing.

use std::sync::atomic::Ordering;

use super::{
    Device, DeviceError, Result,
    residency::{self, Candidate, Decision, Mode, Resident, Room},
};
use crate::{models::ModelSpec, probe::BackendKind, units::mib};

/// Models resident on a device at once (several per device are the rest of issue 17).
const MAX_RESIDENT: usize = 1;

/// A worker's memory beside its weights, before a first load measured it: a CUDA context
/// with cubecl's kernels (584 MiB measured on an H200) and a CPU worker's own pages (13-14
/// MiB measured), each with some slack.
fn overhead(backend: BackendKind) -> u64 {
    match backend {
        BackendKind::Cuda => 640 << 20,
        BackendKind::Flex => 32 << 20,
    }
}

impl Device {
    /// The model's footprint: measured at its last load on this device, else its weights plus
    /// the backend's overhead, flagged as an estimate. A measured 0 (a device that could not
    /// attribute memory to the worker) is no measurement.
    fn footprint(&self, spec: &ModelSpec) -> Candidate {
        let measured = self.with_state(|s| {
            s.tracker
                .models
                .get(&spec.name)
                .and_then(|r| r.expected_bytes)
                .filter(|&b| b > 0)
        });
        Candidate {
            model: spec.name.clone(),
            footprint: measured.unwrap_or_else(|| {
                spec.estimated_bytes()
                    .saturating_add(overhead(self.info.backend))
            }),
            estimated: measured.is_none(),
        }
    }

    /// Whether `spec` may be loaded now, `mode` saying what becomes of the loaded model, or
    /// `InsufficientMemory` with the figures. (With one model per device the switch evicts it
    /// itself; the decision's eviction list serves several.) Decided on a fresh reading;
    /// without one (the probe failing) the load is admitted, and the release check still
    /// guards it.
    pub(crate) async fn admit(&self, spec: &ModelSpec, mode: Mode) -> Result<()> {
        let candidate = self.footprint(spec);
        let fresh = self.read().await.ok();
        let decided = self.with_state(|s| {
            let reading = fresh.as_ref()?;
            let residents: Vec<Resident> = s
                .active
                .iter()
                .map(|a| Resident {
                    model: a.model().to_string(),
                    // What its exit frees: at least its measured footprint, also where the
                    // device cannot attribute memory to its pid (NVML without host pids).
                    holds: reading.usage_of(a.pid()).max(a.expected_bytes),
                    pinned: false,
                    busy: a.in_flight.load(Ordering::Relaxed) > 0,
                    last_used: *a.last_used.lock().unwrap(),
                })
                .collect();
            let room = Room {
                free: reading.free_bytes,
                headroom: self.ctx.config.headroom,
                max_resident: MAX_RESIDENT,
            };
            Some(residency::decide(&residents, &candidate, room, mode))
        });
        match decided {
            None | Some(Decision::Admit { .. }) => Ok(()),
            Some(Decision::Refuse(s)) => Err(DeviceError::InsufficientMemory {
                model: spec.name.clone(),
                gpu: self.info.index,
                needed_mb: mib(s.needed),
                estimated: s.estimated,
                free_mb: mib(s.free),
                evictable_mb: mib(s.evictable),
                kept_mb: mib(s.kept),
            }),
        }
    }
}
