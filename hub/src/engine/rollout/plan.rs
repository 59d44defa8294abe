//! The promotion of one app's revisions through its pipeline, as a pure state machine: the
//! record says where each revision stands; [`AppRollout::advance`] moves it on from what the
//! clusters report and the time; [`AppRollout::desired_for`] says which rendering each cluster
//! should run. No I/O here: the engine persists the record before it writes desired state, so a
//! restart resumes exactly where it was.
//!
//! Semantics (also in `docs/flotilla-yaml.md`):
//! - Every new revision of an app goes through its pipeline, the first one too; an app without a
//!   pipeline has one implicit stage `all` (every targeted cluster at once, halt on failure).
//!   Clusters the app targets but no stage selects form an implicit last stage `unstaged`; a
//!   cluster several stages select is the first one's (in pipeline order), and only its.
//! - Within a stage clusters move in batches of at most `maxParallel`; a batch is done when each
//!   of its clusters reports the revision applied and healthy. Then the stage soaks (it must stay
//!   healthy), then the next stage starts, or waits for approval.
//! - A cluster fails when it reports the revision `failed`, is not healthy within
//!   `healthTimeout` of receiving it, or stays disconnected past the grace period. When the
//!   stage's failures reach `failureThreshold` the rollout stops: `halt` leaves clusters as they
//!   are, `rollback` returns every cluster that received the revision to what *that cluster* ran
//!   before it (the newest revision it ran applied and healthy, else the one it ran); the app is
//!   removed only from a cluster that never ran it before. The revision is marked failed and
//!   never retried; a later commit starts afresh.
//! - A newer revision supersedes the one in flight: it starts again from the first stage, and
//!   clusters that already run the older revision keep it until the newer one reaches them (no
//!   back and forth). A superseded revision that reached and stayed healthy on a cluster counts
//!   as what that cluster ran.
//! - A commit that leaves an app's rendering unchanged, or a new cluster, is no new revision:
//!   those changes apply at once on top of the current revision.
//! - Clusters that lose the app (no longer targeted, the app or its source removed) lose it
//!   through the pipeline too, as a staged [`Removal`]; see `removal.rs`.
//! - A pinned cluster runs its pinned revision and is skipped by rollouts and removals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use super::groups::{ByRevision, Group, Groups};
use super::removal::default_max_removal;
pub use super::removal::{Cause, Removal};
use super::stages::{self, Progress, Walk};
pub use super::stages::{ALL_STAGE, StageRun, StageState, UNSTAGED};
pub use crate::render::{ClusterId, ClusterSet};
use crate::render::{ClusterInfo, CountOrPercent, OnFailure, PipelineConfig};
use crate::state::desired::AppEntry;
pub use crate::state::error::ActionError;
use flotilla_proto::revision::short;
pub use flotilla_proto::state::RolloutState;
use flotilla_proto::state::{AppState, Health, Phase};

/// How many renderings of an app are kept (for pins, rollbacks and held revisions).
pub const MAX_RENDERS: usize = 10;
/// How many failed revisions are remembered.
const MAX_FAILED: usize = 20;

/// One revision rendered for every targeted cluster: each distinct rendering once, with the
/// clusters that get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Render {
    pub revision: String,
    pub entries: Groups,
}

impl Render {
    /// A rendering known as `revision`, each of its `entries` stamped with that revision.
    pub fn stamped(
        revision: &str,
        entries: impl IntoIterator<Item = (ClusterId, AppEntry)>,
    ) -> Render {
        let mut entries = Groups::from_entries(entries.into_iter().map(|(cluster, mut entry)| {
            entry.revision = revision.to_owned();
            (cluster, entry)
        }));
        entries.stamp(revision);
        Render {
            revision: revision.to_owned(),
            entries,
        }
    }

    /// The rendering `entries` known as `revision` (every entry stamped with it).
    pub fn of_groups(revision: &str, mut entries: Groups) -> Render {
        entries.stamp(revision);
        Render {
            revision: revision.to_owned(),
            entries,
        }
    }

    /// The same rendering known as `revision`.
    fn restamped(mut self, revision: &str) -> Render {
        self.entries.stamp(revision);
        self.revision = revision.to_owned();
        self
    }

    /// Whether the clusters both renderings have get the same bundles and options.
    fn same_content(&self, other: &Render) -> bool {
        self.entries.groups().iter().all(|g| {
            other.entries.groups().iter().all(|o| {
                !g.clusters.intersects(&o.clusters)
                    || (o.entry.bundle_digest == g.entry.bundle_digest
                        && o.entry.options == g.entry.options)
            })
        })
    }
}

