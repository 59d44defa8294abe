//! Revisioned key-value store (etcd-like semantics) behind the [`Store`] trait.
//!
//! Every successful write (put, successful compare-and-swap, delete of an existing key) bumps a
//! single store-wide revision counter by one, exactly like etcd. Each key remembers the revision
//! it was created at (`create_revision`, reset when the key is deleted and recreated) and the
//! revision of its latest modification (`mod_revision`), which is what compare-and-swap compares.

use std::pin::Pin;
use std::sync::Arc;

pub mod conformance;
pub mod election;
pub mod etcd;
pub mod follow;
pub mod lead;
pub mod redb;
#[cfg(test)]
pub mod testing;
pub mod timed;

/// A store-wide revision. 0 means "nothing written yet".
pub type Revision = u64;

/// A key with its value and revision metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the latest write to the key.
    pub mod_revision: Revision,
}

/// A change observed by [`Store::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or updated; carries the new state.
    Put(KeyValue),
    /// The key was deleted at `mod_revision`.
    Delete { key: String, mod_revision: Revision },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The store revision the event was committed at.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Stream of watch events; ends after yielding an error.
pub type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Errors reported by a [`Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested revision is older than the retained history.
    #[error("revision {requested} has been compacted, the oldest available revision is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// The key cannot be stored (e.g. it is empty).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The storage backend failed; `what` names the operation and key.
    #[error("store backend error: {what}: {source}")]
    Backend {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend cannot be reached or cannot decide now (etcd unreachable or without
    /// quorum); `what` names the operation and key. A write that timed out may still happen.
    #[error("store unavailable: {what}: {source}")]
    Unavailable {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend answered what it never should (a bug), named with the operation and key.
    #[error("store backend error: {0}")]
    Inconsistent(String),
    /// The store has been shut down.
    #[error("store is closed")]
    Closed,
    /// A write of a replica that no longer holds the ownership its writes are fenced by (its
    /// lease expired, or another replica took over); nothing was written.
    #[error("{what}: refused, this replica no longer holds {held}")]
    Fenced { what: String, held: String },
    /// Work only the replica leading the hub replicas does, asked of one that does not lead.
    #[error("only the leading hub replica does this; {leader}")]
    NotLeading { leader: String },
}

/// A revisioned key-value store with etcd-compatible semantics.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Unconditional write; returns the new store revision (= the key's mod_revision).
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError>;

    /// Writes only if the key's current mod_revision equals `expected` (None = key must not exist).
    /// Ok(Ok(new_revision)) on success; Ok(Err(current)) on conflict, with the current KeyValue
    /// (None if absent).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError>;

    /// Deletes; returns Some(new revision) if the key existed, None otherwise (no revision bump).
    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError>;

    /// Deletes only if mod_revision == expected; Ok(true) if deleted.
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError>;

    /// All keys starting with `prefix`, sorted by key, plus the store revision the read saw.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// The current store revision (0 for an empty, never-written store).
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Events for keys under `prefix` with revision >= `from` (from = 0 or current+1: only future
    /// events), in revision order, with no gap and no duplicate between replayed history and live
    /// events. If `from` is older than the retained history, either the call or the first stream
    /// item is `Err(StoreError::Compacted { .. })`.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// Several compare-and-swaps (and compare-and-deletes) applied atomically in one durable
    /// write: either every condition holds and every value is written or deleted, or nothing is
    /// written. `Ok(Ok(revisions))` on success: the revision each op was committed at, in order
    /// (non-decreasing; a delete's is the revision of its event). Backends differ in how a batch
    /// spends revisions — redb gives each op the next one, etcd gives the whole batch one — so
    /// callers take each key's new `mod_revision` from this list. `Ok(Err(key))` names the first
    /// key whose condition failed. The keys of a batch must be distinct (etcd refuses a
    /// transaction that names a key twice), and a batch holds at most
    /// [`Store::max_batch_ops`] ops. An empty batch writes nothing and returns no revisions.
    async fn compare_and_swap_many(
        &self,
        ops: Vec<CasOp>,
    ) -> Result<Result<Vec<Revision>, String>, StoreError>;

    /// The most ops one [`Store::compare_and_swap_many`] batch may hold (etcd: the server's
    /// `--max-txn-ops`). Callers with more split them into several batches where atomicity
    /// across the split is not needed.
    fn max_batch_ops(&self) -> usize {
        usize::MAX
    }
}

/// One write of a [`Store::compare_and_swap_many`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOp {
    pub key: String,
    /// As in [`Store::compare_and_swap`]: `None` = the key must not exist.
    pub expected: Option<Revision>,
    /// The new value; `None` deletes the key (which must then exist at `expected`).
    pub value: Option<Vec<u8>>,
}

impl CasOp {
    /// Writes `value` if the key is at `expected` (`None`: absent).
    pub fn put(key: impl Into<String>, expected: Option<Revision>, value: Vec<u8>) -> Self {
        Self {
            key: key.into(),
            expected,
            value: Some(value),
        }
    }

    /// Deletes the key if it is at `expected`.
    pub fn delete(key: impl Into<String>, expected: Revision) -> Self {
        Self {
            key: key.into(),
            expected: Some(expected),
            value: None,
        }
    }
}

/// A store shared between components.
pub type SharedStore = Arc<dyn Store>;

/// Rejects keys that etcd would reject too, so every backend behaves the same.
pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason: "key must not be empty",
        });
    }
    Ok(())
}
