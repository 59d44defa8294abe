//! The group commit against a store that counts, holds and fails its batch writes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_proto::state::Phase;
use futures::future::join_all;

use super::*;
use crate::store::redb::RedbStore;
use crate::store::testing::GatedStore;
use crate::store::{Store, WatchStream};

const DEADLINE: Duration = Duration::from_secs(10);

/// The gated store of [`crate::store::testing`]; its batch writes are read here as journal
/// batches (reports in each) and checkpoints (writes in each).
type TestStore = GatedStore;

trait Journaled {
    /// Reports per journal batch written, in order.
    fn batches(&self) -> Vec<usize>;
    /// Writes per checkpoint batch, in order.
    fn checkpoints(&self) -> Vec<usize>;
}

impl Journaled for GatedStore {
    fn batches(&self) -> Vec<usize> {
        self.writes()
            .iter()
            .filter_map(|ops| match &ops[..] {
                [op] if op.key.starts_with(STATUS_LOG) => {
                    let value = op.value.as_deref().unwrap_or_default();
                    let batch = JournalBatch::decode(value).expect("a journal batch decodes");
                    Some(batch.entries.len())
                }
                _ => None,
            })
            .collect()
    }

    fn checkpoints(&self) -> Vec<usize> {
        self.writes()
            .iter()
            .filter(|ops| !matches!(&ops[..], [op] if op.key.starts_with(STATUS_LOG)))
            .map(Vec::len)
            .collect()
    }
}

