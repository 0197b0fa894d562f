//! The CPU device: its "device memory" is the resident memory of this agent's worker processes
//! (every run of the agent, so orphans count), read from /proc.

use super::process;
use super::{BackendKind, DeviceInfo, DeviceProbe, DeviceReading, ProbeError, ProcessUsage};
use procfs::Current;

/// Measures the CPU device of one agent.
pub struct ProcfsProbe {
    info: DeviceInfo,
    agent_id: String,
}

impl ProcfsProbe {
    /// The CPU device of the agent `agent_id`.
    pub fn new(agent_id: &str) -> Self {
        Self {
            info: DeviceInfo {
                index: 0,
                name: "cpu".into(),
                backend: BackendKind::Flex,
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
        let processes: Vec<ProcessUsage> = process::workers_of(&self.agent_id)
            .into_iter()
            .filter_map(|(pid, _)| {
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
