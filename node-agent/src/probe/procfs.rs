//! The CPU device: its "device memory" is the resident memory of this agent's worker processes
//! (every run of the agent, so orphans count), read from /proc; with `--kill-foreign-matching`,
//! also that of processes whose command line matches (stale servers, say), so the foreign
//! process story works without a GPU. With a budget (`--memory-budget-mib`), the budget is the
//! device's total, so admission works under it as on a GPU.

use super::process;
use super::{BackendKind, DeviceInfo, DeviceProbe, DeviceReading, ProbeError, ProcessUsage};
use procfs::Current;
use regex::Regex;

/// Measures the CPU device of one agent.
pub(crate) struct ProcfsProbe {
    info: DeviceInfo,
    agent_id: String,
    foreign: Option<Regex>,
    budget: Option<u64>,
}

impl ProcfsProbe {
    /// The CPU device of the agent `agent_id`; `foreign` picks other processes to list;
    /// `budget` (bytes) is the device's total, when given.
    pub(crate) fn new(agent_id: &str, foreign: Option<Regex>, budget: Option<u64>) -> Self {
        Self {
            foreign,
            budget,
            info: DeviceInfo {
                index: 0,
                name: "cpu".into(),
                backend: BackendKind::Flex,
                uuid: None,
            },
            agent_id: agent_id.to_string(),
        }
    }
}

impl DeviceProbe for ProcfsProbe {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read(&self) -> Result<DeviceReading, ProbeError> {
        let meminfo = procfs::Meminfo::current()
            .map_err(|e| ProbeError(format!("cannot read /proc/meminfo: {e}")))?;
        let mut pids: Vec<u32> = process::workers_of(&self.agent_id)
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        if let Some(pattern) = &self.foreign {
            let me = std::process::id();
            for pid in process::matching(pattern) {
                if pid != me && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        let processes: Vec<ProcessUsage> = pids
            .into_iter()
            .filter_map(|pid| {
                Some(ProcessUsage {
                    pid,
                    used_bytes: process::rss_bytes(pid)?,
                })
            })
            .collect();
        let host = DeviceReading {
            total_bytes: meminfo.mem_total,
            used_bytes: processes.iter().map(|p| p.used_bytes).sum(),
            free_bytes: meminfo.mem_available.unwrap_or(meminfo.mem_free),
            reserved_bytes: 0,
            processes,
        };
        Ok(budgeted(host, self.budget))
    }
}

/// A reading of the host's memory seen through `budget` (bytes): the budget is the total, free
/// is what the workers leave of it, and never more than the host has available.
fn budgeted(host: DeviceReading, budget: Option<u64>) -> DeviceReading {
    let Some(budget) = budget else {
        return host;
    };
    DeviceReading {
        total_bytes: budget,
        free_bytes: budget.saturating_sub(host.used_bytes).min(host.free_bytes),
        ..host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn host(used: u64, free: u64) -> DeviceReading {
        DeviceReading {
            total_bytes: 24_000 * MIB,
            used_bytes: used * MIB,
            free_bytes: free * MIB,
            reserved_bytes: 0,
            processes: vec![ProcessUsage {
                pid: 7,
                used_bytes: used * MIB,
            }],
        }
    }

    #[test]
    fn a_budget_is_the_total_and_free_is_what_the_workers_leave_of_it_within_the_host() {
        assert_eq!(budgeted(host(100, 9000), None), host(100, 9000));
        let r = budgeted(host(100, 9000), Some(512 * MIB));
        assert_eq!(
            (r.total_bytes, r.used_bytes, r.free_bytes),
            (512 * MIB, 100 * MIB, 412 * MIB)
        );
        assert_eq!(
            budgeted(host(100, 50), Some(512 * MIB)).free_bytes,
            50 * MIB
        );
        assert_eq!(budgeted(host(600, 9000), Some(512 * MIB)).free_bytes, 0);
    }
}