/// One revision on its way through the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub revision: String,
    pub state: RolloutState,
    pub stages: Vec<StageRun>,
    /// Index of the stage in progress (`stages.len()` when all are done).
    pub current: usize,
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub message: String,
    /// What most of the rollout's clusters ran when it started (`None`: nothing); each keeps
    /// what it ran until the rollout reaches it.
    #[serde(default)]
    pub base: Option<String>,
    /// The clusters that ran something else than `base` (`None`: nothing).
    #[serde(default)]
    pub held: ByRevision,
    /// Where a cluster goes back to should this rollout roll back, where that is not what it
    /// held: the newest revision it ran applied and healthy before this one (else the one it
    /// ran; `None`: it had no revision of the app before).
    #[serde(default)]
    pub prior: ByRevision,
    /// Set by an operator's rollback to a given revision: every cluster with a rendering of it
    /// goes there.
    #[serde(default)]
    pub rolled_back_to: Option<String>,
}

impl Rollout {
    pub fn was_updated(&self, cluster: ClusterId) -> bool {
        stages::reached(&self.stages, cluster)
    }

    /// What `cluster` ran when the rollout started (for clusters it has not reached).
    pub fn held_of(&self, cluster: ClusterId) -> Option<&str> {
        match self.held.get(cluster) {
            Some(h) => h,
            None => self.base.as_deref(),
        }
    }

    /// Where `cluster` returns on a rollback.
    pub fn prior_of(&self, cluster: ClusterId) -> Option<&str> {
        match self.prior.get(cluster) {
            Some(p) => p,
            None => self.held_of(cluster),
        }
    }

    /// The clusters of batches not yet done (sent the revision, not yet proven healthy).
    fn open_batches(&self) -> ClusterSet {
        let mut open = ClusterSet::new();
        for s in &self.stages {
            if matches!(s.state, StageState::Progressing | StageState::Failed) {
                open.extend_set(&s.batch);
            }
        }
        open
    }

    /// What `cluster`, running `current` now, goes back to should the *next* rollout roll back:
    /// this revision only where it proved itself (its batch completed, healthy, and it did not
    /// fail since); where a held revision was never replaced, that revision's own fallback.
    fn fallback_after(
        &self,
        cluster: ClusterId,
        current: &str,
        open: &ClusterSet,
    ) -> Option<String> {
        let unproven = if self.was_updated(cluster) {
            current == self.revision
                && (open.contains(cluster) || stages::failed_in(&self.stages, cluster))
        } else {
            self.held_of(cluster) == Some(current)
        };
        if unproven {
            return self.prior_of(cluster).map(str::to_string);
        }
        Some(current.to_string())
    }

    /// Every revision the rollout may send a cluster back to or keep it on.
    fn revisions(&self) -> impl Iterator<Item = &String> {
        let kept = self.held.revisions().chain(self.prior.revisions());
        std::iter::once(&self.revision)
            .chain(self.base.iter())
            .chain(kept)
            .chain(self.rolled_back_to.iter())
    }
}

/// What a cluster reports about an app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub revision: Arc<str>,
    pub phase: Phase,
    pub health: Health,
    pub message: Arc<str>,
    pub connected: bool,
    /// Unix ms of the last word from the cluster (0: never).
    pub last_seen_ms: u64,
}

impl AppState for ClusterView {
    fn reported(&self) -> (&str, Phase, Health) {
        (&self.revision, self.phase, self.health)
    }
}

impl ClusterView {
    /// Why the cluster, sent a change at `at`, counts as failed for being away: disconnected
    /// for longer than the grace period since then or since its last word.
    pub fn away_too_long(&self, at: u64, inp: &Inputs) -> Option<String> {
        let away_since = self.last_seen_ms.max(at);
        (!self.connected && inp.now_ms.saturating_sub(away_since) >= inp.grace_ms).then(|| {
            format!(
                "disconnected for more than {}",
                humantime::format_duration(std::time::Duration::from_millis(inp.grace_ms))
            )
        })
    }
}

/// What [`AppRollout::advance`] needs to know besides the record.
pub struct Inputs<'a> {
    pub now_ms: u64,
    /// What a cluster reports of the app (`ClusterView::default()`: it never reported).
    pub views: &'a dyn Fn(ClusterId) -> ClusterView,
    /// A cluster's name, for messages.
    pub names: &'a dyn Fn(ClusterId) -> String,
    /// How long a disconnected cluster may stay away before it counts as failed.
    pub grace_ms: u64,
    /// Set by [`AppRollout::advance`]: the earliest time at which time alone may fail a
    /// cluster it looked at (a health timeout or a grace period ending; `u64::MAX`: none).
    pub due: std::cell::Cell<u64>,
}

