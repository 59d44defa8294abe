//! [`Mirror`]: the bare repository of one source and its incremental fetch.
//!
//! Private ref namespace (nothing else is written, so a mirror never mixes with a checkout):
//! - `refs/flotilla/track/<ref without "refs/">` — the tracked branch/tag/ref, force-updated by
//!   each fetch (so a force-push moves it; the old objects stay until a gc, which gix never runs);
//!   the default branch is `refs/flotilla/track/HEAD`, the commit of whichever branch the
//!   remote's `HEAD` pointed to at the last fetch;
//! - `refs/flotilla/scan/{heads,tags}/*` — every branch and tag, fetched only for a pinned commit
//!   to prove it is still reachable on the remote (stale ones are pruned);
//! - `refs/flotilla/pinned` — the last pinned commit that was verified.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::protocol::fetch::refmap::{Mapping, SpecIndex};
use gix::refs::transaction::PreviousValue;
use gix::remote::Direction;

use super::auth::{Auth, RemoteUrl, Scrubber, Transport};
use super::transport::{self, Watchdog};
use super::tree::CommitTree;
use super::{GitError, GitRef, SourceSpec, validate_name};

const TRACK_PREFIX: &str = "refs/flotilla/track/";
const SCAN_PREFIX: &str = "refs/flotilla/scan/";
const PINNED_REF: &str = "refs/flotilla/pinned";
const REFLOG_MESSAGE: &str = "flotilla: fetch";

/// Commit dates may be skewed; a pinned commit is looked for this far below its own date.
const CLOCK_SKEW_SLACK_SECS: i64 = 24 * 3600;

/// Limits and trust settings of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Establishing the connection (TCP + TLS for https; ssh's `ConnectTimeout`).
    pub connect_timeout: Duration,
    /// The whole fetch; past it the fetch is interrupted and fails with [`GitError::Timeout`]
    /// (also each https request's total time).
    pub timeout: Duration,
    /// A PEM bundle of extra CAs trusted for https sources, besides the system roots (a
    /// private git server). Without it, git's `http.sslCAInfo` is used if set.
    pub ca_file: Option<PathBuf>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(20),
            timeout: Duration::from_secs(300),
            ca_file: None,
        }
    }
}

/// What a successful [`Mirror::fetch`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// The commit the reference resolves to now (40 hex).
    pub commit: String,
    /// The commit this mirror had for the same reference before, if any.
    pub previous: Option<String>,
    /// `commit != previous`.
    pub changed: bool,
    /// `previous` is not an ancestor of `commit`: history was rewritten (force-push, a moved
    /// tag). The fetch still succeeded; the caller decides whether to follow.
    pub rewritten: bool,
    /// The remote ref that matched (`refs/heads/main`, or `refs/tags/v1` when a bare name
    /// fell back to a tag; for the default branch, the branch the remote's `HEAD` points to
    /// now, or `HEAD` when it is detached); `None` for a pinned commit.
    pub resolved_ref: Option<String>,
}

/// The bare mirror of one source at `<data_dir>/sources/<name>.git`. `Send + Sync`; fetches
/// of one mirror are serialised.
pub struct Mirror {
    name: String,
    dir: PathBuf,
    repo: gix::ThreadSafeRepository,
    options: FetchOptions,
    fetching: Mutex<()>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish()
    }
}

// === impl Mirror ===

impl Mirror {
    /// Where the mirror of source `name` lives.
    pub fn dir_for(data_dir: &Path, name: &str) -> PathBuf {
        data_dir.join("sources").join(format!("{name}.git"))
    }

