//! Leader election through a `coordination.k8s.io/v1` Lease, so that two replicas never act at
//! once. Only the holder runs the controller; a holder that cannot renew within the lease
//! duration stops acting (the process exits and is restarted to campaign again).
//!
//! Expiry is judged as client-go judges it, by the local clock: a lease whose record has not
//! changed for its duration since this replica first saw it is free. Clocks of different
//! replicas never need to agree.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How the lease is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews (well under `duration`).
    pub renew_every: Duration,
}

/// Campaigns for and holds one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The resourceVersion last seen and when it was first seen.
    observed: Mutex<Option<(String, Instant)>>,
}

impl LeaderElector {
    /// An elector for `settings`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: Mutex::new(None),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt: true when this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let name = &self.settings.name;
        let Some(mut lease) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.settings.identity.as_str());
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let unchanged_for = {
            let mut observed = self.observed.lock().unwrap();
            match observed.as_ref() {
                Some((v, at)) if *v == version => at.elapsed(),
                _ => {
                    *observed = Some((version, Instant::now()));
                    Duration::ZERO
                }
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map_or(self.settings.duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        let free = holder.is_none() || unchanged_for >= duration;
        if !mine && !free {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(l) => {
                if let Some(v) = l.metadata.resource_version {
                    *self.observed.lock().unwrap() = Some((v, Instant::now()));
                }
                if !mine {
                    tracing::info!(identity = %self.settings.identity, previous = ?holder, "acquired the leader lease");
                }
                Ok(true)
            }
            // Someone else wrote it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Campaigns until this replica is leader (true) or `stop` fires (false).
    pub async fn acquire(&self, stop: &CancellationToken) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(self.settings.renew_every) => {}
            }
        }
    }

    /// Renews while leader. Returns `Err` when the lease was lost (another holder, or no
    /// successful renewal within the lease duration), `Ok` when `stop` fired.
    pub async fn hold(&self, stop: &CancellationToken) -> Result<()> {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.settings.renew_every) => {}
            }
            // Bounded: the client retries 5xx answers with a backoff of its own, and a renewal
            // that is still waiting when the lease runs out must not keep this replica acting.
            match tokio::time::timeout(self.settings.renew_every, self.try_acquire_or_renew()).await
            {
                Ok(Ok(true)) => last_renewal = Instant::now(),
                Ok(Ok(false)) => {
                    return Err(Error::Leader("another replica holds the lease".into()));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                Err(_) => tracing::warn!("the leader lease renewal got no answer in time"),
            }
            // Stop acting before another replica may take over.
            if last_renewal.elapsed() + self.settings.renew_every >= self.settings.duration {
                return Err(Error::Leader(
                    "the lease could not be renewed in time".into(),
                ));
            }
        }
    }

    /// Gives the lease up (at shutdown), so that another replica takes over at once.
    pub async fn release(&self) {
        let name = &self.settings.name;
        let Ok(Some(mut lease)) = self.api.get_opt(name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(identity = %self.settings.identity, "released the leader lease")
            }
            Err(e) => tracing::warn!(error = %e, "cannot release the leader lease"),
        }
    }
}
