//! The agent's one error type: every route answers `{"error": {"code", "message"}}` with a
//! status that says whose fault it was, and a message that names the problem.

use axum::{
    Json,
    extract::rejection::QueryRejection,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use vramkeeper_crds::api::{ErrorBody, ErrorCode, ErrorDetail};

use crate::worker::client::WorkerError;

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

/// `Result` with [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Everything a route can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The model is not in the catalog.
    #[error("unknown model {model:?}; the catalog has: {known}")]
    UnknownModel {
        /// What was asked for.
        model: String,
        /// The catalog's names, comma-separated.
        known: String,
    },
    /// No device with that index.
    #[error("unknown device {gpu}; this agent manages: {known}")]
    UnknownDevice {
        /// What was asked for.
        gpu: u32,
        /// The indices it has.
        known: String,
    },
    /// The body is not JSON, or not an object of the expected shape.
    #[error("malformed request body: {0}")]
    Malformed(String),
    /// No `Content-Type: application/json`.
    #[error("expected a JSON body with Content-Type: application/json")]
    NotJson,
    /// The body exceeds the route's limit.
    #[error("request body exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A request over one of the agent's bounds on work (inputs, characters, list lengths).
    #[error("{got} {what} exceed the limit of {limit} per request")]
    OverLimit {
        /// What is counted (`embedding inputs`, `characters of input`, ...).
        what: &'static str,
        /// The bound.
        limit: usize,
        /// What the request holds.
        got: usize,
    },
    /// Well-formed but unacceptable values.
    #[error("{0}")]
    Invalid(String),
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
    /// No route has this path.
    #[error("no route {method} {path}; GET /openapi.json lists the agent's routes")]
    NoRoute {
        /// The method asked for.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// The path exists, but not with this method.
    #[error("{path} does not answer {method}; GET /openapi.json lists the agent's routes")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// The device's operation queue turned the request away: full, or the wait passed its
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
    /// No or wrong bearer token.
    #[error("this route needs the agent's bearer token (Authorization: Bearer <token>)")]
    Unauthorized,
    /// An inference route without the token or an inference key.
    #[error(
        "inference needs the agent's token or an inference key (--api-key) as \
         Authorization: Bearer <key>"
    )]
    UnauthorizedInference,
    /// The request is addressed to a host name this agent does not answer for (a DNS
    /// rebinding page would address it so).
    #[error(
        "requests addressed to host {host:?} are refused: the agent answers requests addressed \
         to an IP address, localhost or its node name; to accept this name, start it with \
         --allowed-hosts {host}"
    )]
    MisdirectedHost {
        /// The host name, port removed.
        host: String,
    },
    /// A browser page of another origin tried to act (a cross-site request forgery).
    #[error(
        "a page of origin {origin:?} may not call {method} routes of this agent (a cross-origin \
         request); use the agent's own status page, or a client that sends no Origin header"
    )]
    CrossOrigin {
        /// The `Origin` header.
        origin: String,
        /// The method.
        method: String,
    },
    /// Too many requests from one caller.
    #[error("too many {what}; retry in {retry_after_s} s")]
    RateLimited {
        /// Which requests (`requests to acting routes`, `inference requests with this key`).
        what: &'static str,
        /// Seconds until a request is allowed again.
        retry_after_s: u64,
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
    /// The agent cannot serve yet (or any more).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; logged, answered opaquely.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownModel { .. } | Self::UnknownDevice { .. } => StatusCode::NOT_FOUND,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::OverLimit { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) | Self::TooBigForDevice { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Busy { .. } | Self::NotDesired { .. } => StatusCode::CONFLICT,
            Self::Unauthorized | Self::UnauthorizedInference => StatusCode::UNAUTHORIZED,
            Self::MisdirectedHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::LoadFailed { .. } | Self::Worker { .. } => StatusCode::BAD_GATEWAY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownModel { .. } => ErrorCode::UnknownModel,
            Self::UnknownDevice { .. } => ErrorCode::UnknownDevice,
            Self::Malformed(_) => ErrorCode::MalformedBody,
            Self::NotJson => ErrorCode::UnsupportedMediaType,
            Self::TooLarge { .. } => ErrorCode::BodyTooLarge,
            Self::OverLimit { .. } => ErrorCode::OverLimit,
            Self::Invalid(_) => ErrorCode::InvalidValue,
            Self::TooBigForDevice { .. } => ErrorCode::TooBigForDevice,
            Self::NoRoute { .. } => ErrorCode::NoRoute,
            Self::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Self::Busy { .. } => ErrorCode::Busy,
            Self::NotDesired { .. } => ErrorCode::NotDesired,
            Self::Unauthorized | Self::UnauthorizedInference => ErrorCode::Unauthorized,
            Self::MisdirectedHost { .. } => ErrorCode::MisdirectedHost,
            Self::CrossOrigin { .. } => ErrorCode::CrossOrigin,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::LoadFailed { .. } => ErrorCode::LoadFailed,
            Self::Worker { .. } => ErrorCode::WorkerFailed,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        }
    }

    /// A worker failure while serving `model`.
    pub fn worker(model: &str, e: WorkerError) -> Self {
        Self::Worker {
            model: model.to_string(),
            reason: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Self::RateLimited { retry_after_s, .. } = &self
            && let Ok(v) = retry_after_s.to_string().parse()
        {
            response.headers_mut().insert("retry-after", v);
        }
        response
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::Invalid(format!("invalid query string: {}", rejection.body_text()))
    }
}