impl Inputs<'_> {
    /// What `cluster` reports (nothing, if it never reported).
    pub fn view(&self, cluster: ClusterId) -> ClusterView {
        (self.views)(cluster)
    }

    /// Notes that time alone may change things at `at_ms`.
    pub fn due_at(&self, at_ms: u64) {
        self.due.set(self.due.get().min(at_ms));
    }

    /// For a cluster sent a change at `at` that is not done with it: when its health timeout
    /// (`timeout_ms` after `at`) ends, and when its grace period ends if it is away.
    pub(super) fn watch(&self, v: &ClusterView, at: u64, timeout_ms: u64) {
        self.due_at(at.saturating_add(timeout_ms));
        if !v.connected {
            self.due_at(v.last_seen_ms.max(at).saturating_add(self.grace_ms));
        }
    }
}

/// Everything the hub keeps about an app's promotion (`/rollouts/<app>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRollout {
    pub app: String,
    /// The source that defines the app (its one owner).
    #[serde(default)]
    pub source: String,
    /// The pipeline's name (`None`: the app has none).
    #[serde(default)]
    pub pipeline_name: Option<String>,
    pub pipeline: PipelineConfig,
    /// How many of its clusters one change may take the app off without an approval.
    #[serde(default = "default_max_removal")]
    pub max_removal: CountOrPercent,
    /// Newest last.
    #[serde(with = "super::groups::renders")]
    pub renders: Vec<Render>,
    #[serde(default)]
    pub last_good: Option<String>,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// The newest removal of the app from some of its clusters.
    #[serde(default)]
    pub removal: Option<Removal>,
    /// The app left its source: it targets nothing, and the record goes once its removal is
    /// complete.
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub failed_revisions: Vec<String>,
    #[serde(default)]
    pub paused: bool,
    /// Cluster → pinned revision.
    #[serde(default)]
    pub pins: BTreeMap<ClusterId, String>,
}

/// What an offer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// A new rollout started.
    pub started: bool,
    /// Clusters whose desired entry changed at once.
    pub touched: ClusterSet,
}

fn refused(msg: impl Into<String>) -> ActionError {
    ActionError::Refused(msg.into())
}

/// Every cluster's desired entry at one moment.
type Snapshot = BTreeMap<ClusterId, Option<AppEntry>>;

impl AppRollout {
    pub fn new(app: &str, source: &str) -> Self {
        Self {
            app: app.to_string(),
            source: source.to_string(),
            pipeline_name: None,
            pipeline: PipelineConfig {
                stages: Vec::new(),
                health_timeout: crate::render::DEFAULT_HEALTH_TIMEOUT,
                on_failure: OnFailure::Halt,
                failure_threshold: CountOrPercent::Count(1),
                max_removal: None,
            },
            max_removal: default_max_removal(),
            renders: Vec::new(),
            last_good: None,
            rollout: None,
            removal: None,
            deleted: false,
            failed_revisions: Vec::new(),
            paused: false,
            pins: BTreeMap::new(),
        }
    }

    /// A copy without the renderings (the large part), for [`AppRollout::advance`], which
    /// does not read them; [`AppRollout::progress_differs`] compares what it changes.
    pub fn without_renders(&self) -> AppRollout {
        AppRollout {
            app: self.app.clone(),
            source: self.source.clone(),
            pipeline_name: self.pipeline_name.clone(),
            pipeline: self.pipeline.clone(),
            max_removal: self.max_removal,
            renders: Vec::new(),
            last_good: self.last_good.clone(),
            rollout: self.rollout.clone(),
            removal: self.removal.clone(),
            deleted: self.deleted,
            failed_revisions: self.failed_revisions.clone(),
            paused: self.paused,
            pins: self.pins.clone(),
        }
    }

    /// Whether `advance` changed anything between `self` and `other`.
    pub fn progress_differs(&self, other: &AppRollout) -> bool {
        self.rollout != other.rollout
            || self.removal != other.removal
            || self.last_good != other.last_good
            || self.failed_revisions != other.failed_revisions
    }

    /// When time alone moves the app on next, after an [`AppRollout::advance`] that left
    /// `due` in its inputs: a soak ending, a health timeout or a grace period expiring.
    /// `None`: only a report or an action can.
    pub fn next_due(&self, due: u64) -> Option<u64> {
        let soak = |stages: &[StageRun], current: usize| {
            stages
                .get(current)
                .filter(|s| s.state == StageState::Soaking)
                .and_then(|s| s.soak_until_ms)
        };
        let mut at = due;
        if let Some(r) = self.rollout.as_ref().filter(|r| r.state.in_flight())
            && let Some(t) = soak(&r.stages, r.current)
        {
            at = at.min(t);
        }
        if let Some(rm) = self.removal.as_ref().filter(|rm| rm.in_flight())
            && let Some(t) = soak(&rm.stages, rm.current)
        {
            at = at.min(t);
        }
        (at != u64::MAX && self.in_flight() && !self.paused).then_some(at)
    }

