//! The agents' statuses per cluster, persisted in the store: `/status/<cluster>` holds, per app,
//! the last status its agent reported (revision, phase, health, object counts, drift, worst
//! objects), merged from the agent's reports, and the status journal (`/status-log/`) the
//! reports since the last checkpoint. Reports are written by group commit
//! ([`status_ingest`](super::status_ingest)): many sessions' reports per durable write, each
//! caller answered once its report is durable. Kept in memory: only this hub's sessions write
//! them, and the rollout engine reads every in-flight cluster's on each pass.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use flotilla_proto::state::{AppState, Health, ObjectHealth, Phase};
use flotilla_proto::v1;

use super::intern::intern;
use crate::state::error::HubError;
use crate::state::status_ingest::Ingest;
pub use crate::state::status_ingest::Limits;
use crate::store::SharedStore;

pub const STATUS: &str = "/status/";

/// Told of each status report once it is durable: (cluster, report).
/// Told of each status report once it is durable: (cluster, report, the cluster's record with
/// the report merged — and any later report of the same batch).
pub type OnDurable = Box<dyn Fn(&str, &v1::StatusReport, &StatusRecord) + Send + Sync>;

/// One app's status as last reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    /// App, revision and digest: shared copies (see [`intern`](super::intern)).
    #[serde(
        serialize_with = "super::intern::serialize",
        deserialize_with = "super::intern::deserialize"
    )]
    pub app: Arc<str>,
    #[serde(
        serialize_with = "super::intern::serialize",
        deserialize_with = "super::intern::deserialize"
    )]
    pub revision: Arc<str>,
    #[serde(
        serialize_with = "super::intern::serialize",
        deserialize_with = "super::intern::deserialize"
    )]
    pub bundle_digest: Arc<str>,
    pub phase: Phase,
    /// Shared when short: most are the same few words ("applied").
    #[serde(
        serialize_with = "super::intern::serialize",
        deserialize_with = "super::intern::deserialize"
    )]
    pub message: Arc<str>,
    pub observed_ms: u64,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub objects: ObjectCounts,
    #[serde(default)]
    pub drifted: u32,
    #[serde(default)]
    pub healed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worst: Vec<ObjectReport>,
}

impl AppState for AppReport {
    fn reported(&self) -> (&str, Phase, Health) {
        (&self.revision, self.phase, self.health)
    }
}

/// Objects of an app by health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCounts {
    pub total: u32,
    pub current: u32,
    pub in_progress: u32,
    pub failed: u32,
    pub unknown: u32,
}

/// One object the agent singled out (unhealthy or drifted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectReport {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    pub health: ObjectHealth,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted_fields: Vec<String>,
}

impl AppReport {
    fn from_wire(a: &v1::AppStatus) -> Self {
        let counts = a.objects.unwrap_or_default();
        Self {
            app: intern(&a.app),
            revision: intern(&a.revision),
            bundle_digest: intern(&a.bundle_digest),
            phase: a.phase(),
            message: if a.message.len() <= 64 {
                intern(&a.message)
            } else {
                a.message.as_str().into()
            },
            observed_ms: a.observed_unix_ms,
            health: a.health(),
            objects: ObjectCounts {
                total: counts.total,
                current: counts.current,
                in_progress: counts.in_progress,
                failed: counts.failed,
                unknown: counts.unknown,
            },
            drifted: a.drifted,
            healed: a.healed,
            worst: a
                .worst
                .iter()
                .map(|o| ObjectReport {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    health: o.health(),
                    reason: o.reason.clone(),
                    message: o.message.clone(),
                    drifted_fields: o.drifted_fields.clone(),
                })
                .collect(),
        }
    }

    pub fn counts_wire(&self) -> v1::ObjectCounts {
        v1::ObjectCounts {
            total: self.objects.total,
            current: self.objects.current,
            in_progress: self.objects.in_progress,
            failed: self.objects.failed,
            unknown: self.objects.unknown,
        }
    }

    pub fn worst_wire(&self) -> Vec<v1::ObjectStatus> {
        self.worst
            .iter()
            .map(|o| v1::ObjectStatus {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                health: o.health.into(),
                reason: o.reason.clone(),
                message: o.message.clone(),
                drifted_fields: o.drifted_fields.clone(),
            })
            .collect()
    }
}

