//! Serving requests on the active model, switching to the named model first when it is not
//! active (an implicit switch, trigger `auto`).

use std::sync::Arc;

use vramkeeper_crds::{SwitchTrigger, api::SwitchResponse};

use super::Device;
use crate::{
    error::{ApiError, Result},
    worker::{
        client::WorkerError,
        protocol::{Request, Response},
    },
};

/// Attempts at finding the model active before giving up (another request may switch away
/// between our switch and our request).
const ATTEMPTS: usize = 3;

impl Device {
    /// Sends `request` to the worker of `model`, switching to it first if needed. Returns the
    /// answer and the switch made, if any.
    pub async fn serve(
        self: &Arc<Self>,
        model: &str,
        request: Request,
    ) -> Result<(Response, Option<SwitchResponse>)> {
        self.spec(model)?;
        let mut switched = None;
        for _ in 0..ATTEMPTS {
            {
                let slot = self.slot.read().await;
                if let Some(active) = slot.as_ref().filter(|a| a.spec.name == model) {
                    let result = active
                        .worker
                        .call(request.clone(), self.ctx.config.infer_timeout)
                        .await;
                    self.touch(active);
                    self.ctx
                        .metrics
                        .request(self.info.index, model, result.is_ok());
                    return match result {
                        Ok(response) => Ok((response, switched)),
                        Err(e) => {
                            if matches!(
                                e,
                                WorkerError::Died { .. }
                                    | WorkerError::Timeout { .. }
                                    | WorkerError::Protocol { .. }
                                    | WorkerError::Failed { fatal: true, .. }
                            ) {
                                self.evict(model, active.worker.pid());
                            }
                            Err(ApiError::worker(model, e))
                        }
                    };
                }
            }
            let held = self
                .wait_op(format!("switching to {model} for a request"))
                .await?;
            if self.active_model().as_deref() != Some(model) {
                let outcome = self.switch_held(&held, model, SwitchTrigger::Auto).await?;
                switched = Some(outcome.response);
            }
        }
        Err(ApiError::Unavailable(format!(
            "{model} was switched away {ATTEMPTS} times before it could answer; the device is contended"
        )))
    }

    /// Removes a worker that died or stopped answering: ends it and verifies its memory came
    /// back, in the background. The next request for its model loads it again.
    fn evict(self: &Arc<Self>, model: &str, pid: u32) {
        let device = self.clone();
        let model = model.to_string();
        tokio::spawn(async move {
            let Ok(held) = device
                .wait_op(format!("removing the failed worker of {model}"))
                .await
            else {
                return;
            };
            let mut slot = device.slot.write().await;
            if slot.as_ref().is_some_and(|a| a.worker.pid() == pid) {
                let old = slot.take().expect("checked above");
                drop(slot);
                let release = device.release(old).await;
                tracing::warn!(
                    gpu = device.info.index,
                    model,
                    pid,
                    verified = release.verified,
                    "removed a worker that failed"
                );
                device.save_state();
            }
            drop(held);
        });
    }

    /// Test-only: makes the active worker hold `mib` more memory.
    pub async fn leak(&self, mib: u64, pooled: bool) -> Result<String> {
        let slot = self.slot.read().await;
        let active = slot
            .as_ref()
            .ok_or_else(|| ApiError::Invalid("no model is loaded: nothing to leak into".into()))?;
        let model = active.spec.name.clone();
        active
            .worker
            .call(Request::Leak { mib, pooled }, self.ctx.config.load_timeout)
            .await
            .map_err(|e| ApiError::worker(&model, e))?;
        Ok(model)
    }
}
