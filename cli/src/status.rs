//! `flotilla status`: the fleet at a glance. Per group of clusters (the `region` label by
//! default) how many clusters are connected and how the apps on them are doing, the rollouts in
//! flight with their current stage, and the worst few clusters with the reasons.
//!
//! [`summarize`] is a pure function of the hub's answers (`ListClusters` with every cluster's
//! apps filled in (`with_apps`), and `ListRollouts`), the label, N and the time; [`run`]
//! fetches, renders, and with `--watch` redraws every `--interval` until Ctrl-C.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use flotilla_proto::clock::{rfc3339, unix_ms};
use flotilla_proto::state::{AppState, Health, ObjectHealth, Phase};
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::{
    Cluster, ClusterApp, ListClustersRequest, ListClustersResponse, ListRolloutsRequest,
    ListRolloutsResponse,
};
use serde::Serialize;
use tonic::transport::Channel;

use super::client::CliError;
use super::output::{self, Format, RolloutOut};
use flotilla_proto::revision::short;

/// How the group of clusters without the label is shown in the table.
pub const NO_LABEL: &str = "(none)";

/// Longest message (in characters) quoted in a reason.
const MESSAGE_MAX: usize = 60;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Group clusters by this label.
    #[arg(long = "by", value_name = "LABEL", default_value = "region")]
    pub by: String,
    /// How many of the worst clusters to list (only clusters with a problem are listed).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub worst: usize,
    /// Redraw every --interval until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch redraws.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("interval {s:?} is shorter than 100ms"));
    }
    Ok(d)
}

/// The whole answer, as `-o json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusOut {
    /// The label the clusters are grouped by.
    pub group_by: String,
    /// One entry per value of the label, sorted; clusters without the label last (`null`).
    pub regions: Vec<RegionOut>,
    /// Rollouts in flight (progressing, waiting for an approval, or paused).
    pub rollouts: Vec<RolloutSummary>,
    /// The worst clusters first; only clusters with a problem.
    pub worst: Vec<WorstOut>,
    pub totals: TotalsOut,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionOut {
    /// The label's value; `null` for the clusters without the label.
    pub region: Option<String>,
    pub clusters: ClusterCounts,
    pub apps: AppCounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClusterCounts {
    pub connected: u32,
    pub total: u32,
}

/// Cluster × app pairs by how they are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AppCounts {
    pub healthy: u32,
    pub progressing: u32,
    pub degraded: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutSummary {
    pub app: String,
    /// The full revision (the table shows it short).
    pub revision: Option<String>,
    /// `progressing`, `waiting_approval` or `paused`.
    pub state: String,
    /// The current stage's name and state.
    pub stage: Option<String>,
    pub stage_state: Option<String>,
    /// Clusters of the current stage that received the revision, of all in that stage.
    pub stage_updated: usize,
    pub stage_total: usize,
    /// Clusters that received the revision, of all in the pipeline's stages.
    pub updated: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorstOut {
    pub cluster: String,
    pub region: Option<String>,
    /// The cluster's state (`connected`, `disconnected`, `pending`).
    pub state: String,
    /// Short human reasons, the worst first.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TotalsOut {
    pub clusters: ClusterCounts,
    pub apps: AppCounts,
    pub rollouts: usize,
    /// Clusters with at least one problem (`worst` lists at most N of them).
    pub clusters_with_problems: usize,
}

/// How an app on a cluster is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppClass {
    Healthy,
    Progressing,
    Degraded,
}

/// Healthy: applied, healthy, and on the revision the hub wants there. Degraded: failed or
/// degraded, or on a cluster that is not connected (nobody reconciles it, its last report is
/// stale). Everything else (applying, progressing, unknown, not reported yet, an older revision)
/// is progressing.
pub fn classify(cluster_connected: bool, a: &ClusterApp) -> AppClass {
    if !cluster_connected || a.phase() == Phase::Failed || a.health() == Health::Degraded {
        AppClass::Degraded
    } else if a.healthy() && (a.desired_revision.is_empty() || a.desired_revision == a.revision) {
        AppClass::Healthy
    } else {
        AppClass::Progressing
    }
}

impl AppCounts {
    fn add(&mut self, class: AppClass) {
        match class {
            AppClass::Healthy => self.healthy += 1,
            AppClass::Progressing => self.progressing += 1,
            AppClass::Degraded => self.degraded += 1,
        }
    }

    fn sum(&mut self, o: &AppCounts) {
        self.healthy += o.healthy;
        self.progressing += o.progressing;
        self.degraded += o.degraded;
    }
}

/// Severity of a problem, the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Disconnected,
    NeverConnected,
    Failed,
    Degraded,
    Drifted,
    Progressing,
}