    /// Opens the mirror of `spec.name`, creating an empty bare repository the first time.
    /// Creation is atomic (made under a temporary name, then renamed into place).
    pub fn open_or_init(data_dir: &Path, spec: &SourceSpec) -> Result<Mirror, GitError> {
        validate_name(&spec.name)?;
        let dir = Self::dir_for(data_dir, &spec.name);
        if !dir.exists() {
            init_bare(&dir)?;
        }
        let repo = gix::open(&dir).map_err(|e| repo_error(&dir, &e))?;
        if !repo.is_bare() {
            return Err(GitError::Repository {
                path: dir,
                message: "not a bare repository".into(),
            });
        }
        Ok(Mirror {
            name: spec.name.clone(),
            dir,
            repo: repo.into_sync(),
            options: FetchOptions::default(),
            fetching: Mutex::new(()),
        })
    }

    /// The same mirror with other fetch limits.
    pub fn with_options(mut self, options: FetchOptions) -> Self {
        self.options = options;
        self
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The bare repository's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `commit` (40 hex) is in the mirror.
    pub fn has_commit(&self, commit: &str) -> bool {
        let repo = self.repo.to_thread_local();
        ObjectId::from_hex(commit.as_bytes()).is_ok_and(|id| {
            repo.find_header(id)
                .is_ok_and(|h| h.kind() == gix::object::Kind::Commit)
        })
    }

    /// The tree of `commit`, rooted at the directory `path` (`""` is the repository root).
    pub fn tree(&self, commit: &str, path: &str) -> Result<CommitTree, GitError> {
        CommitTree::open(self.repo.clone(), &self.name, commit, path)
    }

    /// The commit the last successful fetch of `spec` resolved to (the last good revision),
    /// without contacting the remote.
    pub fn last_fetched(&self, spec: &SourceSpec) -> Result<Option<String>, GitError> {
        let repo = self.repo.to_thread_local();
        Ok(match &spec.reference {
            GitRef::Commit(hex) => commit_at(&repo, PINNED_REF)
                .filter(|id| ObjectId::from_hex(hex.as_bytes()).ok() == Some(*id)),
            reference => reference
                .candidates()
                .iter()
                .find_map(|c| commit_at(&repo, &track_ref(c))),
        }
        .map(|id| id.to_hex().to_string()))
    }

    /// Fetches what `spec` tracks and resolves it to a commit.
    ///
    /// Only the needed refs are fetched, into the private namespace, reusing every object the
    /// mirror already has. A branch or tag that is gone on the remote, and a pinned commit
    /// that no branch or tag of the remote reaches any more, are [`GitError::RefNotFound`];
    /// nothing is changed then, so [`Mirror::last_fetched`] still gives the last good commit.
    pub fn fetch(&self, spec: &SourceSpec) -> Result<FetchOutcome, GitError> {
        if spec.name != self.name {
            return Err(GitError::invalid_name(
                &spec.name,
                "does not match the mirror's source",
            ));
        }
        let url = spec.validate()?;
        let _serial = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        let auth = spec.auth.clone().or_else(|| url.embedded.clone());
        let scrub = Scrubber::new(&spec.url, auth.as_ref());
        let mut repo = self.repo.to_thread_local();
        if url.transport == Transport::Ssh {
            transport::configure_ssh(&mut repo, &self.options)
                .map_err(|e| repo_error(&self.dir, &e))?;
        }
        let fetch = Fetch {
            mirror: self,
            repo: &repo,
            url: &url,
            auth,
            scrub: &scrub,
            reference: &spec.reference,
        };
        let span = tracing::debug_span!("git.fetch", source = %self.name, url = %url.display(), reference = %spec.reference);
        let _entered = span.enter();
        let outcome = match &spec.reference {
            GitRef::Commit(hex) => fetch.pinned(hex),
            _ => fetch.tracked(),
        }?;
        tracing::debug!(
            commit = %outcome.commit,
            changed = outcome.changed,
            rewritten = outcome.rewritten,
            "fetched"
        );
        Ok(outcome)
    }
}

/// One fetch in progress.
struct Fetch<'a> {
    mirror: &'a Mirror,
    repo: &'a gix::Repository,
    url: &'a RemoteUrl,
    auth: Option<Auth>,
    scrub: &'a Scrubber,
    reference: &'a GitRef,
}

