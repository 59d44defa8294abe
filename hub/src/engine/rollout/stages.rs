//! The stages of one run through a pipeline — a revision on its way out, or an app's removal —
//! and the one walk that moves them on: batches of at most `maxParallel`, a batch done when each
//! of its clusters is done, soak, approvals, failures counted against `failureThreshold`. What
//! "done" and "failed" mean for a cluster is the caller's (healthy at the revision for a
//! release, the app gone for a removal). Pure: no clocks, no I/O.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::render::{Approval, ClusterId, ClusterInfo, ClusterSet, CountOrPercent, PipelineConfig};
pub use flotilla_proto::state::StageState;

/// The stage of an app without a pipeline.
pub const ALL_STAGE: &str = "all";
/// The implicit last stage: targeted clusters no stage selects.
pub const UNSTAGED: &str = "unstaged";

/// A stage of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRun {
    pub name: String,
    pub state: StageState,
    #[serde(default)]
    pub approval: bool,
    pub soak_ms: u64,
    pub max_parallel: CountOrPercent,
    /// The clusters of this stage (updated in id order).
    pub clusters: ClusterSet,
    /// Clusters that received the change, by when.
    #[serde(default)]
    pub updated: Sent,
    /// The batch in flight.
    #[serde(default)]
    pub batch: ClusterSet,
    #[serde(default)]
    pub soak_until_ms: Option<u64>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Failed clusters with the reason (reasons past the first [`MAX_REASONS`] are left empty,
    /// so a stage of 10,000 failed clusters stays small).
    #[serde(default)]
    pub failures: BTreeMap<ClusterId, String>,
}

/// How many failure reasons a stage keeps in full.
pub const MAX_REASONS: usize = 50;

/// Clusters that received a change, one set per moment (a batch): compact, and what the
/// health timeout of each cluster counts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sent(Vec<(u64, ClusterSet)>);

impl Sent {
    pub fn contains(&self, cluster: ClusterId) -> bool {
        self.0.iter().any(|(_, s)| s.contains(cluster))
    }

    /// When `cluster` received the change.
    pub fn at(&self, cluster: ClusterId) -> Option<u64> {
        self.0
            .iter()
            .find(|(_, s)| s.contains(cluster))
            .map(|(at, _)| *at)
    }

    /// Records that `clusters` received the change at `at_ms`.
    pub fn add(&mut self, at_ms: u64, clusters: &ClusterSet) {
        match self.0.last_mut() {
            Some((at, s)) if *at == at_ms => s.extend_set(clusters),
            _ => self.0.push((at_ms, clusters.clone())),
        }
    }

    pub fn remove(&mut self, cluster: ClusterId) {
        for (_, s) in &mut self.0 {
            s.remove(cluster);
        }
        self.0.retain(|(_, s)| !s.is_empty());
    }

    /// Every cluster with when it received the change.
    pub fn iter(&self) -> impl Iterator<Item = (ClusterId, u64)> + '_ {
        self.0
            .iter()
            .flat_map(|(at, s)| s.iter().map(move |c| (c, *at)))
    }

    /// Every cluster that received the change.
    pub fn all(&self) -> ClusterSet {
        let mut all = ClusterSet::new();
        for (_, s) in &self.0 {
            all.extend_set(s);
        }
        all
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|(_, s)| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl StageRun {
    pub fn new(
        name: &str,
        approval: bool,
        soak_ms: u64,
        max_parallel: CountOrPercent,
        clusters: ClusterSet,
    ) -> Self {
        StageRun {
            name: name.to_string(),
            state: StageState::Pending,
            approval,
            soak_ms,
            max_parallel,
            clusters,
            updated: Sent::default(),
            batch: ClusterSet::new(),
            soak_until_ms: None,
            approved_by: None,
            started_ms: None,
            finished_ms: None,
            failures: BTreeMap::new(),
        }
    }
}

/// Whether any stage sent its change to `cluster`.
pub fn reached(stages: &[StageRun], cluster: ClusterId) -> bool {
    stages.iter().any(|s| s.updated.contains(cluster))
}

/// Whether `cluster` failed in any stage.
pub fn failed_in(stages: &[StageRun], cluster: ClusterId) -> bool {
    stages.iter().any(|s| s.failures.contains_key(&cluster))
}

/// Every cluster the stages sent their change to.
pub fn reached_all(stages: &[StageRun]) -> ClusterSet {
    let mut all = ClusterSet::new();
    for s in stages {
        all.extend_set(&s.updated.all());
    }
    all
}

/// Where a walk over the stages stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A batch or a soak is under way.
    Moving,
    /// A stage waits for a person.
    WaitingApproval,
    /// The stage at this index reached its failure threshold.
    Failed(usize),
    /// Every stage succeeded.
    Done,
}

/// What a walk needs besides the stages.
pub struct Walk<'a, D, F> {
    pub now_ms: u64,
    pub threshold: CountOrPercent,
    /// Clusters pinned since the run started: done as far as it is concerned.
    pub pinned: &'a ClusterSet,
    /// Whether a cluster that received the change is done with it.
    pub done: D,
    /// Why a cluster that received the change at the given time fails it (`None`: not yet).
    pub failure: F,
}

