//! NVIDIA GPUs through NVML: device memory and the processes holding it.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use nvml_wrapper::{Nvml, enums::device::UsedGpuMemory, error::NvmlError};

use super::{BackendKind, DeviceInfo, DeviceProbe, DeviceReading, ProbeError, ProcessUsage};

/// Measures one GPU.
pub struct NvmlProbe {
    nvml: Arc<Nvml>,
    info: DeviceInfo,
    /// NVML's timestamp of the newest utilisation sample seen (µs).
    last_sample: Mutex<Option<u64>>,
}

impl NvmlProbe {
    /// One probe per GPU NVML lists; an error when the library or the driver is missing.
    pub fn all() -> Result<Vec<NvmlProbe>, NvmlError> {
        let nvml = Arc::new(Nvml::init()?);
        let count = nvml.device_count()?;
        (0..count)
            .map(|index| {
                let name = nvml.device_by_index(index)?.name()?;
                Ok(NvmlProbe {
                    last_sample: Mutex::new(None),
                    nvml: nvml.clone(),
                    info: DeviceInfo {
                        index,
                        name,
                        backend: BackendKind::Cuda,
                    },
                })
            })
            .collect()
    }
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
