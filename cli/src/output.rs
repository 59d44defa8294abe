//! Rendering of CLI results as a table (comfy-table), JSON or YAML.

use std::collections::BTreeMap;

use comfy_table::{Row, Table, presets::UTF8_BORDERS_ONLY};
use flotilla_proto::clock::rfc3339_ms;
use flotilla_proto::state::{Phase, RolloutState, StageState};
use flotilla_proto::v1::{
    App, AuditEntry, Cluster, ClusterApp, HubStatus, PinClusterResponse, Rollout, RolloutStage,
    Source, Token,
};
use serde::Serialize;

use flotilla_proto::revision::short;

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// A cluster as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterOut {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: String,
    pub last_seen: Option<String>,
    pub agent_version: Option<String>,
    pub cert_expires: Option<String>,
    pub identity: String,
    pub created: Option<String>,
    /// The agent's cluster backend while connected ("simulated" is not a real cluster).
    pub backend: Option<String>,
    /// While connected, with several hub replicas: the replica holding its session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_replica: Option<String>,
    /// Per app, the agent's last report (only `cluster get` fills it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<ClusterAppOut>>,
}

/// One app on one cluster, as the agent last reported it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterAppOut {
    pub name: String,
    pub desired_revision: Option<String>,
    pub revision: Option<String>,
    pub bundle_digest: Option<String>,
    pub phase: Option<String>,
    pub health: String,
    pub objects: ObjectCountsOut,
    pub drifted: u32,
    pub healed: u64,
    pub message: String,
    pub observed: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub worst: Vec<ObjectOut>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectCountsOut {
    pub total: u32,
    pub current: u32,
    pub in_progress: u32,
    pub failed: u32,
    pub unknown: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectOut {
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub health: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drifted_fields: Vec<String>,
}

impl From<&ClusterApp> for ClusterAppOut {
    fn from(a: &ClusterApp) -> Self {
        let o = a.objects.unwrap_or_default();
        Self {
            name: a.name.clone(),
            desired_revision: non_empty(&a.desired_revision),
            revision: non_empty(&a.revision),
            bundle_digest: non_empty(&a.bundle_digest),
            phase: non_empty(a.phase().as_str()),
            health: a.health().as_str().into(),
            objects: ObjectCountsOut {
                total: o.total,
                current: o.current,
                in_progress: o.in_progress,
                failed: o.failed,
                unknown: o.unknown,
            },
            drifted: a.drifted,
            healed: a.healed,
            message: a.message.clone(),
            observed: rfc3339_ms(a.observed_unix_ms),
            worst: a
                .worst
                .iter()
                .map(|w| ObjectOut {
                    api_version: w.api_version.clone(),
                    kind: w.kind.clone(),
                    namespace: non_empty(&w.namespace),
                    name: w.name.clone(),
                    health: w.health().as_str().into(),
                    reason: w.reason.clone(),
                    message: w.message.clone(),
                    drifted_fields: w.drifted_fields.clone(),
                })
                .collect(),
        }
    }
}

impl From<&Cluster> for ClusterOut {
    fn from(c: &Cluster) -> Self {
        Self {
            name: c.name.clone(),
            labels: c.labels.clone().into_iter().collect(),
            state: c.state.clone(),
            last_seen: rfc3339_ms(c.last_seen_unix_ms),
            agent_version: non_empty(&c.agent_version),
            cert_expires: rfc3339_ms(c.cert_expires_unix_ms),
            identity: c.identity.clone(),
            created: rfc3339_ms(c.created_unix_ms),
            backend: non_empty(&c.cluster_backend),
            hub_replica: non_empty(&c.hub_replica),
            apps: None,
        }
    }
}

impl ClusterOut {
    /// A cluster with, per app, the agent's last report (as `GetCluster` answers).
    pub fn with_apps(c: &Cluster) -> Self {
        Self {
            apps: Some(c.apps.iter().map(ClusterAppOut::from).collect()),
            ..Self::from(c)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenOut {
    pub id: String,
    pub cluster: String,
    pub state: String,
    pub reusable: bool,
    pub uses: u32,
    pub expires_at: Option<String>,
}

impl From<&Token> for TokenOut {
    fn from(t: &Token) -> Self {
        Self {
            id: t.id.clone(),
            cluster: t.cluster.clone(),
            state: t.state.clone(),
            reusable: t.reusable,
            uses: t.uses,
            expires_at: rfc3339_ms(t.expires_unix_ms),
        }
    }
}

pub fn structured<T: Serialize + ?Sized>(format: Format, v: &T) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(v).expect("serializes") + "\n",
        _ => serde_yaml_ng::to_string(v).expect("serializes"),
    }
}

/// `v` in `format`: as `table` draws it, or as JSON or YAML. Every command chooses its output
/// through this (or [`list`]).
pub fn render<T: Serialize + ?Sized>(
    format: Format,
    v: &T,
    table: impl FnOnce(&T) -> String,
) -> String {
    match format {
        Format::Table => table(v),
        f => structured(f, v),
    }
}

/// Wire messages as a list of their output form `O`, rendered in `format` (see [`render`]).
pub fn list<'a, W, O>(format: Format, items: &'a [W], table: impl FnOnce(&[O]) -> String) -> String
where
    O: From<&'a W> + Serialize,
{
    let rows: Vec<O> = items.iter().map(O::from).collect();
    render(format, rows.as_slice(), table)
}

/// A table in the CLI's style (borders only) with `header` and a row per item of `rows`, as the
/// text to print (with a final newline).
pub fn table<R: Into<Row>>(header: impl Into<Row>, rows: impl IntoIterator<Item = R>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header);
    t.add_rows(rows);
    format!("{t}\n")
}

