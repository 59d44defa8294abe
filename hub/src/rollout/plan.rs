//! The promotion of one app's revisions through its pipeline, as a pure state machine: the
//! record says where each revision stands; [`AppRollout::advance`] moves it on from what the
//! clusters report and the time; [`AppRollout::desired_for`] says which rendering each cluster
//! should run. No I/O here: the engine persists the record before it writes desired state, so a
//! restart resumes exactly where it was.
//!
//! Semantics (also in `docs/flotilla-yaml.md`):
//! - Every new revision of an app goes through its pipeline, the first one too; an app without a
//!   pipeline has one implicit stage `all` (every targeted cluster at once, halt on failure).
//!   Clusters the app targets but no stage selects form an implicit last stage `unstaged`.
//! - Within a stage clusters move in batches of at most `maxParallel`; a batch is done when each
//!   of its clusters reports the revision applied and healthy. Then the stage soaks (it must stay
//!   healthy), then the next stage starts, or waits for approval.
//! - A cluster fails when it reports the revision `failed`, is not healthy within
//!   `healthTimeout` of receiving it, or stays disconnected past the grace period. When the
//!   stage's failures reach `failureThreshold` the rollout stops: `halt` leaves clusters as they
//!   are, `rollback` puts every cluster that received the revision back on the last good one.
//!   The revision is marked failed and never retried; a later commit starts afresh.
//! - A newer revision supersedes the one in flight: it starts again from the first stage, and
//!   clusters that already run the older revision keep it until the newer one reaches them (no
//!   back and forth).
//! - A commit that leaves an app's rendering unchanged, a new cluster, or relabelled clusters are
//!   no new revision: those changes apply at once on top of the current revision.
//! - A pinned cluster runs its pinned revision and is skipped by rollouts.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::desired::AppEntry;
use crate::render::{Approval, ClusterInfo, CountOrPercent, OnFailure, PipelineConfig};

/// How many renderings of an app are kept (for pins, rollbacks and held revisions).
pub const MAX_RENDERS: usize = 10;
/// How many failed revisions are remembered.
const MAX_FAILED: usize = 20;
/// The stage of an app without a pipeline.
pub const ALL_STAGE: &str = "all";
/// The implicit last stage: targeted clusters no stage selects.
pub const UNSTAGED: &str = "unstaged";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Progressing,
    WaitingApproval,
    Succeeded,
    Failed,
    RolledBack,
    Superseded,
}

impl RolloutState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::WaitingApproval => "waiting_approval",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Superseded => "superseded",
        }
    }

    /// Still moving (or waiting for a person).
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            RolloutState::Progressing | RolloutState::WaitingApproval
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Progressing,
    Soaking,
    WaitingApproval,
    Succeeded,
    Failed,
}

impl StageState {
    pub fn as_str(&self) -> &'static str {
        match self {
            StageState::Pending => "pending",
            StageState::Progressing => "progressing",
            StageState::Soaking => "soaking",
            StageState::WaitingApproval => "waiting_approval",
            StageState::Succeeded => "succeeded",
            StageState::Failed => "failed",
        }
    }
}

/// One revision rendered for every targeted cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Render {
    pub revision: String,
    pub entries: BTreeMap<String, AppEntry>,
}

impl Render {
    /// Whether the clusters both renderings have get the same bundles and options.
    fn same_content(&self, other: &Render) -> bool {
        self.entries.iter().all(|(c, e)| {
            other
                .entries
                .get(c)
                .is_none_or(|o| o.bundle_digest == e.bundle_digest && o.options == e.options)
        })
    }
}

/// A stage of one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRun {
    pub name: String,
    pub state: StageState,
    #[serde(default)]
    pub approval: bool,
    pub soak_ms: u64,
    pub max_parallel: CountOrPercent,
    /// The clusters of this stage, in the order they are updated.
    pub clusters: Vec<String>,
    /// Clusters that received the revision, with when.
    #[serde(default)]
    pub updated: BTreeMap<String, u64>,
    /// The batch in flight.
    #[serde(default)]
    pub batch: Vec<String>,
    #[serde(default)]
    pub soak_until_ms: Option<u64>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Failed clusters with the reason.
    #[serde(default)]
    pub failures: BTreeMap<String, String>,
}

/// One revision on its way through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Clusters that run an older, superseded revision until this one reaches them.
    #[serde(default)]
    pub held: BTreeMap<String, String>,
}

