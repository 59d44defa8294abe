//! What the demo shows while a rollout runs: a snapshot of the rollout and the clusters' reports
//! (read through the Admin API), drawn live as one progress bar per stage (indicatif) on a terminal, or printed as plain
//! lines of what changed otherwise (tests, CI logs, pipes).

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use flotilla_proto::revision::short;
use flotilla_proto::state::{AppState, Phase, RolloutState, StageState};
use flotilla_proto::v1::{ClusterApp, Rollout, RolloutStage};

/// Where one cluster of a stage stands with the rollout's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// The stage has not sent it the revision.
    Waiting,
    /// Sent; the agent has not reported it yet.
    Sent,
    /// Reported, not healthy yet: "phase, health".
    Applying(String),
    Healthy,
    Failed(String),
    /// The rollout was rolled back; the cluster is not back on the last good revision yet.
    RollingBack,
    /// Back on the last good revision, healthy.
    Restored,
}

impl Mark {
    fn symbol(&self) -> &'static str {
        match self {
            Mark::Waiting => "·",
            Mark::Sent => "→",
            Mark::Applying(_) => "…",
            Mark::Healthy => "✓",
            Mark::Failed(_) => "✗",
            Mark::RollingBack => "↺…",
            Mark::Restored => "↺✓",
        }
    }

    fn text(&self, revision: &str, good: &str) -> String {
        match self {
            Mark::Waiting => "waiting".into(),
            Mark::Sent => format!("sent {}", short(revision)),
            Mark::Applying(how) => format!("{how} on {}", short(revision)),
            Mark::Healthy => format!("healthy on {}", short(revision)),
            Mark::Failed(why) => format!("failed: {why}"),
            Mark::RollingBack => format!("rolling back to {}", short(good)),
            Mark::Restored => format!("rolled back: healthy on {}", short(good)),
        }
    }
}

/// One stage as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageLine {
    pub name: String,
    pub state: StageState,
    pub updated: usize,
    pub total: usize,
    /// Soak time left while soaking.
    pub soak_left_ms: Option<u64>,
    pub clusters: Vec<(String, Mark)>,
}

/// One app's rollout as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: String,
    pub state: RolloutState,
    pub message: String,
    pub last_good: String,
    pub stages: Vec<StageLine>,
}

impl Snapshot {
    /// The app's rollout as the Admin API shows it, with the clusters' reports of the app (by
    /// cluster); `None` before its first rollout.
    pub fn of(r: &Rollout, reports: &BTreeMap<String, ClusterApp>) -> Option<Self> {
        if r.state() == RolloutState::None {
            return None;
        }
        let last_good = r.last_good_revision.clone();
        let mark = |s: &RolloutStage, c: &str| {
            let on = |rev: &str| reports.get(c).filter(|a| a.revision == rev);
            if !s.updated.iter().any(|u| u == c) {
                return Mark::Waiting;
            }
            if r.state() == RolloutState::RolledBack {
                return match on(&last_good) {
                    Some(a) if a.healthy() => Mark::Restored,
                    _ => Mark::RollingBack,
                };
            }
            if let Some(why) = s.failures.get(c) {
                return Mark::Failed(why.clone());
            }
            match on(&r.revision) {
                None => Mark::Sent,
                Some(a) if a.healthy() => Mark::Healthy,
                Some(a) if a.phase() == Phase::Failed => Mark::Failed(a.message.clone()),
                Some(a) => Mark::Applying(format!("{}, {}", a.phase(), a.health())),
            }
        };
        Some(Snapshot {
            revision: r.revision.clone(),
            state: r.state(),
            message: r.message.clone(),
            last_good: last_good.clone(),
            stages: r
                .stages
                .iter()
                .map(|s| StageLine {
                    name: s.name.clone(),
                    state: s.state(),
                    updated: s.updated.len(),
                    total: s.clusters.len(),
                    soak_left_ms: (s.state() == StageState::Soaking)
                        .then_some(s.soak_remaining_seconds * 1000),
                    clusters: s.clusters.iter().map(|c| (c.clone(), mark(s, c))).collect(),
                })
                .collect(),
        })
    }

    /// Where the rollout stands, for a message saying it did not finish in time.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("rollout {}", self.state.as_str())];
        for s in &self.stages {
            if matches!(s.state, StageState::Pending | StageState::Succeeded) {
                continue;
            }
            let clusters: Vec<String> = s
                .clusters
                .iter()
                .filter(|(_, m)| !matches!(m, Mark::Healthy | Mark::Restored))
                .map(|(c, m)| format!("{c} {}", m.text(&self.revision, &self.last_good)))
                .collect();
            parts.push(format!(
                "stage {} {}{}",
                s.name,
                s.state.as_str(),
                if clusters.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", clusters.join("; "))
                }
            ));
        }
        parts.join(", ")
    }
}