/// A column of a [`columns_table`]: its header, and what a row shows in it.
pub type Column<T> = (&'static str, fn(&T) -> String);

/// `rows` as a [`table`] with one column per entry of `columns`.
pub fn columns_table<T>(rows: &[T], columns: &[Column<T>]) -> String {
    table(
        columns.iter().map(|(header, _)| *header),
        rows.iter()
            .map(|r| columns.iter().map(|(_, cell)| cell(r)).collect::<Vec<_>>()),
    )
}

/// `value`, or `absent` when there is none.
fn text_or(value: &Option<String>, absent: &str) -> String {
    value.clone().unwrap_or_else(|| absent.into())
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn clusters_table(rows: &[ClusterOut]) -> String {
    columns_table(
        rows,
        &[
            ("NAME", |c| c.name.clone()),
            ("LABELS", |c| labels_text(&c.labels)),
            ("STATE", |c| c.state.clone()),
            ("LAST SEEN", |c| text_or(&c.last_seen, "never")),
            ("AGENT", |c| match (&c.agent_version, &c.backend) {
                (Some(v), Some(b)) => format!("{v} ({b})"),
                (Some(v), None) => v.clone(),
                _ => "-".into(),
            }),
            ("CERT EXPIRES", |c| text_or(&c.cert_expires, "-")),
        ],
    )
}

pub fn tokens_table(rows: &[TokenOut]) -> String {
    columns_table(
        rows,
        &[
            ("ID", |t| t.id.clone()),
            ("CLUSTER", |t| t.cluster.clone()),
            ("STATE", |t| t.state.clone()),
            ("REUSABLE", |t| t.reusable.to_string()),
            ("USES", |t| t.uses.to_string()),
            ("EXPIRES", |t| text_or(&t.expires_at, "")),
        ],
    )
}

/// One cluster: a single-row table followed by its apps.
pub fn cluster_table(c: &ClusterOut) -> String {
    let mut out = clusters_table(std::slice::from_ref(c));
    if let Some(apps) = c.apps.as_ref().filter(|a| !a.is_empty()) {
        out.push_str(&cluster_apps_table(apps));
    }
    out
}

/// The apps of one cluster: revision, phase, health, object counts, drift, and the reason.
pub fn cluster_apps_table(apps: &[ClusterAppOut]) -> String {
    columns_table(
        apps,
        &[
            ("APP", |a| a.name.clone()),
            ("REVISION", |a| opt_short(a.revision.as_deref())),
            ("PHASE", |a| text_or(&a.phase, "-")),
            ("HEALTH", |a| a.health.clone()),
            ("OBJECTS", |a| {
                format!("{}/{} current", a.objects.current, a.objects.total)
            }),
            ("DRIFTED", |a| a.drifted.to_string()),
            ("MESSAGE", |a| a.message.clone()),
        ],
    )
}

/// A source as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceOut {
    pub name: String,
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: String,
    /// The remote ref the last successful fetch resolved `ref` to (for `HEAD`, the default
    /// branch then: `refs/heads/main`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_ref: Option<String>,
    pub path: String,
    pub interval: String,
    pub commit: Option<String>,
    pub last_fetch: Option<String>,
    pub error: Option<String>,
    pub secret_file: Option<String>,
    /// Kustomize and Helm renders may reach the network.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub render_network: bool,
    /// The tools the apps render with, with their versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    pub apps: Vec<String>,
    /// Apps with an error or a removal under way (all apps, with their clusters, from
    /// `source remove`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub app_states: Vec<SourceAppOut>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceAppOut {
    pub name: String,
    pub commit: Option<String>,
    pub error: Option<String>,
    pub removal: Option<String>,
    pub clusters: Vec<String>,
    /// `manifests`, `kustomize` or `helm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renderer: Option<String>,
}

/// `s`, or `None` when it is empty (the wire's "not set").
pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<&Source> for SourceOut {
    fn from(s: &Source) -> Self {
        Self {
            name: s.name.clone(),
            url: s.url.clone(),
            reference: s.r#ref.clone(),
            resolved_ref: non_empty(&s.resolved_ref),
            path: s.path.clone(),
            interval: seconds(s.interval_seconds),
            commit: non_empty(&s.commit),
            last_fetch: rfc3339_ms(s.last_fetch_unix_ms),
            error: non_empty(&s.error),
            secret_file: non_empty(&s.secret_file),
            render_network: s.render_network,
            tools: s.tools.clone(),
            apps: s.apps.clone(),
            app_states: s
                .app_states
                .iter()
                .map(|a| SourceAppOut {
                    name: a.name.clone(),
                    commit: non_empty(&a.commit),
                    error: non_empty(&a.error),
                    removal: non_empty(&a.removal),
                    clusters: a.clusters.clone(),
                    renderer: non_empty(&a.renderer),
                })
                .collect(),
        }
    }
}

impl SourceOut {
    /// The reference as given; `HEAD` with the branch it resolved to (`HEAD (main)`, or
    /// `HEAD (detached)` for a remote whose HEAD is no branch).
    pub fn reference_shown(&self) -> String {
        match (self.reference.as_str(), self.resolved_ref.as_deref()) {
            ("HEAD", Some("HEAD")) => "HEAD (detached)".into(),
            ("HEAD", Some(to)) => {
                format!("HEAD ({})", to.strip_prefix("refs/heads/").unwrap_or(to))
            }
            (given, _) => given.to_string(),
        }
    }
}

/// One source with, below its row, each app's error or removal.
pub fn source_table(row: &SourceOut) -> String {
    let mut out = sources_table(std::slice::from_ref(row));
    for tool in &row.tools {
        out += &format!("renders with {tool}\n");
    }
    if row.render_network {
        out += "renders may reach the network\n";
    }
    for a in &row.app_states {
        if let Some(e) = &a.error {
            out += &format!("app {}: error: {e}\n", a.name);
        }
        if let Some(r) = &a.removal {
            out += &format!("app {}: {r}\n", a.name);
        }
    }
    out
}

/// What removing a source takes away, one line per app with its clusters.
pub fn removal_summary(source: &Source, keep_resources: bool) -> String {
    let pairs: usize = source.app_states.iter().map(|a| a.clusters.len()).sum();
    let clusters: std::collections::BTreeSet<&String> =
        source.app_states.iter().flat_map(|a| &a.clusters).collect();
    let mut out = format!(
        "removing source {} takes {} apps off {} clusters ({pairs} app × cluster pairs); {}:\n",
        source.name,
        source.app_states.len(),
        clusters.len(),
        if keep_resources {
            "their objects stay in the clusters (no longer managed)"
        } else {
            "their objects are deleted, stage by stage through each app's pipeline"
        }
    );
    for a in &source.app_states {
        let on = if a.clusters.is_empty() {
            "no clusters".to_string()
        } else {
            a.clusters.join(", ")
        };
        out += &format!("  {}: {on}\n", a.name);
    }
    out
}

pub fn sources_table(rows: &[SourceOut]) -> String {
    columns_table(
        rows,
        &[
            ("NAME", |s| s.name.clone()),
            ("URL", |s| s.url.clone()),
            ("REF", SourceOut::reference_shown),
            ("COMMIT", |s| opt_short(s.commit.as_deref())),
            ("LAST FETCH", |s| text_or(&s.last_fetch, "never")),
            ("ERROR", |s| text_or(&s.error, "")),
        ],
    )
}

/// An app as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AppOut {
    pub name: String,
    pub source: String,
    pub commit: Option<String>,
    pub error: Option<String>,
    pub clusters: Vec<AppClusterOut>,
    /// A removal of the app from clusters that waits for approval, is under way or halted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal: Option<String>,
    /// Other sources that define an app of the same name, refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppClusterOut {
    pub name: String,
    pub desired_revision: String,
    pub applied_revision: Option<String>,
    pub bundle_digest: String,
    pub phase: Option<String>,
    pub health: Option<String>,
    pub message: Option<String>,
}