impl Rollout {
    fn was_updated(&self, cluster: &str) -> bool {
        self.stages.iter().any(|s| s.updated.contains_key(cluster))
    }
}

/// What a cluster reports about an app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub revision: String,
    pub phase: String,
    pub health: String,
    pub message: String,
    pub connected: bool,
    /// Unix ms of the last word from the cluster (0: never).
    pub last_seen_ms: u64,
}

impl ClusterView {
    /// Reports `revision` applied and healthy.
    pub fn healthy_at(&self, revision: &str) -> bool {
        self.revision == revision && self.phase == "applied" && self.health == "healthy"
    }
}

/// What [`AppRollout::advance`] needs to know besides the record.
pub struct Inputs<'a> {
    pub now_ms: u64,
    /// Per cluster of the app; a missing cluster has never reported.
    pub views: &'a BTreeMap<String, ClusterView>,
    /// How long a disconnected cluster may stay away before it counts as failed.
    pub grace_ms: u64,
}

/// Everything the hub keeps about an app's promotion (`/rollouts/<app>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRollout {
    pub app: String,
    #[serde(default)]
    pub source: String,
    /// The pipeline's name (`None`: the app has none).
    #[serde(default)]
    pub pipeline_name: Option<String>,
    pub pipeline: PipelineConfig,
    /// Newest last.
    pub renders: Vec<Render>,
    #[serde(default)]
    pub last_good: Option<String>,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub failed_revisions: Vec<String>,
    #[serde(default)]
    pub paused: bool,
    /// Cluster → pinned revision.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
}

/// What an offer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Nothing to promote; `touched` clusters changed at once (added, removed, relabelled).
    Applied { touched: Vec<String> },
    /// A new rollout started.
    Started,
}

/// Why an operator action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Refused(String),
}

