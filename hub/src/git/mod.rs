//! Git sources: one bare mirror repository per source under `<data_dir>/sources/<name>.git`,
//! incremental fetches of just the tracked ref (gix), ref → commit resolution, and
//! [`CommitTree`], the [`crate::render::SourceTree`] over a commit that rendering reads.
//!
//! The pieces:
//! - [`SourceSpec`] — what to track: a URL, a [`GitRef`] (a branch, tag, ref or commit, or the
//!   remote's default branch, `HEAD`), a sub-path and optional [`Auth`].
//! - [`Mirror`] — the bare repository of one source; [`Mirror::fetch`] fetches the tracked ref
//!   into a private namespace (`refs/flotilla/track/…`) and says what changed
//!   ([`FetchOutcome`]), including a history rewrite (force-push); [`Mirror::tree`] opens a
//!   commit's tree.
//! - [`fetch_with_git_cli`] — the same fetch done by the `git` CLI, for the benchmark.
//!
//! Bad input keeps the last good state: a failed fetch (unreachable remote, deleted branch,
//! vanished pinned commit) changes no tracked ref, and objects are never deleted, so the last
//! good commit stays readable. Secrets never reach gix through a URL, an error message or a log
//! line: credentials are split off the URL ([`RemoteUrl`]) and handed over through gix's
//! credential callback, and every message from gix is scrubbed ([`Scrubber`]).
//!
//! Everything here is blocking; the hub calls it from `spawn_blocking`.

mod auth;
mod cli;
mod error;
mod mirror;
mod transport;
mod tree;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use auth::{Auth, RemoteUrl, Scrubber, TOKEN_USER, Transport, redact_url};
pub use cli::fetch_with_git_cli;
pub use error::GitError;
pub use mirror::{FetchOptions, FetchOutcome, Mirror};
pub use tree::CommitTree;

/// What one source tracks.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// The source's name: also the mirror's directory name (`[A-Za-z0-9._-]`, not starting
    /// with `.` or `-`, at most 100 characters).
    pub name: String,
    /// `https://…`, `ssh://…`, `user@host:path`, `file://…` or an absolute local path.
    pub url: String,
    pub reference: GitRef,
    /// The sub-directory of the repository the source lives in (`""` is the root).
    pub path: String,
    /// Credentials for https sources (from the hub-side secret file).
    pub auth: Option<Auth>,
}

// === impl SourceSpec ===

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("reference", &self.reference)
            .field("path", &self.path)
            .field("auth", &self.auth)
            .finish()
    }
}

impl SourceSpec {
    /// A spec for the repository root without credentials.
    pub fn new(name: impl Into<String>, url: impl Into<String>, reference: GitRef) -> Self {
        SourceSpec {
            name: name.into(),
            url: url.into(),
            reference,
            path: String::new(),
            auth: None,
        }
    }

    /// Checks the name, the URL, the path and that credentials go with an https URL. Returns
    /// the parsed URL.
    pub fn validate(&self) -> Result<RemoteUrl, GitError> {
        validate_name(&self.name)?;
        normalize_path(&self.path)?;
        let url = RemoteUrl::parse(&self.url)?;
        if self.auth.is_some() && url.transport() != Transport::Https {
            return Err(GitError::AuthNotSupported {
                url: url.display().to_owned(),
            });
        }
        Ok(url)
    }

    /// The URL with credentials replaced by `***`.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Checks a source name (it names a directory, so it must be one plain path component).
pub fn validate_name(name: &str) -> Result<(), GitError> {
    let bad = |reason| Err(GitError::invalid_name(name, reason));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 100 {
        return bad("longer than 100 characters");
    }
    if name.starts_with(['.', '-']) {
        return bad("starts with '.' or '-'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Normalises a repository-relative directory (`""`, `a/b`, `./a/b/`): no absolute paths, no
/// `..`, no empty components besides leading/trailing slashes.
pub fn normalize_path(path: &str) -> Result<String, GitError> {
    let bad = |reason| Err(GitError::invalid_path(path, reason));
    if path.starts_with('/') {
        return bad("must be relative to the repository root");
    }
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return bad("must not contain '..'"),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// What a source tracks in its repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GitRef {
    /// A branch name (`main`, `release/1.2`).
    Branch(String),
    /// A tag name (`v1.2.0`); annotated tags are peeled to their commit.
    Tag(String),
    /// A full 40-hex commit id (lower case), pinned. It must stay reachable from a branch or
    /// a tag of the remote.
    Commit(String),
    /// A bare name from the command line: the branch of that name, or failing that the tag.
    BranchOrTag(String),
    /// Any other full ref name (`refs/pull/42/head`).
    Ref(String),
    /// The remote's default branch: the branch its `HEAD` points to, resolved again at every
    /// fetch (so a remote whose `HEAD` moves from `main` to `trunk` is followed). What a
    /// source tracks when `--ref` is omitted, or `HEAD`.
    Head,
}

// === impl GitRef ===

impl GitRef {
    /// Parses `--ref`: `HEAD` is the remote's default branch; a full 40-hex id is a commit;
    /// `refs/heads/X` a branch, `refs/tags/X` a tag, any other `refs/…` that ref; anything
    /// else a branch, or failing that a tag.
    pub fn parse(s: &str) -> Result<GitRef, GitError> {
        let bad = |reason| Err(GitError::invalid_ref(s, reason));
        if s.is_empty() {
            return bad("empty");
        }
        if s == "HEAD" {
            return Ok(GitRef::Head);
        }
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(GitRef::Commit(s.to_ascii_lowercase()));
        }
        let full = if s.starts_with("refs/") {
            s.to_owned()
        } else {
            format!("refs/heads/{s}")
        };
        if gix::validate::reference::name(full.as_bytes().into()).is_err() {
            return bad("not a valid git ref name");
        }
        if s.ends_with("/HEAD") {
            return bad(
                "symbolic refs other than HEAD (the remote's default branch) cannot be tracked; name the branch",
            );
        }
        Ok(if let Some(branch) = s.strip_prefix("refs/heads/") {
            GitRef::Branch(branch.to_owned())
        } else if let Some(tag) = s.strip_prefix("refs/tags/") {
            GitRef::Tag(tag.to_owned())
        } else if s.starts_with("refs/") {
            GitRef::Ref(s.to_owned())
        } else {
            GitRef::BranchOrTag(s.to_owned())
        })
    }

    /// The remote ref names that may satisfy this reference, in order of preference (none for
    /// a commit).
    pub(crate) fn candidates(&self) -> Vec<String> {
        match self {
            GitRef::Branch(b) => vec![format!("refs/heads/{b}")],
            GitRef::Tag(t) => vec![format!("refs/tags/{t}")],
            GitRef::Ref(r) => vec![r.clone()],
            GitRef::BranchOrTag(n) => vec![format!("refs/heads/{n}"), format!("refs/tags/{n}")],
            GitRef::Head => vec!["HEAD".to_owned()],
            GitRef::Commit(_) => Vec::new(),
        }
    }
}

impl fmt::Display for GitRef {
    /// The canonical text form, which [`GitRef::parse`] reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitRef::Branch(b) => write!(f, "refs/heads/{b}"),
            GitRef::Tag(t) => write!(f, "refs/tags/{t}"),
            GitRef::Commit(c) => f.write_str(c),
            GitRef::BranchOrTag(n) => f.write_str(n),
            GitRef::Ref(r) => f.write_str(r),
            GitRef::Head => f.write_str("HEAD"),
        }
    }
}

impl FromStr for GitRef {
    type Err = GitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GitRef::parse(s)
    }
}
