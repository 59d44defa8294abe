//! Desired state per cluster, persisted in the store: `/desired/<cluster>` holds the
//! generation-numbered list of (app, revision, bundle digest, options) the cluster should run. A
//! change bumps the generation only when something actually changed, so agents that already hold
//! a generation are never sent it again. The agents' statuses are beside it, in `status`.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use flotilla_proto::v1;

pub use super::status::{AppReport, ObjectCounts, ObjectReport, STATUS, StatusRecord, Statuses};
use crate::state::error::HubError;
use crate::state::table::{CAS_RETRIES, Table};
use crate::store::SharedStore;

pub const DESIRED: &str = "/desired/";

/// One app's desired revision on one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEntry {
    pub app: String,
    pub revision: String,
    pub bundle_digest: String,
    pub bundle_size: u64,
    #[serde(default)]
    pub trace_context: String,
    /// Apps that must be healthy on the cluster before this one is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub options: AppOptions,
}

impl AppEntry {
    /// Equal apart from `trace_context` (every other field, present and future, counts).
    pub fn same_but_trace(&self, other: &AppEntry) -> bool {
        let AppEntry {
            app,
            revision,
            bundle_digest,
            bundle_size,
            trace_context: _,
            depends_on,
            options,
        } = self;
        *app == other.app
            && *revision == other.revision
            && *bundle_digest == other.bundle_digest
            && *bundle_size == other.bundle_size
            && *depends_on == other.depends_on
            && *options == other.options
    }
}

/// Reconcile options of an app, as the agent applies them (see `flotilla.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppOptions {
    #[serde(default)]
    pub disable_prune: bool,
    #[serde(default)]
    pub disable_self_heal: bool,
    #[serde(default)]
    pub force_conflicts: bool,
    #[serde(default)]
    pub health_timeout_ms: u64,
    /// Let go of the app without deleting its objects (a removal that keeps resources).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orphan: bool,
}

/// What a cluster should run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub generation: u64,
    /// Sorted by app name.
    pub apps: Vec<AppEntry>,
}

impl DesiredRecord {
    pub fn to_wire(&self) -> flotilla_proto::v1::DesiredState {
        flotilla_proto::v1::DesiredState {
            generation: self.generation,
            apps: self
                .apps
                .iter()
                .map(|a| flotilla_proto::v1::AppDesired {
                    app: a.app.clone(),
                    revision: a.revision.clone(),
                    bundle_digest: a.bundle_digest.clone(),
                    bundle_size: a.bundle_size,
                    trace_context: a.trace_context.clone(),
                    depends_on: a.depends_on.clone(),
                    options: Some(flotilla_proto::v1::AppOptions {
                        disable_prune: a.options.disable_prune,
                        disable_self_heal: a.options.disable_self_heal,
                        force_conflicts: a.options.force_conflicts,
                        health_timeout_ms: a.options.health_timeout_ms,
                        orphan: a.options.orphan,
                    }),
                })
                .collect(),
        }
    }

    /// Whether `digest` is one of the bundles this cluster should hold.
    pub fn wants(&self, digest: &str) -> bool {
        self.apps.iter().any(|a| a.bundle_digest == digest)
    }
}

/// Access to desired state, and to the agents' statuses ([`Statuses`]) beside it.
#[derive(Debug, Clone)]
pub struct DesiredStates {
    desired: Table<DesiredRecord>,
    statuses: Statuses,
}

impl DesiredStates {
    pub fn new(store: SharedStore) -> Self {
        Self {
            desired: Table::new(store.clone(), DESIRED),
            statuses: Statuses::new(store),
        }
    }

    pub async fn status(&self, cluster: &str) -> Result<StatusRecord, HubError> {
        self.statuses.get(cluster).await
    }

    /// The cluster's statuses without copying them (from memory after the first read).
    pub async fn status_shared(&self, cluster: &str) -> Result<Arc<StatusRecord>, HubError> {
        self.statuses.get_shared(cluster).await
    }

    /// Persists an agent's status report (see [`Statuses::record`]).
    pub async fn record_status(
        &self,
        cluster: &str,
        report: &v1::StatusReport,
    ) -> Result<(), HubError> {
        self.statuses.record(cluster, report).await
    }

    pub async fn get(&self, cluster: &str) -> Result<DesiredRecord, HubError> {
        Ok(self
            .desired
            .get(cluster)
            .await?
            .map(|v| v.value)
            .unwrap_or_default())
    }

    /// Sets the apps a cluster should run. Returns the record and whether it changed (a new
    /// generation); an identical list keeps the generation.
    pub async fn set_apps(
        &self,
        cluster: &str,
        mut apps: Vec<AppEntry>,
    ) -> Result<(DesiredRecord, bool), HubError> {
        apps.sort_by(|a, b| a.app.cmp(&b.app));
        for _ in 0..CAS_RETRIES {
            let (old, expected) = self.desired_at(cluster).await?;
            if old.apps == apps {
                return Ok((old, false));
            }
            let new = DesiredRecord {
                generation: old.generation + 1,
                apps: apps.clone(),
            };
            if self.desired.swap(cluster, expected, &new).await?.is_some() {
                return Ok((new, true));
            }
        }
        Err(HubError::Contention(self.desired.key(cluster)))
    }

