//! What a device operation can fail with. The API translates these into HTTP answers
//! (`crate::api`); nothing here knows about HTTP.

use vramkeeper_crds::api::{ErrorCode, ErrorDetail};

use crate::worker::client::WorkerError;

/// `Result` with [`DeviceError`].
pub(crate) type Result<T, E = DeviceError> = std::result::Result<T, E>;

fn ahead_text(ahead: &[String]) -> String {
    match ahead.len() {
        0 => "nothing else waits".into(),
        n => format!("{n} waiting ahead: {}", ahead.join(", ")),
    }
}

fn managed_wants(desired: &Option<String>, deleting: bool) -> String {
    match (desired, deleting) {
        (_, true) => "which is being deleted (its GPU is about to be unloaded)".into(),
        (Some(m), false) => format!("which wants {m}"),
        (None, false) => "which wants no model on it".into(),
    }
}

fn kept_text(kept_mb: f64) -> String {
    if kept_mb > 0.0 {
        format!(" ({kept_mb:.0} MiB more is held by models that stay: pinned or serving)")
    } else {
        String::new()
    }
}

/// Why a device operation did not happen, or failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The model is not in the catalog.
    #[error("unknown model {model:?}; the catalog has: {known}")]
    UnknownModel {
        /// What was asked for.
        model: String,
        /// The catalog's names, comma-separated.
        known: String,
    },
    /// A model whose estimated footprint exceeds the device's total memory: loading it could
    /// only end with the kernel or the driver killing the worker.
    #[error(
        "{model} needs an estimated {estimate_mb:.0} MiB, more than device {gpu}'s total of \
         {total_mb:.0} MiB; it is refused before loading"
    )]
    TooBigForDevice {
        /// The model.
        model: String,
        /// Its estimated footprint.
        estimate_mb: f64,
        /// The device.
        gpu: u32,
        /// The device's total memory.
        total_mb: f64,
    },
    /// A load the device has no room for: its footprint plus the headroom exceeds the memory
    /// free now plus what the models it may evict hold. Nothing was changed.
    #[error(
        "{model} needs {needed_mb:.0} MiB on device {gpu} ({}footprint plus headroom), but \
         {free_mb:.0} MiB is free and the models that may make way for it hold {evictable_mb:.0} \
         MiB{}; nothing was changed",
        if *estimated { "estimated " } else { "measured " },
        kept_text(*kept_mb)
    )]
    InsufficientMemory {
        /// The model.
        model: String,
        /// The device.
        gpu: u32,
        /// Its footprint plus the headroom.
        needed_mb: f64,
        /// Whether the footprint is an estimate (never loaded on this device).
        estimated: bool,
        /// Free now.
        free_mb: f64,
        /// What the models that may be evicted hold.
        evictable_mb: f64,
        /// What the others hold.
        kept_mb: f64,
    },
    /// The device's operation queue turned the operation away: full, or the wait passed its
    /// bound. Says what runs and what waits ahead.
    #[error(
        "device {gpu} is busy: {doing} (running for {secs:.1} s), and {why}; {}; retry when it is done",
        ahead_text(ahead)
    )]
    Busy {
        /// The device.
        gpu: u32,
        /// What it is doing.
        doing: String,
        /// For how long.
        secs: f64,
        /// What waits ahead, oldest first.
        ahead: Vec<String>,
        /// Why the request was turned away.
        why: String,
    },
    /// An inference request would switch a device away from the model its GpuModel wants
    /// (the operator would switch it back).
    #[error(
        "device {gpu} is managed by GpuModel {gpumodel}, {}; an inference request for {model} \
         would switch it away (and the operator would switch it back): name the model the GPU \
         serves, or change the GpuModel's spec.model",
        managed_wants(desired, *deleting)
    )]
    NotDesired {
        /// The device.
        gpu: u32,
        /// The model asked for.
        model: String,
        /// The owning GpuModel.
        gpumodel: String,
        /// What it wants.
        desired: Option<String>,
        /// It is being deleted.
        deleting: bool,
    },
    /// Loading a model failed; nothing of it was left behind.
    #[error("loading {model} failed: {reason}")]
    LoadFailed {
        /// The model.
        model: String,
        /// Why.
        reason: String,
    },
    /// The worker failed to answer a request.
    #[error("model {model} failed to answer: {reason}")]
    Worker {
        /// The model.
        model: String,
        /// Why.
        reason: String,
    },
    /// The model's worker refused the request as asked (too long a prompt, ...).
    #[error("{model} cannot serve this request: {reason}")]
    Rejected {
        /// The model.
        model: String,
        /// Why.
        reason: String,
    },
    /// The operation needs a loaded model and none is.
    #[error("no model is loaded: {0}")]
    NothingLoaded(&'static str),
    /// An auto-switch not begun because its client left while it waited for its turn.
    #[error("the client left before the switch to {model} began")]
    ClientLeft {
        /// The model it would have loaded.
        model: String,
    },
    /// A model whose worker kept failing right after it was loaded.
    #[error("{model}'s worker failed {attempts} times right after loading; see the agent's log")]
    KeepsFailing {
        /// The model.
        model: String,
        /// How many loads.
        attempts: usize,
    },
    /// A device operation's task failed (a bug).
    #[error("device operation failed: {0}")]
    Internal(String),
}

impl DeviceError {
    /// The stable machine-readable code (the API's and the operator's).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownModel { .. } => ErrorCode::UnknownModel,
            Self::TooBigForDevice { .. } => ErrorCode::TooBigForDevice,
            Self::InsufficientMemory { .. } => ErrorCode::InsufficientMemory,
            Self::Busy { .. } => ErrorCode::Busy,
            Self::NotDesired { .. } => ErrorCode::NotDesired,
            Self::NothingLoaded(_) => ErrorCode::InvalidValue,
            Self::LoadFailed { .. } => ErrorCode::LoadFailed,
            Self::Worker { .. } => ErrorCode::WorkerFailed,
            Self::Rejected { .. } => ErrorCode::InvalidValue,
            Self::ClientLeft { .. } | Self::KeepsFailing { .. } => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The code and message, as error bodies and test-load entries carry them.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code(),
            message: self.to_string(),
        }
    }

    /// A worker failure while serving `model`.
    pub fn worker(model: &str, e: WorkerError) -> Self {
        if let WorkerError::Rejected(reason) = e {
            return Self::Rejected {
                model: model.to_string(),
                reason,
            };
        }
        Self::Worker {
            model: model.to_string(),
            reason: e.to_string(),
        }
    }
}