    /// Whether a rollout or a removal is under way (or waits for a person).
    pub fn in_flight(&self) -> bool {
        self.rollout.as_ref().is_some_and(|r| r.state.in_flight())
            || self.removal.as_ref().is_some_and(Removal::in_flight)
    }

    /// The app left its source and every cluster has let go of it: the record can go.
    pub fn finished(&self) -> bool {
        self.deleted && self.pins.is_empty() && self.removal.as_ref().is_none_or(Removal::complete)
    }

    pub fn render(&self, revision: &str) -> Option<&Render> {
        self.renders.iter().rev().find(|r| r.revision == revision)
    }

    fn entry(&self, revision: &str, cluster: ClusterId) -> Option<AppEntry> {
        self.render(revision)
            .and_then(|r| r.entries.get(cluster))
            .cloned()
    }

    /// The clusters the app targets now (its newest rendering; none once it is deleted).
    pub fn targets(&self) -> ClusterSet {
        match self.renders.last() {
            Some(r) if !self.deleted => r.entries.clusters(),
            _ => ClusterSet::new(),
        }
    }

    fn targeted(&self, cluster: ClusterId) -> bool {
        !self.deleted
            && self
                .renders
                .last()
                .is_some_and(|r| r.entries.contains(cluster))
    }

    /// Every cluster that may hold an entry of this app.
    pub fn known_clusters(&self) -> ClusterSet {
        let mut all = ClusterSet::new();
        for r in &self.renders {
            all.extend_set(&r.entries.clusters());
        }
        all.extend(self.pins.keys().copied());
        if let Some(rm) = &self.removal {
            all.extend_set(&rm.from.clusters());
        }
        all
    }

    /// The revision the app is on its way to, or settled on.
    pub fn effective_revision(&self) -> Option<&str> {
        match &self.rollout {
            Some(r) if r.state.in_flight() || r.state == RolloutState::Succeeded => {
                Some(&r.revision)
            }
            _ => self.last_good.as_deref(),
        }
    }

    /// What `cluster` should run of this app (`None`: nothing).
    /// Whether bundle `digest` is one of the app's renderings (or what a removal leaves until
    /// it reaches a cluster): a cheap test before [`Self::desired_for`].
    pub fn mentions_digest(&self, digest: &str) -> bool {
        self.renders.iter().any(|r| r.entries.has_digest(digest))
            || self
                .removal
                .as_ref()
                .is_some_and(|rm| rm.from.has_digest(digest))
    }

    pub fn desired_for(&self, cluster: ClusterId) -> Option<AppEntry> {
        if let Some(rev) = self.pins.get(&cluster) {
            return self.entry(rev, cluster);
        }
        if !self.targeted(cluster) {
            // Not targeted (any more): it keeps what it runs until a removal reaches it.
            return self.removal.as_ref()?.desired_for(cluster)?;
        }
        let rev = self.revision_for(cluster)?;
        self.entry(rev, cluster)
    }

    /// The revision a targeted, unpinned `cluster` should run.
    fn revision_for(&self, cluster: ClusterId) -> Option<&str> {
        if let Some(r) = &self.rollout {
            match r.state {
                // A stored rollout is never `Paused` (the operator's view of a paused app) or
                // `None`; were it so, the clusters it reached keep it.
                RolloutState::Progressing
                | RolloutState::WaitingApproval
                | RolloutState::Paused
                | RolloutState::None
                | RolloutState::Failed => {
                    if r.was_updated(cluster) {
                        return Some(&r.revision);
                    }
                    return r.held_of(cluster);
                }
                RolloutState::Succeeded => return Some(&r.revision),
                RolloutState::RolledBack => {
                    if let Some(to) = &r.rolled_back_to
                        && self.entry(to, cluster).is_some()
                    {
                        return Some(to);
                    }
                    if r.was_updated(cluster) {
                        return r.prior_of(cluster);
                    }
                    return r.held_of(cluster);
                }
                RolloutState::Superseded => {}
            }
        }
        // Clusters added since the rollout started run the revision the app settled on.
        self.last_good.as_deref()
    }

    /// Every known cluster's desired entry now, and those of `extra`.
    fn snapshot(&self, extra: &ClusterSet) -> Snapshot {
        self.known_clusters()
            .union(extra)
            .iter()
            .map(|c| (c, self.desired_for(c)))
            .collect()
    }

    /// The clusters whose desired entry differs between `before` (`None`: no record) and this
    /// record.
    pub fn changed_from(&self, before: Option<&AppRollout>) -> ClusterSet {
        let mut all = self.known_clusters();
        if let Some(b) = before {
            all.extend_set(&b.known_clusters());
        }
        all.iter()
            .filter(|c| self.desired_for(*c) != before.and_then(|b| b.desired_for(*c)))
            .collect()
    }

