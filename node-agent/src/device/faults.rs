//! Test-only fault injection (`--test-ops`), kept out of the device's own logic: a probe
//! wrapper whose readings can be made to fail, and a hook that starts the next worker with a
//! fault. The device reads its probe and asks its spawn hook; it never checks for a test.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use crate::{
    args::Fault,
    probe::{DeviceInfo, DeviceProbe, DeviceReading, ProbeError},
};

/// Asked once per worker start: extra faults the worker starts with.
pub(crate) trait SpawnHook: Send + Sync {
    /// The fault the worker about to start takes (`--fault`), if any.
    fn worker_fault(&self) -> Option<Fault>;
}

/// The switches of one device's faults.
#[derive(Default)]
pub(crate) struct FaultHooks {
    reads_fail: AtomicBool,
    next_worker: Mutex<Option<Fault>>,
}

impl FaultHooks {
    /// Makes every reading of the device fail (or work again).
    pub(crate) fn fail_reads(&self, fail: bool) {
        self.reads_fail.store(fail, Ordering::Relaxed);
    }

    /// The fault the next worker starts with (`None` clears it).
    pub(crate) fn set_next_worker_fault(&self, fault: Option<Fault>) {
        *self.next_worker.lock().unwrap() = fault;
    }

    /// `probe`, with readings that fail while [`Self::fail_reads`] says so.
    pub(crate) fn wrap(self: &Arc<Self>, probe: Arc<dyn DeviceProbe>) -> Arc<dyn DeviceProbe> {
        Arc::new(FailingProbe {
            inner: probe,
            hooks: self.clone(),
        })
    }
}

impl SpawnHook for FaultHooks {
    fn worker_fault(&self) -> Option<Fault> {
        self.next_worker.lock().unwrap().take()
    }
}

/// A probe whose readings can be made to fail.
struct FailingProbe {
    inner: Arc<dyn DeviceProbe>,
    hooks: Arc<FaultHooks>,
}

impl DeviceProbe for FailingProbe {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }

    fn read(&self) -> Result<DeviceReading, ProbeError> {
        if self.hooks.reads_fail.load(Ordering::Relaxed) {
            return Err(ProbeError("injected fault: device reads fail".into()));
        }
        self.inner.read()
    }

    fn busy_pids(&self) -> Option<std::collections::HashSet<u32>> {
        self.inner.busy_pids()
    }
}