impl From<&App> for AppOut {
    fn from(a: &App) -> Self {
        Self {
            name: a.name.clone(),
            source: a.source.clone(),
            commit: non_empty(&a.commit),
            error: non_empty(&a.error),
            removal: non_empty(&a.removal),
            conflicts: a.conflicts.clone(),
            clusters: a
                .clusters
                .iter()
                .map(|c| AppClusterOut {
                    name: c.name.clone(),
                    desired_revision: c.desired_revision.clone(),
                    applied_revision: non_empty(&c.applied_revision),
                    bundle_digest: c.bundle_digest.clone(),
                    phase: non_empty(c.phase().as_str()),
                    // Only once the agent reported.
                    health: (c.phase() != Phase::Unspecified).then(|| c.health().to_string()),
                    message: non_empty(&c.message),
                })
                .collect(),
        }
    }
}

/// A row per app and cluster (one for an app on no cluster), then each app's removal and
/// conflicts.
pub fn apps_table(rows: &[AppOut]) -> String {
    let mut lines = Vec::new();
    for a in rows {
        let commit = opt_short(a.commit.as_deref());
        let error = text_or(&a.error, "");
        if a.clusters.is_empty() {
            lines.push([
                a.name.clone(),
                a.source.clone(),
                commit.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                error.clone(),
            ]);
        }
        for c in &a.clusters {
            lines.push([
                a.name.clone(),
                a.source.clone(),
                commit.clone(),
                c.name.clone(),
                short(&c.desired_revision),
                opt_short(c.applied_revision.as_deref()),
                text_or(&c.health, "-"),
                short(c.bundle_digest.trim_start_matches("sha256:")),
                error.clone(),
            ]);
        }
    }
    let mut out = table(
        [
            "APP", "SOURCE", "COMMIT", "CLUSTER", "DESIRED", "APPLIED", "HEALTH", "BUNDLE", "ERROR",
        ],
        lines,
    );
    for a in rows {
        if let Some(r) = &a.removal {
            out += &format!("app {}: {r}\n", a.name);
        }
        for c in &a.conflicts {
            out += &format!("app {}: also defined by {c}\n", a.name);
        }
    }
    out
}