    /// A cluster's desired record with the revision it was read at (`None`: none yet).
    async fn desired_at(
        &self,
        cluster: &str,
    ) -> Result<(DesiredRecord, Option<crate::store::Revision>), HubError> {
        Ok(match self.desired.get(cluster).await? {
            Some(v) => (v.value, Some(v.revision)),
            None => (DesiredRecord::default(), None),
        })
    }

    /// Sets or removes single apps' entries on the clusters named, in one durable write; reads
    /// only those clusters. Returns the clusters whose generation moved.
    pub async fn set_entries(
        &self,
        changes: &[(String, String, Option<AppEntry>)],
    ) -> Result<Vec<(String, u64)>, HubError> {
        let mut by_cluster: std::collections::BTreeMap<&str, Vec<(&str, &Option<AppEntry>)>> =
            std::collections::BTreeMap::new();
        for (cluster, app, entry) in changes {
            by_cluster
                .entry(cluster.as_str())
                .or_default()
                .push((app.as_str(), entry));
        }
        for _ in 0..CAS_RETRIES {
            let mut ops = Vec::new();
            let mut moved = Vec::new();
            for (cluster, edits) in &by_cluster {
                let (old, expected) = self.desired_at(cluster).await?;
                let mut apps = old.apps.clone();
                for (app, entry) in edits {
                    let kept = apps
                        .iter()
                        .position(|a| a.app == *app)
                        .map(|i| apps.remove(i));
                    if let Some(e) = entry {
                        // Only the trace context differs (a resync after a restart has none, a
                        // new delivery span of the same revision has another): keep the entry
                        // as it is, so no new generation goes out for it.
                        match kept {
                            Some(k) if k.same_but_trace(e) => apps.push(k),
                            _ => apps.push(e.clone()),
                        }
                    }
                }
                apps.sort_by(|a, b| a.app.cmp(&b.app));
                if apps == old.apps {
                    continue;
                }
                let new = DesiredRecord {
                    generation: old.generation + 1,
                    apps,
                };
                moved.push((cluster.to_string(), new.generation));
                ops.push(crate::store::CasOp {
                    key: self.desired.key(cluster),
                    expected,
                    value: Table::encode(&new),
                });
            }
            if ops.is_empty()
                || self
                    .desired
                    .store()
                    .compare_and_swap_many(ops)
                    .await?
                    .is_ok()
            {
                return Ok(moved);
            }
        }
        Err(HubError::Contention(DESIRED.to_string()))
    }

    /// Every cluster's desired state.
    pub async fn all(&self) -> Result<std::collections::HashMap<String, DesiredRecord>, HubError> {
        let (items, _) = self.desired.store().list(DESIRED).await?;
        items
            .iter()
            .map(|kv| {
                Ok((
                    kv.key[DESIRED.len()..].to_string(),
                    self.desired.decode(kv)?.value,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use std::sync::Arc;

    fn entry(app: &str, digest: &str) -> AppEntry {
        AppEntry {
            app: app.into(),
            revision: "c1".into(),
            bundle_digest: digest.into(),
            bundle_size: 10,
            trace_context: String::new(),
            depends_on: Vec::new(),
            options: AppOptions::default(),
        }
    }

    #[tokio::test]
    async fn generation_moves_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let d = DesiredStates::new(Arc::new(RedbStore::open(&dir.path().join("s")).unwrap()));
        assert_eq!(d.get("c").await.unwrap().generation, 0);
        let (r, changed) = d
            .set_apps("c", vec![entry("b", "sha256:2"), entry("a", "sha256:1")])
            .await
            .unwrap();
        assert!(changed);
        assert_eq!(r.generation, 1);
        assert_eq!(r.apps[0].app, "a", "apps are kept sorted");
        let (r, changed) = d
            .set_apps("c", vec![entry("a", "sha256:1"), entry("b", "sha256:2")])
            .await
            .unwrap();
        assert!(!changed);
        assert_eq!(r.generation, 1);
        let (r, changed) = d.set_apps("c", vec![entry("a", "sha256:3")]).await.unwrap();
        assert!(changed);
        assert_eq!(r.generation, 2);
        assert!(r.wants("sha256:3") && !r.wants("sha256:1"));
        assert_eq!(d.get("c").await.unwrap(), r);
        assert_eq!(d.get("other").await.unwrap().generation, 0);

        // A batch of single-app edits: only the clusters whose apps change move, in one write.
        let moved = d
            .set_entries(&[
                ("c".into(), "a".into(), Some(entry("a", "sha256:3"))),
                ("x".into(), "a".into(), Some(entry("a", "sha256:4"))),
                ("y".into(), "a".into(), Some(entry("a", "sha256:4"))),
                ("y".into(), "b".into(), Some(entry("b", "sha256:5"))),
            ])
            .await
            .unwrap();
        assert_eq!(moved, vec![("x".to_string(), 1), ("y".to_string(), 1)]);
        let y = d.get("y").await.unwrap();
        assert_eq!(y.apps.len(), 2);
        assert_eq!(y.apps[0].bundle_digest, "sha256:4");
        assert_eq!(d.all().await.unwrap().len(), 3);
        // Removing one app leaves the others.
        let moved = d
            .set_entries(&[("y".into(), "a".into(), None)])
            .await
            .unwrap();
        assert_eq!(moved, vec![("y".to_string(), 2)]);
        assert_eq!(d.get("y").await.unwrap().apps[0].app, "b");
    }
}