/// The last status of each app of a cluster, merged from the agent's reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub generation: u64,
    /// Sorted by app name. Shared, so that a copy of the record (one per batch of reports
    /// that changes it) copies pointers, not statuses.
    #[serde(with = "shared_reports")]
    pub apps: Vec<Arc<AppReport>>,
    /// The store revision of the newest status journal batch merged into this record: a batch
    /// older than it is not merged again (with several hub replicas, each journals its own
    /// sessions' reports, and a cluster's may come through two of them while it moves).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub through: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl StatusRecord {
    /// Where `app` is in `apps` (`Err`: where it would go).
    fn position(&self, app: &str) -> Result<usize, usize> {
        self.apps.binary_search_by(|r| (*r.app).cmp(app))
    }

    /// The last status of `app`, if reported.
    pub fn app(&self, app: &str) -> Option<&Arc<AppReport>> {
        Some(&self.apps[self.position(app).ok()?])
    }

    /// Merges one report: each app it carries replaces that app's last status; an app reported
    /// `removed` is forgotten, and a `replace` report starts from nothing.
    pub fn merge(&mut self, report: &v1::StatusReport) {
        if report.replace {
            self.apps.clear();
        }
        self.generation = report.generation;
        for a in &report.apps {
            let found = self.position(&a.app);
            match (found, a.phase()) {
                (Ok(i), Phase::Removed) => {
                    self.apps.remove(i);
                }
                (Err(_), Phase::Removed) => {}
                (Ok(i), _) => self.apps[i] = Arc::new(AppReport::from_wire(a)),
                (Err(i), _) => self.apps.insert(i, Arc::new(AppReport::from_wire(a))),
            }
        }
    }
}

/// Serde of [`StatusRecord::apps`]: a list of statuses, each kept behind an `Arc`.
mod shared_reports {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::AppReport;

    pub fn serialize<S: Serializer>(apps: &[Arc<AppReport>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(apps.iter().map(|a| &**a))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<AppReport>>, D::Error> {
        Ok(Vec::<AppReport>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

/// The agents' statuses: reads from memory, writes by group commit.
#[derive(Debug, Clone)]
pub struct Statuses {
    ingest: Arc<Ingest>,
}

impl Statuses {
    pub fn new(store: SharedStore) -> Self {
        Self::with_limits(store, Limits::default())
    }

    /// With other bounds on batches and on the queue.
    pub fn with_limits(store: SharedStore, limits: Limits) -> Self {
        Self {
            ingest: Arc::new(Ingest::new(store, limits, None)),
        }
    }

    /// The statuses as replica `name` of several sharing the store holds them: it journals
    /// its own sessions' reports under its name, and follows the others' ([`Statuses::follow`]).
    pub fn of_replica(store: SharedStore, limits: Limits, name: &str) -> Self {
        Self {
            ingest: Arc::new(Ingest::new(store, limits, Some(name))),
        }
    }

    /// Follows the reports other replicas journal, until `shutdown` (see [`Ingest::follow`]).
    /// Folds the journals of replicas not in `live` (see [`Ingest::adopt_orphans`]).
    pub async fn adopt_orphans(
        &self,
        live: &std::collections::HashSet<String>,
    ) -> Result<usize, HubError> {
        self.ingest.adopt_orphans(live).await
    }

    /// Each report learned so counts in `followed`.
    pub async fn follow(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
        followed: prometheus_client::metrics::counter::Counter,
    ) {
        self.ingest.clone().follow(shutdown, followed).await;
    }

    pub async fn get(&self, cluster: &str) -> Result<StatusRecord, HubError> {
        Ok(self.get_shared(cluster).await?.as_ref().clone())
    }

    /// The cluster's statuses without copying them (from memory after the first read).
    pub async fn get_shared(&self, cluster: &str) -> Result<Arc<StatusRecord>, HubError> {
        self.ingest.get_shared(cluster).await
    }

    /// Every cluster's statuses (from memory after the first read), by cluster name.
    pub async fn all(&self) -> Result<Vec<(String, Arc<StatusRecord>)>, HubError> {
        self.ingest.all().await
    }

    /// Queues an agent's status report (waiting only while the queue is full) and returns a
    /// future that ends once it is durable: a session queues its reports in order and
    /// acknowledges each when its future ends, without waiting for one before reading the next.
    pub async fn submit(
        &self,
        cluster: &str,
        report: &v1::StatusReport,
    ) -> impl std::future::Future<Output = Result<(), HubError>> + Send + 'static {
        self.ingest.submit(cluster, report).await
    }

    /// Has `f` called with each report once it is durable, in the order the reports were
    /// queued, before its caller is answered (the rollout engine learns of reports this way).
    /// Set once; later calls are ignored.
    pub fn on_durable(&self, f: OnDurable) {
        self.ingest.on_durable(f);
    }

    /// Persists an agent's status report ([`StatusRecord::merge`] onto the cluster's record) and
    /// returns once it is durable. Concurrent calls share one store write; the reports of a
    /// cluster are merged in the order of the calls. An error means the report may not be
    /// persisted (its whole batch failed).
    pub async fn record(&self, cluster: &str, report: &v1::StatusReport) -> Result<(), HubError> {
        self.ingest.record(cluster, report).await
    }
}
