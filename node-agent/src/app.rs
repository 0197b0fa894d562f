//! The agent's shared state: its devices, catalog and access configuration, which every
//! route, the reporter and the startup code read. Built by `serve::build`.

use std::{num::NonZeroU32, path::PathBuf, sync::Arc};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use vramkeeper_crds::api::{AgentInfo, DeviceStatus, RemediationReport};

use crate::{
    access::{Access, token_source::TokenSource},
    device::{Device, ManagedBy},
    metrics::Metrics,
    models::Catalog,
    report::ReportSource,
};

/// What every route shares.
pub(crate) struct App {
    /// The devices, by index order.
    pub devices: Vec<Arc<Device>>,
    /// The catalog.
    pub catalog: Catalog,
    /// Facts about this process.
    pub agent: AgentInfo,
    /// The bearer token, when configured (a token file is followed as it changes).
    pub token: Option<TokenSource>,
    /// Whether reads need the token too.
    pub auth_reads: bool,
    /// Test-only routes.
    pub test_ops: bool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits acting requests.
    pub acting_limiter: Limiter,
    /// Inference keys, their limits, the host names answered.
    pub access: Access,
    /// The state directory (`/readyz` checks that it is writable).
    pub state_dir: PathBuf,
    /// GPUs that must be readable for `/readyz` (`--min-gpus`, at least 1 with `--device cuda`).
    pub min_gpus: u32,
}

/// A rate limit that answers how long to wait.
pub(crate) struct Limiter(DefaultDirectRateLimiter);

impl Limiter {
    /// `per_second` requests a second, in bursts of as many.
    pub(crate) fn new(per_second: u32) -> Self {
        let n = NonZeroU32::new(per_second.max(1)).expect("at least 1");
        Self(RateLimiter::direct(Quota::per_second(n)))
    }

    /// Ok, or the seconds to wait (rounded up).
    pub(crate) fn check(&self) -> std::result::Result<(), u64> {
        self.0.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs() + 1
        })
    }
}

/// The reporter reads the devices through the state.
impl ReportSource for App {
    fn devices(&self) -> Vec<DeviceStatus> {
        self.devices.iter().map(|d| d.status()).collect()
    }

    fn remediations(&self, gpu: u32) -> Vec<RemediationReport> {
        self.devices
            .iter()
            .find(|d| d.info.index == gpu)
            .map(|d| d.history(3600).remediations)
            .unwrap_or_default()
    }

    fn changes(&self) -> Vec<watch::Receiver<u64>> {
        self.devices.iter().map(|d| d.subscribe()).collect()
    }

    fn managed(&self, gpu: u32, by: Option<ManagedBy>) {
        if let Some(d) = self.devices.iter().find(|d| d.info.index == gpu) {
            d.set_managed(by);
        }
    }
}
