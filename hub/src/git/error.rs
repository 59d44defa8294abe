//! [`GitError`]: what can go wrong tracking a source. Every message names the source URL
//! (credentials stripped), the reference or the commit that failed, and never a secret.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the `git` module.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("invalid source name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid source URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid git reference {reference:?}: {reason}")]
    InvalidRef {
        reference: String,
        reason: &'static str,
    },
    #[error("invalid source path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("credentials are only used with https URLs, not with {url}")]
    AuthNotSupported { url: String },
    #[error("CA file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("secret file {}: {reason}", path.display())]
    SecretFile { path: PathBuf, reason: String },
    #[error("git repository {}: {message}", path.display())]
    Repository { path: PathBuf, message: String },
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("fetching {url}: authentication failed: {message}")]
    AuthFailed { url: String, message: String },
    #[error(
        "fetching {url}: timed out (limits: {} to connect, {} in all)",
        humantime::format_duration(*.connect),
        humantime::format_duration(*.total)
    )]
    Timeout {
        url: String,
        connect: Duration,
        total: Duration,
    },
    #[error("{reference} not found at {url}")]
    RefNotFound { reference: String, url: String },
    /// The remote's `HEAD` (tracked when no ref was named) leads to no commit: it points to a
    /// branch that does not exist (`target`: an empty repository, or a default branch that was
    /// deleted), or the remote advertises no `HEAD` at all (`target` is `None`).
    #[error("{url} has no default branch: {}", match target {
        Some(t) => format!("its HEAD points to {t}, which does not exist (an empty repository?); push to it or name a branch with --ref"),
        None => "it advertises no HEAD; name a branch with --ref".to_owned(),
    })]
    NoDefaultBranch { url: String, target: Option<String> },
    #[error("{reference} at {url} points to a {kind}, not a commit")]
    NotACommit {
        reference: String,
        url: String,
        kind: String,
    },
    #[error("commit {commit} is not in the mirror of source {source_name:?}")]
    CommitNotFound { source_name: String, commit: String },
    #[error("{path:?} not found at commit {commit}")]
    PathNotFound { commit: String, path: String },
    #[error("{path:?} at commit {commit} is not a directory")]
    NotADirectory { commit: String, path: String },
    #[error("git CLI fetch from {url}: {message}")]
    GitCli { url: String, message: String },
}

impl GitError {
    /// [`GitError::InvalidName`]: source name `name` is refused for `reason`.
    pub(crate) fn invalid_name(name: &str, reason: &'static str) -> GitError {
        GitError::InvalidName {
            name: name.to_owned(),
            reason,
        }
    }

    /// [`GitError::InvalidRef`]: git reference `reference` is refused for `reason`.
    pub(crate) fn invalid_ref(reference: &str, reason: &'static str) -> GitError {
        GitError::InvalidRef {
            reference: reference.to_owned(),
            reason,
        }
    }

    /// [`GitError::InvalidPath`]: source path `path` is refused for `reason`.
    pub(crate) fn invalid_path(path: &str, reason: &'static str) -> GitError {
        GitError::InvalidPath {
            path: path.to_owned(),
            reason,
        }
    }

    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            GitError::InvalidName { .. } => "invalid_name",
            GitError::InvalidUrl { .. } => "invalid_url",
            GitError::InvalidRef { .. } => "invalid_ref",
            GitError::InvalidPath { .. } => "invalid_path",
            GitError::AuthNotSupported { .. } => "auth_not_supported",
            GitError::CaFile { .. } => "ca_file",
            GitError::SecretFile { .. } => "secret_file",
            GitError::Repository { .. } => "repository",
            GitError::Fetch { .. } => "fetch",
            GitError::AuthFailed { .. } => "auth_failed",
            GitError::Timeout { .. } => "timeout",
            GitError::RefNotFound { .. } => "ref_not_found",
            GitError::NoDefaultBranch { .. } => "no_default_branch",
            GitError::NotACommit { .. } => "not_a_commit",
            GitError::CommitNotFound { .. } => "commit_not_found",
            GitError::PathNotFound { .. } => "path_not_found",
            GitError::NotADirectory { .. } => "not_a_directory",
            GitError::GitCli { .. } => "git_cli",
        }
    }

    /// Whether retrying later may succeed without anyone changing the source's settings
    /// (network trouble, a timeout), as opposed to a mistake in the settings or the remote's
    /// content (a missing ref, bad credentials, an invalid URL).
    pub fn is_transient(&self) -> bool {
        matches!(self, GitError::Fetch { .. } | GitError::Timeout { .. })
    }
}
