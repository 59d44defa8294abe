//! The demo's final report: the fleet, each rollout stage by stage, where every cluster ended up,
//! and what to try next — as tables, or as one JSON/YAML document (`-o json|yaml`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::fleet::{APP, CLUSTERS};
use crate::output::{self, AppOut, ClusterOut, Format};
use flotilla_proto::revision::short;
use flotilla_proto::v1::Rollout;

/// Everything the demo did, as `-o json|yaml` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct DemoOut {
    /// The hub's address (still reachable only with `--keep`).
    pub hub: String,
    /// The admin config for the CLI (`--keep` only: otherwise it is gone when the demo ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_config: Option<String>,
    /// The fleet repository (`--keep` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_repo: Option<String>,
    pub clusters: Vec<ClusterOut>,
    pub app: String,
    pub pipeline: String,
    /// The rollouts of the demo, oldest first: the promotion, then the bad release.
    pub rollouts: Vec<RolloutOut>,
    /// The revision the app runs at the end.
    pub last_good: Option<String>,
    pub apps: Vec<AppOut>,
}

/// One rollout as it ended.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutOut {
    pub revision: String,
    /// The commit's subject.
    pub subject: String,
    pub state: String,
    pub message: String,
    pub stages: Vec<StageOut>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageOut {
    pub name: String,
    pub state: String,
    pub clusters: Vec<String>,
    /// The clusters that received the revision.
    pub updated: Vec<String>,
    /// Failed clusters with the reason.
    pub failures: BTreeMap<String, String>,
}

impl RolloutOut {
    pub fn of(r: &Rollout, subject: &str) -> Self {
        RolloutOut {
            revision: r.revision.clone(),
            subject: subject.to_string(),
            state: r.state().to_string(),
            message: r.message.clone(),
            stages: r
                .stages
                .iter()
                .map(|s| StageOut {
                    name: s.name.clone(),
                    state: s.state().to_string(),
                    clusters: s.clusters.clone(),
                    updated: s.updated.clone(),
                    failures: s.failures.clone().into_iter().collect(),
                })
                .collect(),
        }
    }
}

/// The report in `fmt`; `keep` says whether the hub is still running.
pub fn render(out: &DemoOut, fmt: Format, keep: bool) -> String {
    output::render(fmt, out, |out| report_table(out, keep))
}

/// The report as tables, with what to try next.
fn report_table(out: &DemoOut, keep: bool) -> String {
    let mut s = String::new();
    let regions = {
        let mut r: Vec<&str> = CLUSTERS.iter().map(|c| c.1).collect();
        r.dedup();
        r.len()
    };
    let _ = writeln!(
        s,
        "\nFleet: {} agents in {regions} regions, each on a SIMULATED cluster (an in-memory Kubernetes API)",
        out.clusters.len()
    );
    s.push_str(&output::clusters_table(&out.clusters));
    let _ = writeln!(
        s,
        "\nRollouts of app {} through pipeline {}, oldest first:",
        out.app, out.pipeline
    );
    for r in &out.rollouts {
        let _ = writeln!(s, "\n{} {:?}: {}", short(&r.revision), r.subject, r.state);
        if !r.message.is_empty() {
            let _ = writeln!(s, "  {}", r.message);
        }
        s.push_str(&stages_table(r));
    }
    if let Some(good) = &out.last_good {
        let _ = writeln!(
            s,
            "\nEvery cluster now runs {} (the last good revision), as its agent reports:",
            short(good)
        );
    }
    let apps: Vec<AppOut> = out.apps.iter().filter(|a| a.name == APP).cloned().collect();
    s.push_str(&output::apps_table(&apps));
    s.push_str(&next_steps(out, keep));
    s
}

fn stages_table(r: &RolloutOut) -> String {
    output::columns_table(
        &r.stages,
        &[
            ("STAGE", |st| st.name.clone()),
            ("STATE", |st| st.state.clone()),
            ("UPDATED", |st| {
                format!("{}/{}", st.updated.len(), st.clusters.len())
            }),
            ("CLUSTERS", |st| {
                let clusters: Vec<String> = st
                    .clusters
                    .iter()
                    .map(|c| match st.failures.contains_key(c) {
                        true => format!("{c} (failed)"),
                        false => c.clone(),
                    })
                    .collect();
                clusters.join(", ")
            }),
        ],
    )
}