/// A cluster's problems, if it has any: the worst rank and the reasons, worst first.
fn problems(c: &Cluster, now_ms: u64) -> Option<(Rank, Vec<String>)> {
    match c.state.as_str() {
        "connected" => {}
        "pending" => return Some((Rank::NeverConnected, vec!["never connected".into()])),
        _ if c.last_seen_unix_ms == 0 => {
            return Some((Rank::NeverConnected, vec!["never connected".into()]));
        }
        state => {
            let since = now_ms.saturating_sub(c.last_seen_unix_ms);
            return Some((Rank::Disconnected, vec![format!("{state} {}", ago(since))]));
        }
    }
    let mut found: Vec<(Rank, String)> = Vec::new();
    for a in &c.apps {
        let app = &a.name;
        if a.phase() == Phase::Failed {
            found.push((Rank::Failed, format!("{app}: failed: {}", app_message(a))));
        } else if a.health() == Health::Degraded {
            found.push((
                Rank::Degraded,
                format!("{app}: degraded: {}", worst_object(a)),
            ));
        } else if classify(true, a) == AppClass::Progressing {
            found.push((Rank::Progressing, format!("{app}: {}", progress(a))));
        }
        if a.drifted > 0 {
            let s = if a.drifted == 1 { "" } else { "s" };
            found.push((
                Rank::Drifted,
                format!("{app}: {} object{s} drifted", a.drifted),
            ));
        }
    }
    found.sort_by_key(|(rank, _)| *rank);
    let rank = found.first()?.0;
    Some((rank, found.into_iter().map(|(_, r)| r).collect()))
}

/// What a progressing app waits for.
fn progress(a: &ClusterApp) -> String {
    match a.phase() {
        Phase::Unspecified => "not reported yet".into(),
        Phase::Applied if !a.desired_revision.is_empty() && a.desired_revision != a.revision => {
            format!("updating to {}", short(&a.desired_revision))
        }
        Phase::Applied => {
            let why = a
                .worst
                .iter()
                .find(|w| w.health() != ObjectHealth::Current)
                .map(|w| object_reason(w.kind.as_str(), &w.name, &w.reason, &w.message));
            match why {
                Some(why) => format!("{}: {why}", a.health()),
                None => a.health().to_string(),
            }
        }
        phase => phase.to_string(),
    }
}

fn app_message(a: &ClusterApp) -> String {
    if !a.message.is_empty() {
        return clip(&a.message);
    }
    worst_object(a)
}

/// The worst object of an app (the agent lists failed ones first) as `Kind/name Reason`.
fn worst_object(a: &ClusterApp) -> String {
    match a.worst.iter().find(|w| w.health() != ObjectHealth::Current) {
        Some(w) => object_reason(&w.kind, &w.name, &w.reason, &w.message),
        None if !a.message.is_empty() => clip(&a.message),
        None => "no object reported".into(),
    }
}

fn object_reason(kind: &str, name: &str, reason: &str, message: &str) -> String {
    let why = if reason.is_empty() { message } else { reason };
    clip(&format!("{kind}/{name} {why}"))
}

/// The first line of `s`, at most [`MESSAGE_MAX`] characters.
fn clip(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    if line.chars().count() <= MESSAGE_MAX {
        return line.to_string();
    }
    let cut: String = line.chars().take(MESSAGE_MAX - 1).collect();
    format!("{cut}…")
}

