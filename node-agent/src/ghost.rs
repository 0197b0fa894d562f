//! Ghost memory: `used - baseline - Σ expected(loaded models)`, and who holds it.
//!
//! Pure: a reading and what the agent knows about its processes in, a report out.

use vramkeeper_crds::GhostSourceKind;

use crate::probe::DeviceReading;

/// What the agent knows about a process that holds device memory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Holder {
    /// The live worker of the active model.
    Active {
        /// Its model.
        model: String,
        /// What it measured right after load and cleanup.
        expected_bytes: u64,
        /// What its allocator keeps reserved without using (last report).
        pooled_bytes: u64,
        /// Requests are in flight: what it holds beyond its footprint is their working
        /// memory, not ghost (the worker returns it once idle).
        busy: bool,
    },
    /// A worker of this run whose model should be gone.
    Zombie {
        /// The model it served.
        model: String,
    },
    /// A worker of an earlier run of this agent.
    Orphan {
        /// The model it served, when the agent recorded it.
        model: Option<String>,
    },
    /// Anything else.
    Foreign,
}

/// One holder of ghost memory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Source {
    /// Its kind.
    pub kind: GhostSourceKind,
    /// Bytes it holds beyond what is expected of it.
    pub bytes: u64,
    /// The process, if one holds it.
    pub pid: Option<u32>,
    /// The process name, or the model a worker served.
    pub name: Option<String>,
}

/// Ghost memory and its sources, largest first, the unattributed rest last.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Ghost {
    /// The ghost total.
    pub bytes: u64,
    /// Its sources.
    pub sources: Vec<Source>,
}

/// Sources smaller than this are measurement noise (page-granular RSS, allocator slack).
pub(crate) const NOISE_BYTES: u64 = 1 << 20;

/// Computes the ghost of one reading. `classify` says who a pid is and `name` names it.
pub(crate) fn compute(
    reading: &DeviceReading,
    baseline_bytes: u64,
    classify: impl Fn(u32) -> Holder,
    name: impl Fn(u32) -> String,
) -> Ghost {
    let mut expected = 0u64;
    let mut sources = vec![];
    for process in &reading.processes {
        let pid = process.pid;
        let holder = classify(pid);
        let mut push = |kind, bytes: u64, label: String| {
            if bytes >= NOISE_BYTES {
                sources.push(Source {
                    kind,
                    bytes,
                    pid: Some(pid),
                    name: Some(label),
                });
            }
        };
        match holder {
            Holder::Active {
                busy: true,
                expected_bytes,
                ..
            } => expected += process.used_bytes.max(expected_bytes),
            Holder::Active {
                model,
                expected_bytes,
                pooled_bytes,
                busy: false,
            } => {
                expected += expected_bytes;
                let excess = process.used_bytes.saturating_sub(expected_bytes);
                let cache = excess.min(pooled_bytes);
                push(GhostSourceKind::AllocatorCache, cache, model.clone());
                push(GhostSourceKind::WorkerGrowth, excess - cache, model);
            }
            Holder::Zombie { model } => {
                push(GhostSourceKind::ZombieWorker, process.used_bytes, model)
            }
            Holder::Orphan { model } => push(
                GhostSourceKind::OrphanWorker,
                process.used_bytes,
                model.unwrap_or_else(|| name(pid)),
            ),
            Holder::Foreign => push(
                GhostSourceKind::ForeignProcess,
                process.used_bytes,
                name(pid),
            ),
        }
    }
    let bytes = reading
        .used_bytes
        .saturating_sub(baseline_bytes)
        .saturating_sub(expected);
    sources.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    let attributed: u64 = sources.iter().map(|s| s.bytes).sum();
    let rest = bytes.saturating_sub(attributed);
    if rest >= NOISE_BYTES {
        sources.push(Source {
            kind: GhostSourceKind::Unattributed,
            bytes: rest,
            pid: None,
            name: None,
        });
    }
    Ghost { bytes, sources }
}

