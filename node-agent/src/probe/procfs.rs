//! The CPU device: its "device memory" is the resident memory of this agent's worker processes
//! (every run of the agent, so orphans count), read from /proc; with `--kill-foreign-matching`,
//! also that of processes whose command line matches (stale servers, say), so the foreign
//! process story works without a GPU.

use super::process;
use super::{BackendKind, DeviceInfo, DeviceProbe, DeviceReading, ProbeError, ProcessUsage};
use procfs::Current;
use regex::Regex;

/// Measures the CPU device of one agent.
pub(crate) struct ProcfsProbe {
    info: DeviceInfo,
    agent_id: String,
    foreign: Option<Regex>,
}

impl ProcfsProbe {
    /// The CPU device of the agent `agent_id`; `foreign` picks other processes to list.
    pub(crate) fn new(agent_id: &str, foreign: Option<Regex>) -> Self {
        Self {
            foreign,
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
        Ok(DeviceReading {
            total_bytes: meminfo.mem_total,
            used_bytes: processes.iter().map(|p| p.used_bytes).sum(),
            free_bytes: meminfo.mem_available.unwrap_or(meminfo.mem_free),
            reserved_bytes: 0,
            processes,
        })
    }
}