fn refused(msg: impl Into<String>) -> ActionError {
    ActionError::Refused(msg.into())
}

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
            },
            renders: Vec::new(),
            last_good: None,
            rollout: None,
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
            renders: Vec::new(),
            last_good: self.last_good.clone(),
            rollout: self.rollout.clone(),
            failed_revisions: self.failed_revisions.clone(),
            paused: self.paused,
            pins: self.pins.clone(),
        }
    }

    /// Whether `advance` changed anything between `self` and `other`.
    pub fn progress_differs(&self, other: &AppRollout) -> bool {
        self.rollout != other.rollout
            || self.last_good != other.last_good
            || self.failed_revisions != other.failed_revisions
    }

    pub fn render(&self, revision: &str) -> Option<&Render> {
        self.renders.iter().rev().find(|r| r.revision == revision)
    }

    /// The clusters the app targets now (its newest rendering).
    pub fn targets(&self) -> BTreeSet<String> {
        self.renders
            .last()
            .map(|r| r.entries.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every cluster that may hold an entry of this app.
    pub fn known_clusters(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self
            .renders
            .iter()
            .flat_map(|r| r.entries.keys().cloned())
            .collect();
        all.extend(self.pins.keys().cloned());
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
    pub fn desired_for(&self, cluster: &str) -> Option<AppEntry> {
        let entry = |rev: &str| {
            self.render(rev)
                .and_then(|r| r.entries.get(cluster))
                .cloned()
        };
        if let Some(rev) = self.pins.get(cluster) {
            return entry(rev);
        }
        if !self.renders.last()?.entries.contains_key(cluster) {
            return None;
        }
        if let Some(r) = &self.rollout {
            match r.state {
                RolloutState::Progressing
                | RolloutState::WaitingApproval
                | RolloutState::Failed => {
                    if r.was_updated(cluster) {
                        return entry(&r.revision);
                    }
                    if let Some(old) = r.held.get(cluster) {
                        return entry(old);
                    }
                }
                RolloutState::Succeeded => return entry(&r.revision),
                RolloutState::RolledBack | RolloutState::Superseded => {}
            }
        }
        self.last_good.as_deref().and_then(entry)
    }

    fn remember(&mut self, render: Render) {
        self.renders.retain(|r| r.revision != render.revision);
        self.renders.push(render);
        while self.renders.len() > MAX_RENDERS {
            let keep: BTreeSet<String> = self
                .last_good
                .iter()
                .chain(self.pins.values())
                .chain(self.rollout.iter().map(|r| &r.revision))
                .chain(self.rollout.iter().flat_map(|r| r.held.values()))
                .cloned()
                .collect();
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
    /// applies target changes at once. `Err` when a cluster is selected by two stages.
    pub fn offer(
        &mut self,
        render: Render,
        clusters: &[ClusterInfo],
        pipeline_name: Option<String>,
        pipeline: PipelineConfig,
        now_ms: u64,
    ) -> Result<Offer, String> {
        let stages = plan_stages(&pipeline, &render, clusters, &self.pins)?;
        self.pipeline_name = pipeline_name;
        self.pipeline = pipeline;
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
            return Ok(Offer::Applied {
                touched: Vec::new(),
            });
        }
        if let (true, Some(base)) = (unchanged, &base) {
            // The same content: keep the revision it is known as; take new and dropped clusters.
            let base_rev = base.revision.clone();
            let before: BTreeMap<String, Option<AppEntry>> = self
                .known_clusters()
                .into_iter()
                .chain(render.entries.keys().cloned())
                .map(|c| {
                    let d = self.desired_for(&c);
                    (c, d)
                })
                .collect();
            let mut merged = self.render(&base_rev).cloned().unwrap_or(Render {
                revision: base_rev.clone(),
                entries: BTreeMap::new(),
            });
            merged.entries = render
                .entries
                .into_iter()
                .map(|(c, mut e)| {
                    e.revision = base_rev.clone();
                    (c, e)
                })
                .collect();
            self.remember(merged);
            let touched = before
                .into_iter()
                .filter(|(c, d)| self.desired_for(c) != *d)
                .map(|(c, _)| c)
                .collect();
            return Ok(Offer::Applied { touched });
        }
        let mut held = BTreeMap::new();
        if let Some(old) = &mut self.rollout
            && old.state.in_flight()
        {
            for s in &old.stages {
                for c in s.updated.keys() {
                    held.insert(c.clone(), old.revision.clone());
                }
            }
            for (c, rev) in &old.held {
                held.entry(c.clone()).or_insert(rev.clone());
            }
            old.state = RolloutState::Superseded;
            old.finished_ms = Some(now_ms);
        }
        let revision = render.revision.clone();
        self.rollout = Some(Rollout {
            revision: revision.clone(),
            state: RolloutState::Progressing,
            stages,
            current: 0,
            started_ms: now_ms,
            finished_ms: None,
            message: String::new(),
            held,
        });
        self.remember(render);
        Ok(Offer::Started)
    }

    /// Moves the rollout on; returns the clusters whose desired entry may have changed.
    pub fn advance(&mut self, inp: &Inputs) -> Vec<String> {
        let mut touched = Vec::new();
        if self.paused {
            return touched;
        }
        let timeout_ms = self.pipeline.health_timeout.as_millis() as u64;
        let threshold = self.pipeline.failure_threshold;
        let on_failure = self.pipeline.on_failure;
        let Some(r) = self.rollout.as_mut() else {
            return touched;
        };
        if !r.state.in_flight() {
            return touched;
        }
        let revision = r.revision.clone();
        // Clusters pinned after the rollout started are done as far as it is concerned.
        let pinned: BTreeSet<String> = self.pins.keys().cloned().collect();
        let mut failed_stage = None;
        while r.current < r.stages.len() {
            let stage = &mut r.stages[r.current];
            match stage.state {
                StageState::Pending => {
                    if stage.approval && stage.approved_by.is_none() {
                        stage.state = StageState::WaitingApproval;
                        r.state = RolloutState::WaitingApproval;
                        break;
                    }
                    stage.started_ms = Some(inp.now_ms);
                    r.state = RolloutState::Progressing;
                    if stage.clusters.is_empty() {
                        stage.state = StageState::Succeeded;
                        stage.finished_ms = Some(inp.now_ms);
                        r.current += 1;
                    } else {
                        stage.state = StageState::Progressing;
                    }
                }
                StageState::WaitingApproval => break,
                StageState::Progressing | StageState::Soaking => {
                    for (c, at) in &stage.updated {
                        if pinned.contains(c) {
                            continue;
                        }
                        if let Some(why) = failure(inp, c, &revision, *at, timeout_ms) {
                            stage.failures.entry(c.clone()).or_insert(why);
                        }
                    }
                    if !stage.failures.is_empty()
                        && stage.failures.len() >= threshold.of(stage.clusters.len())
                    {
                        stage.state = StageState::Failed;
                        stage.finished_ms = Some(inp.now_ms);
                        failed_stage = Some(r.current);
                        break;
                    }
                    if stage.state == StageState::Soaking {
                        if stage.soak_until_ms.is_some_and(|t| inp.now_ms >= t) {
                            stage.state = StageState::Succeeded;
                            stage.finished_ms = Some(inp.now_ms);
                            r.current += 1;
                            continue;
                        }
                        break;
                    }
                    let batch_done = stage.batch.iter().all(|c| {
                        pinned.contains(c)
                            || stage.failures.contains_key(c)
                            || healthy(inp, c, &revision)
                    });
                    if !batch_done {
                        break;
                    }
                    let remaining: Vec<String> = stage
                        .clusters
                        .iter()
                        .filter(|c| !stage.updated.contains_key(*c) && !pinned.contains(*c))
                        .cloned()
                        .collect();
                    if remaining.is_empty() {
                        stage.batch.clear();
                        stage.state = StageState::Soaking;
                        stage.soak_until_ms = Some(inp.now_ms + stage.soak_ms);
                        continue;
                    }
                    let n = stage.max_parallel.of(stage.clusters.len()).max(1);
                    stage.batch = remaining.into_iter().take(n).collect();
                    for c in &stage.batch {
                        stage.updated.insert(c.clone(), inp.now_ms);
                        touched.push(c.clone());
                    }
                    break;
                }
                StageState::Succeeded => r.current += 1,
                StageState::Failed => break,
            }
        }
        if let Some(i) = failed_stage {
            let stage = &r.stages[i];
            let (c, why) = stage.failures.iter().next().expect("a failure");
            r.message = format!(
                "stage {} failed ({} of {} clusters): {c}: {why}",
                stage.name,
                stage.failures.len(),
                stage.clusters.len()
            );
            r.finished_ms = Some(inp.now_ms);
            r.state = match on_failure {
                OnFailure::Rollback => {
                    touched.extend(r.stages.iter().flat_map(|s| s.updated.keys().cloned()));
                    touched.extend(r.held.keys().cloned());
                    RolloutState::RolledBack
                }
                OnFailure::Halt => RolloutState::Failed,
            };
            self.failed_revisions.retain(|f| *f != revision);
            self.failed_revisions.push(revision);
            if self.failed_revisions.len() > MAX_FAILED {
                self.failed_revisions.remove(0);
            }
        } else if r.current >= r.stages.len() {
            r.state = RolloutState::Succeeded;
            r.finished_ms = Some(inp.now_ms);
            r.message = String::new();
            r.held.clear();
            self.last_good = Some(revision);
            // Every target now runs the revision (including clusters unpinned meanwhile).
            touched.extend(self.known_clusters());
        }
        touched.sort();
        touched.dedup();
        touched
    }

    /// Lets a stage that waits for approval start.
    pub fn approve(&mut self, stage: &str, who: &str) -> Result<(), ActionError> {
        let r = self
            .rollout
            .as_mut()
            .filter(|r| r.state.in_flight())
            .ok_or_else(|| refused(format!("app {} has no rollout in progress", self.app)))?;
        let s = r
            .stages
            .iter_mut()
            .find(|s| s.name == stage)
            .ok_or_else(|| refused(format!("the rollout has no stage {stage:?}")))?;
        if !s.approval {
            return Err(refused(format!("stage {stage} needs no approval")));
        }
        if !matches!(s.state, StageState::Pending | StageState::WaitingApproval) {
            return Err(refused(format!(
                "stage {stage} is {}, not waiting for approval",
                s.state.as_str()
            )));
        }
        s.approved_by = Some(who.to_string());
        if s.state == StageState::WaitingApproval {
            s.state = StageState::Pending;
            r.state = RolloutState::Progressing;
        }
        Ok(())
    }

    /// Puts every cluster on `to` (default: the last good revision) and ends the rollout.
    pub fn rollback(&mut self, to: Option<&str>, now_ms: u64) -> Result<Vec<String>, ActionError> {
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
        let touched: Vec<String> = self.known_clusters().into_iter().collect();
        if let Some(r) = &mut self.rollout
            && r.revision != target
        {
            r.state = RolloutState::RolledBack;
            r.finished_ms = Some(now_ms);
            r.message = format!("rolled back to {} by an operator", short(&target));
            if !self.failed_revisions.contains(&r.revision) {
                self.failed_revisions.push(r.revision.clone());
            }
        }
        self.last_good = Some(target);
        Ok(touched)
    }

    /// Pins `cluster` to `revision` (a kept rendering that includes the cluster).
    pub fn pin(&mut self, cluster: &str, revision: &str) -> Result<String, ActionError> {
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
        if !render.entries.contains_key(cluster) {
            return Err(refused(format!(
                "revision {} of {} has no rendering for cluster {cluster}",
                short(&render.revision),
                self.app
            )));
        }
        let rev = render.revision.clone();
        self.pins.insert(cluster.to_string(), rev.clone());
        Ok(rev)
    }
}

pub fn short(rev: &str) -> String {
    rev[..rev.len().min(12)].to_string()
}

/// Whether `cluster` runs `revision` applied and healthy (and is not gone).
fn healthy(inp: &Inputs, cluster: &str, revision: &str) -> bool {
    inp.views.get(cluster).is_some_and(|v| {
        v.healthy_at(revision)
            && (v.connected || inp.now_ms.saturating_sub(v.last_seen_ms) < inp.grace_ms)
    })
}

/// Why `cluster`, updated at `at`, fails `revision` (`None`: it does not, yet).
fn failure(
    inp: &Inputs,
    cluster: &str,
    revision: &str,
    at: u64,
    timeout_ms: u64,
) -> Option<String> {
    let v = inp.views.get(cluster).cloned().unwrap_or_default();
    let away_since = v.last_seen_ms.max(at);
    if !v.connected && inp.now_ms.saturating_sub(away_since) >= inp.grace_ms {
        return Some(format!(
            "disconnected for more than {}",
            humantime::format_duration(std::time::Duration::from_millis(inp.grace_ms))
        ));
    }
    if v.revision == revision && v.phase == "failed" {
        return Some(format!("failed: {}", v.message));
    }
    if inp.now_ms.saturating_sub(at) >= timeout_ms && !healthy(inp, cluster, revision) {
        let what = if v.revision == revision {
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

/// The stages of a new rollout: each stage's clusters among the targets, in name order;
/// targeted clusters no stage selects go last; pinned clusters are skipped.
fn plan_stages(
    pipeline: &PipelineConfig,
    render: &Render,
    clusters: &[ClusterInfo],
    pins: &BTreeMap<String, String>,
) -> Result<Vec<StageRun>, String> {
    let labels: BTreeMap<&str, &BTreeMap<String, String>> = clusters
        .iter()
        .map(|c| (c.name.as_str(), &c.labels))
        .collect();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut stages = Vec::new();
    let run = |name: &str, approval, soak_ms, max_parallel, clusters| StageRun {
        name: name.to_string(),
        state: StageState::Pending,
        approval,
        soak_ms,
        max_parallel,
        clusters,
        updated: BTreeMap::new(),
        batch: Vec::new(),
        soak_until_ms: None,
        approved_by: None,
        started_ms: None,
        finished_ms: None,
        failures: BTreeMap::new(),
    };
    let targets: Vec<&String> = render
        .entries
        .keys()
        .filter(|c| !pins.contains_key(*c))
        .collect();
    for stage in &pipeline.stages {
        let mut members = Vec::new();
        for c in &targets {
            let Some(l) = labels.get(c.as_str()) else {
                continue;
            };
            if stage.selector.matches(l) {
                if let Some(other) = taken.insert((*c).clone(), stage.name.clone()) {
                    return Err(format!(
                        "cluster {c} is selected by two stages of the pipeline: {other} and {}",
                        stage.name
                    ));
                }
                members.push((*c).clone());
            }
        }
        stages.push(run(
            &stage.name,
            stage.approval == Approval::Manual,
            stage.soak.as_millis() as u64,
            stage.max_parallel,
            members,
        ));
    }
    let rest: Vec<String> = targets
        .iter()
        .filter(|c| !taken.contains_key(c.as_str()))
        .map(|c| (*c).clone())
        .collect();
    if !rest.is_empty() || stages.is_empty() {
        let name = if pipeline.stages.is_empty() {
            ALL_STAGE
        } else {
            UNSTAGED
        };
        stages.push(run(name, false, 0, CountOrPercent::Percent(100), rest));
    }
    Ok(stages)
}
