//! Taking an app off clusters as carefully as a release puts it on: the clusters that lose the
//! app (it left `flotilla.yaml`, they were relabelled out of its targets, its source was removed)
//! go through the app's pipeline — stage by stage, in batches, with soak and approvals — and a
//! removal larger than `maxRemoval` waits for a person before anything is deleted. A cluster is
//! done when its agent no longer reports the app; it fails when it stays away past the grace
//! period or still reports the app after `healthTimeout`. A failed removal halts: the clusters it
//! has not reached keep the app. Pure: the engine persists it like the rest of the record.

use serde::{Deserialize, Serialize};

use super::groups::Groups;
use super::plan::{ClusterView, Inputs, RolloutState};
use super::stages::{self, Progress, StageRun, StageState, Walk};
use crate::render::{
    ClusterId, ClusterInfo, ClusterSet, CountOrPercent, DEFAULT_MAX_REMOVAL, PipelineConfig,
};
use crate::state::desired::AppEntry;
use flotilla_proto::state::Phase;

pub fn default_max_removal() -> CountOrPercent {
    DEFAULT_MAX_REMOVAL
}

/// Why clusters lose an app, and how.
#[derive(Debug, Clone, Copy)]
pub struct Cause<'a> {
    /// The commit without the app, or that no longer targets the clusters (empty when the
    /// source itself was removed).
    pub revision: &'a str,
    pub reason: &'a str,
    /// Stop managing the app but leave its objects in the clusters.
    pub keep_resources: bool,
    /// Who approved the removal beforehand (a confirmed `source remove`), if anyone.
    pub approved_by: Option<&'a str>,
}

/// A removal of one app from some of its clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// The commit that removed the app from these clusters (empty for a source removal).
    pub revision: String,
    /// Why the clusters lose the app.
    pub reason: String,
    /// `progressing`, `waiting_approval`, `succeeded` or `failed` (halted).
    pub state: RolloutState,
    pub stages: Vec<StageRun>,
    /// Index of the stage in progress (`stages.len()` when all are done).
    pub current: usize,
    /// What each cluster runs until the removal reaches it.
    pub from: Groups,
    /// Stop managing the app but leave its objects in the clusters.
    #[serde(default)]
    pub keep_resources: bool,
    /// Why the removal waits for an approval before it starts (more than `maxRemoval`).
    #[serde(default)]
    pub gate: Option<String>,
    #[serde(default)]
    pub approved_by: Option<String>,
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub message: String,
}