/// `45s`, `3m`, `5h`, `2d`.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The rollouts in flight.
fn rollouts(resp: &ListRolloutsResponse) -> Vec<RolloutSummary> {
    let mut out: Vec<RolloutSummary> = resp
        .rollouts
        .iter()
        .filter(|r| r.state().in_flight())
        .map(|r| {
            let o = RolloutOut::from(r);
            let stage = o.current();
            RolloutSummary {
                app: o.app.clone(),
                revision: o.revision.clone(),
                state: o.state.clone(),
                stage: stage.map(|s| s.name.clone()),
                stage_state: stage.map(|s| s.state.clone()),
                stage_updated: stage.map(|s| s.updated).unwrap_or_default(),
                stage_total: stage.map(|s| s.clusters.len()).unwrap_or_default(),
                updated: o.updated,
                total: o.total,
            }
        })
        .collect();
    out.sort_by(|a, b| a.app.cmp(&b.app));
    out
}

/// The fleet at a glance, from the hub's answers: `clusters` with each cluster's `apps` filled
/// in (as `GetCluster` returns them), grouped by the label `group_by`; at most `worst` clusters
/// with problems; `now_ms` (unix milliseconds) dates disconnections. Revoked (removed) clusters
/// are left out.
pub fn summarize(
    clusters: &ListClustersResponse,
    rollout_list: &ListRolloutsResponse,
    group_by: &str,
    worst: usize,
    now_ms: u64,
) -> StatusOut {
    let mut groups: BTreeMap<Option<&str>, (ClusterCounts, AppCounts)> = BTreeMap::new();
    // (rank, last seen for disconnections, name) orders the problems.
    let mut bad: Vec<(Rank, u64, WorstOut)> = Vec::new();
    for c in clusters.clusters.iter().filter(|c| c.state != "revoked") {
        let region = c.labels.get(group_by).map(String::as_str);
        let (counts, apps) = groups.entry(region).or_default();
        let connected = c.state == "connected";
        counts.total += 1;
        counts.connected += u32::from(connected);
        for a in &c.apps {
            apps.add(classify(connected, a));
        }
        if let Some((rank, reasons)) = problems(c, now_ms) {
            let seen = if rank == Rank::Disconnected {
                c.last_seen_unix_ms
            } else {
                0
            };
            bad.push((
                rank,
                seen,
                WorstOut {
                    cluster: c.name.clone(),
                    region: region.map(str::to_string),
                    state: c.state.clone(),
                    reasons,
                },
            ));
        }
    }
    // By rank; within it the longest disconnected first, then more reasons first, then by name.
    bad.sort_by(|(ra, sa, a), (rb, sb, b)| {
        ra.cmp(rb)
            .then(sa.cmp(sb))
            .then(b.reasons.len().cmp(&a.reasons.len()))
            .then(a.cluster.cmp(&b.cluster))
    });
    let mut totals = TotalsOut {
        clusters_with_problems: bad.len(),
        ..TotalsOut::default()
    };
    // `None` sorts first in a BTreeMap; the clusters without the label go last.
    let (unlabelled, labelled): (Vec<_>, Vec<_>) =
        groups.into_iter().partition(|(region, _)| region.is_none());
    let regions: Vec<RegionOut> = labelled
        .into_iter()
        .chain(unlabelled)
        .map(|(region, (clusters, apps))| {
            totals.clusters.connected += clusters.connected;
            totals.clusters.total += clusters.total;
            totals.apps.sum(&apps);
            RegionOut {
                region: region.map(str::to_string),
                clusters,
                apps,
            }
        })
        .collect();
    let rollouts = rollouts(rollout_list);
    totals.rollouts = rollouts.len();
    StatusOut {
        group_by: group_by.to_string(),
        regions,
        rollouts,
        worst: bad.into_iter().take(worst).map(|(_, _, w)| w).collect(),
        totals,
    }
}