    /// The clusters whose desired entry differs from `before`.
    fn changed_since(&self, before: &Snapshot) -> ClusterSet {
        let mut all: ClusterSet = before.keys().collect();
        all.extend_set(&self.known_clusters());
        all.iter()
            .filter(|c| self.desired_for(*c) != before.get(c).cloned().flatten())
            .collect()
    }

    fn remember(&mut self, render: Render) {
        self.renders.retain(|r| r.revision != render.revision);
        self.renders.push(render);
        while self.renders.len() > MAX_RENDERS {
            let mut keep: BTreeSet<String> = self
                .last_good
                .iter()
                .chain(self.pins.values())
                .cloned()
                .collect();
            if let Some(r) = &self.rollout {
                keep.extend(r.revisions().cloned());
            }
            match self
                .renders
                .iter()
                .position(|r| !keep.contains(&r.revision))
            {
                Some(i) if i + 1 < self.renders.len() => {
                    self.renders.remove(i);
                }
                _ => break,
            }
        }
    }

    /// Takes a new rendering of the app (from a source sync) with the pipeline it uses now.
    /// Starts a rollout when the rendering differs from the revision the app is on; otherwise
    /// takes new clusters at once. Clusters that run the app but are no longer targeted lose
    /// it through a staged removal. A cluster that several stages select is the first one's
    /// ([`stages::plan_stages`]).
    pub fn offer(
        &mut self,
        render: Render,
        clusters: &[ClusterInfo],
        pipeline_name: Option<String>,
        pipeline: PipelineConfig,
        max_removal: CountOrPercent,
        now_ms: u64,
    ) -> Offer {
        let pinned: ClusterSet = self.pins.keys().collect();
        let targets = render.entries.clusters();
        let stages = stages::plan_stages(&pipeline, &targets.difference(&pinned), clusters);
        let before = self.snapshot(&targets);
        self.pipeline_name = pipeline_name;
        self.pipeline = pipeline;
        self.max_removal = max_removal;
        self.deleted = false;
        if let Some(rm) = &mut self.removal {
            for c in &targets {
                rm.cancel(c);
            }
        }
        let revision = render.revision.clone();
        let started = self.take_revision(render, stages, &before, now_ms);
        let targets = self.targets();
        let cause = Cause {
            revision: &revision,
            reason: "no longer targeted by the app",
            keep_resources: false,
            approved_by: None,
        };
        self.stage_removal(&before, |c| !targets.contains(c), cause, clusters, now_ms);
        Offer {
            started,
            touched: self.changed_since(&before),
        }
    }

    /// The new rendering as a revision: a new rollout (`true`), or nothing to promote.
    fn take_revision(
        &mut self,
        render: Render,
        stages: Vec<StageRun>,
        before: &Snapshot,
        now_ms: u64,
    ) -> bool {
        let base = self
            .effective_revision()
            .and_then(|rev| self.render(rev))
            .cloned();
        let failed_same = self.failed_revisions.iter().any(|f| {
            self.render(f)
                .is_some_and(|r| r.same_content(&render) && render.same_content(r))
        });
        let unchanged = base
            .as_ref()
            .is_some_and(|b| b.same_content(&render) && render.same_content(b));
        if failed_same && !unchanged {
            // The content of a revision that failed: it is not tried again.
            return false;
        }
        if let (true, Some(base)) = (unchanged, &base) {
            // The same content: keep the revision it is known as; take new clusters.
            self.remember(render.restamped(&base.revision));
            return false;
        }
        let old = self.rollout.take();
        // Per cluster of the new rollout: what it runs, and where it would go back to.
        let open = old.as_ref().map(Rollout::open_batches).unwrap_or_default();
        let members: Vec<(ClusterId, Option<String>, Option<String>)> = render
            .entries
            .clusters()
            .iter()
            .filter(|c| !self.pins.contains_key(c))
            .map(|c| {
                let runs = before.get(&c).cloned().flatten().map(|e| e.revision);
                let back = match (&old, &runs) {
                    (Some(o), Some(rev)) => o.fallback_after(c, rev, &open),
                    _ => runs.clone(),
                };
                (c, runs, back)
            })
            .collect();
        // Most clusters ran the same revision: keep only the others.
        let mut counts: BTreeMap<Option<&String>, usize> = BTreeMap::new();
        for (_, runs, _) in &members {
            *counts.entry(runs.as_ref()).or_default() += 1;
        }
        let base = counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .and_then(|(rev, _)| rev.cloned());
        let mut held = ByRevision::default();
        let mut prior = ByRevision::default();
        for (c, runs, back) in members {
            if runs != base {
                held.insert(c, runs.clone());
            }
            if back != runs {
                prior.insert(c, back);
            }
        }
        self.rollout = Some(Rollout {
            revision: render.revision.clone(),
            state: RolloutState::Progressing,
            stages,
            current: 0,
            started_ms: now_ms,
            base,
            held,
            prior,
            ..Default::default()
        });
        self.remember(render);
        true
    }

