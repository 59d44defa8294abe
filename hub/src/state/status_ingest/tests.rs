//! The group commit against a store that counts, holds and fails its batch writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::state::Phase;
use futures::future::join_all;
use tokio::sync::Semaphore;

use super::*;
use crate::store::redb::RedbStore;
use crate::store::{Store, WatchStream};

const DEADLINE: Duration = Duration::from_secs(10);

/// A redb store whose `compare_and_swap_many` calls are recorded (writes per call), wait for a
/// permit of `gate`, and fail while `fail` is set.
#[derive(Debug)]
struct TestStore {
    inner: RedbStore,
    batches: Mutex<Vec<usize>>,
    gate: Semaphore,
    fail: AtomicBool,
}

impl TestStore {
    /// Batch writes pass only once the test opens the gate.
    fn closed(dir: &tempfile::TempDir) -> Arc<Self> {
        Arc::new(Self {
            inner: RedbStore::open(&dir.path().join("s.redb")).unwrap(),
            batches: Mutex::default(),
            gate: Semaphore::new(0),
            fail: AtomicBool::new(false),
        })
    }

    fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn batches(&self) -> Vec<usize> {
        lock(&self.batches).clone()
    }
}

#[async_trait::async_trait]
impl Store for TestStore {
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
    ) -> Result<Result<Revision, String>, StoreError> {
        lock(&self.batches).push(ops.len());
        self.gate.acquire().await.unwrap().forget();
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                what: "test batch".into(),
                source: "disk on fire".into(),
            });
        }
        self.inner.compare_and_swap_many(ops).await
    }
}

fn ingest(store: &Arc<TestStore>, limits: Limits) -> Arc<Ingest> {
    Arc::new(Ingest::new(store.clone(), limits))
}

fn app(name: &str, phase: Phase) -> v1::AppStatus {
    v1::AppStatus {
        app: name.into(),
        revision: "r1".into(),
        phase: phase.into(),
        ..Default::default()
    }
}

fn report(generation: u64, replace: bool, apps: &[(&str, Phase)]) -> v1::StatusReport {
    v1::StatusReport {
        generation,
        replace,
        apps: apps.iter().map(|(n, p)| app(n, *p)).collect(),
        seq: generation,
    }
}

/// Waits (yielding, never sleeping) until `cond` holds; panics after [`DEADLINE`].
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

