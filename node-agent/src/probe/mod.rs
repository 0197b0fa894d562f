//! Device memory measurement: NVML on NVIDIA machines, procfs on the CPU. Both are real
//! readings; the tracker treats them alike.

pub mod nvml;
pub mod process;
pub mod procfs;

use std::sync::Arc;

/// The backend a device's workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-cuda on an NVIDIA GPU.
    Cuda,
    /// burn-flex on the CPU (burn's own CPU backend: AVX-512 or AVX2 GEMM, chosen at run time).
    Flex,
}

impl BackendKind {
    /// The backend's name (`cuda`, `flex`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Flex => "flex",
        }
    }
}

/// What does not change while the agent runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Device index (NVML's; 0 for the CPU).
    pub index: u32,
    /// Product name, or `cpu`.
    pub name: String,
    /// Which backend its workers run.
    pub backend: BackendKind,
}

/// One process holding device memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUsage {
    /// Process id (as this agent's /proc sees it).
    pub pid: u32,
    /// Device memory it holds.
    pub used_bytes: u64,
}

/// One reading of a device's memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceReading {
    /// Total memory.
    pub total_bytes: u64,
    /// In use.
    pub used_bytes: u64,
    /// Free.
    pub free_bytes: u64,
    /// Set aside by the driver (NVML), 0 on the CPU.
    pub reserved_bytes: u64,
    /// Every process holding memory on the device.
    pub processes: Vec<ProcessUsage>,
}

impl DeviceReading {
    /// Memory the listed processes hold.
    pub fn process_bytes(&self) -> u64 {
        self.processes.iter().map(|p| p.used_bytes).sum()
    }

    /// The usage of one process, 0 when it holds nothing.
    pub fn usage_of(&self, pid: u32) -> u64 {
        self.processes
            .iter()
            .find(|p| p.pid == pid)
            .map_or(0, |p| p.used_bytes)
    }
}

/// A failed reading.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

/// Reads one device's memory.
pub trait DeviceProbe: Send + Sync {
    /// The device.
    fn info(&self) -> &DeviceInfo;
    /// Reads memory now. Cheap enough to call every few milliseconds while verifying a release.
    fn read(&self) -> Result<DeviceReading, ProbeError>;
    /// The processes that used the device since the previous call (NVML's per-process
    /// utilisation on a GPU). `None` when the device cannot tell: the agent then judges by
    /// the processes' CPU time.
    fn busy_pids(&self) -> Option<std::collections::HashSet<u32>> {
        None
    }
}

/// The devices of this machine and why they were chosen.
pub struct Detected {
    /// One probe per device.
    pub probes: Vec<Arc<dyn DeviceProbe>>,
    /// Said once at start: which device and why.
    pub reason: String,
}

/// Picks the devices: every NVML GPU when NVIDIA's driver answers, else the CPU.
/// `foreign`: on the CPU device, processes whose command line matches it are listed as holders
/// of device memory (their resident memory), like other tenants' processes on a GPU.
pub fn detect(agent_id: &str, force_cpu: bool, foreign: Option<regex::Regex>) -> Detected {
    let cpu = |reason: String| Detected {
        probes: vec![
            Arc::new(procfs::ProcfsProbe::new(agent_id, foreign.clone())) as Arc<dyn DeviceProbe>,
        ],
        reason,
    };
    if force_cpu {
        return cpu("CPU: --device cpu was given".into());
    }
    match nvml::NvmlProbe::all() {
        Ok(gpus) if !gpus.is_empty() => {
            let names: Vec<String> = gpus
                .iter()
                .map(|g| format!("{} ({})", g.info().index, g.info().name))
                .collect();
            Detected {
                reason: format!("NVML found {} GPU(s): {}", gpus.len(), names.join(", ")),
                probes: gpus
                    .into_iter()
                    .map(|g| Arc::new(g) as Arc<dyn DeviceProbe>)
                    .collect(),
            }
        }
        Ok(_) => cpu("CPU: NVML answered but lists no GPU".into()),
        Err(e) => cpu(format!("CPU: no NVIDIA driver ({e})")),
    }
}
