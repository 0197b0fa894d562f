//! The vramkeeper operator: reconciles each GpuModel (the model one GPU should serve) against
//! what the node agent on that GPU's node reports.
//!
//! ```text
//!  kube-apiserver --watch GpuModel, agent Pods--> Controller (leader only, through a Lease)
//!        ^                                             |
//!        | status (phase, conditions), Events          v
//!        +------------------------------------ reconcile: finalizer()
//!                                                      |  observe: GET /v1/status of the agent
//!                                                      |  planner (pure): next step
//!                                                      |  executor: unload | load | free | reset
//!                                                      v
//!                                        node agent Pod on spec.nodeName (bearer token)
//! ```
//!
//! - `planner`: pure and synchronous; unload before load, load only once memory is back;
//!   zombie ladder free -> reset -> Degraded. Its answer's types are in `plan`.
//! - `conditions`: the operator's status fields, derived purely from the plan and its
//!   outcome; `status` writes them.
//! - `executor`, `reconcile`, `cleanup`: the thin I/O layer around them.
//! - `ownership`: one GpuModel per (node, GPU), the oldest; the others show `Conflict`.
//! - `leader`: a Lease, so that two replicas never act at once.
//! - [`rbac::RBAC_RULES`]: the exact permissions used, for the chart.
//!
//! Public API (used by the binary and the end-to-end tests): [`run`], [`Args`], [`Running`],
//! [`Error`], [`metrics`], [`rbac`]; everything else is private to the crate.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod agent_client;
mod agents;
pub mod args;
mod cleanup;
mod conditions;
mod context;
mod controller;
pub mod error;
mod events;
mod executor;
mod leader;
pub mod metrics;
mod observe;
mod ownership;
mod plan;
mod planner;
pub mod rbac;
mod reconcile;
mod server;
mod status;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod scenarios;

use std::{net::SocketAddr, sync::Arc};

use kube::Client;
use tokio_util::sync::CancellationToken;

pub use args::Args;
pub use error::{Error, Result};
pub use reconcile::FINALIZER;
pub use status::FIELD_MANAGER;

use crate::{
    leader::{LeaderElector, LeaseSettings},
    metrics::Metrics,
};

/// A running operator's handles.
#[derive(Clone)]
pub struct Running {
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Where `/metrics` and `/healthz` answer.
    pub addr: SocketAddr,
}

/// Runs the operator until `shutdown` fires: the metrics server, leader election, and (while
/// leader) the controller. `started` receives the handles once the server listens.
///
/// Returns an error when the leader lease is lost: the caller exits, and a restart campaigns
/// again.
pub async fn run(
    args: Args,
    client: Client,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (addr, server) = server::serve(args.listen, metrics.clone(), shutdown.clone())
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", args.listen)))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    if let Some(tx) = started {
        let _ = tx.send(Running {
            metrics: metrics.clone(),
            addr,
        });
    }
    let identity = args.leader.identity();
    let elector = args.leader.leader_elect.then(|| {
        Arc::new(LeaderElector::new(
            client.clone(),
            LeaseSettings {
                namespace: args.leader.lease_namespace.clone(),
                name: args.leader.lease_name.clone(),
                identity: identity.clone(),
                duration: std::time::Duration::from_secs(args.leader.lease_duration_s.max(2)),
                renew_every: std::time::Duration::from_secs(args.leader.lease_renew_s.max(1)),
            },
        ))
    });
    let lost = CancellationToken::new();
    let mut holding = None;
    if let Some(elector) = &elector {
        tracing::info!(%identity, lease = %args.leader.lease_name, "campaigning for the leader lease");
        if !elector.acquire(&shutdown).await {
            server.await.ok();
            return Ok(());
        }
        metrics.set_leader(true);
        tracing::info!(%identity, "leading");
        let (elector, stop, lost) = (elector.clone(), shutdown.clone(), lost.clone());
        holding = Some(tokio::spawn(async move {
            let result = elector.hold(&stop).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "lost the leader lease: stopping");
                lost.cancel();
            }
            result
        }));
    } else {
        metrics.set_leader(true);
    }
    let stop = {
        let (shutdown, lost) = (shutdown.clone(), lost.clone());
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = lost.cancelled() => {}
            }
        }
    };
    // A lost lease stops the controller at once, reconciles in flight included (one may be
    // waiting in the client's own retries): another replica may be acting already.
    tokio::select! {
        _ = controller::run(client, &args, &identity, metrics.clone(), stop) => {}
        _ = lost.cancelled() => {}
    }
    metrics.set_leader(false);
    let outcome = match holding {
        Some(task) => task
            .await
            .unwrap_or_else(|e| Err(Error::Leader(format!("the lease task failed: {e}")))),
        None => Ok(()),
    };
    if let Some(elector) = &elector
        && outcome.is_ok()
    {
        elector.release().await;
    }
    shutdown.cancel();
    server.await.ok();
    outcome
}