/// The baseline of a reading: memory in use that no process accounts for (the driver's own,
/// a display). Processes present at start are not baseline: they are ghost until explained.
pub(crate) fn baseline_of(reading: &DeviceReading) -> u64 {
    reading.used_bytes.saturating_sub(reading.process_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProcessUsage;

    const MIB: u64 = 1 << 20;

    fn reading(used: u64, processes: &[(u32, u64)]) -> DeviceReading {
        DeviceReading {
            total_bytes: 80_000 * MIB,
            used_bytes: used,
            free_bytes: 80_000 * MIB - used,
            reserved_bytes: 0,
            processes: processes
                .iter()
                .map(|&(pid, used_bytes)| ProcessUsage { pid, used_bytes })
                .collect(),
        }
    }

    fn classify(pid: u32) -> Holder {
        match pid {
            1 | 5 => Holder::Active {
                model: "m".into(),
                expected_bytes: 1000 * MIB,
                pooled_bytes: 300 * MIB,
                busy: pid == 5,
            },
            2 => Holder::Zombie {
                model: "old".into(),
            },
            3 => Holder::Orphan { model: None },
            _ => Holder::Foreign,
        }
    }

    #[test]
    fn a_clean_device_has_no_ghost() {
        let r = reading(500 * MIB + 1000 * MIB, &[(1, 1000 * MIB)]);
        let g = compute(&r, 500 * MIB, classify, |_| "x".into());
        assert_eq!(g, Ghost::default());
    }

    #[test]
    fn every_source_is_named_and_the_rest_is_unattributed() {
        // baseline 500, active expected 1000 but holds 1500 (300 pooled, 200 grown),
        // zombie 700, orphan 400, foreign 3000, and 100 nobody holds.
        let used = 500 + 1500 + 700 + 400 + 3000 + 100;
        let r = reading(
            used * MIB,
            &[
                (1, 1500 * MIB),
                (2, 700 * MIB),
                (3, 400 * MIB),
                (4, 3000 * MIB),
            ],
        );
        let g = compute(&r, 500 * MIB, classify, |pid| format!("p{pid}"));
        assert_eq!(g.bytes, (used - 500 - 1000) * MIB);
        let kinds: Vec<_> = g.sources.iter().map(|s| (s.kind, s.bytes / MIB)).collect();
        assert_eq!(
            kinds,
            [
                (GhostSourceKind::ForeignProcess, 3000),
                (GhostSourceKind::ZombieWorker, 700),
                (GhostSourceKind::OrphanWorker, 400),
                (GhostSourceKind::AllocatorCache, 300),
                (GhostSourceKind::WorkerGrowth, 200),
                (GhostSourceKind::Unattributed, 100),
            ]
        );
        assert_eq!(g.sources[0].name.as_deref(), Some("p4"));
        assert_eq!(g.sources[1].name.as_deref(), Some("old"));
        let sum: u64 = g.sources.iter().map(|s| s.bytes).sum();
        assert_eq!(sum, g.bytes);
    }

    #[test]
    fn baseline_excludes_processes_present_at_start() {
        let r = reading(4000 * MIB, &[(9, 3000 * MIB)]);
        assert_eq!(baseline_of(&r), 1000 * MIB);
    }

    #[test]
    fn what_a_busy_worker_holds_beyond_its_footprint_is_working_memory_not_ghost() {
        // The same worker holding 1500 over a footprint of 1000: ghost while idle, not while
        // requests are in flight; a foreign process is ghost either way.
        let idle = reading((500 + 1500 + 200) * MIB, &[(1, 1500 * MIB), (4, 200 * MIB)]);
        let busy = reading((500 + 1500 + 200) * MIB, &[(5, 1500 * MIB), (4, 200 * MIB)]);
        assert_eq!(
            compute(&idle, 500 * MIB, classify, |_| "x".into()).bytes,
            700 * MIB
        );
        let g = compute(&busy, 500 * MIB, classify, |_| "x".into());
        assert_eq!(g.bytes, 200 * MIB);
        assert_eq!(g.sources.len(), 1);
        assert_eq!(g.sources[0].kind, GhostSourceKind::ForeignProcess);
    }

    #[test]
    fn memory_below_expectations_is_no_ghost() {
        let r = reading(1200 * MIB, &[(1, 700 * MIB)]);
        let g = compute(&r, 500 * MIB, classify, |_| "x".into());
        assert_eq!(g.bytes, 0);
        assert!(g.sources.is_empty());
    }
}
