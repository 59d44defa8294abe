//! The stages of one run through a pipeline — a revision on its way out, or an app's removal —
//! and the one walk that moves them on: batches of at most `maxParallel`, a batch done when each
//! of its clusters is done, soak, approvals, failures counted against `failureThreshold`. What
//! "done" and "failed" mean for a cluster is the caller's (healthy at the revision for a
//! release, the app gone for a removal). Pure: no clocks, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::render::{Approval, ClusterInfo, CountOrPercent, PipelineConfig};
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
    /// The clusters of this stage, in the order they are updated.
    pub clusters: Vec<String>,
    /// Clusters that received the change, with when.
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

impl StageRun {
    pub fn new(
        name: &str,
        approval: bool,
        soak_ms: u64,
        max_parallel: CountOrPercent,
        clusters: Vec<String>,
    ) -> Self {
        StageRun {
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
        }
    }
}

/// Whether any stage sent its change to `cluster`.
pub fn reached(stages: &[StageRun], cluster: &str) -> bool {
    stages.iter().any(|s| s.updated.contains_key(cluster))
}

/// Whether `cluster` failed in any stage.
pub fn failed_in(stages: &[StageRun], cluster: &str) -> bool {
    stages.iter().any(|s| s.failures.contains_key(cluster))
}

/// Every cluster the stages sent their change to.
pub fn reached_all(stages: &[StageRun]) -> impl Iterator<Item = &String> {
    stages.iter().flat_map(|s| s.updated.keys())
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
    pub pinned: &'a BTreeSet<String>,
    /// Whether a cluster that received the change is done with it.
    pub done: D,
    /// Why a cluster that received the change at the given time fails it (`None`: not yet).
    pub failure: F,
}

/// Moves the stages on from `*current`; returns where it stopped, and pushes the clusters that
/// were sent the change onto `touched`.
pub fn walk<D, F>(
    stages: &mut [StageRun],
    current: &mut usize,
    w: &Walk<'_, D, F>,
    touched: &mut Vec<String>,
) -> Progress
where
    D: Fn(&str) -> bool,
    F: Fn(&str, u64) -> Option<String>,
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
                for (c, at) in &stage.updated {
                    if w.pinned.contains(c) {
                        continue;
                    }
                    if let Some(why) = (w.failure)(c, *at) {
                        stage.failures.entry(c.clone()).or_insert(why);
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
                let batch_done = stage
                    .batch
                    .iter()
                    .all(|c| w.pinned.contains(c) || stage.failures.contains_key(c) || (w.done)(c));
                if !batch_done {
                    return Progress::Moving;
                }
                let remaining: Vec<String> = stage
                    .clusters
                    .iter()
                    .filter(|c| !stage.updated.contains_key(*c) && !w.pinned.contains(*c))
                    .cloned()
                    .collect();
                if remaining.is_empty() {
                    stage.batch.clear();
                    stage.state = StageState::Soaking;
                    stage.soak_until_ms = Some(w.now_ms + stage.soak_ms);
                    continue;
                }
                let n = stage.max_parallel.of(stage.clusters.len()).max(1);
                stage.batch = remaining.into_iter().take(n).collect();
                for c in &stage.batch {
                    stage.updated.insert(c.clone(), w.now_ms);
                    touched.push(c.clone());
                }
                return Progress::Moving;
            }
            StageState::Succeeded => *current += 1,
            StageState::Failed => return Progress::Failed(*current),
        }
    }
    Progress::Done
}

/// The message of a run that failed in `stage`.
pub fn failure_message(stage: &StageRun) -> String {
    let (c, why) = stage
        .failures
        .iter()
        .next()
        .expect("a failed stage has a failure");
    format!(
        "stage {} failed ({} of {} clusters): {c}: {why}",
        stage.name,
        stage.failures.len(),
        stage.clusters.len()
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
/// matches, in name order; members no stage selects go last (`unstaged`, or `all` when the
/// pipeline has no stages). `Err` when two stages select one cluster.
pub fn plan_stages<'a>(
    pipeline: &PipelineConfig,
    members: impl IntoIterator<Item = &'a String>,
    clusters: &[ClusterInfo],
) -> Result<Vec<StageRun>, String> {
    let labels: BTreeMap<&str, &BTreeMap<String, String>> = clusters
        .iter()
        .map(|c| (c.name.as_str(), &c.labels))
        .collect();
    let members: Vec<&String> = members.into_iter().collect();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut stages = Vec::new();
    for stage in &pipeline.stages {
        let mut picked = Vec::new();
        for c in &members {
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
                picked.push((*c).clone());
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
    let rest: Vec<String> = members
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
        stages.push(StageRun::new(
            name,
            false,
            0,
            CountOrPercent::Percent(100),
            rest,
        ));
    }
    Ok(stages)
}
