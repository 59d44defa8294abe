//! A store for tests of code that batches its writes: a redb store whose
//! `compare_and_swap_many` calls are recorded, wait for a permit of a gate the test opens and
//! closes, and fail while `fail` is set.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::redb::RedbStore;
use super::{CasOp, KeyValue, Revision, Store, StoreError, WatchStream};

#[derive(Debug)]
pub struct GatedStore {
    pub inner: RedbStore,
    writes: Mutex<Vec<Vec<CasOp>>>,
    gate: Semaphore,
    /// Batch writes fail (after passing the gate) while set.
    pub fail: AtomicBool,
    /// What [`Store::max_batch_ops`] says (as etcd's `--max-txn-ops` would); a larger batch
    /// fails the test.
    pub max_ops: AtomicUsize,
}

impl GatedStore {
    /// A store in `dir` whose batch writes pass only once the test opens the gate.
    pub fn closed(dir: &tempfile::TempDir) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            inner: RedbStore::open(&dir.path().join("s.redb")).unwrap(),
            writes: Mutex::default(),
            gate: Semaphore::new(0),
            fail: AtomicBool::new(false),
            max_ops: AtomicUsize::new(usize::MAX),
        })
    }

    /// Lets every batch write through until [`Self::close_gate`].
    pub fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Holds the next batch writes at the gate.
    pub fn close_gate(&self) {
        self.gate.forget_permits(usize::MAX);
    }

    /// Every batch written (or waiting at the gate), in call order.
    pub fn writes(&self) -> Vec<Vec<CasOp>> {
        self.writes.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Store for GatedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.inner.put(key, value).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        self.inner.compare_and_swap(key, expected, value).await
    }
    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.inner.delete(key).await
    }
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        self.inner.compare_and_delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn compare_and_swap_many(
        &self,
        ops: Vec<CasOp>,
    ) -> Result<Result<Vec<Revision>, String>, StoreError> {
        let max = self.max_ops.load(Ordering::SeqCst);
        assert!(ops.len() <= max, "a batch of {} ops, over {max}", ops.len());
        self.writes.lock().unwrap().push(ops.clone());
        self.gate.acquire().await.unwrap().forget();
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                what: "test batch".into(),
                source: "disk on fire".into(),
            });
        }
        self.inner.compare_and_swap_many(ops).await
    }

    fn max_batch_ops(&self) -> usize {
        self.max_ops.load(Ordering::SeqCst)
    }
}