impl Fetch<'_> {
    /// The reference is not on the remote; for the default branch, `HEAD` points to `target`,
    /// which does not exist, or (`None`) there is no `HEAD` at all.
    fn not_found_to(&self, target: Option<&gix::bstr::BStr>) -> GitError {
        let url = self.url.display().to_owned();
        match self.reference {
            GitRef::Head => GitError::NoDefaultBranch {
                url,
                target: target.map(|t| t.to_string()),
            },
            reference => GitError::RefNotFound {
                reference: reference.to_string(),
                url,
            },
        }
    }

    fn not_found(&self) -> GitError {
        self.not_found_to(None)
    }

    fn repo_error(&self, err: &gix::Error) -> GitError {
        GitError::Repository {
            path: self.mirror.dir.clone(),
            message: self.scrub.scrub(&transport::one_line(err)),
        }
    }

    /// A branch, tag or other ref: fetch it (or, for a bare name, the branch and the tag of
    /// that name) into the tracking namespace and resolve it.
    fn tracked(&self) -> Result<FetchOutcome, GitError> {
        let candidates = self.reference.candidates();
        for c in &candidates {
            if gix::validate::reference::name(c.as_bytes().into()).is_err() {
                return Err(GitError::invalid_ref(
                    &self.reference.to_string(),
                    "not a valid git ref name",
                ));
            }
        }
        let locals: Vec<String> = candidates.iter().map(|c| track_ref(c)).collect();
        let previous = locals.iter().find_map(|l| commit_at(self.repo, l));
        let refspecs: Vec<String> = candidates
            .iter()
            .zip(&locals)
            .map(|(remote, local)| format!("+{remote}:{local}"))
            .collect();
        let mappings = self.run(&refspecs)?;

        // The first candidate (in order of preference) the remote has.
        let found = candidates.iter().enumerate().find_map(|(i, name)| {
            mappings
                .iter()
                .find(|m| {
                    m.spec_index == SpecIndex::ExplicitInRemote(i)
                        && m.remote.as_name() == Some(name.as_bytes().as_bstr())
                })
                .map(|m| (i, name, m))
        });
        let Some((i, name, mapping)) = found else {
            return Err(self.not_found());
        };
        let (Some(target), Some(peeled)) = (mapping.remote.as_id(), mapping.remote.peeled_id())
        else {
            // Unborn (a symbolic ref to nothing: an empty repository's HEAD).
            return Err(self.not_found_to(mapping.remote.as_target()));
        };
        // The default branch is the branch HEAD points to now (a detached HEAD is itself).
        let resolved = match self.reference {
            GitRef::Head => mapping
                .remote
                .as_target()
                .map_or_else(|| name.clone(), |t| t.to_string()),
            _ => name.clone(),
        };
        let (target, commit) = (target.to_owned(), peeled.to_owned());
        self.expect_commit(commit)?;
        // gix has updated the tracking ref; make sure, as later fetches read it as `previous`.
        let local = &locals[i];
        if self
            .repo
            .try_find_reference(local.as_str())
            .ok()
            .flatten()
            .and_then(|r| r.target().try_id().map(ToOwned::to_owned))
            != Some(target)
        {
            self.repo
                .reference(local.as_str(), target, PreviousValue::Any, REFLOG_MESSAGE)
                .map_err(|e| self.repo_error(&e))?;
        }
        let rewritten = match previous {
            Some(p) if p != commit => !self.is_ancestor(p, commit),
            _ => false,
        };
        Ok(FetchOutcome {
            commit: commit.to_hex().to_string(),
            previous: previous.map(|p| p.to_hex().to_string()),
            changed: previous != Some(commit),
            rewritten,
            resolved_ref: Some(resolved),
        })
    }

    /// A pinned commit: fetch every branch and tag, then require the commit to be reachable
    /// from one of them (a commit that a force-push removed is gone, even if a server would
    /// still hand out the dangling object).
    fn pinned(&self, hex: &str) -> Result<FetchOutcome, GitError> {
        let want = ObjectId::from_hex(hex.as_bytes())
            .ok()
            .filter(|_| hex.len() == 40)
            .ok_or_else(|| GitError::invalid_ref(hex, "a commit must be given as 40 hex digits"))?;
        let previous = commit_at(self.repo, PINNED_REF);
        let refspecs = [
            format!("+refs/heads/*:{SCAN_PREFIX}heads/*"),
            format!("+refs/tags/*:{SCAN_PREFIX}tags/*"),
        ];
        let mappings = self.run(&refspecs)?;
        let tips: Vec<ObjectId> = mappings
            .iter()
            .filter_map(|m| m.remote.peeled_id().map(ToOwned::to_owned))
            .filter(|id| self.is_commit(*id))
            .collect();
        let keep: Vec<&[u8]> = mappings
            .iter()
            .filter_map(|m| m.local.as_ref().map(|l| l.as_slice()))
            .collect();
        self.prune_scan_refs(&keep);
        if !self.repo.has_object(want) {
            return Err(self.not_found());
        }
        self.expect_commit(want)?;
        if !self.reachable(want, &tips)? {
            return Err(self.not_found());
        }
        self.repo
            .reference(PINNED_REF, want, PreviousValue::Any, REFLOG_MESSAGE)
            .map_err(|e| self.repo_error(&e))?;
        Ok(FetchOutcome {
            commit: want.to_hex().to_string(),
            previous: previous.map(|p| p.to_hex().to_string()),
            changed: previous != Some(want),
            rewritten: false,
            resolved_ref: None,
        })
    }

    /// Connects and fetches `refspecs` (no tags are followed). Returns how remote refs mapped
    /// to the refspecs; when none matched, nothing is fetched and the list is empty.
    fn run(&self, refspecs: &[String]) -> Result<Vec<Mapping>, GitError> {
        let url = self.url;
        let remote = self
            .repo
            .remote_at(url.fetch.as_str())
            .map_err(|e| GitError::InvalidUrl {
                url: url.display().to_owned(),
                reason: self.scrub.scrub(&transport::one_line(&e)),
            })?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(refspecs.iter().map(String::as_str), Direction::Fetch)
            .map_err(|e| self.repo_error(&e))?;
        let options = &self.mirror.options;
        let roots = transport::extra_roots(self.repo, url, options)?;
        let watchdog = Watchdog::start(options.timeout);
        let result = (|| -> gix::Result<Vec<Mapping>> {
            let mut connection = remote
                .connect(Direction::Fetch)?
                .with_credentials(transport::credentials(self.auth.clone()));
            if let Some(http) = transport::http_options(self.repo, url, options, roots)? {
                connection.set_transport_options(http);
            }
            let prepare = connection
                .prepare_fetch(gix::progress::Discard, Default::default())?
                .with_reflog_message(gix::remote::fetch::RefLogMessage::Override {
                    message: REFLOG_MESSAGE.into(),
                });
            let mappings = &prepare.ref_map().mappings;
            if mappings.iter().all(|m| m.remote.as_id().is_none()) {
                // No refspec matched (gix would fail with a generic "no refspec matched"), or
                // only unborn refs did (an empty repository's HEAD, which gix would write as
                // a symbolic ref into the mirror): nothing to fetch, the caller says why.
                return Ok(mappings.clone());
            }
            let outcome = prepare.receive(gix::progress::Discard, watchdog.flag())?;
            Ok(outcome.ref_map.mappings)
        })();
        result.map_err(|e| {
            transport::fetch_error(&e, url, self.scrub, &watchdog, options, self.auth.is_some())
        })
    }

    fn is_commit(&self, id: ObjectId) -> bool {
        self.repo
            .find_header(id)
            .is_ok_and(|h| h.kind() == gix::object::Kind::Commit)
    }

    fn expect_commit(&self, id: ObjectId) -> Result<(), GitError> {
        let header = self.repo.find_header(id).map_err(|e| self.repo_error(&e))?;
        if header.kind() == gix::object::Kind::Commit {
            Ok(())
        } else {
            Err(GitError::NotACommit {
                reference: self.reference.to_string(),
                url: self.url.display().to_owned(),
                kind: header.kind().to_string(),
            })
        }
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    fn is_ancestor(&self, ancestor: ObjectId, descendant: ObjectId) -> bool {
        if !self.repo.has_object(ancestor) {
            return false;
        }
        matches!(self.repo.merge_base(ancestor, descendant), Ok(Some(base)) if base.detach() == ancestor)
    }

    /// Whether `want` is one of `tips` or an ancestor of one.
    fn reachable(&self, want: ObjectId, tips: &[ObjectId]) -> Result<bool, GitError> {
        if tips.contains(&want) {
            return Ok(true);
        }
        if tips.is_empty() {
            return Ok(false);
        }
        let since = self
            .repo
            .find_commit(want)
            .and_then(|c| c.time())
            .map(|t| t.seconds - CLOCK_SKEW_SLACK_SECS)
            .map_err(|e| self.repo_error(&e))?;
        let walk = self
            .repo
            .rev_walk(tips.iter().copied())
            .sorting(gix::revision::walk::Sorting::ByCommitTimeCutoff {
                order: gix::traverse::commit::simple::CommitTimeOrder::NewestFirst,
                seconds: since,
            })
            .all()
            .map_err(|e| self.repo_error(&e))?;
        for info in walk {
            let info = info.map_err(|e| self.repo_error(&e))?;
            if info.id == want {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes scan refs whose branch or tag the remote no longer has, so they stop keeping
    /// history alive in later reachability checks. Failures only cost disk space: logged.
    fn prune_scan_refs(&self, keep: &[&[u8]]) {
        let Ok(platform) = self.repo.references() else {
            return;
        };
        let Ok(iter) = platform.prefixed(SCAN_PREFIX) else {
            return;
        };
        for reference in iter.flatten() {
            let name = reference.name().as_bstr();
            if !keep.contains(&name.as_bytes())
                && let Err(e) = reference.delete()
            {
                tracing::debug!(reference = %name, error = %transport::one_line(&e), "could not prune a scan ref");
            }
        }
    }
}

/// The tracking ref of remote ref `remote` (`refs/heads/main` → `refs/flotilla/track/heads/main`).
fn track_ref(remote: &str) -> String {
    format!(
        "{TRACK_PREFIX}{}",
        remote.strip_prefix("refs/").unwrap_or(remote)
    )
}

/// The commit `name` points to (through tags), if it exists and is a commit.
fn commit_at(repo: &gix::Repository, name: &str) -> Option<ObjectId> {
    let mut reference = repo.try_find_reference(name).ok().flatten()?;
    let id = reference.peel_to_id().ok()?.detach();
    let header = repo.find_header(id).ok()?;
    (header.kind() == gix::object::Kind::Commit).then_some(id)
}

fn repo_error(path: &Path, err: &gix::Error) -> GitError {
    GitError::Repository {
        path: path.to_owned(),
        message: transport::one_line(err),
    }
}

/// Creates an empty bare repository at `dir` atomically (a crash never leaves half a repo
/// under the final name).
fn init_bare(dir: &Path) -> Result<(), GitError> {
    let io_error = |path: &Path, e: std::io::Error| GitError::Repository {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    let file_name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{}",
        file_name.unwrap_or_default(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    }
    gix::init_bare(&tmp).map_err(|e| repo_error(&tmp, &e))?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Someone else created it meanwhile: use theirs.
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(io_error(dir, e)),
    }
}