    /// Starts a removal of the clusters of `before` that run the app, match `lose` and are not
    /// pinned, unless the removal in flight already covers exactly them. Entries with
    /// `prune: false` are dropped at once (nothing is deleted for them).
    fn stage_removal(
        &mut self,
        before: &Snapshot,
        lose: impl Fn(ClusterId) -> bool,
        cause: Cause<'_>,
        clusters: &[ClusterInfo],
        now_ms: u64,
    ) {
        // Clusters the hub no longer has (removed, revoked) can receive nothing: they are
        // dropped at once, not staged.
        let known: ClusterSet = clusters.iter().map(|c| c.id).collect();
        let running: Vec<(ClusterId, &AppEntry)> = before
            .iter()
            .filter_map(|(c, e)| Some((*c, e.as_ref()?)))
            .filter(|(c, e)| !e.options.orphan && known.contains(*c))
            .collect();
        let from = Groups::from_entries(
            running
                .iter()
                .filter(|(c, e)| lose(*c) && !self.pins.contains_key(c) && !e.options.disable_prune)
                .map(|(c, e)| (*c, (*e).clone())),
        );
        if let Some(rm) = &mut self.removal
            && rm.unfinished()
            && rm.keep_resources == cause.keep_resources
        {
            // Clusters it has not reached that no longer lose the app here (targeted again, or
            // gone from the hub) leave it.
            let leaving = rm.pending().difference(&from.clusters());
            for c in &leaving {
                rm.cancel(c);
            }
            if rm.from.is_empty() {
                // Nothing left of it.
                self.removal = None;
            } else if rm.pending() == from.clusters() {
                // No new cluster: it goes on; its gate falls when it became small enough.
                if rm.gated() && from.len() <= self.max_removal.of(running.len()) {
                    rm.gate = None;
                    rm.state = RolloutState::Progressing;
                }
                return;
            }
        }
        if from.is_empty() {
            return;
        }
        self.removal = Some(Removal::plan(
            &self.app,
            from,
            running.len(),
            cause,
            &self.pipeline,
            self.max_removal,
            clusters,
            now_ms,
        ));
    }

    /// The app left its source: every cluster loses it through a staged removal, and the
    /// record goes once that is complete. Returns the clusters whose desired entry changed at
    /// once.
    pub fn retire(
        &mut self,
        cause: Cause<'_>,
        clusters: &[ClusterInfo],
        now_ms: u64,
    ) -> ClusterSet {
        let before = self.snapshot(&ClusterSet::new());
        self.deleted = true;
        if let Some(r) = &mut self.rollout
            && r.state.in_flight()
        {
            r.state = RolloutState::Superseded;
            r.finished_ms = Some(now_ms);
            r.message = format!("superseded by the app's removal: {}", cause.reason);
        }
        self.stage_removal(&before, |_| true, cause, clusters, now_ms);
        self.changed_since(&before)
    }

    /// Moves the rollout and the removal on; returns the clusters whose desired entry may have
    /// changed.
    pub fn advance(&mut self, inp: &Inputs) -> ClusterSet {
        if self.paused {
            return ClusterSet::new();
        }
        // Clusters pinned after a run started are done as far as it is concerned.
        let pinned: ClusterSet = self.pins.keys().collect();
        let mut touched = self.advance_rollout(inp, &pinned);
        if let Some(rm) = &mut self.removal {
            touched.extend_set(&rm.advance(inp, &self.pipeline, &pinned));
        }
        touched
    }

    fn advance_rollout(&mut self, inp: &Inputs, pinned: &ClusterSet) -> ClusterSet {
        let mut touched = ClusterSet::new();
        let timeout_ms = self.pipeline.health_timeout.as_millis() as u64;
        let on_failure = self.pipeline.on_failure;
        let Some(r) = self.rollout.as_mut() else {
            return touched;
        };
        if !r.state.in_flight() {
            return touched;
        }
        let revision = r.revision.clone();
        let walk = Walk {
            now_ms: inp.now_ms,
            threshold: self.pipeline.failure_threshold,
            pinned,
            done: |c: ClusterId| healthy(inp, c, &revision),
            failure: |c: ClusterId, at: u64| failure(inp, c, &revision, at, timeout_ms),
        };
        match stages::walk(&mut r.stages, &mut r.current, &walk, &mut touched) {
            Progress::Moving => r.state = RolloutState::Progressing,
            Progress::WaitingApproval => r.state = RolloutState::WaitingApproval,
            Progress::Failed(i) => {
                r.message = stages::failure_message(&r.stages[i], inp.names);
                r.finished_ms = Some(inp.now_ms);
                // A rollback sends each cluster it reached back to its prior (see
                // `revision_for`); a halt leaves them on this revision.
                r.state = match on_failure {
                    OnFailure::Rollback => RolloutState::RolledBack,
                    OnFailure::Halt => RolloutState::Failed,
                };
                touched.extend_set(&stages::reached_all(&r.stages));
                self.mark_failed(&revision);
            }
            Progress::Done => {
                r.state = RolloutState::Succeeded;
                r.finished_ms = Some(inp.now_ms);
                r.message = String::new();
                self.last_good = Some(revision);
                // Every target now runs the revision (including clusters unpinned meanwhile).
                touched.extend_set(&self.known_clusters());
            }
        }
        touched
    }

