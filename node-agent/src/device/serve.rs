//! Serving requests on the active model, switching to the named model first when it is not
//! active (an implicit switch, trigger `auto`).

use std::sync::Arc;

use tokio::sync::oneshot::{self, error::TryRecvError};
use vramkeeper_crds::{SwitchTrigger, api::SwitchResponse};

use super::{Active, Device, DeviceError, Result};
use crate::worker::{
    client::WorkerError,
    protocol::{Request, Response},
};

/// Attempts at serving: a worker may die between its load and the request it was loaded for.
const ATTEMPTS: usize = 2;

impl Device {
    /// Sends `request` to the worker of `model`, switching to it first if needed (after the
    /// operations queued before it). Returns the answer and the switch made, if any. Runs on
    /// a task of its own: a client that leaves cuts neither the switch nor the exchange with
    /// the worker short (a half-read answer would be read by the next request).
    pub(crate) async fn serve(
        self: &Arc<Self>,
        model: &str,
        request: Request,
    ) -> Result<(Response, Option<SwitchResponse>)> {
        self.spec(model)?;
        // Refused at once when it would need a switch the device's GpuModel does not want
        // (checked again in the device's turn, before switching).
        if self.active_model().as_deref() != Some(model) {
            self.may_auto_switch(model)?;
        }
        let model = model.to_string();
        // Closed when the client goes away (its handler is dropped).
        let (_client, left) = oneshot::channel::<()>();
        self.detached(
            move |device| async move { device.serve_on_task(&model, request, left).await },
        )
        .await
    }

    async fn serve_on_task(
        self: &Arc<Self>,
        model: &str,
        request: Request,
        mut client: oneshot::Receiver<()>,
    ) -> Result<(Response, Option<SwitchResponse>)> {
        let mut switched = None;
        for _ in 0..ATTEMPTS {
            {
                let slot = self.slot.read().await;
                if let Some(active) = serving(&slot, model) {
                    let response = self.call(active, model, request.clone()).await?;
                    return Ok((response, switched));
                }
            }
            let held = self
                .enter(format!("switching to {model} for a request"))
                .await?;
            if matches!(client.try_recv(), Err(TryRecvError::Closed)) {
                // Nobody waits for this answer any more: a switch started is always finished,
                // but one not started yet is not worth making.
                tracing::info!(
                    gpu = self.info.index,
                    model,
                    "auto-switch skipped: its client left while it waited"
                );
                return Err(DeviceError::ClientLeft {
                    model: model.to_string(),
                });
            }
            if serving(&*self.slot.read().await, model).is_none() {
                self.may_auto_switch(model)?;
                switched = Some(self.switch_held(&held, model, SwitchTrigger::Auto).await?);
            }
            // Hold the model before giving up the turn: an operation queued behind this one
            // waits for this request rather than switching the model away under it.
            let slot = self.slot.read().await;
            drop(held);
            if let Some(active) = serving(&slot, model) {
                let response = self.call(active, model, request.clone()).await?;
                return Ok((response, switched));
            }
        }
        Err(DeviceError::KeepsFailing {
            model: model.to_string(),
            attempts: ATTEMPTS,
        })
    }

    async fn call(&self, active: &Arc<Active>, model: &str, request: Request) -> Result<Response> {
        let result = active
            .worker
            .call(request, self.ctx.config.infer_timeout)
            .await;
        self.touch(active);
        self.ctx
            .metrics
            .request(self.info.index, model, result.is_ok());
        result.map_err(|e| {
            if matches!(
                e,
                WorkerError::Timeout { .. }
                    | WorkerError::Protocol { .. }
                    | WorkerError::Failed { fatal: true, .. }
            ) {
                // Unusable now; the next request replaces it. (An exit is the watcher's.)
                self.mark_hung(active, &e);
            }
            DeviceError::worker(model, e)
        })
    }

    /// Test-only: makes the active worker hold `mib` more memory.
    pub(crate) async fn leak(&self, mib: u64, pooled: bool) -> Result<String> {
        let slot = self.slot.read().await;
        let active = slot
            .as_ref()
            .ok_or(DeviceError::NothingLoaded("nothing to leak into"))?;
        let model = active.spec.name.clone();
        active
            .worker
            .call(Request::Leak { mib, pooled }, self.ctx.config.load_timeout)
            .await
            .map_err(|e| DeviceError::worker(&model, e))?;
        Ok(model)
    }
}

/// The slot's worker when it serves `model` and can answer.
fn serving<'a>(slot: &'a Option<Arc<Active>>, model: &str) -> Option<&'a Arc<Active>> {
    slot.as_ref()
        .filter(|a| a.spec.name == model && a.healthy())
}
