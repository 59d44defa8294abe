//! Rendering of CLI results as a table (comfy-table), JSON or YAML.

use std::collections::BTreeMap;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use flotilla_proto::clock::rfc3339_ms;
use flotilla_proto::state::{Phase, RolloutState, StageState};
use flotilla_proto::v1::{
    App, AuditEntry, Cluster, ClusterApp, PinClusterResponse, Rollout, RolloutStage, Source, Token,
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
            apps: None,
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

pub fn structured<T: Serialize>(format: Format, v: &T) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(v).expect("serializes") + "\n",
        _ => serde_yaml_ng::to_string(v).expect("serializes"),
    }
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn clusters_table(rows: &[ClusterOut]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "NAME",
        "LABELS",
        "STATE",
        "LAST SEEN",
        "AGENT",
        "CERT EXPIRES",
    ]);
    for c in rows {
        t.add_row([
            c.name.clone(),
            labels_text(&c.labels),
            c.state.clone(),
            c.last_seen.clone().unwrap_or_else(|| "never".into()),
            match (&c.agent_version, &c.backend) {
                (Some(v), Some(b)) => format!("{v} ({b})"),
                (Some(v), None) => v.clone(),
                _ => "-".into(),
            },
            c.cert_expires.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    format!("{t}\n")
}

pub fn tokens_table(rows: &[TokenOut]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(["ID", "CLUSTER", "STATE", "REUSABLE", "USES", "EXPIRES"]);
    for r in rows {
        t.add_row([
            r.id.clone(),
            r.cluster.clone(),
            r.state.clone(),
            r.reusable.to_string(),
            r.uses.to_string(),
            r.expires_at.clone().unwrap_or_default(),
        ]);
    }
    format!("{t}\n")
}

/// Renders clusters in the chosen format.
pub fn clusters(format: Format, rows: &[ClusterOut]) -> String {
    match format {
        Format::Table => clusters_table(rows),
        f => structured(f, &rows),
    }
}

/// Renders one cluster: a single-row table followed by its apps, or an object.
pub fn cluster(format: Format, c: &ClusterOut) -> String {
    match format {
        Format::Table => {
            let mut out = clusters_table(std::slice::from_ref(c));
            if let Some(apps) = c.apps.as_ref().filter(|a| !a.is_empty()) {
                out.push_str(&cluster_apps_table(apps));
            }
            out
        }
        f => structured(f, c),
    }
}

/// The apps of one cluster: revision, phase, health, object counts, drift, and the reason.
pub fn cluster_apps_table(apps: &[ClusterAppOut]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "APP", "REVISION", "PHASE", "HEALTH", "OBJECTS", "DRIFTED", "MESSAGE",
    ]);
    for a in apps {
        let o = &a.objects;
        t.add_row([
            a.name.clone(),
            a.revision
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "-".into()),
            a.phase.clone().unwrap_or_else(|| "-".into()),
            a.health.clone(),
            format!("{}/{} current", o.current, o.total),
            a.drifted.to_string(),
            a.message.clone(),
        ]);
    }
    format!(
        "{t}
"
    )
}

/// A source as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceOut {
    pub name: String,
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub path: String,
    pub interval: String,
    pub commit: Option<String>,
    pub last_fetch: Option<String>,
    pub error: Option<String>,
    pub secret_file: Option<String>,
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
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<&Source> for SourceOut {
    fn from(s: &Source) -> Self {
        Self {
            name: s.name.clone(),
            url: s.url.clone(),
            reference: s.r#ref.clone(),
            path: s.path.clone(),
            interval: seconds(s.interval_seconds),
            commit: non_empty(&s.commit),
            last_fetch: rfc3339_ms(s.last_fetch_unix_ms),
            error: non_empty(&s.error),
            secret_file: non_empty(&s.secret_file),
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
                })
                .collect(),
        }
    }
}