/// The table output: the groups with a total row, the rollouts in flight, the worst clusters.
pub fn status_table(s: &StatusOut) -> String {
    let mut out = String::new();
    if s.regions.is_empty() {
        out.push_str("no clusters\n");
    } else {
        let row = |name: &str, c: &ClusterCounts, a: &AppCounts| {
            [
                name.to_string(),
                format!("{}/{} connected", c.connected, c.total),
                a.healthy.to_string(),
                a.progressing.to_string(),
                a.degraded.to_string(),
            ]
        };
        let regions = s.regions.iter().map(|r| {
            row(
                r.region.as_deref().unwrap_or(NO_LABEL),
                &r.clusters,
                &r.apps,
            )
        });
        let total = (s.regions.len() > 1).then(|| row("total", &s.totals.clusters, &s.totals.apps));
        out.push_str(&output::table(
            [
                s.group_by.to_uppercase(),
                "CLUSTERS".into(),
                "APPS HEALTHY".into(),
                "PROGRESSING".into(),
                "DEGRADED".into(),
            ],
            regions.chain(total),
        ));
    }
    if s.rollouts.is_empty() {
        out.push_str("no rollouts in progress\n");
    } else {
        out.push_str(&output::columns_table(
            &s.rollouts,
            &[
                ("ROLLOUT", |r| r.app.clone()),
                ("REVISION", |r| output::opt_short(r.revision.as_deref())),
                ("STATE", |r| r.state.clone()),
                ("STAGE", |r| match (&r.stage, &r.stage_state) {
                    (Some(n), Some(st)) => format!("{n} ({st})"),
                    (Some(n), None) => n.clone(),
                    _ => "-".into(),
                }),
                ("PROGRESS", |r| {
                    format!(
                        "{}/{} in stage, {}/{} overall",
                        r.stage_updated, r.stage_total, r.updated, r.total
                    )
                }),
            ],
        ));
    }
    if s.worst.is_empty() {
        out.push_str("no cluster has a problem\n");
    } else {
        out.push_str(&output::table(
            [
                "WORST CLUSTERS".to_string(),
                s.group_by.to_uppercase(),
                "REASONS".into(),
            ],
            s.worst.iter().map(|w| {
                [
                    w.cluster.clone(),
                    w.region.clone().unwrap_or_else(|| NO_LABEL.into()),
                    w.reasons.join("\n"),
                ]
            }),
        ));
        let more = s.totals.clusters_with_problems - s.worst.len();
        if more > 0 {
            out.push_str(&format!(
                "and {more} more cluster{} with problems (--worst N)\n",
                if more == 1 { "" } else { "s" }
            ));
        }
    }
    out
}

/// Asks the hub for every cluster (with its apps) and every rollout.
pub async fn fetch(
    admin: &mut AdminClient<Channel>,
) -> Result<(ListClustersResponse, ListRolloutsResponse), CliError> {
    let clusters = admin
        .list_clusters(ListClustersRequest { with_apps: true })
        .await?
        .into_inner();
    let rollouts = admin
        .list_rollouts(ListRolloutsRequest {})
        .await?
        .into_inner();
    Ok((clusters, rollouts))
}

