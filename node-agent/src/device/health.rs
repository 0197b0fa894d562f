//! Watching workers: the agent is every worker's parent, so it learns of an exit the moment it
//! happens; a worker that stops answering a poll is marked hung. Either way the model stops
//! counting as served, and the next request for it loads it again. Nothing here holds a lock
//! while it waits on a worker.

use std::sync::{Arc, atomic::Ordering};

use jiff::Timestamp;
use vramkeeper_crds::{SwitchTrigger, api::SwitchRecord};

use super::{Active, Device};
use crate::worker::client::{WorkerError, WorkerHandle};

impl Device {
    /// Watches a freshly started worker until it exits: then its spawn record goes, and an
    /// exit nobody asked for is recorded as a crash.
    pub(crate) fn watch_worker(self: &Arc<Self>, worker: &WorkerHandle, model: &str) {
        let device = Arc::downgrade(self);
        let mut exit = worker.exit_watch();
        let pid = worker.pid();
        let model = model.to_string();
        tokio::spawn(async move {
            let status = match exit.wait_for(Option::is_some).await {
                Ok(status) => status.clone().unwrap_or_default(),
                Err(_) => return,
            };
            if let Some(device) = device.upgrade() {
                device.with_state(|s| s.tracker.reaped(pid));
                device.worker_exited(pid, &model, &status).await;
            }
        });
    }

    /// A worker exited. Unless the agent was ending it, its model is unloaded with the crash
    /// recorded (record, switch history, metric; the GpuModel status follows the records).
    async fn worker_exited(self: &Arc<Self>, pid: u32, model: &str, status: &str) {
        let now = Timestamp::now();
        let crashed = self.with_state(|s| {
            let current = s.active.as_ref().is_some_and(|a| a.pid() == pid);
            if !current || s.releasing_pid == Some(pid) {
                return false;
            }
            s.active = None;
            s.tracker.crashed(model, now);
            s.tracker.push_switch(SwitchRecord {
                at: now.to_string(),
                from: Some(model.to_string()),
                to: None,
                trigger: SwitchTrigger::Crash,
                unload_ms: 0.0,
                load_ms: 0.0,
                vram_mb: None,
                ram_mb: None,
                // The driver frees a dead process's memory as it is reaped.
                release_verified: None,
                error: Some(format!("worker (pid {pid}) exited on its own: {status}")),
                footprint: None,
            });
            true
        });
        if !crashed {
            self.save_state();
            return;
        }
        tracing::warn!(
            gpu = self.info.index,
            model,
            pid,
            status,
            "a worker exited on its own: its model is unloaded"
        );
        self.ctx
            .metrics
            .worker_failed(self.info.index, model, "crashed");
        self.changed();
        // Drop the dead worker from the slot once in-flight requests (which fail at once on
        // its closed socket) are done; the next request for the model loads it again.
        {
            let mut slot = self.slot.write().await;
            if slot.as_ref().is_some_and(|a| a.worker.pid() == pid) {
                slot.take();
            }
        }
        self.observe().await;
        self.save_state();
        self.changed();
    }

    /// Marks a worker that stopped answering: it stays until the next request replaces it (a
    /// worker that answers again later is not trusted: its connection is closed).
    pub(crate) fn mark_hung(&self, active: &Active, why: &WorkerError) {
        if active.hung.swap(true, Ordering::Relaxed) {
            return;
        }
        let pid = active.worker.pid();
        tracing::warn!(gpu = self.info.index, model = %active.spec.name, pid, error = %why, "worker marked hung: the next request replaces it");
        self.ctx
            .metrics
            .worker_failed(self.info.index, &active.spec.name, "hung");
        self.changed();
    }

    /// Polls the active worker's allocator figures on a task of its own (one poll at a time),
    /// so a stopped worker delays neither the sampling tick nor anything that waits on the
    /// slot. A poll unanswered within the hang timeout marks the worker hung.
    pub(crate) fn poll_worker(self: &Arc<Self>) {
        let Some(active) = self.current().filter(|a| a.healthy()) else {
            return;
        };
        if self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        let device = self.clone();
        tokio::spawn(async move {
            let timeout = device.ctx.config.hang_timeout;
            match active.worker.try_memory(timeout).await {
                // Serving a request: its own deadline covers it.
                None => {}
                Some(Ok(memory)) => active.remember(&memory),
                // An exit is the exit watcher's to record.
                Some(Err(WorkerError::Died { .. })) => {}
                Some(Err(e)) => device.mark_hung(&active, &e),
            }
            device.polling.store(false, Ordering::Release);
        });
    }
}
