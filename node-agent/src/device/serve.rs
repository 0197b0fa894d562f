//! Serving requests on the active model, switching to the named model first when it is not
//! active (an implicit switch, trigger `auto`).

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::{
    OwnedRwLockReadGuard, mpsc,
    oneshot::{self, error::TryRecvError},
};
use vramkeeper_crds::{SwitchTrigger, api::SwitchResponse};

use super::{Active, Device, DeviceError, Result};
use crate::{
    models::generate::{Finish, Outcome, Prompt, Sampling},
    worker::{
        client::WorkerError,
        protocol::{Request, Response},
    },
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
        self.may_serve(model)?;
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
        self.may_serve(model)?;
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

    /// Generates a completion with `model`, switching to it first if needed, as
    /// [`Device::serve`] does. The events come in order: [`GenEvent::Started`], pieces, then
    /// [`GenEvent::Done`] (or [`GenEvent::Failed`] at any point). Dropping the
    /// [`Generation`] stops the worker at its next token; a switch that waits past the drain
    /// timeout does too.
    pub(crate) fn generate(
        self: &Arc<Self>,
        model: &str,
        prompt: Prompt,
        sampling: Sampling,
    ) -> Result<Generation> {
        self.may_serve(model)?;
        let (client, left) = oneshot::channel::<()>();
        let (tx, events) = mpsc::unbounded_channel();
        let device = self.clone();
        let model = model.to_string();
        tokio::spawn(async move {
            let failed = tx.clone();
            if let Err(e) = device
                .generate_held(&model, prompt, sampling, left, tx)
                .await
            {
                let _ = failed.send(GenEvent::Failed(e));
            }
        });
        Ok(Generation {
            events,
            _client: client,
        })
    }

    async fn generate_held(
        self: &Arc<Self>,
        model: &str,
        prompt: Prompt,
        sampling: Sampling,
        left: oneshot::Receiver<()>,
        tx: mpsc::UnboundedSender<GenEvent>,
    ) -> Result<()> {
        let held = self.hold(model, left).await?;
        let active = held.active().clone();
        let _ = tx.send(GenEvent::Started {
            switched: held.switched.clone().map(Box::new),
        });
        let drain = active.drain.subscribe();
        let mut piece = |text: String| tx.send(GenEvent::Piece(text)).is_ok() && !*drain.borrow();
        let result = active
            .worker
            .generate(
                Request::Generate { prompt, sampling },
                self.ctx.config.infer_timeout,
                &mut piece,
            )
            .await;
        match self.answered(&active, model, result)? {
            Response::Generated(outcome) => {
                if outcome.finish == Finish::Cancelled {
                    tracing::info!(
                        gpu = self.info.index,
                        model,
                        tokens = outcome.completion_tokens,
                        "a generation stopped early: its client left, or its model is being unloaded"
                    );
                }
                let _ = tx.send(GenEvent::Done(outcome));
                Ok(())
            }
            other => Err(DeviceError::worker(
                model,
                WorkerError::Failed {
                    message: format!("unexpected answer to a generation: {other:?}"),
                    fatal: false,
                },
            )),
        }
    }

    /// Refuses at once a model not in the catalog, or one that would need a switch the
    /// device's GpuModel does not want (checked again in the device's turn, before switching).
    fn may_serve(&self, model: &str) -> Result<()> {
        self.spec(model)?;
        if self.active_model().as_deref() != Some(model) {
            self.may_auto_switch(model)?;
        }
        Ok(())
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
                return Ok(Held::new(slot, switched));
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
                return Ok(Held::new(slot, switched));
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
        self.answered(active, model, result)
    }

    /// Records an exchange with the model's worker and turns its failure into the device's:
    /// a worker that timed out, broke the protocol or failed fatally is unusable and marked
    /// hung (the next request replaces it; an exit is the watcher's).
    fn answered(
        &self,
        active: &Arc<Active>,
        model: &str,
        result: std::result::Result<Response, WorkerError>,
    ) -> Result<Response> {
        self.served(active, model, result.is_ok());
        result.map_err(|e| {
            if matches!(
                e,
                WorkerError::Timeout { .. }
                    | WorkerError::Protocol { .. }
                    | WorkerError::Failed { fatal: true, .. }
            ) {
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

/// What a generation tells its client.
#[derive(Debug)]
pub(crate) enum GenEvent {
    /// The model serves it (after the switch made for it, if any).
    Started {
        /// The switch made for the request, if any (boxed: it is large, pieces are many).
        switched: Option<Box<SwitchResponse>>,
    },
    /// A piece of text.
    Piece(String),
    /// It ended.
    Done(Outcome),
    /// It failed (before or after it started).
    Failed(DeviceError),
}

/// A generation in flight: its events, and its client's presence (dropping it stops it).
pub(crate) struct Generation {
    /// The events, in order.
    pub events: mpsc::UnboundedReceiver<GenEvent>,
    _client: oneshot::Sender<()>,
}

/// The slot, read-held, with a model serving in it.
pub(crate) struct Held {
    slot: OwnedRwLockReadGuard<Option<Arc<Active>>>,
    _in_flight: Option<InFlight>,
    /// The switch made for the request, if any.
    pub switched: Option<SwitchResponse>,
}

impl Held {
    /// Holds the slot, counted as a request in flight on its worker until dropped.
    fn new(
        slot: OwnedRwLockReadGuard<Option<Arc<Active>>>,
        switched: Option<SwitchResponse>,
    ) -> Self {
        let in_flight = slot.as_ref().map(|a| {
            a.in_flight.fetch_add(1, Ordering::Relaxed);
            InFlight(a.clone())
        });
        Self {
            slot,
            switched,
            _in_flight: in_flight,
        }
    }

    /// The worker serving.
    pub(crate) fn active(&self) -> &Arc<Active> {
        self.slot.as_ref().expect("held only while a model serves")
    }
}

/// A request in flight on a worker, counted while it lives.
struct InFlight(Arc<Active>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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
