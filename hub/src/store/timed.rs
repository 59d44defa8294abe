//! A [`Store`] decorator that times every call of the store it wraps into
//! `flotilla_hub_store_operation_duration_seconds{op}` and counts failed calls in
//! `flotilla_hub_store_errors_total{op}`. For `watch` only opening the stream is timed. The
//! writes of each `compare_and_swap_many` batch go into `flotilla_hub_store_batch_writes`.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{CasOp, KeyValue, Revision, SharedStore, Store, StoreError, WatchStream};
use crate::telemetry::metrics::{Metrics, OpLabel};

/// The operations of the [`Store`] trait, as the `op` label names them.
#[derive(Debug, Clone, Copy)]
enum Op {
    Get,
    Put,
    CompareAndSwap,
    Delete,
    CompareAndDelete,
    List,
    Revision,
    Watch,
    CompareAndSwapMany,
}

const OPS: [Op; 9] = [
    Op::Get,
    Op::Put,
    Op::CompareAndSwap,
    Op::Delete,
    Op::CompareAndDelete,
    Op::List,
    Op::Revision,
    Op::Watch,
    Op::CompareAndSwapMany,
];

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::CompareAndSwap => "compare_and_swap",
            Op::Delete => "delete",
            Op::CompareAndDelete => "compare_and_delete",
            Op::List => "list",
            Op::Revision => "revision",
            Op::Watch => "watch",
            Op::CompareAndSwapMany => "compare_and_swap_many",
        }
    }
}

/// Times the calls of the store it wraps.
#[derive(Debug)]
pub struct TimedStore {
    inner: SharedStore,
    /// Per [`Op`], in the order of [`OPS`]: resolved once, so a call costs no label lookup.
    durations: Vec<Histogram>,
    errors: Vec<Counter>,
    batch_writes: Histogram,
}

impl TimedStore {
    pub fn new(inner: SharedStore, metrics: &Metrics) -> Self {
        let label = |op: Op| OpLabel {
            op: op.label().into(),
        };
        Self {
            inner,
            durations: OPS
                .iter()
                .map(|op| {
                    metrics
                        .store_operation_duration
                        .get_or_create_owned(&label(*op))
                })
                .collect(),
            errors: OPS
                .iter()
                .map(|op| metrics.store_errors.get_or_create_owned(&label(*op)))
                .collect(),
            batch_writes: metrics.store_batch_writes.clone(),
        }
    }

    /// Wraps `inner` into a shared, timed store.
    pub fn shared(inner: SharedStore, metrics: &Metrics) -> SharedStore {
        Arc::new(Self::new(inner, metrics))
    }

    async fn timed<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let out = call.await;
        self.durations[op as usize].observe(start.elapsed().as_secs_f64());
        if out.is_err() {
            self.errors[op as usize].inc();
        }
        out
    }
}

#[async_trait::async_trait]
impl Store for TimedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed(Op::Get, self.inner.get(key)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.timed(Op::Put, self.inner.put(key, value)).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        self.timed(
            Op::CompareAndSwap,
            self.inner.compare_and_swap(key, expected, value),
        )
        .await
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.timed(Op::Delete, self.inner.delete(key)).await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        self.timed(
            Op::CompareAndDelete,
            self.inner.compare_and_delete(key, expected),
        )
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.timed(Op::List, self.inner.list(prefix)).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.timed(Op::Revision, self.inner.revision()).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.timed(Op::Watch, self.inner.watch(prefix, from)).await
    }

    async fn compare_and_swap_many(
        &self,
        ops: Vec<CasOp>,
    ) -> Result<Result<Vec<Revision>, String>, StoreError> {
        self.batch_writes.observe(ops.len() as f64);
        self.timed(
            Op::CompareAndSwapMany,
            self.inner.compare_and_swap_many(ops),
        )
        .await
    }

    fn max_batch_ops(&self) -> usize {
        self.inner.max_batch_ops()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    /// The wrapper changes nothing: the backend-independent suite passes through it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::conformance::run_all(TimedStore::shared(
            Arc::new(RedbStore::open(&dir.path().join("s")).unwrap()),
            &Metrics::new(),
        ))
        .await;
    }

    #[tokio::test]
    async fn times_and_counts_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let store = TimedStore::shared(
            Arc::new(RedbStore::open(&dir.path().join("s")).unwrap()),
            &metrics,
        );
        store.put("/a", b"1".to_vec()).await.unwrap();
        store.get("/a").await.unwrap();
        store.get("/b").await.unwrap();
        assert!(store.put("", b"x".to_vec()).await.is_err());
        let op = |key: &str| crate::store::CasOp::put(key, None, vec![]);
        store
            .compare_and_swap_many(vec![op("/c"), op("/d"), op("/e")])
            .await
            .unwrap()
            .unwrap();
        let text = metrics.encode();

        let line = |series: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
        };
        let h = "flotilla_hub_store_operation_duration_seconds";
        assert_eq!(
            line(&format!("{h}_count{{op=\"get\"}}")),
            Some(2.0),
            "{text}"
        );
        assert_eq!(line(&format!("{h}_count{{op=\"put\"}}")), Some(2.0));
        assert_eq!(
            line("flotilla_hub_store_errors_total{op=\"put\"}"),
            Some(1.0)
        );
        assert_eq!(
            line("flotilla_hub_store_errors_total{op=\"get\"}"),
            Some(0.0)
        );
        assert_eq!(line("flotilla_hub_store_batch_writes_count"), Some(1.0));
        assert_eq!(line("flotilla_hub_store_batch_writes_sum"), Some(3.0));
    }
}
