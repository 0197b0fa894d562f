//! The operator's one error type. Every variant names its cause, and [`Error::metric_label`]
//! gives the label the failure counter uses.

use kube::runtime::finalizer;
use vramkeeper_crds::api::ErrorCode;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),

    /// The finalizer helper failed adding or removing the finalizer, or the reconcile inside it
    /// failed (then the inner error is the cause).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),

    /// No running agent Pod was found on the node.
    #[error("no ready vramkeeper agent Pod on node {node}")]
    AgentNotFound {
        /// The node.
        node: String,
    },

    /// The agent could not be reached, or did not answer in time.
    #[error("agent {url} unreachable: {message}")]
    AgentUnreachable {
        /// The agent's base URL.
        url: String,
        /// What the HTTP client said.
        message: String,
    },

    /// The agent answered with an error status.
    #[error("agent {url} answered {status} ({code}): {message}")]
    AgentRejected {
        /// The agent's base URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The agent's stable error code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },

    /// The token Secret is missing or has no usable token.
    #[error("agent token: {0}")]
    Token(String),

    /// The object lacks something the operator needs (a name, a generation).
    #[error("invalid GpuModel: {0}")]
    Invalid(String),

    /// Leader election failed or leadership was lost.
    #[error("leader election: {0}")]
    Leader(String),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl From<finalizer::Error<Error>> for Error {
    fn from(e: finalizer::Error<Error>) -> Self {
        Self::Finalizer(Box::new(e))
    }
}

impl Error {
    /// A short, stable label for the error counter (`error="agent_unreachable"`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                finalizer::Error::AddFinalizer(_) | finalizer::Error::RemoveFinalizer(_) => {
                    "finalizer"
                }
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => "invalid",
            },
            Self::AgentNotFound { .. } => "agent_not_found",
            Self::AgentUnreachable { .. } => "agent_unreachable",
            Self::AgentRejected {
                code: ErrorCode::Busy,
                ..
            } => "agent_busy",
            Self::AgentRejected { .. } => "agent_rejected",
            Self::Token(_) => "token",
            Self::Invalid(_) => "invalid",
            Self::Leader(_) => "leader",
        }
    }

    /// The innermost operator error (unwrapping the finalizer's apply/cleanup wrapper).
    pub fn inner(&self) -> &Error {
        match self {
            Self::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }

    /// True when the agent said it is busy with another operation: retry soon, no backoff.
    pub fn is_busy(&self) -> bool {
        matches!(
            self.inner(),
            Self::AgentRejected {
                code: ErrorCode::Busy,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_see_through_the_finalizer_wrapper() {
        let busy = Error::AgentRejected {
            url: "http://a".into(),
            status: 409,
            code: ErrorCode::Busy,
            message: "switching".into(),
        };
        let wrapped = Error::from(finalizer::Error::ApplyFailed(busy));
        assert_eq!(wrapped.metric_label(), "agent_busy");
        assert!(wrapped.is_busy());
        let gone = Error::AgentNotFound { node: "n".into() };
        assert_eq!(
            Error::from(finalizer::Error::CleanupFailed(gone)).metric_label(),
            "agent_not_found"
        );
        assert_eq!(Error::Token("x".into()).metric_label(), "token");
    }
}