/// What the store holds for `cluster`: (app, phase) in order, and the generation.
async fn stored(store: &TestStore, cluster: &str) -> (Vec<(String, Phase)>, u64) {
    let kv = store
        .inner
        .get(&format!("{STATUS}{cluster}"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record for {cluster}"));
    let rec: StatusRecord = serde_json::from_slice(&kv.value).unwrap();
    let apps = rec.apps.into_iter().map(|a| (a.app, a.phase)).collect();
    (apps, rec.generation)
}

/// Starts a record of `cluster` that the writer takes at once and holds at the closed gate, so
/// that the next calls gather into the following batch.
async fn hold_writer(
    ingest: &Arc<Ingest>,
    store: &Arc<TestStore>,
) -> tokio::task::JoinHandle<Result<(), HubError>> {
    let i = ingest.clone();
    let first = tokio::spawn(async move {
        i.record("first", &report(1, true, &[("a", Phase::Applied)]))
            .await
    });
    until("the first batch to reach the store", || {
        store.batches().len() == 1
    })
    .await;
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_share_one_durable_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    let ingest = ingest(&store, Limits::default());
    let first = hold_writer(&ingest, &store).await;

    let callers: Vec<_> = (0..200)
        .map(|i| {
            let ingest = ingest.clone();
            tokio::spawn(async move {
                let r = report(2, false, &[("web", Phase::Applied)]);
                ingest.record(&format!("c-{i:03}"), &r).await
            })
        })
        .collect();
    until("every caller to be queued", || ingest.queued() == 200).await;
    store.open_gate();
    first.await.unwrap().unwrap();
    for c in callers {
        c.await.unwrap().unwrap();
    }
    assert_eq!(store.batches(), [1, 200], "one write for the 200 callers");
    assert_eq!(
        stored(&store, "c-123").await,
        (vec![("web".to_string(), Phase::Applied)], 2)
    );
    let cached = ingest.get_shared("c-007").await.unwrap();
    assert_eq!(cached.apps[0].app, "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    let limits = Limits {
        batch_reports: 16,
        ..Limits::default()
    };
    let ingest = ingest(&store, limits);
    let first = hold_writer(&ingest, &store).await;
    let callers: Vec<_> = (0..40)
        .map(|i| {
            let ingest = ingest.clone();
            tokio::spawn(async move {
                let r = report(2, false, &[("web", Phase::Applied)]);
                ingest.record(&format!("c-{i:03}"), &r).await
            })
        })
        .collect();
    until("every caller to be queued", || ingest.queued() == 40).await;
    store.open_gate();
    first.await.unwrap().unwrap();
    for c in callers {
        c.await.unwrap().unwrap();
    }
    assert_eq!(store.batches(), [1, 16, 16, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_fails_every_caller_of_its_batch_and_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    let ingest = ingest(&store, Limits::default());
    let first = hold_writer(&ingest, &store).await;
    let callers: Vec<_> = (0..20)
        .map(|i| {
            let ingest = ingest.clone();
            tokio::spawn(async move {
                let r = report(2, false, &[("web", Phase::Failed)]);
                ingest.record(&format!("c-{i:02}"), &r).await
            })
        })
        .collect();
    until("every caller to be queued", || ingest.queued() == 20).await;
    store.fail.store(true, Ordering::SeqCst);
    store.open_gate();
    assert!(first.await.unwrap().is_err());
    for c in callers {
        let e = c.await.unwrap().unwrap_err();
        let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(text.contains("batch of 20 status reports"), "{text}");
        assert!(text.contains("disk on fire"), "the cause is named: {text}");
    }
    assert_eq!(store.batches(), [1, 20]);
    let (items, _) = store.inner.list(STATUS).await.unwrap();
    assert!(items.is_empty(), "nothing was written");
    assert!(
        ingest.get_shared("c-03").await.unwrap().apps.is_empty(),
        "nor cached"
    );

    // The store recovers; a new report is written on the record as stored.
    store.fail.store(false, Ordering::SeqCst);
    ingest
        .record("c-03", &report(3, false, &[("api", Phase::Applied)]))
        .await
        .unwrap();
    assert_eq!(
        stored(&store, "c-03").await,
        (vec![("api".to_string(), Phase::Applied)], 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_reports_are_merged_in_call_order_within_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    let ingest = ingest(&store, Limits::default());
    let first = hold_writer(&ingest, &store).await;
    use Phase::*;
    let in_order = [
        ("a", report(1, false, &[("x", Applying)])),
        ("b", report(1, false, &[("x", Applied)])),
        ("a", report(2, false, &[("x", Applied), ("y", Applying)])),
        ("a", report(3, true, &[("z", Applied)])),
        ("a", report(4, false, &[("w", Applying)])),
        ("b", report(2, false, &[("x", Failed)])),
        ("a", report(5, false, &[("w", Removed)])),
        ("a", report(6, false, &[("v", Failed)])),
    ];
    // Polled in order: each call queues its report before the next one is polled.
    let i = ingest.clone();
    let calls = tokio::spawn(async move {
        let outcomes = join_all(in_order.iter().map(|(c, r)| i.record(c, r))).await;
        for outcome in outcomes {
            outcome.unwrap();
        }
    });
    until("every report to be queued", || ingest.queued() == 8).await;
    store.open_gate();
    first.await.unwrap().unwrap();
    calls.await.unwrap();
    assert_eq!(store.batches(), [1, 2], "one write of both clusters");
    let a = stored(&store, "a").await;
    assert_eq!(
        a,
        (vec![("v".into(), Failed), ("z".into(), Applied)], 6),
        "the replace dropped x and y, w was removed, the newest wins"
    );
    assert_eq!(stored(&store, "b").await, (vec![("x".into(), Failed)], 2));

    // Across batches too: each call waits for its write.
    for (g, phase) in [(7, Applying), (8, Applied), (9, Failed)] {
        ingest
            .record("a", &report(g, false, &[("v", phase)]))
            .await
            .unwrap();
    }
    assert_eq!(
        stored(&store, "a").await,
        (vec![("v".into(), Failed), ("z".into(), Applied)], 9)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_callers_back_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    let held = report(1, true, &[("a", Phase::Applied)]).encoded_len();
    let one = report(1, false, &[("x", Phase::Applying)]).encoded_len();
    // Room for two reports: the one being written and one queued.
    let ingest = ingest(
        &store,
        Limits {
            queue_bytes: held + one,
            ..Limits::default()
        },
    );
    let first = hold_writer(&ingest, &store).await;
    let (r2, r3) = (
        report(1, false, &[("x", Phase::Applying)]),
        report(2, false, &[("x", Phase::Applied)]),
    );
    let second = ingest.record("a", &r2);
    let third = ingest.record("a", &r3);
    let mut second = Box::pin(second);
    let mut third = Box::pin(third);
    assert!(futures::poll!(&mut second).is_pending());
    assert!(futures::poll!(&mut third).is_pending());
    assert_eq!(ingest.queued(), 1, "the third waits for room");
    store.open_gate();
    first.await.unwrap().unwrap();
    second.await.unwrap();
    third.await.unwrap();
    assert_eq!(
        stored(&store, "a").await,
        (vec![("x".into(), Phase::Applied)], 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_fails_only_its_cluster_until_a_replace() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    store.open_gate();
    store
        .inner
        .put(&format!("{STATUS}bad"), b"{not json".to_vec())
        .await
        .unwrap();
    let ingest = ingest(&store, Limits::default());
    let merge = report(1, false, &[("x", Phase::Applied)]);
    let (bad, good) = tokio::join!(ingest.record("bad", &merge), ingest.record("good", &merge));
    assert!(
        matches!(&bad, Err(HubError::Corrupt { key, .. }) if key == "/status/bad"),
        "{bad:?}"
    );
    good.unwrap();
    assert!(ingest.get_shared("bad").await.is_err());

    ingest
        .record("bad", &report(2, true, &[("y", Phase::Applied)]))
        .await
        .unwrap();
    assert_eq!(
        stored(&store, "bad").await,
        (vec![("y".into(), Phase::Applied)], 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_moved_on_behind_the_cache_is_read_again_and_merged() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    store.open_gate();
    let ingest = ingest(&store, Limits::default());
    ingest
        .record("a", &report(1, false, &[("x", Phase::Applying)]))
        .await
        .unwrap();
    // Another writer (another replica, an operator) changed it.
    let mut other = StatusRecord::default();
    other.merge(&report(5, false, &[("w", Phase::Failed)]));
    store
        .inner
        .put(&format!("{STATUS}a"), serde_json::to_vec(&other).unwrap())
        .await
        .unwrap();
    ingest
        .record("a", &report(6, false, &[("y", Phase::Applied)]))
        .await
        .unwrap();
    assert_eq!(
        stored(&store, "a").await,
        (
            vec![("w".into(), Phase::Failed), ("y".into(), Phase::Applied)],
            6
        )
    );
    assert_eq!(store.batches(), [1, 1, 1], "one conflict, one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_before_a_restart_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = TestStore::closed(&dir);
        store.open_gate();
        let ingest = ingest(&store, Limits::default());
        ingest
            .record("a", &report(1, false, &[("x", Phase::Applied)]))
            .await
            .unwrap();
    }
    let store = TestStore::closed(&dir);
    store.open_gate();
    let ingest = ingest(&store, Limits::default());
    assert_eq!(ingest.get_shared("a").await.unwrap().apps.len(), 1);
    ingest
        .record("a", &report(2, false, &[("y", Phase::Applied)]))
        .await
        .unwrap();
    assert_eq!(stored(&store, "a").await.0.len(), 2);
}