/// The CLI commands to try on the hub.
fn next_steps(out: &DemoOut, keep: bool) -> String {
    let config = out
        .admin_config
        .clone()
        .unwrap_or_else(|| "<the admin.yaml that --keep prints>".into());
    let canary = CLUSTERS[0].0;
    let mut s = String::new();
    if keep {
        let _ = writeln!(
            s,
            "\nThe hub is still running on {} with its {} agents; Ctrl-C stops them all.",
            out.hub,
            out.clusters.len()
        );
    } else {
        let _ = writeln!(
            s,
            "\nThe hub and the agents stopped with the demo. `flotilla demo --keep` leaves them running\n(until Ctrl-C) so that you can look around with the CLI:"
        );
    }
    let _ = writeln!(
        s,
        "The CLI finds the hub and its admin credential through --config FILE or FLOTILLA_CONFIG:\n  export FLOTILLA_CONFIG={config}"
    );
    for (cmd, what) in [
        (
            "status --watch".to_string(),
            "the fleet at a glance, per region (Ctrl-C to stop)",
        ),
        (
            format!("rollout status {APP}"),
            "the bad revision, rolled back: stage by stage",
        ),
        ("rollout list".to_string(), "every app's rollout"),
        ("cluster list".to_string(), "the six clusters"),
        (
            format!("cluster get {canary}"),
            "what the canary's agent applied",
        ),
        (format!("app get {APP}"), "desired and applied revisions"),
        (
            "audit".to_string(),
            "operator actions: approvals, rollbacks, pins",
        ),
    ] {
        let _ = writeln!(s, "  flotilla {cmd:<26} # {what}");
    }
    if let Some(repo) = out.fleet_repo.as_deref().filter(|_| keep) {
        let _ = writeln!(
            s,
            "A release of your own: edit the files in {repo}, then\n  git -C {repo} commit -qam 'my release' && flotilla source sync demo-fleet"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::state::{RolloutState, StageState};
    use flotilla_proto::v1::RolloutStage;

    fn out(keep: bool) -> DemoOut {
        let stage =
            |name: &str, state: StageState, updated: &[&str], failed: Option<&str>| RolloutStage {
                name: name.into(),
                state: state.into(),
                clusters: vec![format!("{name}-1")],
                updated: updated.iter().map(|c| c.to_string()).collect(),
                failures: failed
                    .map(|c| (c.to_string(), "failed: not healthy within 8s".to_string()))
                    .into_iter()
                    .collect(),
                ..Default::default()
            };
        let rollout = Rollout {
            revision: "b".repeat(40),
            state: RolloutState::RolledBack.into(),
            stages: vec![
                stage(
                    "canary",
                    StageState::Failed,
                    &["canary-1"],
                    Some("canary-1"),
                ),
                stage("eu", StageState::Pending, &[], None),
            ],
            message: "stage canary failed (1 of 1 clusters)".into(),
            ..Default::default()
        };
        DemoOut {
            hub: "127.0.0.1:7443".into(),
            admin_config: keep.then(|| "/tmp/x/hub/admin.yaml".into()),
            fleet_repo: keep.then(|| "/tmp/x/fleet".into()),
            clusters: Vec::new(),
            app: APP.into(),
            pipeline: "regions".into(),
            rollouts: vec![RolloutOut::of(&rollout, "bad release")],
            last_good: Some("a".repeat(40)),
            apps: Vec::new(),
        }
    }

    #[test]
    fn the_table_report_shows_the_rollouts_and_what_to_try_next() {
        let text = render(&out(true), Format::Table, true);
        for shown in [
            "bbbbbbbbbbbb \"bad release\": rolled_back",
            "stage canary failed (1 of 1 clusters)",
            "canary-1 (failed)",
            "runs aaaaaaaaaaaa",
            "still running on 127.0.0.1:7443",
            "export FLOTILLA_CONFIG=/tmp/x/hub/admin.yaml",
            "flotilla rollout status web",
            "flotilla status --watch",
            "git -C /tmp/x/fleet commit",
        ] {
            assert!(text.contains(shown), "{shown:?} is missing from {text}");
        }

        let text = render(&out(false), Format::Table, false);
        assert!(text.contains("flotilla demo --keep"), "{text}");
        assert!(!text.contains("git -C"), "{text}");

        let json: serde_json::Value =
            serde_json::from_str(&render(&out(false), Format::Json, false)).unwrap();
        assert_eq!(json["rollouts"][0]["stages"][1]["state"], "pending");
        assert!(json.get("admin_config").is_none());
    }
}