/// Moves the stages on from `*current`; returns where it stopped, and adds the clusters that
/// were sent the change to `touched`.
pub fn walk<D, F>(
    stages: &mut [StageRun],
    current: &mut usize,
    w: &Walk<'_, D, F>,
    touched: &mut ClusterSet,
) -> Progress
where
    D: Fn(ClusterId) -> bool,
    F: Fn(ClusterId, u64) -> Option<String>,
{
    while *current < stages.len() {
        let stage = &mut stages[*current];
        match stage.state {
            StageState::Pending => {
                if stage.approval && stage.approved_by.is_none() {
                    stage.state = StageState::WaitingApproval;
                    return Progress::WaitingApproval;
                }
                stage.started_ms = Some(w.now_ms);
                if stage.clusters.is_empty() {
                    stage.state = StageState::Succeeded;
                    stage.finished_ms = Some(w.now_ms);
                    *current += 1;
                } else {
                    stage.state = StageState::Progressing;
                }
            }
            StageState::WaitingApproval => return Progress::WaitingApproval,
            StageState::Progressing | StageState::Soaking => {
                for (c, at) in stage.updated.iter() {
                    if w.pinned.contains(c) || stage.failures.contains_key(&c) {
                        continue;
                    }
                    if let Some(why) = (w.failure)(c, at) {
                        let why = if stage.failures.len() < MAX_REASONS {
                            why
                        } else {
                            String::new()
                        };
                        stage.failures.insert(c, why);
                    }
                }
                if !stage.failures.is_empty()
                    && stage.failures.len() >= w.threshold.of(stage.clusters.len())
                {
                    stage.state = StageState::Failed;
                    stage.finished_ms = Some(w.now_ms);
                    return Progress::Failed(*current);
                }
                if stage.state == StageState::Soaking {
                    if stage.soak_until_ms.is_some_and(|t| w.now_ms >= t) {
                        stage.state = StageState::Succeeded;
                        stage.finished_ms = Some(w.now_ms);
                        *current += 1;
                        continue;
                    }
                    return Progress::Moving;
                }
                let batch_done = stage.batch.iter().all(|c| {
                    w.pinned.contains(c) || stage.failures.contains_key(&c) || (w.done)(c)
                });
                if !batch_done {
                    return Progress::Moving;
                }
                let remaining = stage
                    .clusters
                    .difference(&stage.updated.all())
                    .difference(w.pinned);
                if remaining.is_empty() {
                    stage.batch.clear();
                    stage.state = StageState::Soaking;
                    stage.soak_until_ms = Some(w.now_ms + stage.soak_ms);
                    continue;
                }
                let n = stage.max_parallel.of(stage.clusters.len()).max(1);
                stage.batch = remaining.iter().take(n).collect();
                stage.updated.add(w.now_ms, &stage.batch);
                touched.extend_set(&stage.batch);
                return Progress::Moving;
            }
            StageState::Succeeded => *current += 1,
            StageState::Failed => return Progress::Failed(*current),
        }
    }
    Progress::Done
}

/// The message of a run that failed in `stage`, naming clusters with `name`.
pub fn failure_message(stage: &StageRun, name: &dyn Fn(ClusterId) -> String) -> String {
    let (c, why) = stage
        .failures
        .iter()
        .find(|(_, why)| !why.is_empty())
        .or_else(|| stage.failures.iter().next())
        .expect("a failed stage has a failure");
    format!(
        "stage {} failed ({} of {} clusters): {}: {why}",
        stage.name,
        stage.failures.len(),
        stage.clusters.len(),
        name(*c)
    )
}

/// Lets `stage` start when it waits for (or will need) an approval.
pub fn approve(stage: &mut StageRun, who: &str) -> Result<(), String> {
    if !stage.approval {
        return Err(format!("stage {} needs no approval", stage.name));
    }
    if !matches!(
        stage.state,
        StageState::Pending | StageState::WaitingApproval
    ) {
        return Err(format!(
            "stage {} is {}, not waiting for approval",
            stage.name,
            stage.state.as_str()
        ));
    }
    stage.approved_by = Some(who.to_string());
    if stage.state == StageState::WaitingApproval {
        stage.state = StageState::Pending;
    }
    Ok(())
}

/// The stages of a new run over `members`: each pipeline stage takes the members its selector
/// matches, in id order; members no stage selects go last (`unstaged`, or `all` when the
/// pipeline has no stages). Stages may overlap: a cluster belongs to the *first* stage (in
/// pipeline order) whose selector matches it, and to no other — a cluster labelled
/// `ring=canary` and `geo=eu` is in `canary`, not in `eu` — so every member is in exactly
/// one stage, and a later stage neither sends it the change nor counts or waits for it.
pub fn plan_stages(
    pipeline: &PipelineConfig,
    members: &ClusterSet,
    clusters: &[ClusterInfo],
) -> Vec<StageRun> {
    let known: HashMap<ClusterId, &ClusterInfo> = clusters.iter().map(|c| (c.id, c)).collect();
    let mut taken = ClusterSet::new();
    let mut stages = Vec::new();
    for stage in &pipeline.stages {
        let mut picked = ClusterSet::new();
        for c in members {
            let Some(info) = known.get(&c) else {
                continue;
            };
            // An earlier stage owns it.
            if taken.contains(c) {
                continue;
            }
            if stage.selector.matches(&info.labels) {
                taken.insert(c);
                picked.insert(c);
            }
        }
        stages.push(StageRun::new(
            &stage.name,
            stage.approval == Approval::Manual,
            stage.soak.as_millis() as u64,
            stage.max_parallel,
            picked,
        ));
    }
    let rest = members.difference(&taken);
    if !rest.is_empty() || stages.is_empty() {
        let name = if pipeline.stages.is_empty() {
            ALL_STAGE
        } else {
            UNSTAGED
        };
        stages.push(StageRun::new(
            name,
            false,
            0,
            CountOrPercent::Percent(100),
            rest,
        ));
    }
    stages
}
