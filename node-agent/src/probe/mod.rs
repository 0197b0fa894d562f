//! Device memory measurement: NVML on NVIDIA machines, procfs on the CPU. Both are real
//! readings; the tracker treats them alike.

pub(crate) mod nvml;
pub(crate) mod process;
pub(crate) mod procfs;

use std::sync::Arc;

use crate::args::DeviceChoice;

/// The backend a device's workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// burn-cuda on an NVIDIA GPU.
    Cuda,
    /// burn-flex on the CPU (burn's own CPU backend: AVX-512 or AVX2 GEMM, chosen at run time).
    Flex,
}

impl BackendKind {
    /// The backend's name (`cuda`, `flex`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Flex => "flex",
        }
    }
}

/// What does not change while the agent runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceInfo {
    /// Device index (NVML's; 0 for the CPU).
    pub index: u32,
    /// Product name, or `cpu`.
    pub name: String,
    /// Which backend its workers run.
    pub backend: BackendKind,
    /// The GPU's UUID (`GPU-...`), which names it to CUDA as to NVML; `None` on the CPU.
    pub uuid: Option<String>,
}

/// One process holding device memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessUsage {
    /// Process id (as this agent's /proc sees it).
    pub pid: u32,
    /// Device memory it holds.
    pub used_bytes: u64,
}

/// One reading of a device's memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct DeviceReading {
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
    pub(crate) fn process_bytes(&self) -> u64 {
        self.processes.iter().map(|p| p.used_bytes).sum()
    }

    /// The usage of one process, 0 when it holds nothing.
    pub(crate) fn usage_of(&self, pid: u32) -> u64 {
        self.processes
            .iter()
            .find(|p| p.pid == pid)
            .map_or(0, |p| p.used_bytes)
    }
}

/// A failed reading.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProbeError(pub String);

/// Reads one device's memory.
pub(crate) trait DeviceProbe: Send + Sync {
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
pub(crate) struct Detected {
    /// One probe per device.
    pub probes: Vec<Arc<dyn DeviceProbe>>,
    /// Said once at start: which device and why.
    pub reason: String,
    /// Whether the agent was told to manage GPUs (`--device cuda`): `/readyz` then fails
    /// while no GPU can be read.
    pub gpus_required: bool,
}

/// The oldest CUDA driver API the workers run on: cudarc binds CUDA 13.0 (driver R580+).
pub(crate) const MIN_CUDA_DRIVER: i32 = 13_000;

/// Why `--device cuda` refuses to start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DetectError {
    /// NVML cannot be loaded or initialised.
    #[error(
        "--device cuda: NVML is unusable ({0}). The NVIDIA driver's libnvidia-ml.so.1 must be \
         reachable: on Kubernetes, NVIDIA's container runtime (runtimeClassName nvidia, or the \
         toolkit as the default runtime) with NVIDIA_DRIVER_CAPABILITIES including `utility`"
    )]
    Nvml(String),
    /// NVML lists no GPU the agent can manage.
    #[error("--device cuda: NVML lists no usable GPU{0}")]
    NoGpu(String),
    /// The CUDA driver library is missing or too old.
    #[error("--device cuda: CUDA is unusable: {0}")]
    Cuda(String),
    /// `--memory-budget-mib` with GPUs: a GPU's memory is its own.
    #[error(
        "--memory-budget-mib sets the CPU device's memory, but NVML found GPU(s) to manage; \
         drop it, or pass --device cpu"
    )]
    BudgetOnGpu,
}

/// Picks the devices. `cpu`: the CPU. `auto`: every usable NVML GPU when NVIDIA's driver
/// answers, else the CPU. `cuda`: every usable NVML GPU, or an error saying why there is none
/// (NVML, the CUDA driver's version, MIG). GPUs in MIG mode are never managed.
/// `foreign`: on the CPU device, processes whose command line matches it are listed as holders
/// of device memory (their resident memory), like other tenants' processes on a GPU.
/// `budget` (bytes): the CPU device's total memory; refused when GPUs are managed.
pub(crate) fn detect(
    agent_id: &str,
    choice: DeviceChoice,
    foreign: Option<regex::Regex>,
    budget: Option<u64>,
) -> Result<Detected, DetectError> {
    let cpu = |reason: String| Detected {
        probes: vec![
            Arc::new(procfs::ProcfsProbe::new(agent_id, foreign.clone(), budget))
                as Arc<dyn DeviceProbe>,
        ],
        reason,
        gpus_required: false,
    };
    if choice == DeviceChoice::Cpu {
        return Ok(cpu("CPU: --device cpu was given".into()));
    }
    let required = choice == DeviceChoice::Cuda;
    let inventory = match nvml::NvmlProbe::inventory() {
        Ok(inventory) => inventory,
        Err(e) if required => return Err(DetectError::Nvml(e.to_string())),
        Err(e) => return Ok(cpu(format!("CPU: no NVIDIA driver ({e})"))),
    };
    let refused = if inventory.refused.is_empty() {
        String::new()
    } else {
        format!(" (refused: {})", inventory.refused.join("; "))
    };
    if inventory.gpus.is_empty() {
        return if required {
            Err(DetectError::NoGpu(refused))
        } else {
            Ok(cpu(format!(
                "CPU: NVML answered but lists no usable GPU{refused}"
            )))
        };
    }
    if required {
        check_cuda_driver(&inventory.cuda_driver).map_err(DetectError::Cuda)?;
    }
    if budget.is_some() {
        return Err(DetectError::BudgetOnGpu);
    }
    let names: Vec<String> = inventory
        .gpus
        .iter()
        .map(|g| format!("{} ({})", g.info().index, g.info().name))
        .collect();
    Ok(Detected {
        reason: format!(
            "NVML found {} GPU(s): {}{refused}",
            inventory.gpus.len(),
            names.join(", ")
        ),
        probes: inventory
            .gpus
            .into_iter()
            .map(|g| Arc::new(g) as Arc<dyn DeviceProbe>)
            .collect(),
        gpus_required: required,
    })
}

/// Whether the driver's CUDA version runs the workers' kernels.
fn check_cuda_driver(version: &Result<i32, String>) -> Result<(), String> {
    match version {
        Err(e) => Err(format!(
            "the CUDA driver library (libcuda.so.1) cannot be used: {e}; NVIDIA's runtime \
             mounts it with NVIDIA_DRIVER_CAPABILITIES including `compute`"
        )),
        Ok(v) if *v < MIN_CUDA_DRIVER => Err(format!(
            "the driver supports CUDA {}.{}, the workers need {}.{} (driver R580 or newer)",
            v / 1000,
            v % 1000 / 10,
            MIN_CUDA_DRIVER / 1000,
            MIN_CUDA_DRIVER % 1000 / 10
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_driver_must_be_13_or_newer() {
        assert!(check_cuda_driver(&Ok(13_000)).is_ok());
        assert!(check_cuda_driver(&Ok(13_010)).is_ok());
        let old = check_cuda_driver(&Ok(12_080)).unwrap_err();
        assert!(old.contains("CUDA 12.8") && old.contains("13.0"), "{old}");
        let missing = check_cuda_driver(&Err("LibraryNotFound".into())).unwrap_err();
        assert!(missing.contains("libcuda.so.1"), "{missing}");
    }

    #[test]
    fn mig_gpus_are_refused_by_name() {
        let why = nvml::MigRefused {
            index: 3,
            name: "NVIDIA A100".into(),
        }
        .to_string();
        assert!(why.contains("GPU 3 (NVIDIA A100) is in MIG mode"), "{why}");
        assert!(why.contains("-mig 0"), "{why}");
    }
}
