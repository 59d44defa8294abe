//! Rendering of CLI results as a table (comfy-table), JSON or YAML.

use std::collections::BTreeMap;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use flotilla_proto::clock::rfc3339_ms;
use flotilla_proto::v1::{App, Cluster, ClusterApp, Source, Token};
use serde::Serialize;

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
            phase: non_empty(&a.phase),
            health: a.health.clone(),
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
                    health: w.health.clone(),
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
            agent_version: (!c.agent_version.is_empty()).then(|| c.agent_version.clone()),
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
            interval: humantime::format_duration(std::time::Duration::from_secs(
                s.interval_seconds,
            ))
            .to_string(),
            commit: non_empty(&s.commit),
            last_fetch: rfc3339_ms(s.last_fetch_unix_ms),
            error: non_empty(&s.error),
            secret_file: non_empty(&s.secret_file),
            apps: s.apps.clone(),
        }
    }
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
            clusters: a
                .clusters
                .iter()
                .map(|c| AppClusterOut {
                    name: c.name.clone(),
                    desired_revision: c.desired_revision.clone(),
                    applied_revision: non_empty(&c.applied_revision),
                    bundle_digest: c.bundle_digest.clone(),
                    phase: non_empty(&c.phase),
                    health: non_empty(&c.health),
                    message: non_empty(&c.message),
                })
                .collect(),
        }
    }
}

fn short(rev: &str) -> String {
    rev[..rev.len().min(12)].to_string()
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
    format!("{t}\n")
}