fn ingest(store: &Arc<TestStore>, limits: Limits) -> Arc<Ingest> {
    Arc::new(Ingest::new(store.clone(), limits, None))
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

/// What a hub reading the store afresh finds for `cluster` (the records and the journal):
/// (app, phase) in order, and the generation.
async fn stored(store: &TestStore, cluster: &str) -> (Vec<(String, Phase)>, u64) {
    let store: SharedStore = Arc::new(ReadOnly(store.inner.clone()));
    let fresh = Ingest::new(store, Limits::default(), None);
    let rec = fresh.get_shared(cluster).await.unwrap();
    assert!(
        rec.generation > 0,
        "no record for {cluster}, neither stored nor journaled"
    );
    let apps = rec
        .apps
        .iter()
        .map(|a| (a.app.to_string(), a.phase))
        .collect();
    (apps, rec.generation)
}

/// What the store holds under `/status/<cluster>` itself (`None`: nothing).
async fn record_key(store: &TestStore, cluster: &str) -> Option<StatusRecord> {
    let kv = store
        .inner
        .get(&format!("{STATUS}{cluster}"))
        .await
        .unwrap()?;
    Some(serde_json::from_slice(&kv.value).unwrap())
}

/// Journal batches stored.
async fn journal_keys(store: &TestStore) -> usize {
    store.inner.list(STATUS_LOG).await.unwrap().0.len()
}

/// A store that reads through and refuses writes (to read what a restarted hub reads without
/// touching the store).
#[derive(Debug)]
struct ReadOnly(RedbStore);

#[async_trait::async_trait]
impl Store for ReadOnly {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.0.get(key).await
    }
    async fn put(&self, _: &str, _: Vec<u8>) -> Result<Revision, StoreError> {
        unreachable!("read only")
    }
    async fn compare_and_swap(
        &self,
        _: &str,
        _: Option<Revision>,
        _: Vec<u8>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        unreachable!("read only")
    }
    async fn delete(&self, _: &str) -> Result<Option<Revision>, StoreError> {
        unreachable!("read only")
    }
    async fn compare_and_delete(&self, _: &str, _: Revision) -> Result<bool, StoreError> {
        unreachable!("read only")
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.0.list(prefix).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.0.revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.0.watch(prefix, from).await
    }
    async fn compare_and_swap_many(
        &self,
        _: Vec<CasOp>,
    ) -> Result<Result<Vec<Revision>, String>, StoreError> {
        unreachable!("read only")
    }
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
    assert_eq!(&*cached.apps[0].app, "web");
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
    assert_eq!(journal_keys(&store).await, 0, "nor journaled");
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
    assert_eq!(
        store.batches(),
        [1, 8],
        "one write of both clusters' reports"
    );
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
    // A checkpoint after every batch.
    let ingest = ingest(
        &store,
        Limits {
            checkpoint_entries: 1,
            ..Limits::default()
        },
    );
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
    assert_eq!(
        record_key(&store, "a").await.map(|r| r.generation),
        Some(6),
        "the checkpoint wrote the merged record"
    );
    assert_eq!(store.batches(), [1, 1]);
    assert_eq!(
        store.checkpoints(),
        [2, 2, 2],
        "record and journal delete; one conflict, one retry"
    );
    assert_eq!(journal_keys(&store).await, 0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_folded_into_the_records_by_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    store.open_gate();
    let ingest = ingest(
        &store,
        Limits {
            checkpoint_entries: 3,
            ..Limits::default()
        },
    );
    use Phase::*;
    for (g, cluster, phase) in [(1, "a", Applying), (2, "b", Applied)] {
        ingest
            .record(cluster, &report(g, false, &[("x", phase)]))
            .await
            .unwrap();
    }
    assert_eq!(journal_keys(&store).await, 2);
    assert!(store.checkpoints().is_empty(), "no checkpoint yet");
    assert!(
        record_key(&store, "a").await.is_none(),
        "the reports are in the journal only"
    );
    assert_eq!(stored(&store, "a").await, (vec![("x".into(), Applying)], 1));

    ingest
        .record("a", &report(3, false, &[("y", Applied)]))
        .await
        .unwrap();
    assert_eq!(
        store.checkpoints(),
        [2 + 3],
        "both records and three deletes"
    );
    assert_eq!(journal_keys(&store).await, 0);
    assert_eq!(ingest.journaled(), 0);
    let a = record_key(&store, "a").await.unwrap();
    assert_eq!((a.apps.len(), a.generation), (2, 3));
    assert_eq!(record_key(&store, "b").await.unwrap().generation, 2);

    // The next batches journal again, onto the checkpointed records.
    ingest
        .record("b", &report(4, false, &[("z", Failed)]))
        .await
        .unwrap();
    assert_eq!(
        stored(&store, "b").await,
        (vec![("x".into(), Applied), ("z".into(), Failed)], 4)
    );
}

/// A store that takes few ops per transaction (etcd's `--max-txn-ops`) gets the checkpoint in
/// several writes — records first, then the journal's deletes — and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_split_to_the_stores_transaction_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    store.max_ops.store(2, Ordering::SeqCst);
    store.open_gate();
    let ingest = ingest(
        &store,
        Limits {
            checkpoint_entries: 3,
            ..Limits::default()
        },
    );
    use Phase::*;
    for (g, cluster, phase) in [(1, "a", Applying), (2, "b", Applied), (3, "c", Failed)] {
        ingest
            .record(cluster, &report(g, false, &[("x", phase)]))
            .await
            .unwrap();
    }
    // Three records and three journal deletes, two ops at a time.
    assert_eq!(store.checkpoints(), [2, 2, 2]);
    assert_eq!(journal_keys(&store).await, 0);
    assert_eq!(ingest.journaled(), 0);
    for (cluster, phase, g) in [("a", Applying, 1), ("b", Applied, 2), ("c", Failed, 3)] {
        let r = record_key(&store, cluster).await.unwrap();
        assert_eq!((r.apps.len(), r.generation), (1, g), "{cluster}");
        assert_eq!(
            stored(&store, cluster).await,
            (vec![("x".into(), phase)], g)
        );
    }
    // Journaling goes on after the split checkpoint; a fresh reader finds it all.
    ingest
        .record("a", &report(4, false, &[("y", Applied)]))
        .await
        .unwrap();
    assert_eq!(
        stored(&store, "a").await,
        (vec![("x".into(), Applying), ("y".into(), Applied)], 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_merged_again_onto_records_that_hold_it_changes_nothing() {
    // A crash between a checkpoint's record writes and its journal deletes leaves both.
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    store.open_gate();
    use Phase::*;
    let reports = [
        ("a", report(1, false, &[("x", Applying), ("y", Applied)])),
        ("a", report(2, true, &[("z", Applied)])),
        ("a", report(3, false, &[("x", Failed)])),
        ("a", report(4, false, &[("z", Removed)])),
    ];
    let mut record = StatusRecord::default();
    let mut batch = JournalBatch::default();
    for (cluster, r) in &reports {
        record.merge(r);
        batch.entries.push(JournalEntry {
            cluster: cluster.to_string(),
            report: Some(r.clone()),
        });
    }
    store
        .inner
        .put(&format!("{STATUS}a"), serde_json::to_vec(&record).unwrap())
        .await
        .unwrap();
    store
        .inner
        .put(&format!("{STATUS_LOG}{:020}", 7), batch.encode_to_vec())
        .await
        .unwrap();
    assert_eq!(stored(&store, "a").await, (vec![("x".into(), Failed)], 4));

    // The next batch continues the sequence and the next checkpoint deletes the old batch.
    let ingest = ingest(
        &store,
        Limits {
            checkpoint_entries: 2,
            ..Limits::default()
        },
    );
    ingest
        .record("a", &report(5, false, &[("w", Applied)]))
        .await
        .unwrap();
    assert_eq!(journal_keys(&store).await, 0);
    let a = record_key(&store, "a").await.unwrap();
    assert_eq!((a.apps.len(), a.generation), (2, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_journal_batch_is_skipped_and_the_records_keep_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::closed(&dir);
    store.open_gate();
    {
        let ingest = ingest(&store, Limits::default());
        ingest
            .record("a", &report(1, false, &[("x", Phase::Applied)]))
            .await
            .unwrap();
    }
    // Garbage after the good batch.
    store
        .inner
        .put(
            &format!("{STATUS_LOG}{:020}", 1),
            b"\xff\xff not protobuf".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        stored(&store, "a").await,
        (vec![("x".into(), Phase::Applied)], 1)
    );

    let ingest = ingest(
        &store,
        Limits {
            checkpoint_entries: 3,
            ..Limits::default()
        },
    );
    ingest
        .record("a", &report(2, false, &[("y", Phase::Applied)]))
        .await
        .unwrap();
    assert_eq!(
        journal_keys(&store).await,
        0,
        "the garbage went with the checkpoint"
    );
    assert_eq!(record_key(&store, "a").await.unwrap().apps.len(), 2);
}

#[test]
fn journal_entries_encode_as_the_batch_message_does() {
    let reports = [
        ("a", report(1, true, &[("x", Phase::Applied)])),
        ("cluster-b", report(9, false, &[])),
    ];
    let mut buf = Vec::new();
    let mut batch = JournalBatch::default();
    for (c, r) in &reports {
        journal_entry(&mut buf, c, r);
        batch.entries.push(JournalEntry {
            cluster: c.to_string(),
            report: Some(r.clone()),
        });
    }
    assert_eq!(buf, batch.encode_to_vec());
    assert_eq!(JournalBatch::decode(buf.as_slice()).unwrap(), batch);
}

fn revision_of(rec: &StatusRecord, app: &str) -> String {
    rec.app(app)
        .map(|a| a.revision.to_string())
        .unwrap_or_default()
}

fn at_revision(generation: u64, app_name: &str, revision: &str) -> v1::StatusReport {
    let mut r = report(generation, false, &[(app_name, Phase::Applied)]);
    r.apps[0].revision = revision.into();
    r
}

/// Replicas sharing a store journal under their own names, follow each other's batches (and
/// tell the engine of them), fold only their own, and a fresh reader merges every replica's
/// batches in the order they were stored — not in key order — so a cluster that moved from
/// one replica to another ends with what it reported last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_journal_apart_and_follow_each_other_in_store_order() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    // "z" sorts after "b", so key order is not store order.
    let z = Arc::new(Ingest::new(
        store.clone(),
        Limits {
            checkpoint_entries: 2,
            ..Limits::default()
        },
        Some("z"),
    ));
    let b = Arc::new(Ingest::new(store.clone(), Limits::default(), Some("b")));
    let told: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let t = told.clone();
    b.on_durable(Box::new(move |cluster, report, _| {
        lock(&t).push((cluster.to_string(), report.apps[0].revision.clone()));
    }));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let followed = prometheus_client::metrics::counter::Counter::<u64>::default();
    let following = tokio::spawn(b.clone().follow(rx, followed.clone()));

    // Connected to z: b sees the report, and its engine is told.
    z.record("x", &at_revision(1, "web", "r1")).await.unwrap();
    until("b to follow z's report", || {
        lock(&told).contains(&("x".into(), "r1".into()))
    })
    .await;
    assert_eq!(revision_of(&b.get_shared("x").await.unwrap(), "web"), "r1");
    assert_eq!(followed.get(), 1);

    // The cluster moves to b, which journals its next report under its own name.
    b.record("x", &at_revision(2, "web", "r2")).await.unwrap();
    let keys: Vec<String> = store
        .list(STATUS_LOG)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert!(
        keys.iter().any(|k| k.starts_with("/status-log/b/")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("/status-log/z/")),
        "{keys:?}"
    );

    // A fresh reader (a replica starting) ends with r2, although z's batch sorts last.
    let fresh = Ingest::new(store.clone(), Limits::default(), Some("c"));
    assert_eq!(
        revision_of(&fresh.get_shared("x").await.unwrap(), "web"),
        "r2"
    );

    // z checkpoints (its second batch): it folds its own journal and leaves b's.
    z.record("y", &at_revision(1, "web", "r1")).await.unwrap();
    let keys: Vec<String> = store
        .list(STATUS_LOG)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert!(
        !keys.iter().any(|k| k.starts_with("/status-log/z/")),
        "{keys:?}"
    );
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("/status-log/b/"))
            .count(),
        1,
        "{keys:?}"
    );
    // z's record of x (written with its older report) does not hide b's newer batch.
    let fresh = Ingest::new(store.clone(), Limits::default(), Some("c"));
    assert_eq!(
        revision_of(&fresh.get_shared("x").await.unwrap(), "web"),
        "r2"
    );
    assert_eq!(
        revision_of(&fresh.get_shared("y").await.unwrap(), "web"),
        "r1"
    );

    stop.send(true).unwrap();
    following.await.unwrap();
}

/// The leader folds the journal a replica left behind when it went (and batches a hub alone
/// on the store wrote without a replica's name), and no live replica's journal: the records
/// hold what the journal held, and its keys are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_of_a_replica_that_went_is_folded_and_a_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let alone = Arc::new(Ingest::new(store.clone(), Limits::default(), None));
    alone
        .record("w", &at_revision(1, "web", "r0"))
        .await
        .unwrap();
    let gone = Arc::new(Ingest::new(store.clone(), Limits::default(), Some("gone")));
    gone.record("x", &at_revision(1, "web", "r1"))
        .await
        .unwrap();
    let live = Arc::new(Ingest::new(store.clone(), Limits::default(), Some("live")));
    live.record("y", &at_revision(1, "web", "r2"))
        .await
        .unwrap();
    let leader = Ingest::new(store.clone(), Limits::default(), Some("leader"));
    let keys = |prefix: &'static str| {
        let store = store.clone();
        async move { store.list(prefix).await.unwrap().0.len() }
    };
    assert_eq!(keys(STATUS_LOG).await, 3);

    let names: std::collections::HashSet<String> =
        ["leader".to_string(), "live".to_string()].into();
    assert_eq!(leader.adopt_orphans(&names).await.unwrap(), 2);
    let left: Vec<String> = store
        .list(STATUS_LOG)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("/status-log/live/"), "{left:?}");
    for (cluster, rev) in [("w", "r0"), ("x", "r1")] {
        let stored = record_key_in(&store, cluster)
            .await
            .expect("folded into the record");
        assert_eq!(revision_of(&stored, "web"), rev);
    }
    // Nothing left to fold.
    assert_eq!(leader.adopt_orphans(&names).await.unwrap(), 0);
    let fresh = Ingest::new(store.clone(), Limits::default(), Some("c"));
    assert_eq!(
        revision_of(&fresh.get_shared("y").await.unwrap(), "web"),
        "r2"
    );
}