impl Removal {
    /// A removal of `from` planned through `pipeline`; it waits for an approval when it takes
    /// the app off more than `max_removal` of the `total` clusters that run it (unless the
    /// cause says who approved it already).
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        app: &str,
        from: Groups,
        total: usize,
        cause: Cause<'_>,
        pipeline: &PipelineConfig,
        max_removal: CountOrPercent,
        clusters: &[ClusterInfo],
        now_ms: u64,
    ) -> Removal {
        // The same stages as a release: a cluster several stages select is the first one's.
        let stages = stages::plan_stages(pipeline, &from.clusters(), clusters);
        let allowed = max_removal.of(total);
        let gate = (from.len() > allowed).then(|| {
            format!(
                "removing app {app} from {} of its {total} clusters is more than maxRemoval {max_removal} allows: approve with `flotilla rollout approve {app}`",
                from.len()
            )
        });
        Removal {
            revision: cause.revision.to_string(),
            reason: cause.reason.to_string(),
            state: if gate.is_some() && cause.approved_by.is_none() {
                RolloutState::WaitingApproval
            } else {
                RolloutState::Progressing
            },
            stages,
            current: 0,
            from,
            keep_resources: cause.keep_resources,
            gate,
            approved_by: cause.approved_by.map(str::to_string),
            started_ms: now_ms,
            finished_ms: None,
            message: String::new(),
        }
    }

    pub fn in_flight(&self) -> bool {
        self.state.in_flight()
    }

    /// Still to be carried out: in flight, or halted (to retry).
    pub fn unfinished(&self) -> bool {
        self.in_flight() || self.state == RolloutState::Failed
    }

    /// Whether the removal waits for its size to be approved.
    pub fn gated(&self) -> bool {
        self.gate.is_some() && self.approved_by.is_none()
    }

    /// Clusters that still run the app until the removal reaches them.
    pub fn pending(&self) -> ClusterSet {
        self.from
            .clusters()
            .difference(&stages::reached_all(&self.stages))
    }

    /// What `cluster` should run while it is part of this removal: its old entry until the
    /// removal reaches it; then nothing, or (keeping resources) an entry that tells the agent
    /// to let go of the app without deleting it.
    pub fn desired_for(&self, cluster: ClusterId) -> Option<Option<AppEntry>> {
        let entry = self.from.get(cluster)?;
        if !stages::reached(&self.stages, cluster) {
            return Some(Some(entry.clone()));
        }
        if self.keep_resources {
            let mut e = entry.clone();
            e.options.orphan = true;
            return Some(Some(e));
        }
        Some(None)
    }

    /// Takes `cluster` out of the removal (it is targeted again).
    pub fn cancel(&mut self, cluster: ClusterId) {
        if self.from.remove(cluster).is_none() {
            return;
        }
        for s in &mut self.stages {
            s.clusters.remove(cluster);
            s.batch.remove(cluster);
            s.updated.remove(cluster);
            s.failures.remove(&cluster);
        }
    }

    /// Lets a gated removal start.
    pub fn approve(&mut self, who: &str) -> Result<(), String> {
        if !self.in_flight() {
            return Err("the removal is not in progress".into());
        }
        if !self.gated() {
            return Err("the removal does not wait for an approval".into());
        }
        self.approved_by = Some(who.to_string());
        self.state = RolloutState::Progressing;
        Ok(())
    }

    /// Goes on with a halted removal: its failures are forgotten and the clusters it has not
    /// finished are tried again (approved by `who`).
    pub fn retry(&mut self, who: &str) {
        for s in &mut self.stages {
            s.failures.clear();
            if s.state == StageState::Failed {
                s.state = StageState::Progressing;
                s.finished_ms = None;
            }
        }
        self.state = RolloutState::Progressing;
        self.finished_ms = None;
        self.message = String::new();
        self.approved_by = Some(who.to_string());
    }

    /// Moves the removal on; returns the clusters whose desired entry changed.
    pub fn advance(
        &mut self,
        inp: &Inputs,
        pipeline: &PipelineConfig,
        pinned: &ClusterSet,
    ) -> ClusterSet {
        let mut touched = ClusterSet::new();
        if !self.in_flight() {
            return touched;
        }
        if self.gated() {
            self.state = RolloutState::WaitingApproval;
            return touched;
        }
        let timeout_ms = pipeline.health_timeout.as_millis() as u64;
        let done = |c: ClusterId| inp.view(c).absent();
        let walk = Walk {
            now_ms: inp.now_ms,
            threshold: pipeline.failure_threshold,
            pinned,
            done,
            failure: |c: ClusterId, at: u64| {
                let v = inp.view(c);
                if let Some(why) = v.away_too_long(at, inp) {
                    return Some(why);
                }
                if !v.absent() || !v.connected {
                    inp.watch(&v, at, timeout_ms);
                }
                if inp.now_ms.saturating_sub(at) >= timeout_ms && !v.absent() {
                    return Some(format!(
                        "still runs the app {} after its removal ({}, {}): {}",
                        humantime::format_duration(std::time::Duration::from_millis(timeout_ms)),
                        v.phase,
                        v.health,
                        v.message
                    ));
                }
                None
            },
        };
        match stages::walk(&mut self.stages, &mut self.current, &walk, &mut touched) {
            Progress::Moving => self.state = RolloutState::Progressing,
            Progress::WaitingApproval => self.state = RolloutState::WaitingApproval,
            Progress::Failed(i) => {
                self.state = RolloutState::Failed;
                self.finished_ms = Some(inp.now_ms);
                self.message = format!(
                    "removal halted: {}; clusters not reached keep the app",
                    stages::failure_message(&self.stages[i], inp.names)
                );
            }
            Progress::Done => {
                self.state = RolloutState::Succeeded;
                self.finished_ms = Some(inp.now_ms);
            }
        }
        touched
    }

    /// One line for `source get` and `app get`: what the removal waits for, or where it is.
    pub fn note(&self, app: &str) -> String {
        let total = self.from.len();
        let done = self
            .from
            .clusters()
            .intersection(&stages::reached_all(&self.stages))
            .len();
        let what = if self.keep_resources {
            "release (objects kept)"
        } else {
            "removal"
        };
        match self.state {
            _ if self.gated() => self.gate.clone().unwrap_or_default(),
            RolloutState::Failed => self.message.clone(),
            RolloutState::Succeeded => format!("{what} of app {app} done on {total} clusters"),
            RolloutState::WaitingApproval => {
                let stage = self
                    .stages
                    .iter()
                    .find(|s| s.state == StageState::WaitingApproval)
                    .map(|s| s.name.as_str())
                    .unwrap_or_default();
                format!(
                    "{what} of app {app} ({}): stage {stage} waits for approval: `flotilla rollout approve {app} {stage}`",
                    self.reason
                )
            }
            _ => format!(
                "{what} of app {app} in progress ({}): sent to {done} of {total} clusters",
                self.reason
            ),
        }
    }

    /// Whether every cluster let go of the app (nothing failed, nothing left).
    pub fn complete(&self) -> bool {
        self.state == RolloutState::Succeeded && self.stages.iter().all(|s| s.failures.is_empty())
    }
}

impl ClusterView {
    /// The cluster does not report the app (never had it, or removed it).
    pub fn absent(&self) -> bool {
        self.revision.is_empty() && self.phase == Phase::Unspecified
    }
}
