//! The agent's one error type: every route answers `{"error": {"code", "message"}}` with a
//! status that says whose fault it was, and a message that names the problem.

use axum::{
    Json,
    extract::rejection::QueryRejection,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use vramkeeper_crds::api::{ErrorBody, ErrorCode, ErrorDetail};

use crate::device::DeviceError;

/// `Result` with [`ApiError`].
pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Everything a route can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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
    /// The agent cannot serve yet (or any more).
    #[error("{0}")]
    Unavailable(String),
    /// A model's own server failed a request passed through to it, or did not answer.
    #[error("the server of {model} {detail}")]
    Upstream {
        /// The model.
        model: String,
        /// What happened.
        detail: String,
        /// It did not answer in time (504, else 502).
        timed_out: bool,
    },
    /// A bug or an unexpected failure; logged, answered opaquely.
    #[error("internal error")]
    Internal(String),
    /// A device operation that did not happen or failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownDevice { .. } => StatusCode::NOT_FOUND,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::OverLimit { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized | Self::UnauthorizedInference => StatusCode::UNAUTHORIZED,
            Self::MisdirectedHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream {
                timed_out: true, ..
            } => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Device(e) => match e {
                DeviceError::UnknownModel { .. } => StatusCode::NOT_FOUND,
                DeviceError::Rejected { .. } => StatusCode::BAD_REQUEST,
                DeviceError::TooBigForDevice { .. } | DeviceError::NothingLoaded(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                DeviceError::Busy { .. }
                | DeviceError::NotDesired { .. }
                | DeviceError::InsufficientMemory { .. } => StatusCode::CONFLICT,
                DeviceError::LoadFailed { .. } | DeviceError::Worker { .. } => {
                    StatusCode::BAD_GATEWAY
                }
                DeviceError::ClientLeft { .. } | DeviceError::KeepsFailing { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                DeviceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownDevice { .. } => ErrorCode::UnknownDevice,
            Self::Malformed(_) => ErrorCode::MalformedBody,
            Self::NotJson => ErrorCode::UnsupportedMediaType,
            Self::TooLarge { .. } => ErrorCode::BodyTooLarge,
            Self::OverLimit { .. } => ErrorCode::OverLimit,
            Self::Invalid(_) => ErrorCode::InvalidValue,
            Self::NoRoute { .. } => ErrorCode::NoRoute,
            Self::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Self::Unauthorized | Self::UnauthorizedInference => ErrorCode::Unauthorized,
            Self::MisdirectedHost { .. } => ErrorCode::MisdirectedHost,
            Self::CrossOrigin { .. } => ErrorCode::CrossOrigin,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Upstream { .. } => ErrorCode::WorkerFailed,
            Self::Internal(_) => ErrorCode::Internal,
            Self::Device(e) => e.code(),
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) | Self::Device(DeviceError::Internal(detail)) = &self {
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
