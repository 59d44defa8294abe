//! The audit log: every operator action on rollouts and pins, with who (the admin certificate's
//! identity), when and what, persisted before the action takes effect (`/audit/<ms>-<seq>`).

use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::clock::{SharedClock, unix_ms};
use serde::{Deserialize, Serialize};

use crate::state::error::HubError;
use crate::state::table::Table;
use crate::store::{CasOp, SharedStore};

pub const AUDIT: &str = "/audit/";

/// One recorded action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// The admin identity (`spiffe://…/admin/<name>`).
    pub who: String,
    /// `rollout.approve`, `rollout.pause`, `rollout.resume`, `rollout.rollback`, `cluster.pin`,
    /// `cluster.unpin`.
    pub action: String,
    pub app: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stage: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl AuditEntry {
    /// An entry of `who` taking `action` on `app`; the other fields are empty, for the caller to
    /// fill in.
    pub fn new(who: &str, action: &str, app: &str) -> AuditEntry {
        AuditEntry {
            who: who.into(),
            action: action.into(),
            app: app.into(),
            ..AuditEntry::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Audit {
    table: Table<AuditEntry>,
    clock: SharedClock,
    seq: std::sync::Arc<AtomicU64>,
    /// This replica's name, with several replicas sharing the store.
    replica: Option<String>,
}

impl Audit {
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self {
            table: Table::new(store, AUDIT),
            clock,
            seq: Default::default(),
            replica: None,
        }
    }

    /// The audit log of replica `name` among several sharing the store: its keys carry the
    /// name, so two replicas never write the same one.
    pub fn with_replica(mut self, name: &str) -> Self {
        self.replica = Some(name.to_string());
        self
    }

    /// Persists `entry` (its time is set here).
    pub async fn record(&self, entry: AuditEntry) -> Result<AuditEntry, HubError> {
        self.record_through(self.table.store(), entry).await
    }

    /// Persists `entry` through `store` (the leader's fenced store, for the engine's own
    /// decisions: a replica that lost the lead records none). Created, never overwritten: the
    /// key holds the time, this process's sequence number and, with several replicas, the
    /// replica's name.
    pub async fn record_through(
        &self,
        store: &SharedStore,
        mut entry: AuditEntry,
    ) -> Result<AuditEntry, HubError> {
        entry.at_ms = unix_ms(self.clock.now());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let key = match &self.replica {
            Some(r) => format!("{AUDIT}{:020}-{seq:08}-{r}", entry.at_ms),
            None => format!("{AUDIT}{:020}-{seq:08}", entry.at_ms),
        };
        let op = CasOp::put(key.clone(), None, Table::encode(&entry));
        if store.compare_and_swap_many(vec![op]).await?.is_err() {
            return Err(HubError::Contention(key));
        }
        tracing::info!(who = %entry.who, action = %entry.action, app = %entry.app, cluster = %entry.cluster, stage = %entry.stage, revision = %entry.revision, "audit");
        Ok(entry)
    }

    /// The newest `limit` entries, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<AuditEntry>, HubError> {
        let (items, _) = self.table.store().list(AUDIT).await?;
        let skip = items.len().saturating_sub(limit);
        items
            .iter()
            .skip(skip)
            .map(|kv| self.table.decode(kv).map(|v| v.value))
            .collect()
    }
}