// === Rollouts and audit ===

/// An app's rollout as the CLI shows it (`rollout status`, `rollout list`).
#[derive(Debug, Clone, Serialize)]
pub struct RolloutOut {
    pub app: String,
    pub source: String,
    pub pipeline: Option<String>,
    pub revision: Option<String>,
    /// `progressing`, `waiting_approval`, `paused`, `succeeded`, `failed`, `rolled_back`
    /// (`none` before the first rollout).
    pub state: String,
    pub paused: bool,
    pub last_good_revision: Option<String>,
    pub message: Option<String>,
    /// The stage in progress (the last one when all are done).
    pub current_stage: Option<String>,
    /// Clusters that received the revision, out of `total` in the stages.
    pub updated: usize,
    pub total: usize,
    pub started: Option<String>,
    pub finished: Option<String>,
    /// Cluster → pinned revision.
    pub pins: BTreeMap<String, String>,
    /// What most clusters ran when this rollout started (they keep it until it reaches them).
    pub held_base: Option<String>,
    /// Clusters that ran something else than `held_base` ("": nothing).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, String>,
    /// Where a cluster returns on a rollback, where that is not what it held ("": nothing).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub prior: BTreeMap<String, String>,
    pub failed_revisions: Vec<String>,
    pub stages: Vec<RolloutStageOut>,
    /// The newest removal of the app from some of its clusters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal: Option<RemovalOut>,
    /// Why the app's newest commit is not taken (a rendering that failed, a configuration
    /// problem, another source defining the app), each naming its source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Clusters losing an app, stage by stage (`rollout status`).
#[derive(Debug, Clone, Serialize)]
pub struct RemovalOut {
    pub revision: Option<String>,
    pub reason: String,
    /// `progressing`, `waiting_approval`, `succeeded`, `failed`.
    pub state: String,
    pub clusters: Vec<String>,
    /// Why it waits for `flotilla rollout approve APP`, when it does.
    pub gate: Option<String>,
    pub approved_by: Option<String>,
    pub keep_resources: bool,
    pub message: Option<String>,
    pub note: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub stages: Vec<RolloutStageOut>,
}

impl From<&flotilla_proto::v1::RolloutRemoval> for RemovalOut {
    fn from(r: &flotilla_proto::v1::RolloutRemoval) -> Self {
        Self {
            revision: non_empty(&r.revision),
            reason: r.reason.clone(),
            state: r.state().as_str().into(),
            clusters: r.clusters.clone(),
            gate: non_empty(&r.gate),
            approved_by: non_empty(&r.approved_by),
            keep_resources: r.keep_resources,
            message: non_empty(&r.message),
            note: r.note.clone(),
            started: rfc3339_ms(r.started_unix_ms),
            finished: rfc3339_ms(r.finished_unix_ms),
            stages: r.stages.iter().map(RolloutStageOut::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutStageOut {
    pub name: String,
    /// `pending`, `progressing`, `soaking`, `waiting_approval`, `succeeded`, `failed`.
    pub state: String,
    pub revision: String,
    pub clusters: Vec<String>,
    /// How many of `clusters` received the revision (`updated_clusters`).
    pub updated: usize,
    pub updated_clusters: Vec<String>,
    pub batch: Vec<String>,
    /// Failed cluster → reason.
    pub failures: BTreeMap<String, String>,
    /// `auto` or `manual`.
    pub approval: String,
    pub approved_by: Option<String>,
    pub max_parallel: String,
    pub soak: String,
    /// Only while soaking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak_remaining_seconds: Option<u64>,
    pub started: Option<String>,
    pub finished: Option<String>,
}

impl From<&RolloutStage> for RolloutStageOut {
    fn from(s: &RolloutStage) -> Self {
        Self {
            name: s.name.clone(),
            state: s.state().as_str().into(),
            revision: s.revision.clone(),
            clusters: s.clusters.clone(),
            updated: s.updated.len(),
            updated_clusters: s.updated.clone(),
            batch: s.batch.clone(),
            failures: s.failures.clone().into_iter().collect(),
            approval: if s.approval { "manual" } else { "auto" }.into(),
            approved_by: non_empty(&s.approved_by),
            max_parallel: s.max_parallel.clone(),
            soak: seconds(s.soak_seconds),
            soak_remaining_seconds: (s.state() == StageState::Soaking)
                .then_some(s.soak_remaining_seconds),
            started: rfc3339_ms(s.started_unix_ms),
            finished: rfc3339_ms(s.finished_unix_ms),
        }
    }
}

impl From<&Rollout> for RolloutOut {
    fn from(r: &Rollout) -> Self {
        let stages: Vec<RolloutStageOut> = r.stages.iter().map(RolloutStageOut::from).collect();
        let current = stages
            .get(r.current_stage as usize)
            .or(stages.last())
            .map(|s| s.name.clone());
        Self {
            app: r.app.clone(),
            source: r.source.clone(),
            pipeline: non_empty(&r.pipeline),
            revision: non_empty(&r.revision),
            state: match r.state() {
                RolloutState::None => "none".into(),
                state => state.to_string(),
            },
            paused: r.paused,
            last_good_revision: non_empty(&r.last_good_revision),
            message: non_empty(&r.message),
            current_stage: current,
            updated: stages.iter().map(|s| s.updated).sum(),
            total: stages.iter().map(|s| s.clusters.len()).sum(),
            started: rfc3339_ms(r.started_unix_ms),
            finished: rfc3339_ms(r.finished_unix_ms),
            pins: r.pins.clone().into_iter().collect(),
            held_base: non_empty(&r.held_base),
            held: r.held.clone().into_iter().collect(),
            prior: r.prior.clone().into_iter().collect(),
            failed_revisions: r.failed_revisions.clone(),
            stages,
            removal: r.removal.as_ref().map(RemovalOut::from),
            errors: r.errors.clone(),
        }
    }
}

fn seconds(s: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
}

/// A revision cut short, or `-` when there is none.
pub fn opt_short(rev: Option<&str>) -> String {
    rev.map(short).unwrap_or_else(|| "-".into())
}

impl RolloutOut {
    /// The stage in progress (the last one when all are done).
    pub fn current(&self) -> Option<&RolloutStageOut> {
        let name = self.current_stage.as_deref()?;
        self.stages.iter().find(|s| s.name == name)
    }
}

pub fn rollouts_table(rows: &[RolloutOut]) -> String {
    columns_table(
        rows,
        &[
            ("APP", |r| r.app.clone()),
            ("PIPELINE", |r| text_or(&r.pipeline, "-")),
            ("REVISION", |r| opt_short(r.revision.as_deref())),
            ("STATE", |r| r.state.clone()),
            ("STAGE", |r| {
                r.current()
                    .map(|s| format!("{} ({})", s.name, s.state))
                    .unwrap_or_else(|| "-".into())
            }),
            ("UPDATED", |r| format!("{}/{}", r.updated, r.total)),
            ("LAST GOOD", |r| opt_short(r.last_good_revision.as_deref())),
            ("REMOVAL", |r| {
                r.removal
                    .as_ref()
                    .filter(|rm| rm.state != "succeeded")
                    .map(|rm| format!("{} ({} clusters)", rm.state, rm.clusters.len()))
                    .unwrap_or_else(|| "-".into())
            }),
        ],
    )
}

/// One rollout: a summary, then a row per stage.
pub fn rollout_table(r: &RolloutOut) -> String {
    let mut out = format!(
        "app {} (source {}), pipeline {}\nrevision {}: {}{}\nlast good: {}\n",
        r.app,
        r.source,
        r.pipeline.as_deref().unwrap_or("none"),
        r.revision.as_deref().unwrap_or("-"),
        r.state,
        if r.paused && r.state != "paused" {
            " (app paused)"
        } else {
            ""
        },
        r.last_good_revision.as_deref().unwrap_or("-"),
    );
    if let Some(m) = &r.message {
        out.push_str(&format!("message: {m}\n"));
    }
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if !r.pins.is_empty() {
        let pins: Vec<String> = r
            .pins
            .iter()
            .map(|(c, rev)| format!("{c}={}", short(rev)))
            .collect();
        out.push_str(&format!("pinned: {}\n", pins.join(", ")));
    }
    out.push_str(&stages_table(&r.stages));
    if let Some(rm) = &r.removal {
        out.push_str(&format!(
            "removal of {} cluster(s) ({}): {}\n{}",
            rm.clusters.len(),
            rm.reason,
            rm.note,
            stages_table(&rm.stages)
        ));
    }
    out
}

/// A row per stage: state, clusters, progress, batch, soak, approval, failures.
fn stages_table(stages: &[RolloutStageOut]) -> String {
    columns_table(
        stages,
        &[
            ("STAGE", |s| s.name.clone()),
            ("STATE", |s| s.state.clone()),
            ("CLUSTERS", |s| s.clusters.join(",")),
            ("UPDATED", |s| format!("{}/{}", s.updated, s.clusters.len())),
            ("BATCH", |s| s.batch.join(",")),
            ("SOAK", |s| match s.soak_remaining_seconds {
                Some(left) => format!("{} ({} left)", s.soak, seconds(left)),
                None => s.soak.clone(),
            }),
            ("APPROVAL", |s| {
                match (&s.approved_by, s.approval.as_str()) {
                    (Some(who), _) => format!("approved by {who}"),
                    (None, "manual") => "manual".into(),
                    _ => "-".into(),
                }
            }),
            ("FAILURES", |s| {
                let failures: Vec<String> = s
                    .failures
                    .iter()
                    .map(|(c, why)| format!("{c}: {why}"))
                    .collect();
                failures.join("; ")
            }),
        ],
    )
}

/// A pin or unpin as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PinOut {
    pub cluster: String,
    pub app: String,
    pub revision: String,
}

impl From<&PinClusterResponse> for PinOut {
    fn from(p: &PinClusterResponse) -> Self {
        Self {
            cluster: p.cluster.clone(),
            app: p.app.clone(),
            revision: p.revision.clone(),
        }
    }
}

/// One audit entry as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditOut {
    pub at: Option<String>,
    pub at_unix_ms: u64,
    pub who: String,
    pub action: String,
    pub app: String,
    pub cluster: Option<String>,
    pub stage: Option<String>,
    pub revision: Option<String>,
    pub detail: Option<String>,
}

impl From<&AuditEntry> for AuditOut {
    fn from(e: &AuditEntry) -> Self {
        Self {
            at: rfc3339_ms(e.at_unix_ms),
            at_unix_ms: e.at_unix_ms,
            who: e.who.clone(),
            action: e.action.clone(),
            app: e.app.clone(),
            cluster: non_empty(&e.cluster),
            stage: non_empty(&e.stage),
            revision: non_empty(&e.revision),
            detail: non_empty(&e.detail),
        }
    }
}

pub fn audit_table(rows: &[AuditOut]) -> String {
    columns_table(
        rows,
        &[
            ("TIME", |e| text_or(&e.at, "-")),
            ("WHO", |e| e.who.clone()),
            ("ACTION", |e| e.action.clone()),
            ("APP", |e| e.app.clone()),
            ("CLUSTER", |e| text_or(&e.cluster, "-")),
            ("STAGE", |e| text_or(&e.stage, "-")),
            ("REVISION", |e| opt_short(e.revision.as_deref())),
            ("DETAIL", |e| text_or(&e.detail, "")),
        ],
    )
}

/// One hub replica as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaOut {
    pub name: String,
    pub endpoint: String,
    /// `leader` or `follower`.
    pub role: String,
    pub started: Option<String>,
    pub version: String,
}

/// The hub's replicas as the CLI shows them.
#[derive(Debug, Clone, Serialize)]
pub struct HubOut {
    pub store: String,
    pub answered_by: String,
    /// The answering replica's role: `leader`, `follower` or `candidate`.
    pub role: String,
    pub replicas: Vec<ReplicaOut>,
}

impl From<&HubStatus> for HubOut {
    fn from(s: &HubStatus) -> Self {
        Self {
            store: s.store.clone(),
            answered_by: s.answered_by.clone(),
            role: s.role.clone(),
            replicas: s
                .replicas
                .iter()
                .map(|r| ReplicaOut {
                    name: r.name.clone(),
                    endpoint: r.endpoint.clone(),
                    role: if r.leader { "leader" } else { "follower" }.into(),
                    started: rfc3339_ms(r.started_unix_ms),
                    version: r.version.clone(),
                })
                .collect(),
        }
    }
}

pub fn hub_table(h: &HubOut) -> String {
    let replicas = columns_table(
        &h.replicas,
        &[
            ("REPLICA", |r| r.name.clone()),
            ("ROLE", |r| r.role.clone()),
            ("ENDPOINT", |r| r.endpoint.clone()),
            ("STARTED", |r| text_or(&r.started, "-")),
            ("VERSION", |r| r.version.clone()),
        ],
    );
    format!(
        "store: {}; answered by {} ({})\n{replicas}",
        h.store, h.answered_by, h.role
    )
}