    fn mark_failed(&mut self, revision: &str) {
        self.failed_revisions.retain(|f| f != revision);
        self.failed_revisions.push(revision.to_string());
        if self.failed_revisions.len() > MAX_FAILED {
            self.failed_revisions.remove(0);
        }
    }

    /// Ends the rollout as rolled back by an operator: a cluster the rollout reached returns
    /// to what it ran before (nothing only if it never ran the app), the others keep what they
    /// run — or, with `to`, every cluster that has a rendering of that revision goes there.
    /// Returns the revision rolled back.
    fn roll_back(&mut self, to: Option<&str>, message: String, now_ms: u64) -> Option<String> {
        let r = self.rollout.as_mut()?;
        r.state = RolloutState::RolledBack;
        r.rolled_back_to = to.map(str::to_string);
        r.finished_ms = Some(now_ms);
        r.message = message;
        Some(r.revision.clone())
    }

    /// Lets what waits for a person start: the named stage (of the rollout, else of the
    /// removal), or with an empty `stage` whatever waits (a removal larger than `maxRemoval`,
    /// a halted removal to retry, or the one stage waiting). Returns what was approved.
    pub fn approve(&mut self, stage: &str, who: &str) -> Result<String, ActionError> {
        if stage.is_empty() {
            return self.approve_waiting(who);
        }
        let in_rollout = self
            .rollout
            .as_ref()
            .filter(|r| r.state.in_flight())
            .and_then(|r| r.stages.iter().position(|s| s.name == stage));
        let rollout_waits = in_rollout.is_some_and(|i| {
            let s = &self.rollout.as_ref().expect("found").stages[i];
            s.approval && s.approved_by.is_none()
        });
        let in_removal = self
            .removal
            .as_ref()
            .filter(|rm| rm.in_flight())
            .and_then(|rm| rm.stages.iter().position(|s| s.name == stage));
        if let (Some(i), false) = (in_removal, rollout_waits) {
            let rm = self.removal.as_mut().expect("found");
            let s = &mut rm.stages[i];
            if s.approval && s.approved_by.is_none() {
                stages::approve(s, who).map_err(refused)?;
                if !rm.gated() {
                    rm.state = RolloutState::Progressing;
                }
                return Ok(format!("stage {stage} of the removal of {}", self.app));
            }
        }
        let r = self
            .rollout
            .as_mut()
            .filter(|r| r.state.in_flight())
            .ok_or_else(|| refused(format!("app {} has no rollout in progress", self.app)))?;
        let i = in_rollout.ok_or_else(|| refused(format!("the rollout has no stage {stage:?}")))?;
        stages::approve(&mut r.stages[i], who).map_err(refused)?;
        r.state = RolloutState::Progressing;
        Ok(format!("stage {stage} of {}", self.app))
    }

    fn approve_waiting(&mut self, who: &str) -> Result<String, ActionError> {
        if let Some(rm) = &mut self.removal {
            if rm.gated() && rm.in_flight() {
                rm.approve(who).map_err(refused)?;
                return Ok(format!("the removal of {}", self.app));
            }
            if rm.state == RolloutState::Failed {
                rm.retry(who);
                return Ok(format!("a retry of the halted removal of {}", self.app));
            }
        }
        let waiting = |stages: &[StageRun]| {
            stages
                .iter()
                .find(|s| s.state == StageState::WaitingApproval)
                .map(|s| s.name.clone())
        };
        let stage = self
            .rollout
            .as_ref()
            .filter(|r| r.state.in_flight())
            .and_then(|r| waiting(&r.stages))
            .or_else(|| {
                self.removal
                    .as_ref()
                    .filter(|rm| rm.in_flight())
                    .and_then(|rm| waiting(&rm.stages))
            })
            .ok_or_else(|| refused(format!("nothing of app {} waits for an approval", self.app)))?;
        self.approve(&stage, who)
    }