/// One `flotilla status` invocation; with `--watch` it writes the frames itself and returns an
/// empty string at Ctrl-C.
pub async fn run(
    admin: &mut AdminClient<Channel>,
    args: &StatusArgs,
    fmt: Format,
) -> Result<String, CliError> {
    let snapshot = |admin: AdminClient<Channel>| {
        let args = args.clone();
        async move {
            let mut admin = admin;
            let (clusters, rollouts) = fetch(&mut admin).await?;
            let now = unix_ms(SystemTime::now());
            Ok::<_, CliError>(summarize(&clusters, &rollouts, &args.by, args.worst, now))
        }
    };
    if !args.watch {
        let s = snapshot(admin.clone()).await?;
        return Ok(output::render(fmt, &s, status_table));
    }
    let tty = std::io::stdout().is_terminal();
    let interval = args.interval;
    let admin = admin.clone();
    let frame = || {
        let next = snapshot(admin.clone());
        async move {
            let s = next.await;
            watch_frame(fmt, interval, SystemTime::now(), s)
        }
    };
    let stop = async {
        // Without a signal handler there is nothing to wait for but the end of the process.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    watch(frame, &mut std::io::stdout(), tty, interval, stop)
        .await
        .map_err(|e| CliError(format!("writing to stdout: {e}")))?;
    Ok(String::new())
}

/// One `--watch` frame: a table with a header line, or one compact JSON/YAML document. A failed
/// refresh shows the error and the watch goes on.
fn watch_frame(
    fmt: Format,
    interval: Duration,
    at: SystemTime,
    s: Result<StatusOut, CliError>,
) -> String {
    match (fmt, s) {
        (Format::Table, s) => {
            let head = format!(
                "flotilla status, every {}: {}\n",
                humantime::format_duration(interval),
                rfc3339(at)
            );
            match s {
                Ok(s) => head + &status_table(&s),
                Err(e) => head + &format!("error: {e}\n"),
            }
        }
        (Format::Json, Ok(s)) => serde_json::to_string(&s).expect("serializes") + "\n",
        (Format::Json, Err(e)) => {
            serde_json::to_string(&serde_json::json!({"error": e.to_string()})).expect("serializes")
                + "\n"
        }
        (Format::Yaml, Ok(s)) => format!("---\n{}", output::structured(Format::Yaml, &s)),
        (Format::Yaml, Err(e)) => format!("---\nerror: {:?}\n", e.to_string()),
    }
}

/// Writes a frame from `frame` every `interval` until `stop` completes. On a terminal each frame
/// replaces the previous one (cursor home, clear screen); otherwise the frames follow each
/// other, tables separated by a blank line.
pub async fn watch<F, Fut, W>(
    mut frame: F,
    out: &mut W,
    tty: bool,
    interval: Duration,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = String>,
    W: Write,
{
    tokio::pin!(stop);
    let mut first = true;
    loop {
        let text = tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            text = frame() => text,
        };
        if tty {
            write!(out, "\x1b[H\x1b[2J{text}")?;
        } else {
            if !first && !text.starts_with('{') && !text.starts_with("---") {
                writeln!(out)?;
            }
            write!(out, "{text}")?;
        }
        out.flush()?;
        first = false;
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::state::{RolloutState, StageState};
    use flotilla_proto::v1::{ObjectStatus, Rollout, RolloutStage};

    const NOW: u64 = 1_700_000_000_000;

    fn cluster(name: &str, region: Option<&str>, state: &str, apps: Vec<ClusterApp>) -> Cluster {
        Cluster {
            name: name.into(),
            labels: region
                .map(|r| [("region".to_string(), r.to_string())].into())
                .unwrap_or_default(),
            state: state.into(),
            last_seen_unix_ms: if state == "pending" { 0 } else { NOW - 1000 },
            apps,
            ..Cluster::default()
        }
    }

    fn app(name: &str, phase: &str, health: &str) -> ClusterApp {
        ClusterApp {
            name: name.into(),
            desired_revision: "r1".into(),
            revision: if phase.is_empty() { "" } else { "r1" }.into(),
            phase: phase.parse::<Phase>().expect("a phase").into(),
            health: health.parse::<Health>().expect("a health").into(),
            ..ClusterApp::default()
        }
    }

    fn healthy(name: &str) -> ClusterApp {
        app(name, "applied", "healthy")
    }

    fn list(clusters: Vec<Cluster>) -> ListClustersResponse {
        ListClustersResponse { clusters }
    }

    fn no_rollouts() -> ListRolloutsResponse {
        ListRolloutsResponse::default()
    }

    fn counts(healthy: u32, progressing: u32, degraded: u32) -> AppCounts {
        AppCounts {
            healthy,
            progressing,
            degraded,
        }
    }

    #[test]
    fn classification_of_an_app_on_a_cluster() {
        assert_eq!(classify(true, &healthy("web")), AppClass::Healthy);
        assert_eq!(
            classify(true, &app("web", "failed", "healthy")),
            AppClass::Degraded
        );
        assert_eq!(
            classify(true, &app("web", "applied", "degraded")),
            AppClass::Degraded
        );
        for (phase, health) in [
            ("applying", "unknown"),
            ("applied", "progressing"),
            ("applied", "unknown"),
            ("", "unknown"),
        ] {
            assert_eq!(
                classify(true, &app("web", phase, health)),
                AppClass::Progressing,
                "{phase}/{health}"
            );
        }
        // Applied and healthy, but on an older revision than the hub wants there.
        let mut old = healthy("web");
        old.desired_revision = "r2".into();
        assert_eq!(classify(true, &old), AppClass::Progressing);
        // No longer desired, still reported healthy: nothing to wait for.
        let mut leaving = healthy("web");
        leaving.desired_revision.clear();
        assert_eq!(classify(true, &leaving), AppClass::Healthy);
        // Nobody reconciles an app on a cluster that is not connected.
        assert_eq!(classify(false, &healthy("web")), AppClass::Degraded);
    }

    #[test]
    fn clusters_are_grouped_by_the_label_and_unlabelled_ones_come_last() {
        let mut us2 = cluster("us-2", Some("us"), "connected", vec![healthy("web")]);
        us2.labels.insert("ring".into(), "canary".into());
        let clusters = list(vec![
            cluster(
                "us-1",
                Some("us"),
                "connected",
                vec![healthy("web"), app("api", "applying", "unknown")],
            ),
            cluster(
                "eu-1",
                Some("eu"),
                "connected",
                vec![healthy("web"), app("api", "failed", "degraded")],
            ),
            cluster("eu-2", Some("eu"), "disconnected", vec![healthy("web")]),
            cluster("edge", None, "pending", vec![app("web", "", "unknown")]),
            us2,
            cluster("gone", Some("eu"), "revoked", vec![]),
        ]);
        let s = summarize(&clusters, &no_rollouts(), "region", 5, NOW);
        assert_eq!(s.group_by, "region");
        let got: Vec<_> = s
            .regions
            .iter()
            .map(|r| (r.region.as_deref(), r.clusters, r.apps))
            .collect();
        let cc = |connected, total| ClusterCounts { connected, total };
        assert_eq!(
            got,
            vec![
                (Some("eu"), cc(1, 2), counts(1, 0, 2)),
                (Some("us"), cc(2, 2), counts(2, 1, 0)),
                (None, cc(0, 1), counts(0, 0, 1)),
            ]
        );
        assert_eq!(s.totals.clusters, cc(3, 5));
        assert_eq!(s.totals.apps, counts(3, 1, 3));

        // Another label: every cluster but us-2 lacks it.
        let by_ring = summarize(&clusters, &no_rollouts(), "ring", 5, NOW);
        assert_eq!(by_ring.group_by, "ring");
        let names: Vec<_> = by_ring.regions.iter().map(|r| r.region.clone()).collect();
        assert_eq!(names, vec![Some("canary".to_string()), None]);
        assert_eq!(by_ring.regions[1].clusters, cc(2, 4));
        assert!(status_table(&by_ring).contains("RING"));
        assert!(status_table(&by_ring).contains(NO_LABEL));
    }

    #[test]
    fn the_worst_clusters_come_first_with_their_reasons() {
        let mut failed = app("web", "failed", "degraded");
        failed.message = "namespace \"shop\" not found\nsecond line".into();
        let mut degraded = app("api", "applied", "degraded");
        degraded.worst = vec![ObjectStatus {
            kind: "Deployment".into(),
            name: "api".into(),
            health: ObjectHealth::Failed.into(),
            reason: "ProgressDeadlineExceeded".into(),
            ..ObjectStatus::default()
        }];
        let mut drifted = healthy("web");
        drifted.drifted = 2;
        let mut old_gone = cluster("old-gone", Some("eu"), "disconnected", vec![]);
        old_gone.last_seen_unix_ms = NOW - 3 * 3600 * 1000;
        let mut new_gone = cluster("new-gone", Some("eu"), "disconnected", vec![healthy("web")]);
        new_gone.last_seen_unix_ms = NOW - 3 * 60 * 1000 - 5000;
        let clusters = list(vec![
            cluster("fine", Some("us"), "connected", vec![healthy("web")]),
            cluster(
                "slow",
                Some("us"),
                "connected",
                vec![app("web", "applying", "unknown")],
            ),
            cluster("drift", Some("us"), "connected", vec![drifted]),
            cluster(
                "deg",
                Some("us"),
                "connected",
                vec![degraded, healthy("web")],
            ),
            cluster("fail", None, "connected", vec![failed]),
            cluster("never", Some("us"), "pending", vec![]),
            new_gone,
            old_gone,
        ]);
        let s = summarize(&clusters, &no_rollouts(), "region", 10, NOW);
        let got: Vec<(&str, Vec<&str>)> = s
            .worst
            .iter()
            .map(|w| {
                (
                    w.cluster.as_str(),
                    w.reasons.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("old-gone", vec!["disconnected 3h"]),
                ("new-gone", vec!["disconnected 3m"]),
                ("never", vec!["never connected"]),
                ("fail", vec!["web: failed: namespace \"shop\" not found"]),
                (
                    "deg",
                    vec!["api: degraded: Deployment/api ProgressDeadlineExceeded"]
                ),
                ("drift", vec!["web: 2 objects drifted"]),
                ("slow", vec!["web: applying"]),
            ]
        );
        assert_eq!(s.worst[3].region, None);
        assert_eq!(s.worst[0].state, "disconnected");
        assert_eq!(s.totals.clusters_with_problems, 7);

        // Only N of them, and the table says how many more there are.
        let s = summarize(&clusters, &no_rollouts(), "region", 2, NOW);
        let names: Vec<_> = s.worst.iter().map(|w| w.cluster.as_str()).collect();
        assert_eq!(names, ["old-gone", "new-gone"]);
        let t = status_table(&s);
        assert!(t.contains("and 5 more clusters with problems"), "{t}");

        // A healthy fleet has nothing to list.
        let fine = list(vec![cluster(
            "fine",
            Some("us"),
            "connected",
            vec![healthy("web")],
        )]);
        let s = summarize(&fine, &no_rollouts(), "region", 5, NOW);
        assert!(s.worst.is_empty());
        assert!(status_table(&s).contains("no cluster has a problem"));
    }

    #[test]
    fn reasons_of_one_cluster_are_ordered_and_clipped() {
        let mut long = app("web", "failed", "unknown");
        long.message = "x".repeat(200);
        let mut drifted = app("api", "applied", "progressing");
        drifted.drifted = 1;
        let mut old = healthy("db");
        old.desired_revision = "0123456789abcdef".into();
        let c = cluster("c", Some("eu"), "connected", vec![drifted, old, long]);
        let (rank, reasons) = problems(&c, NOW).unwrap();
        assert_eq!(rank, Rank::Failed);
        assert_eq!(reasons.len(), 4);
        assert!(reasons[0].starts_with("web: failed: xxx"), "{reasons:?}");
        assert!(reasons[0].ends_with('…'));
        assert_eq!(
            reasons[0].chars().count(),
            "web: failed: ".len() + MESSAGE_MAX
        );
        assert_eq!(reasons[1], "api: 1 object drifted");
        assert_eq!(reasons[2], "api: progressing");
        assert_eq!(reasons[3], "db: updating to 0123456789ab");
    }

    #[test]
    fn rollouts_in_flight_show_their_current_stage() {
        let stage = |name: &str, state: &str, clusters: &[&str], updated: &[&str]| RolloutStage {
            name: name.into(),
            state: state.parse::<StageState>().expect("a stage state").into(),
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            updated: updated.iter().map(|c| c.to_string()).collect(),
            ..RolloutStage::default()
        };
        let rollouts = ListRolloutsResponse {
            rollouts: vec![
                Rollout {
                    app: "web".into(),
                    revision: "0123456789abcdef0123".into(),
                    state: RolloutState::Progressing.into(),
                    current_stage: 1,
                    stages: vec![
                        stage("canary", "succeeded", &["a"], &["a"]),
                        stage("prod", "progressing", &["b", "c", "d"], &["b"]),
                    ],
                    ..Rollout::default()
                },
                Rollout {
                    app: "api".into(),
                    revision: "fedcba".into(),
                    state: RolloutState::Succeeded.into(),
                    current_stage: 1,
                    stages: vec![stage("all", "succeeded", &["a"], &["a"])],
                    ..Rollout::default()
                },
                Rollout {
                    app: "db".into(),
                    ..Rollout::default()
                },
            ],
        };
        let s = summarize(&list(vec![]), &rollouts, "region", 5, NOW);
        assert_eq!(
            s.rollouts,
            vec![RolloutSummary {
                app: "web".into(),
                revision: Some("0123456789abcdef0123".into()),
                state: "progressing".into(),
                stage: Some("prod".into()),
                stage_state: Some("progressing".into()),
                stage_updated: 1,
                stage_total: 3,
                updated: 2,
                total: 4,
            }]
        );
        assert_eq!(s.totals.rollouts, 1);
        let t = status_table(&s);
        assert!(t.contains("0123456789ab "), "{t}");
        assert!(t.contains("prod (progressing)"), "{t}");
        assert!(t.contains("1/3 in stage, 2/4 overall"), "{t}");
        assert!(t.contains("no clusters"), "{t}");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let clusters = list(vec![
            cluster("eu-1", Some("eu"), "connected", vec![healthy("web")]),
            cluster("x", None, "pending", vec![]),
        ]);
        let s = summarize(&clusters, &no_rollouts(), "region", 5, NOW);
        let v: serde_json::Value =
            serde_json::from_str(&output::structured(Format::Json, &s)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "group_by": "region",
                "regions": [
                    {"region": "eu", "clusters": {"connected": 1, "total": 1},
                     "apps": {"healthy": 1, "progressing": 0, "degraded": 0}},
                    {"region": null, "clusters": {"connected": 0, "total": 1},
                     "apps": {"healthy": 0, "progressing": 0, "degraded": 0}},
                ],
                "rollouts": [],
                "worst": [{"cluster": "x", "region": null, "state": "pending",
                           "reasons": ["never connected"]}],
                "totals": {"clusters": {"connected": 1, "total": 2},
                           "apps": {"healthy": 1, "progressing": 0, "degraded": 0},
                           "rollouts": 0, "clusters_with_problems": 1},
            })
        );
    }

    #[test]
    fn durations_are_short() {
        for (ms, shown) in [
            (0, "0s"),
            (59_999, "59s"),
            (60_000, "1m"),
            (3_600_000, "1h"),
            (86_400_000 * 3, "3d"),
        ] {
            assert_eq!(ago(ms), shown, "{ms} ms");
        }
    }

    /// Runs `watch` until the `n`th frame has been asked for, then stops it.
    async fn frames(tty: bool, n: usize, text: &'static str) -> String {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut tx = Some(tx);
        let mut asked = 0;
        let frame = || {
            asked += 1;
            let k = asked;
            // Stops while the n-th frame is being made (as Ctrl-C during a refresh would).
            let last = if k == n { tx.take() } else { None };
            async move {
                if let Some(tx) = last {
                    let _ = tx.send(());
                }
                format!("frame {k}\n{text}")
            }
        };
        let mut out = Vec::new();
        let stop = async {
            let _ = rx.await;
        };
        watch(frame, &mut out, tty, Duration::ZERO, stop)
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn watch_redraws_in_place_on_a_terminal_until_stopped() {
        let out = frames(true, 3, "body\n").await;
        assert_eq!(
            out,
            "\x1b[H\x1b[2Jframe 1\nbody\n\x1b[H\x1b[2Jframe 2\nbody\n\x1b[H\x1b[2Jframe 3\nbody\n"
        );
    }

    #[tokio::test]
    async fn watch_prints_frames_one_after_the_other_elsewhere() {
        let out = frames(false, 2, "body\n").await;
        assert_eq!(out, "frame 1\nbody\n\nframe 2\nbody\n");
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn watch_frames_carry_a_header_or_are_one_document() {
        let s = summarize(&list(vec![]), &no_rollouts(), "region", 5, NOW);
        let at = flotilla_proto::clock::from_unix_ms(NOW);
        let t = watch_frame(Format::Table, Duration::from_secs(2), at, Ok(s.clone()));
        assert!(
            t.starts_with("flotilla status, every 2s: 2023-11-14T22:13:20"),
            "{t}"
        );
        let j = watch_frame(Format::Json, Duration::from_secs(2), at, Ok(s));
        assert_eq!(j.lines().count(), 1);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&j).unwrap()["group_by"],
            "region"
        );
        let e = watch_frame(
            Format::Table,
            Duration::from_secs(2),
            at,
            Err(CliError("hub unavailable".into())),
        );
        assert!(e.ends_with("error: hub unavailable\n"), "{e}");
    }
}
