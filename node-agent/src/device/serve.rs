//! Serving requests on the active model, switching to the named model first when it is not
//! active (an implicit switch, trigger `auto`).

use std::sync::Arc;

use tokio::sync::{
    OwnedRwLockReadGuard,
    oneshot::{self, error::TryRecvError},
};
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
        self.detached(move |device| async move {
            let held = device.hold(&model, left).await?;
            let response = device.call(held.active(), &model, request).await?;
            Ok((response, held.switched))
        })
        .await
    }

    /// Holds the server of `model` for one request passed through to it, switching to the
    /// model first if needed, as [`Device::serve`] does. The model stays loaded while the
    /// [`Lease`] lives: a switch waits for it, up to the drain timeout.
    pub(crate) async fn lease(self: &Arc<Self>, model: &str) -> Result<Lease> {
        self.spec(model)?;
        if self.active_model().as_deref() != Some(model) {
            self.may_auto_switch(model)?;
        }
        let name = model.to_string();
        let (_client, left) = oneshot::channel::<()>();
        let held = self
            .detached(move |device| async move { device.hold(&name, left).await })
            .await?;
        let Some(port) = held.active().port else {
            return Err(DeviceError::Internal(format!(
                "{model} is loaded without a server port"
            )));
        };
        Ok(Lease { held, port })
    }

    /// Records a request answered by (or failed on) the model's server.
    pub(crate) fn served(&self, active: &Active, model: &str, ok: bool) {
        self.touch(active);
        self.ctx.metrics.request(self.info.index, model, ok);
    }

    /// The slot, read-held, with `model` serving in it: switched to first when it is not.
    async fn hold(
        self: &Arc<Self>,
        model: &str,
        mut client: oneshot::Receiver<()>,
    ) -> Result<Held> {
        let mut switched = None;
        for _ in 0..ATTEMPTS {
            let slot = self.slot.clone().read_owned().await;
            if serving(&slot, model).is_some() {
                return Ok(Held { slot, switched });
            }
            drop(slot);
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
            let slot = self.slot.clone().read_owned().await;
            drop(held);
            if serving(&slot, model).is_some() {
                return Ok(Held { slot, switched });
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
        self.served(active, model, result.is_ok());
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

/// The slot, read-held, with a model serving in it.
pub(crate) struct Held {
    slot: OwnedRwLockReadGuard<Option<Arc<Active>>>,
    /// The switch made for the request, if any.
    pub switched: Option<SwitchResponse>,
}

impl Held {
    /// The worker serving.
    pub(crate) fn active(&self) -> &Arc<Active> {
        self.slot.as_ref().expect("held only while a model serves")
    }
}

/// A request's hold on a model server: the model stays loaded while it lives.
pub(crate) struct Lease {
    held: Held,
    /// The server's port on 127.0.0.1.
    pub port: u16,
}

impl Lease {
    /// The worker serving.
    pub(crate) fn active(&self) -> &Arc<Active> {
        self.held.active()
    }

    /// The switch made for the request, if any.
    pub(crate) fn switched(&self) -> Option<&SwitchResponse> {
        self.held.switched.as_ref()
    }
}

/// The slot's worker when it serves `model` and can answer.
fn serving<'a>(slot: &'a Option<Arc<Active>>, model: &str) -> Option<&'a Arc<Active>> {
    slot.as_ref()
        .filter(|a| a.spec.name == model && a.healthy())
}
