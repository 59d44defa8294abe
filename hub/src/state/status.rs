//! The agents' statuses per cluster, persisted in the store: `/status/<cluster>` holds, per app,
//! the last status its agent reported (revision, phase, health, object counts, drift, worst
//! objects), merged from the agent's reports. Kept in memory after the first read: only this
//! hub's sessions write them, and the rollout engine reads every in-flight cluster's on each pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use flotilla_proto::state::{AppState, Health, ObjectHealth, Phase};
use flotilla_proto::v1;

use crate::state::error::HubError;
use crate::state::table::Table;
use crate::store::SharedStore;

pub const STATUS: &str = "/status/";

/// One app's status as last reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    pub app: String,
    pub revision: String,
    pub bundle_digest: String,
    pub phase: Phase,
    pub message: String,
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
            app: a.app.clone(),
            revision: a.revision.clone(),
            bundle_digest: a.bundle_digest.clone(),
            phase: a.phase(),
            message: a.message.clone(),
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
    /// Sorted by app name.
    pub apps: Vec<AppReport>,
}

/// The agents' statuses, with a cache of those read or written.
#[derive(Debug, Clone)]
pub struct Statuses {
    table: Table<StatusRecord>,
    cache: Arc<Mutex<HashMap<String, Arc<StatusRecord>>>>,
}

impl Statuses {
    pub fn new(store: SharedStore) -> Self {
        Self {
            table: Table::new(store, STATUS),
            cache: Default::default(),
        }
    }

    pub async fn get(&self, cluster: &str) -> Result<StatusRecord, HubError> {
        Ok(self.get_shared(cluster).await?.as_ref().clone())
    }

    /// The cluster's statuses without copying them (from memory after the first read).
    pub async fn get_shared(&self, cluster: &str) -> Result<Arc<StatusRecord>, HubError> {
        if let Some(rec) = self.cached(cluster) {
            return Ok(rec);
        }
        let rec = self
            .table
            .get(cluster)
            .await?
            .map(|v| v.value)
            .unwrap_or_default();
        let rec = Arc::new(rec);
        self.remember(cluster, rec.clone());
        Ok(rec)
    }

    fn cached(&self, cluster: &str) -> Option<Arc<StatusRecord>> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .cloned()
    }

    fn remember(&self, cluster: &str, rec: Arc<StatusRecord>) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_string(), rec);
    }

    /// Persists an agent's status report: each app it carries replaces that app's last status;
    /// an app reported `removed` is forgotten, and a `replace` report starts from nothing. Only
    /// the cluster's own session writes its record, so a read-modify-write is enough.
    pub async fn record(&self, cluster: &str, report: &v1::StatusReport) -> Result<(), HubError> {
        let mut rec = if report.replace {
            StatusRecord::default()
        } else {
            self.get(cluster).await?
        };
        rec.generation = report.generation;
        for a in &report.apps {
            let found = rec.apps.binary_search_by(|r| r.app.cmp(&a.app));
            match (found, a.phase()) {
                (Ok(i), Phase::Removed) => {
                    rec.apps.remove(i);
                }
                (Err(_), Phase::Removed) => {}
                (Ok(i), _) => rec.apps[i] = AppReport::from_wire(a),
                (Err(i), _) => rec.apps.insert(i, AppReport::from_wire(a)),
            }
        }
        self.table.put(cluster, &rec).await?;
        self.remember(cluster, Arc::new(rec));
        Ok(())
    }
}
