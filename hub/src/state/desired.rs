//! Desired state per cluster: the list of (app, revision, bundle digest, options) a cluster should
//! run, as the agent receives it. It is not stored: the rollout engine derives it from the apps'
//! rollout records (`Rollouts::desired_of`), and its generation is a digest of the content, so an
//! agent that already holds a generation is never sent it again — across hub restarts too. The
//! agents' statuses are beside it, in `status`.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use flotilla_proto::v1;

pub use super::status::{AppReport, ObjectCounts, ObjectReport, STATUS, StatusRecord, Statuses};
use crate::state::error::HubError;
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
    /// Create the app's `namespace` before applying it (`createNamespace: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_namespace: bool,
    /// The app's `namespace` from flotilla.yaml ("" when it names none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
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
                        create_namespace: a.options.create_namespace,
                        namespace: a.options.namespace.clone(),
                    }),
                })
                .collect(),
        }
    }

    /// The record for `apps` (sorted here by app). Its generation is a digest of everything
    /// the agent acts on (trace contexts excluded): equal generations mean equal content.
    pub fn of(mut apps: Vec<AppEntry>) -> Self {
        use sha2::{Digest, Sha256};
        apps.sort_by(|a, b| a.app.cmp(&b.app));
        let mut h = Sha256::new();
        for a in &apps {
            let AppEntry {
                app,
                revision,
                bundle_digest,
                bundle_size,
                trace_context: _,
                depends_on,
                options,
            } = a;
            for s in [app, revision, bundle_digest] {
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            h.update(bundle_size.to_le_bytes());
            h.update((depends_on.len() as u64).to_le_bytes());
            for d in depends_on {
                h.update((d.len() as u64).to_le_bytes());
                h.update(d.as_bytes());
            }
            let AppOptions {
                disable_prune,
                disable_self_heal,
                force_conflicts,
                health_timeout_ms,
                orphan,
                create_namespace,
                namespace,
            } = options;
            h.update([
                *disable_prune as u8,
                *disable_self_heal as u8,
                *force_conflicts as u8,
                *orphan as u8,
            ]);
            h.update(health_timeout_ms.to_le_bytes());
            // Only when set, so that records without them keep their generation.
            if *create_namespace || !namespace.is_empty() {
                h.update([1, *create_namespace as u8]);
                h.update((namespace.len() as u64).to_le_bytes());
                h.update(namespace.as_bytes());
            }
        }
        let d = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        // 63 bits (safe as a signed number too), never 0 (0: the agent holds nothing yet).
        let generation = (u64::from_le_bytes(first) >> 1).max(1);
        DesiredRecord { generation, apps }
    }

    /// Whether an agent that holds `held` should be sent this record: it differs, unless the
    /// agent holds nothing and there is nothing to hold.
    pub fn worth_sending(&self, held: u64) -> bool {
        self.generation != held && !(held == 0 && self.apps.is_empty())
    }

    /// Whether `digest` is one of the bundles this cluster should hold.
    pub fn wants(&self, digest: &str) -> bool {
        self.apps.iter().any(|a| a.bundle_digest == digest)
    }
}

/// Access to the agents' statuses ([`Statuses`]).
#[derive(Debug, Clone)]
pub struct DesiredStates {
    statuses: Statuses,
}

impl DesiredStates {
    pub fn new(store: SharedStore) -> Self {
        Self {
            statuses: Statuses::new(store),
        }
    }

    /// As replica `name` of several sharing the store (see [`Statuses::of_replica`]).
    pub fn of_replica(store: SharedStore, name: &str) -> Self {
        Self {
            statuses: Statuses::of_replica(store, Default::default(), name),
        }
    }

    /// Folds the status journals of replicas not in `live` (the leader does, when one goes).
    pub async fn adopt_orphan_journals(
        &self,
        live: &std::collections::HashSet<String>,
    ) -> Result<usize, HubError> {
        self.statuses.adopt_orphans(live).await
    }

    /// Follows the reports the other replicas record, until `shutdown`.
    pub async fn follow_statuses(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
        followed: prometheus_client::metrics::counter::Counter,
    ) {
        self.statuses.follow(shutdown, followed).await;
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

    /// Queues an agent's status report; the returned future ends once it is durable (see
    /// [`Statuses::submit`]).
    pub async fn submit_status(
        &self,
        cluster: &str,
        report: &v1::StatusReport,
    ) -> impl std::future::Future<Output = Result<(), HubError>> + Send + 'static {
        self.statuses.submit(cluster, report).await
    }

    /// Has `f` called with every report once it is durable (see [`Statuses::on_durable`]).
    pub fn on_durable(&self, f: crate::state::status::OnDurable) {
        self.statuses.on_durable(f);
    }

    /// Every cluster's statuses (read from the store once, when the engine starts).
    pub async fn all_statuses(&self) -> Result<Vec<(String, Arc<StatusRecord>)>, HubError> {
        self.statuses.all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn generation_is_the_content() {
        let a = DesiredRecord::of(vec![entry("b", "sha256:2"), entry("a", "sha256:1")]);
        assert_eq!(a.apps[0].app, "a", "apps are kept sorted");
        let same = DesiredRecord::of(vec![entry("a", "sha256:1"), entry("b", "sha256:2")]);
        assert_eq!(a.generation, same.generation);
        let mut traced = entry("a", "sha256:1");
        traced.trace_context = "00-abc-def-01".into();
        let with_trace = DesiredRecord::of(vec![traced, entry("b", "sha256:2")]);
        assert_eq!(
            a.generation, with_trace.generation,
            "a trace context alone never moves a generation"
        );
        let other = DesiredRecord::of(vec![entry("a", "sha256:3"), entry("b", "sha256:2")]);
        assert_ne!(a.generation, other.generation);
        let mut orphan = entry("a", "sha256:1");
        orphan.options.orphan = true;
        let released = DesiredRecord::of(vec![orphan, entry("b", "sha256:2")]);
        assert_ne!(a.generation, released.generation);
        assert!(a.wants("sha256:2") && !a.wants("sha256:3"));

        let empty = DesiredRecord::of(Vec::new());
        assert_ne!(empty.generation, 0);
        assert!(
            !empty.worth_sending(0),
            "nothing to an agent that holds nothing"
        );
        assert!(
            empty.worth_sending(a.generation),
            "an agent that held apps lets go"
        );
        assert!(a.worth_sending(0));
        assert!(!a.worth_sending(same.generation));
    }
}
