//! A device that a GpuModel manages: the operator keeps it on the GpuModel's desired model, so
//! an inference request naming another model must not switch it (the operator would switch it
//! back: three switches for one request). The report loop, which watches the node's
//! GpuModels, says which GpuModel owns each device; an auto-switch to a model outside the
//! owner's desired set is refused with `409 not_desired` naming the GpuModel. Switches through
//! the API (`POST /v1/models/switch`) stay possible: the operator reports them as drift.

use super::error::{DeviceError, Result};

use super::Device;

/// The GpuModel that owns a device, as the report loop last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ManagedBy {
    /// The owning GpuModel's name.
    pub gpumodel: String,
    /// Its `spec.model`: the one model the GPU should serve (none when absent).
    pub desired: Option<String>,
    /// The GpuModel is being deleted: the operator is about to unload the GPU.
    pub deleting: bool,
}

impl ManagedBy {
    /// Whether an inference request may switch the device to `model`.
    pub(crate) fn admits(&self, model: &str) -> bool {
        !self.deleting && self.desired.as_deref() == Some(model)
    }
}

impl Device {
    /// Sets (or clears) the GpuModel that owns this device.
    pub(crate) fn set_managed(&self, by: Option<ManagedBy>) {
        let mut managed = self.managed.lock().unwrap();
        if *managed != by {
            match &by {
                Some(b) => {
                    tracing::info!(gpu = self.info.index, gpumodel = %b.gpumodel, desired = ?b.desired, deleting = b.deleting, "managed by a GpuModel")
                }
                None => tracing::info!(gpu = self.info.index, "managed by no GpuModel"),
            }
            *managed = by;
        }
    }

    /// The GpuModel that owns this device, if one does.
    pub(crate) fn managed(&self) -> Option<ManagedBy> {
        self.managed.lock().unwrap().clone()
    }

    /// Refuses an auto-switch to `model` that the device's GpuModel does not want.
    pub(crate) fn may_auto_switch(&self, model: &str) -> Result<()> {
        match self.managed() {
            Some(by) if !by.admits(model) => Err(DeviceError::NotDesired {
                gpu: self.info.index,
                model: model.to_string(),
                gpumodel: by.gpumodel,
                desired: by.desired,
                deleting: by.deleting,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_desired_model_of_a_live_gpumodel_is_admitted() {
        let by = ManagedBy {
            gpumodel: "gm".into(),
            desired: Some("a".into()),
            deleting: false,
        };
        assert!(by.admits("a"));
        assert!(!by.admits("b"));
        let none = ManagedBy {
            desired: None,
            ..by.clone()
        };
        assert!(!none.admits("a"));
        let deleting = ManagedBy {
            deleting: true,
            ..by
        };
        assert!(!deleting.admits("a"));
    }
}
