//! The hub's domain error type and its single mapping onto `tonic::Status` (the gRPC edge).

use crate::pki::CaError;
use crate::store::StoreError;

/// Errors of the hub's domain logic (cluster registry, tokens, sessions).
/// Why an operator action (approve, rollback, pin …) was refused by the rollout plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    #[error("cluster {0:?} already exists")]
    ClusterExists(String),
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("source {0:?} already exists")]
    SourceExists(String),
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    #[error("cluster {0:?} is revoked")]
    ClusterRevoked(String),
    #[error("unknown join token")]
    UnknownToken,
    #[error("unknown token {0:?}")]
    UnknownTokenId(String),
    #[error("join token expired at {0}")]
    TokenExpired(String),
    #[error("join token was already used")]
    TokenUsed,
    #[error("join token was revoked")]
    TokenRevoked,
    #[error("malformed join token: {0}")]
    MalformedToken(String),
    #[error("too many failed join attempts from {addr}; retry in {retry_secs}s")]
    RateLimited { addr: String, retry_secs: u64 },
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A source definition that cannot be tracked (name, URL, ref, path, credentials file).
    #[error("invalid argument: {0}")]
    InvalidSource(#[from] crate::git::GitError),
    #[error("invalid argument: {0}")]
    InvalidName(#[from] flotilla_proto::identity::IdentityError),
    /// An operator action the rollout refused (nothing waits for approval, unknown revision…).
    #[error("invalid argument: {0}")]
    Refused(#[from] ActionError),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("certificate: {0}")]
    Ca(#[from] CaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("stored record {key} is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("concurrent update of {0} kept conflicting; try again")]
    Contention(String),
    /// A blocking task (fetch, render) panicked or was cancelled.
    #[error("{what} task failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl HubError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            HubError::UnknownCluster(_) => "unknown_cluster",
            HubError::ClusterExists(_) => "cluster_exists",
            HubError::UnknownSource(_) => "unknown_source",
            HubError::SourceExists(_) => "source_exists",
            HubError::UnknownApp(_) => "unknown_app",
            HubError::ClusterRevoked(_) => "cluster_revoked",
            HubError::UnknownToken | HubError::UnknownTokenId(_) => "unknown_token",
            HubError::TokenExpired(_) => "token_expired",
            HubError::TokenUsed => "token_used",
            HubError::TokenRevoked => "token_revoked",
            HubError::MalformedToken(_) => "malformed_token",
            HubError::RateLimited { .. } => "rate_limited",
            HubError::Invalid(_)
            | HubError::InvalidSource(_)
            | HubError::InvalidName(_)
            | HubError::Refused(_) => "invalid",
            HubError::PermissionDenied(_) => "permission_denied",
            HubError::Ca(c) if c.is_client_error() => "bad_csr",
            HubError::Ca(_) => "ca",
            HubError::Store(_) => "store",
            HubError::Corrupt { .. } => "corrupt",
            HubError::Contention(_) => "contention",
            HubError::Task { .. } => "task",
        }
    }
}

impl From<HubError> for tonic::Status {
    fn from(e: HubError) -> Self {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            HubError::UnknownCluster(_)
            | HubError::UnknownTokenId(_)
            | HubError::UnknownSource(_)
            | HubError::UnknownApp(_) => Status::not_found(msg),
            HubError::ClusterExists(_) | HubError::SourceExists(_) => Status::already_exists(msg),
            HubError::ClusterRevoked(_)
            | HubError::UnknownToken
            | HubError::TokenExpired(_)
            | HubError::TokenUsed
            | HubError::TokenRevoked
            | HubError::MalformedToken(_)
            | HubError::PermissionDenied(_) => Status::permission_denied(msg),
            HubError::RateLimited { .. } => Status::resource_exhausted(msg),
            HubError::Invalid(_)
            | HubError::InvalidSource(_)
            | HubError::InvalidName(_)
            | HubError::Refused(_) => Status::invalid_argument(msg),
            HubError::Ca(ref c) if c.is_client_error() => Status::invalid_argument(msg),
            HubError::Contention(_) => Status::aborted(msg),
            HubError::Store(crate::store::StoreError::Unavailable { .. })
            | HubError::Store(crate::store::StoreError::NotLeading { .. }) => {
                Status::unavailable(msg)
            }
            HubError::Ca(_)
            | HubError::Store(_)
            | HubError::Corrupt { .. }
            | HubError::Task { .. } => Status::internal(msg),
        }
    }
}

/// One error shared by every caller of a failed batch write (group commits answer each caller
/// with its own error carrying the same cause).
#[derive(Debug)]
pub struct SharedError(pub std::sync::Arc<HubError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_joins_name_their_reason() {
        use crate::pki::CaError;
        use crate::telemetry::metrics::Metrics;
        let cases = [
            (HubError::UnknownToken, "unknown_token"),
            (HubError::TokenUsed, "token_used"),
            (HubError::Ca(CaError::CsrMalformed("x".into())), "bad_csr"),
            (HubError::ClusterRevoked("c".into()), "cluster_revoked"),
        ];
        let m = Metrics::new();
        for (e, want) in cases {
            assert_eq!(e.metric_label(), want);
            m.count_join(e.metric_label());
        }
        let text = m.encode();
        assert!(
            text.contains("flotilla_hub_joins_total{result=\"bad_csr\"} 1"),
            "{text}"
        );
    }
}