    /// Ends the rollout: with `to`, every cluster goes to that kept revision (where it has a
    /// rendering for the cluster); without, a rollout in flight or halted is undone cluster by
    /// cluster (each back on what it ran before), and a settled app goes to its last good
    /// revision.
    pub fn rollback(&mut self, to: Option<&str>, now_ms: u64) -> Result<ClusterSet, ActionError> {
        let undo_in_place = to.is_none()
            && self
                .rollout
                .as_ref()
                .is_some_and(|r| r.state.in_flight() || r.state == RolloutState::Failed);
        let before = self.snapshot(&ClusterSet::new());
        let nothing_before = self.rollout.as_ref().is_some_and(|r| {
            self.last_good.is_none()
                && stages::reached_all(&r.stages)
                    .iter()
                    .all(|c| r.prior_of(c).is_none())
        });
        if undo_in_place && nothing_before {
            // A first release: undoing it would only take the app off the clusters.
            return Err(refused("no good revision to roll back to; give --to REV"));
        }
        if undo_in_place {
            let message = "rolled back by an operator: each cluster back on what it ran before";
            if let Some(revision) = self.roll_back(None, message.to_string(), now_ms) {
                self.mark_failed(&revision);
            }
            return Ok(self.changed_since(&before));
        }
        let target = match to {
            Some(rev) => rev.to_string(),
            None => self
                .last_good
                .clone()
                .ok_or_else(|| refused("no good revision to roll back to; give --to REV"))?,
        };
        let target = self
            .renders
            .iter()
            .rev()
            .find(|r| r.revision == target || r.revision.starts_with(&target))
            .map(|r| r.revision.clone())
            .ok_or_else(|| {
                refused(format!(
                    "revision {target} is not among the kept renderings ({})",
                    self.renders
                        .iter()
                        .map(|r| short(&r.revision))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if let Some(r) = &self.rollout
            && r.state.in_flight()
            && r.revision == target
        {
            return Err(refused(format!(
                "{} is the revision being rolled out; roll back to an earlier one",
                short(&target)
            )));
        }
        if self.rollout.as_ref().is_some_and(|r| r.revision != target) {
            let message = format!("rolled back to {} by an operator", short(&target));
            if let Some(revision) = self.roll_back(Some(&target), message, now_ms)
                && !self.failed_revisions.contains(&revision)
            {
                self.failed_revisions.push(revision);
            }
        }
        self.last_good = Some(target);
        Ok(self.changed_since(&before))
    }

    /// Pins `cluster` (named `name`) to `revision` (a kept rendering that includes the
    /// cluster).
    pub fn pin(
        &mut self,
        cluster: ClusterId,
        name: &str,
        revision: &str,
    ) -> Result<String, ActionError> {
        let render = self
            .renders
            .iter()
            .rev()
            .find(|r| r.revision == revision || r.revision.starts_with(revision))
            .ok_or_else(|| {
                refused(format!(
                    "revision {revision} is not among the kept renderings of {}",
                    self.app
                ))
            })?;
        if !render.entries.contains(cluster) {
            return Err(refused(format!(
                "revision {} of {} has no rendering for cluster {name}",
                short(&render.revision),
                self.app
            )));
        }
        let rev = render.revision.clone();
        self.pins.insert(cluster, rev.clone());
        Ok(rev)
    }
}

/// Whether `cluster` runs `revision` applied and healthy (and is not gone).
fn healthy(inp: &Inputs, cluster: ClusterId, revision: &str) -> bool {
    is_healthy(inp, &inp.view(cluster), revision)
}

fn is_healthy(inp: &Inputs, v: &ClusterView, revision: &str) -> bool {
    v.healthy_at(revision)
        && (v.connected || inp.now_ms.saturating_sub(v.last_seen_ms) < inp.grace_ms)
}

/// Why `cluster`, updated at `at`, fails `revision` (`None`: it does not, yet).
fn failure(
    inp: &Inputs,
    cluster: ClusterId,
    revision: &str,
    at: u64,
    timeout_ms: u64,
) -> Option<String> {
    let v = inp.view(cluster);
    if let Some(why) = v.away_too_long(at, inp) {
        return Some(why);
    }
    if *v.revision == *revision && v.phase == Phase::Failed {
        return Some(format!("failed: {}", v.message));
    }
    let healthy = is_healthy(inp, &v, revision);
    if healthy && !v.connected {
        // Healthy until its grace period ends.
        inp.due_at(v.last_seen_ms.saturating_add(inp.grace_ms));
    }
    if !healthy {
        inp.watch(&v, at, timeout_ms);
    }
    if inp.now_ms.saturating_sub(at) >= timeout_ms && !healthy {
        let what = if *v.revision == *revision {
            format!("{}, {}", v.phase, v.health)
        } else {
            "not reported".to_string()
        };
        return Some(format!(
            "not healthy within {} ({what}): {}",
            humantime::format_duration(std::time::Duration::from_millis(timeout_ms)),
            v.message
        ));
    }
    None
}