/// One source with, below its row, each app's error or removal.
pub fn source_table(row: &SourceOut) -> String {
    let mut out = sources_table(std::slice::from_ref(row));
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
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(["NAME", "URL", "REF", "COMMIT", "LAST FETCH", "ERROR"]);
    for r in rows {
        t.add_row([
            r.name.clone(),
            r.url.clone(),
            r.reference.clone(),
            r.commit
                .as_deref()
                .map(|c| c[..c.len().min(12)].to_string())
                .unwrap_or_else(|| "-".into()),
            r.last_fetch.clone().unwrap_or_else(|| "never".into()),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    format!("{t}\n")
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

pub fn apps_table(rows: &[AppOut]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "APP", "SOURCE", "COMMIT", "CLUSTER", "DESIRED", "APPLIED", "HEALTH", "BUNDLE", "ERROR",
    ]);
    for a in rows {
        let commit = a.commit.as_deref().map(short).unwrap_or_else(|| "-".into());
        let error = a.error.clone().unwrap_or_default();
        if a.clusters.is_empty() {
            t.add_row([
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
            t.add_row([
                a.name.clone(),
                a.source.clone(),
                commit.clone(),
                c.name.clone(),
                short(&c.desired_revision),
                c.applied_revision
                    .as_deref()
                    .map(short)
                    .unwrap_or_else(|| "-".into()),
                c.health.clone().unwrap_or_else(|| "-".into()),
                short(c.bundle_digest.trim_start_matches("sha256:")),
                error.clone(),
            ]);
        }
    }
    let mut out = format!("{t}\n");
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
        }
    }
}

fn seconds(s: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
}

fn opt_short(rev: Option<&str>) -> String {
    rev.map(short).unwrap_or_else(|| "-".into())
}

impl RolloutOut {
    fn stage(&self, name: &str) -> Option<&RolloutStageOut> {
        self.stages.iter().find(|s| s.name == name)
    }
}

pub fn rollouts_table(rows: &[RolloutOut]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "APP",
        "PIPELINE",
        "REVISION",
        "STATE",
        "STAGE",
        "UPDATED",
        "LAST GOOD",
        "REMOVAL",
    ]);
    for r in rows {
        let stage = r
            .current_stage
            .as_deref()
            .and_then(|n| r.stage(n))
            .map(|s| format!("{} ({})", s.name, s.state))
            .unwrap_or_else(|| "-".into());
        t.add_row([
            r.app.clone(),
            r.pipeline.clone().unwrap_or_else(|| "-".into()),
            opt_short(r.revision.as_deref()),
            r.state.clone(),
            stage,
            format!("{}/{}", r.updated, r.total),
            opt_short(r.last_good_revision.as_deref()),
            r.removal
                .as_ref()
                .filter(|rm| rm.state != "succeeded")
                .map(|rm| format!("{} ({} clusters)", rm.state, rm.clusters.len()))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    format!("{t}\n")
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
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "STAGE", "STATE", "CLUSTERS", "UPDATED", "BATCH", "SOAK", "APPROVAL", "FAILURES",
    ]);
    for s in stages {
        let soak = match s.soak_remaining_seconds {
            Some(left) => format!("{} ({} left)", s.soak, seconds(left)),
            None => s.soak.clone(),
        };
        let approval = match (&s.approved_by, s.approval.as_str()) {
            (Some(who), _) => format!("approved by {who}"),
            (None, "manual") => "manual".into(),
            _ => "-".into(),
        };
        let failures: Vec<String> = s
            .failures
            .iter()
            .map(|(c, why)| format!("{c}: {why}"))
            .collect();
        t.add_row([
            s.name.clone(),
            s.state.clone(),
            s.clusters.join(","),
            format!("{}/{}", s.updated, s.clusters.len()),
            s.batch.join(","),
            soak,
            approval,
            failures.join("; "),
        ]);
    }
    format!("{t}\n")
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
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "TIME", "WHO", "ACTION", "APP", "CLUSTER", "STAGE", "REVISION", "DETAIL",
    ]);
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for e in rows {
        t.add_row([
            dash(&e.at),
            e.who.clone(),
            e.action.clone(),
            e.app.clone(),
            dash(&e.cluster),
            dash(&e.stage),
            opt_short(e.revision.as_deref()),
            e.detail.clone().unwrap_or_default(),
        ]);
    }
    format!("{t}\n")
}