/// The record stored under `/status/<cluster>` itself.
async fn record_key_in(store: &SharedStore, cluster: &str) -> Option<StatusRecord> {
    let kv = store.get(&format!("{STATUS}{cluster}")).await.unwrap()?;
    Some(serde_json::from_slice(&kv.value).unwrap())
}

/// After a failed watch, batches another replica folded and deleted meanwhile are read back
/// from the records: a record holding a newer batch than the cached one replaces it, and the
/// engine is told; reading again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_folded_while_the_watch_was_down_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let b = Arc::new(Ingest::new(store.clone(), Limits::default(), Some("b")));
    let told: Arc<Mutex<Vec<String>>> = Arc::default();
    let t = told.clone();
    b.on_durable(Box::new(move |cluster, report, _| {
        assert!(report.replace);
        lock(&t).push(cluster.to_string());
    }));
    assert!(b.get_shared("x").await.unwrap().apps.is_empty());
    // z journals and folds at once: its batch is gone from the journal before b saw it.
    let z = Arc::new(Ingest::new(
        store.clone(),
        Limits {
            checkpoint_entries: 1,
            ..Limits::default()
        },
        Some("z"),
    ));
    z.record("x", &at_revision(1, "web", "r1")).await.unwrap();
    assert_eq!(store.list(STATUS_LOG).await.unwrap().0.len(), 0);
    assert!(b.get_shared("x").await.unwrap().apps.is_empty());

    assert_eq!(b.resync_records().await.unwrap(), 1);
    assert_eq!(revision_of(&b.get_shared("x").await.unwrap(), "web"), "r1");
    assert_eq!(*lock(&told), ["x"]);
    assert_eq!(b.resync_records().await.unwrap(), 0);
}
