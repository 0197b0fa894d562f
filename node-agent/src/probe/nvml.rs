//! NVIDIA GPUs through NVML: device memory and the processes holding it.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use nvml_wrapper::{Nvml, enums::device::UsedGpuMemory, error::NvmlError};

use super::{BackendKind, DeviceInfo, DeviceProbe, DeviceReading, ProbeError, ProcessUsage};

/// NVML's `NVML_DEVICE_MIG_ENABLE` (the wrapper does not re-export it).
const MIG_ENABLED: u32 = 1;

/// Measures one GPU.
pub(crate) struct NvmlProbe {
    nvml: Arc<Nvml>,
    info: DeviceInfo,
    /// NVML's timestamp of the newest utilisation sample seen (µs).
    last_sample: Mutex<Option<u64>>,
}

/// What NVML found on this machine.
pub(crate) struct Inventory {
    /// One probe per GPU the agent can manage.
    pub gpus: Vec<NvmlProbe>,
    /// GPUs left out, each with the reason (MIG mode).
    pub refused: Vec<String>,
    /// The CUDA version the driver supports (`13000` for 13.0), or why it cannot be read
    /// (NVML asks libcuda, so this fails when the CUDA driver library is missing).
    pub cuda_driver: Result<i32, String>,
}

impl NvmlProbe {
    /// Every GPU NVML lists, GPUs in MIG mode refused; an error when the library or the driver
    /// is missing.
    pub(crate) fn inventory() -> Result<Inventory, NvmlError> {
        let nvml = Arc::new(Nvml::init()?);
        let count = nvml.device_count()?;
        let mut gpus = vec![];
        let mut refused = vec![];
        for index in 0..count {
            let device = nvml.device_by_index(index)?;
            let name = device.name()?;
            // A GPU in MIG mode runs work only inside its instances, which NVML and CUDA
            // address differently from whole GPUs: the agent does not manage them (yet).
            if let Ok(mode) = device.mig_mode()
                && mode.current == MIG_ENABLED
            {
                refused.push(MigRefused { index, name }.to_string());
                continue;
            }
            gpus.push(NvmlProbe {
                last_sample: Mutex::new(None),
                nvml: nvml.clone(),
                info: DeviceInfo {
                    index,
                    name,
                    backend: BackendKind::Cuda,
                    uuid: device.uuid().ok(),
                },
            });
        }
        let cuda_driver = nvml.sys_cuda_driver_version().map_err(|e| e.to_string());
        Ok(Inventory {
            gpus,
            refused,
            cuda_driver,
        })
    }
}

/// Why a GPU in MIG mode is not managed.
#[derive(Debug, thiserror::Error)]
#[error(
    "GPU {index} ({name}) is in MIG mode: vramkeeper manages whole GPUs only; disable MIG \
     (nvidia-smi -i {index} -mig 0) or leave this GPU to another workload"
)]
pub(crate) struct MigRefused {
    /// NVML's index.
    pub index: u32,
    /// Product name.
    pub name: String,
}

impl DeviceProbe for NvmlProbe {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read(&self) -> Result<DeviceReading, ProbeError> {
        let err = |what: &str, e: NvmlError| ProbeError(format!("NVML {what}: {e}"));
        let device = self
            .nvml
            .device_by_index(self.info.index)
            .map_err(|e| err("device", e))?;
        let memory = device.memory_info().map_err(|e| err("memory_info", e))?;
        let processes = device
            .running_compute_processes()
            .map_err(|e| err("running_compute_processes", e))?
            .into_iter()
            .map(|p| ProcessUsage {
                pid: p.pid,
                used_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                },
            })
            .collect();
        Ok(DeviceReading {
            total_bytes: memory.total,
            used_bytes: memory.used,
            free_bytes: memory.free,
            reserved_bytes: memory.reserved,
            processes,
        })
    }

    fn busy_pids(&self) -> Option<HashSet<u32>> {
        let device = self.nvml.device_by_index(self.info.index).ok()?;
        let mut last = self.last_sample.lock().unwrap();
        match device.process_utilization_stats(*last) {
            Ok(samples) => {
                if let Some(newest) = samples.iter().map(|s| s.timestamp).max() {
                    *last = Some(newest);
                }
                Some(
                    samples
                        .into_iter()
                        .filter(|s| s.sm_util > 0 || s.mem_util > 0)
                        .map(|s| s.pid)
                        .collect(),
                )
            }
            // No process used the device since `last`.
            Err(NvmlError::NotFound) => Some(HashSet::new()),
            Err(_) => None,
        }
    }
}