/// The plain lines that say what changed from `before` to `now`.
pub fn changes(before: Option<&Snapshot>, now: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let before = before.filter(|b| b.revision == now.revision);
    if before.is_none() {
        let stages: Vec<String> = now
            .stages
            .iter()
            .map(|s| format!("{} ({})", s.name, s.total))
            .collect();
        out.push(format!(
            "rollout of {} started: {}",
            short(&now.revision),
            stages.join(" → ")
        ));
    }
    for (i, s) in now.stages.iter().enumerate() {
        let old = before.and_then(|b| b.stages.get(i));
        let mut stage_line = None;
        if old.map(|o| o.state) != Some(s.state)
            && (old.is_some() || s.state != StageState::Pending)
        {
            let soak = match s.soak_left_ms {
                Some(ms) => format!(
                    " for {}",
                    humantime::format_duration(Duration::from_millis(ms / 100 * 100))
                ),
                None => String::new(),
            };
            stage_line = Some(format!(
                "  stage {}: {}{soak} ({}/{} updated)",
                s.name,
                s.state.as_str(),
                s.updated,
                s.total
            ));
        }
        // A stage that starts or fails is said before its clusters; one whose clusters got
        // healthy (soaking, succeeded) after them.
        let after = matches!(s.state, StageState::Soaking | StageState::Succeeded);
        if !after {
            out.extend(stage_line.take());
        }
        for (j, (c, m)) in s.clusters.iter().enumerate() {
            let was = old.and_then(|o| o.clusters.get(j)).map(|(_, m)| m);
            if was != Some(m) && (was.is_some() || *m != Mark::Waiting) {
                out.push(format!(
                    "    {c}: {}",
                    m.text(&now.revision, &now.last_good)
                ));
            }
        }
        out.extend(stage_line);
    }
    if before.map(|b| b.state) != Some(now.state) && before.is_some() {
        out.push(rollout_line(now));
    }
    out
}

/// The line that says how a rollout stands (ended).
fn rollout_line(s: &Snapshot) -> String {
    let mut line = format!("rollout of {}: {}", short(&s.revision), s.state.as_str());
    if !s.message.is_empty() {
        line.push_str(" — ");
        line.push_str(&s.message);
    }
    line
}

// === View ===

/// Shows one rollout as it moves.
pub enum View {
    Plain {
        last: Option<Snapshot>,
    },
    Live {
        multi: MultiProgress,
        bars: Vec<ProgressBar>,
        last: Option<Snapshot>,
    },
}

impl View {
    pub fn new(live: bool) -> Self {
        if live {
            View::Live {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
                bars: Vec::new(),
                last: None,
            }
        } else {
            View::Plain { last: None }
        }
    }

    pub fn update(&mut self, snap: &Snapshot) {
        match self {
            View::Plain { last } => {
                for line in changes(last.as_ref(), snap) {
                    eprintln!("{line}");
                }
                *last = Some(snap.clone());
            }
            View::Live { multi, bars, last } => {
                if bars.is_empty() {
                    let style = ProgressStyle::with_template(
                        "  {prefix:<7} {bar:20.cyan/blue} {pos}/{len} {msg}",
                    )
                    .expect("a valid template")
                    .progress_chars("█▌░");
                    for s in &snap.stages {
                        let bar = multi.add(ProgressBar::new(s.total as u64));
                        bar.set_style(style.clone());
                        bar.set_prefix(s.name.clone());
                        bars.push(bar);
                    }
                }
                for (bar, s) in bars.iter().zip(&snap.stages) {
                    bar.set_length(s.total as u64);
                    bar.set_position(s.updated as u64);
                    bar.set_message(stage_message(s));
                }
                *last = Some(snap.clone());
            }
        }
    }

    /// Leaves the bars drawn as they are, stops drawing, and says how the rollout ended.
    pub fn finish(self) {
        if let View::Live { bars, last, .. } = self {
            for bar in bars {
                bar.abandon();
            }
            if let Some(snap) = last.filter(|s| !s.state.in_flight()) {
                eprintln!("{}", rollout_line(&snap));
            }
        }
    }
}

fn stage_message(s: &StageLine) -> String {
    let state = match s.soak_left_ms {
        Some(ms) => format!("soaking {:.1}s", ms as f64 / 1000.0),
        None => s.state.as_str().to_string(),
    };
    let clusters: Vec<String> = s
        .clusters
        .iter()
        .map(|(c, m)| format!("{c} {}", m.symbol()))
        .collect();
    format!("{state:<12} {}", clusters.join("  "))
}

/// The legend of the live view's symbols.
pub const LEGEND: &str =
    "  ✓ healthy  … applying  → sent  · waiting  ✗ failed  ↺ rolled back to the last good revision";

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: RolloutState, stage: StageState, mark: Mark) -> Snapshot {
        Snapshot {
            revision: "a".repeat(40),
            state,
            message: String::new(),
            last_good: "b".repeat(40),
            stages: vec![StageLine {
                name: "canary".into(),
                state: stage,
                updated: 1,
                total: 1,
                soak_left_ms: None,
                clusters: vec![("eu-1".into(), mark)],
            }],
        }
    }

    #[test]
    fn plain_lines_say_only_what_changed() {
        let first = snap(
            RolloutState::Progressing,
            StageState::Progressing,
            Mark::Sent,
        );
        let lines = changes(None, &first);
        assert_eq!(lines[0], "rollout of aaaaaaaaaaaa started: canary (1)");
        assert_eq!(lines[1], "  stage canary: progressing (1/1 updated)");
        assert_eq!(lines[2], "    eu-1: sent aaaaaaaaaaaa");
        assert!(changes(Some(&first), &first).is_empty());

        let mut failed = snap(
            RolloutState::RolledBack,
            StageState::Failed,
            Mark::RollingBack,
        );
        failed.message = "stage canary failed".into();
        assert_eq!(
            changes(Some(&first), &failed),
            [
                "  stage canary: failed (1/1 updated)",
                "    eu-1: rolling back to bbbbbbbbbbbb",
                "rollout of aaaaaaaaaaaa: rolled_back — stage canary failed",
            ]
        );
    }

    #[test]
    fn a_stall_names_the_stage_and_the_clusters_not_done() {
        let s = snap(
            RolloutState::Progressing,
            StageState::Progressing,
            Mark::Applying("applied, progressing".into()),
        );
        assert_eq!(
            s.describe(),
            "rollout progressing, stage canary progressing (eu-1 applied, progressing on aaaaaaaaaaaa)"
        );
    }
}
