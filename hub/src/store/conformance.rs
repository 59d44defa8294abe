//! Backend-independent conformance checks for [`Store`] implementations.
//!
//! Every `check_*` function works under its own key prefix, so one fresh store can run them all
//! in sequence ([`run_all`]). They assume nothing else writes to the store while they run, since
//! several of them assert that the store-wide revision moves by exactly one per write. Failures
//! panic, so call them from tests.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;

use super::{KeyValue, Revision, SharedStore, Store, StoreError, WatchEvent, WatchStream};

/// How long to wait for an expected watch event or background task before failing.
const WAIT: Duration = Duration::from_secs(20);

/// Runs every check against `store`, which must be empty and never written to.
pub async fn run_all(store: SharedStore) {
    check_empty_store(store.clone()).await;
    check_get_missing(store.clone()).await;
    check_put_get(store.clone()).await;
    check_revisions(store.clone()).await;
    check_cas_create(store.clone()).await;
    check_cas_update(store.clone()).await;
    check_delete(store.clone()).await;
    check_compare_and_delete(store.clone()).await;
    check_list_prefix(store.clone()).await;
    check_watch_from_now(store.clone()).await;
    check_watch_replay_then_live(store.clone()).await;
    check_watch_replay_during_writes(store.clone()).await;
    check_watch_prefix_isolation(store.clone()).await;
    check_cas_many(store.clone()).await;
    check_concurrent_cas_increments(store).await;
}

/// A batch of compare-and-swaps is all-or-nothing, reports the revision each op was committed
/// at (non-decreasing, each the key's new `mod_revision`; redb spends one per op, etcd one per
/// batch), and is watched in order.
pub async fn check_cas_many(store: SharedStore) {
    use super::CasOp;
    let op = |key: &str, expected: Option<Revision>, value: &str| {
        CasOp::put(key, expected, value.as_bytes().to_vec())
    };
    let start = store.revision().await.unwrap();
    assert_eq!(
        store.compare_and_swap_many(vec![]).await.unwrap(),
        Ok(vec![])
    );
    assert_eq!(
        store.revision().await.unwrap(),
        start,
        "an empty batch writes nothing"
    );
    let mut watch = store.watch("/conformance/many/", start + 1).await.unwrap();
    let revisions = store
        .compare_and_swap_many(vec![
            op("/conformance/many/a", None, "1"),
            op("/conformance/many/b", None, "2"),
        ])
        .await
        .unwrap()
        .expect("both conditions hold");
    assert_eq!(revisions.len(), 2);
    assert!(start < revisions[0] && revisions[0] <= revisions[1]);
    assert_eq!(store.revision().await.unwrap(), revisions[1]);
    let a = store.get("/conformance/many/a").await.unwrap().unwrap();
    let b = store.get("/conformance/many/b").await.unwrap().unwrap();
    assert_eq!(
        (a.mod_revision, b.mod_revision),
        (revisions[0], revisions[1])
    );
    assert_eq!(
        (a.create_revision, b.create_revision),
        (revisions[0], revisions[1])
    );
    assert_eq!(next_event(&mut watch).await.key(), "/conformance/many/a");
    assert_eq!(next_event(&mut watch).await.key(), "/conformance/many/b");

    // One failing condition: nothing is written, the revision does not move.
    let at = store.revision().await.unwrap();
    let failed = store
        .compare_and_swap_many(vec![
            op("/conformance/many/a", Some(a.mod_revision), "10"),
            op("/conformance/many/b", Some(a.mod_revision - 1), "20"),
        ])
        .await
        .unwrap();
    assert_eq!(failed, Err("/conformance/many/b".to_string()));
    assert_eq!(store.revision().await.unwrap(), at);
    assert_eq!(
        store
            .get("/conformance/many/a")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"1".to_vec()
    );
    // A key that must be absent but exists fails too, and is named.
    let failed = store
        .compare_and_swap_many(vec![
            op("/conformance/many/new", None, "x"),
            op("/conformance/many/a", None, "x"),
        ])
        .await
        .unwrap();
    assert_eq!(failed, Err("/conformance/many/a".to_string()));
    assert!(store.get("/conformance/many/new").await.unwrap().is_none());

    // Updates keep create_revision.
    store
        .compare_and_swap_many(vec![op("/conformance/many/a", Some(a.mod_revision), "11")])
        .await
        .unwrap()
        .unwrap();
    let a2 = store.get("/conformance/many/a").await.unwrap().unwrap();
    assert_eq!(a2.create_revision, a.create_revision);
    assert_eq!(a2.value, b"11".to_vec());

    // Deletes in a batch: conditional like the writes, watched in order.
    let stale = store
        .compare_and_swap_many(vec![
            op("/conformance/many/c", None, "3"),
            CasOp::delete("/conformance/many/b", a2.mod_revision),
        ])
        .await
        .unwrap();
    assert_eq!(stale, Err("/conformance/many/b".to_string()));
    assert!(store.get("/conformance/many/c").await.unwrap().is_none());
    let at = store.revision().await.unwrap();
    let revisions = store
        .compare_and_swap_many(vec![
            op("/conformance/many/c", None, "3"),
            CasOp::delete("/conformance/many/b", b.mod_revision),
        ])
        .await
        .unwrap()
        .expect("both conditions hold");
    assert!(at < revisions[0] && revisions[0] <= revisions[1]);
    assert_eq!(store.revision().await.unwrap(), revisions[1]);
    assert!(store.get("/conformance/many/b").await.unwrap().is_none());
    assert_eq!(
        store
            .get("/conformance/many/c")
            .await
            .unwrap()
            .unwrap()
            .mod_revision,
        revisions[0]
    );
    assert_eq!(next_event(&mut watch).await.key(), "/conformance/many/a");
    assert_eq!(next_event(&mut watch).await.key(), "/conformance/many/c");
    assert_eq!(
        next_event(&mut watch).await,
        super::WatchEvent::Delete {
            key: "/conformance/many/b".to_string(),
            mod_revision: revisions[1]
        }
    );
}

/// Waits for the next watch event, failing on timeout, stream end or error.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch stream failed: {e}"),
        Ok(None) => panic!("watch stream ended unexpectedly"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

/// Asserts that watching `prefix` from `from` reports [`StoreError::Compacted`], either from the
/// call or as the first stream item (backends may do either); returns `(requested, oldest)`.
pub async fn assert_watch_compacted(
    store: &dyn Store,
    prefix: &str,
    from: Revision,
) -> (Revision, Revision) {
    let error = match store.watch(prefix, from).await {
        Err(e) => e,
        Ok(mut stream) => match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Err(e))) => e,
            Ok(other) => panic!("expected a compacted error from watch({from}), got {other:?}"),
            Err(_) => panic!("no compacted error from watch({from}) within {WAIT:?}"),
        },
    };
    match error {
        StoreError::Compacted { requested, oldest } => {
            assert_eq!(
                requested, from,
                "compacted error names the requested revision"
            );
            assert!(
                oldest > from,
                "oldest retained revision {oldest} must be after {from}"
            );
            (requested, oldest)
        }
        other => panic!("expected a compacted error from watch({from}), got {other}"),
    }
}

fn put_event(
    key: &str,
    value: &[u8],
    create_revision: Revision,
    mod_revision: Revision,
) -> WatchEvent {
    WatchEvent::Put(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    })
}

fn delete_event(key: &str, mod_revision: Revision) -> WatchEvent {
    WatchEvent::Delete {
        key: key.to_owned(),
        mod_revision,
    }
}

async fn revision(store: &dyn Store) -> Revision {
    store.revision().await.expect("revision")
}

async fn cas_ok(
    store: &dyn Store,
    key: &str,
    expected: Option<Revision>,
    value: &[u8],
) -> Revision {
    match store
        .compare_and_swap(key, expected, value.to_vec())
        .await
        .expect("compare_and_swap")
    {
        Ok(revision) => revision,
        Err(current) => panic!("compare_and_swap {key} {expected:?} conflicted with {current:?}"),
    }
}

async fn cas_conflict(
    store: &dyn Store,
    key: &str,
    expected: Option<Revision>,
    value: &[u8],
) -> Option<KeyValue> {
    match store
        .compare_and_swap(key, expected, value.to_vec())
        .await
        .expect("compare_and_swap")
    {
        Ok(revision) => panic!("compare_and_swap {key} {expected:?} succeeded at {revision}"),
        Err(current) => current,
    }
}

/// A never-written store is at revision 0 and holds no keys.
pub async fn check_empty_store(store: SharedStore) {
    assert_eq!(revision(&*store).await, 0, "fresh store revision");
    let (all, at) = store.list("").await.expect("list");
    assert!(all.is_empty(), "fresh store has keys: {all:?}");
    assert_eq!(at, 0);
}

/// Reading a missing key yields None and does not write.
pub async fn check_get_missing(store: SharedStore) {
    let before = revision(&*store).await;
    assert_eq!(
        store
            .get("/conformance/get-missing/nope")
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        revision(&*store).await,
        before,
        "a read must not bump the revision"
    );
}

/// A put is readable with its value and revisions; updates keep create_revision.
pub async fn check_put_get(store: SharedStore) {
    let key = "/conformance/put-get/k";
    let r1 = store.put(key, b"v1".to_vec()).await.expect("put");
    assert_eq!(
        revision(&*store).await,
        r1,
        "put returns the new store revision"
    );
    let expected = KeyValue {
        key: key.to_owned(),
        value: b"v1".to_vec(),
        create_revision: r1,
        mod_revision: r1,
    };
    assert_eq!(store.get(key).await.expect("get"), Some(expected));

    let r2 = store.put(key, b"v2".to_vec()).await.expect("put");
    assert!(r2 > r1);
    let kv = store.get(key).await.expect("get").expect("key exists");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"v2"[..], r1, r2)
    );

    let empty = "/conformance/put-get/empty";
    let r3 = store.put(empty, Vec::new()).await.expect("put empty value");
    let kv = store
        .get(empty)
        .await
        .expect("get")
        .expect("empty value is still a key");
    assert!(kv.value.is_empty());
    assert_eq!(kv.mod_revision, r3);
}

/// One store-wide counter, bumped by exactly one per successful write and never by failed ones;
/// create_revision survives updates and resets after delete and recreate.
pub async fn check_revisions(store: SharedStore) {
    let a = "/conformance/revisions/a";
    let b = "/conformance/revisions/b";
    let start = revision(&*store).await;
    let r1 = store.put(a, b"1".to_vec()).await.expect("put");
    let r2 = store.put(b, b"1".to_vec()).await.expect("put");
    let r3 = store.put(a, b"2".to_vec()).await.expect("put");
    assert_eq!(
        (r1, r2, r3),
        (start + 1, start + 2, start + 3),
        "revisions are a store-wide counter"
    );

    let kv_a = store.get(a).await.expect("get").expect("a");
    assert_eq!((kv_a.create_revision, kv_a.mod_revision), (r1, r3));
    let kv_b = store.get(b).await.expect("get").expect("b");
    assert_eq!((kv_b.create_revision, kv_b.mod_revision), (r2, r2));

    let r4 = store.delete(a).await.expect("delete").expect("a existed");
    assert_eq!(r4, r3 + 1);
    let r5 = store.put(a, b"3".to_vec()).await.expect("put");
    assert_eq!(r5, r4 + 1);
    let kv_a = store.get(a).await.expect("get").expect("a");
    assert_eq!(
        (kv_a.create_revision, kv_a.mod_revision),
        (r5, r5),
        "recreate resets create_revision"
    );

    // Failed writes leave the revision alone.
    assert_eq!(
        store
            .delete("/conformance/revisions/missing")
            .await
            .expect("delete"),
        None
    );
    cas_conflict(&*store, a, None, b"x").await;
    cas_conflict(&*store, a, Some(r1), b"x").await;
    assert!(
        !store
            .compare_and_delete(a, r4)
            .await
            .expect("compare_and_delete")
    );
    assert_eq!(
        revision(&*store).await,
        r5,
        "failed writes must not bump the revision"
    );
    assert_eq!(store.get(a).await.expect("get").expect("a").value, b"3");
}

/// compare_and_swap with `None` creates only absent keys and reports the current value otherwise.
pub async fn check_cas_create(store: SharedStore) {
    let key = "/conformance/cas-create/k";
    let r1 = cas_ok(&*store, key, None, b"first").await;
    let kv = store.get(key).await.expect("get").expect("created");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"first"[..], r1, r1)
    );

    let current = cas_conflict(&*store, key, None, b"second").await;
    assert_eq!(
        current,
        Some(kv.clone()),
        "conflict returns the current key"
    );
    assert_eq!(
        store.get(key).await.expect("get"),
        Some(kv),
        "conflict must not write"
    );
}

/// compare_and_swap on a mod_revision succeeds only for the current one.
pub async fn check_cas_update(store: SharedStore) {
    let key = "/conformance/cas-update/k";
    let r1 = store.put(key, b"v1".to_vec()).await.expect("put");
    let r2 = cas_ok(&*store, key, Some(r1), b"v2").await;
    assert!(r2 > r1);
    let kv = store.get(key).await.expect("get").expect("exists");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"v2"[..], r1, r2)
    );

    let current = cas_conflict(&*store, key, Some(r1), b"stale").await;
    assert_eq!(
        current,
        Some(kv.clone()),
        "stale revision conflicts with the current key"
    );
    assert_eq!(store.get(key).await.expect("get"), Some(kv));

    let missing = "/conformance/cas-update/missing";
    assert_eq!(cas_conflict(&*store, missing, Some(r2), b"x").await, None);
    assert_eq!(
        store.get(missing).await.expect("get"),
        None,
        "conflict must not create"
    );
}

/// delete removes existing keys with a new revision and is a no-op for missing ones.
pub async fn check_delete(store: SharedStore) {
    let key = "/conformance/delete/k";
    let r1 = store.put(key, b"v".to_vec()).await.expect("put");
    let r2 = store
        .delete(key)
        .await
        .expect("delete")
        .expect("key existed");
    assert!(r2 > r1);
    assert_eq!(revision(&*store).await, r2);
    assert_eq!(store.get(key).await.expect("get"), None);
    assert_eq!(
        store.delete(key).await.expect("delete"),
        None,
        "second delete finds nothing"
    );
    assert_eq!(revision(&*store).await, r2);
    let (left, _) = store.list("/conformance/delete/").await.expect("list");
    assert!(left.is_empty(), "deleted key still listed: {left:?}");
}

/// compare_and_delete removes a key only at its current mod_revision.
pub async fn check_compare_and_delete(store: SharedStore) {
    let key = "/conformance/compare-and-delete/k";
    let r1 = store.put(key, b"1".to_vec()).await.expect("put");
    let r2 = store.put(key, b"2".to_vec()).await.expect("put");
    assert!(
        !store
            .compare_and_delete(key, r1)
            .await
            .expect("compare_and_delete")
    );
    assert_eq!(
        store.get(key).await.expect("get").expect("kept").value,
        b"2"
    );
    assert_eq!(revision(&*store).await, r2);

    assert!(
        store
            .compare_and_delete(key, r2)
            .await
            .expect("compare_and_delete")
    );
    assert_eq!(store.get(key).await.expect("get"), None);
    let deleted_at = revision(&*store).await;
    assert!(deleted_at > r2, "a delete bumps the revision");

    assert!(
        !store
            .compare_and_delete(key, r2)
            .await
            .expect("compare_and_delete")
    );
    assert_eq!(revision(&*store).await, deleted_at);
}

/// list returns exactly the keys under a prefix, sorted, with the revision it read at.
pub async fn check_list_prefix(store: SharedStore) {
    let base = "/conformance/list";
    for key in ["a/2", "ab/1", "a/3/x", "b", "a/1", "a", "a0"] {
        store
            .put(&format!("{base}/{key}"), key.as_bytes().to_vec())
            .await
            .expect("put");
    }
    let (items, at) = store.list(&format!("{base}/a/")).await.expect("list");
    let keys: Vec<&str> = items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{base}/a/1"),
            format!("{base}/a/2"),
            format!("{base}/a/3/x")
        ],
        "list must be sorted and exclude sibling prefixes"
    );
    assert_eq!(at, revision(&*store).await);
    for kv in &items {
        assert_eq!(store.get(&kv.key).await.expect("get").as_ref(), Some(kv));
        assert_eq!(kv.value, &kv.key.as_bytes()[base.len() + 1..]);
    }

    let (items, _) = store.list(&format!("{base}/ab/")).await.expect("list");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key, format!("{base}/ab/1"));

    let (items, _) = store.list(&format!("{base}/")).await.expect("list");
    assert_eq!(items.len(), 7);
    assert!(
        items.windows(2).all(|w| w[0].key < w[1].key),
        "list is sorted by key"
    );

    let (items, at) = store.list(&format!("{base}/zzz/")).await.expect("list");
    assert!(items.is_empty());
    assert_eq!(at, revision(&*store).await);
}

/// A watch from now (0 or current+1) sees only later writes, in order, puts and deletes.
pub async fn check_watch_from_now(store: SharedStore) {
    for (round, from_current) in [(0, false), (1, true)] {
        let prefix = format!("/conformance/watch-now/{round}/");
        let a = format!("{prefix}a");
        let b = format!("{prefix}b");
        let a_created = store.put(&a, b"before".to_vec()).await.expect("put");
        let from = if from_current {
            revision(&*store).await + 1
        } else {
            0
        };
        let mut watch = store.watch(&prefix, from).await.expect("watch");

        let r1 = store.put(&a, b"v1".to_vec()).await.expect("put");
        let r2 = store.put(&b, b"v2".to_vec()).await.expect("put");
        let r3 = store.delete(&a).await.expect("delete").expect("a existed");
        let r4 = store.put(&a, b"v3".to_vec()).await.expect("put");

        assert_eq!(
            next_event(&mut watch).await,
            put_event(&a, b"v1", a_created, r1)
        );
        assert_eq!(next_event(&mut watch).await, put_event(&b, b"v2", r2, r2));
        assert_eq!(next_event(&mut watch).await, delete_event(&a, r3));
        let recreated = next_event(&mut watch).await;
        assert_eq!(recreated, put_event(&a, b"v3", r4, r4));
        assert_eq!((recreated.key(), recreated.revision()), (a.as_str(), r4));
    }
}

/// A watch from an old revision replays history from exactly there, then continues live
/// without gap or duplicate.
pub async fn check_watch_replay_then_live(store: SharedStore) {
    let prefix = "/conformance/watch-replay/";
    let k1 = format!("{prefix}k1");
    let k2 = format!("{prefix}k2");
    let k3 = format!("{prefix}k3");
    let r1 = store.put(&k1, b"a".to_vec()).await.expect("put");
    let r2 = store.put(&k2, b"b".to_vec()).await.expect("put");
    let r3 = store
        .delete(&k1)
        .await
        .expect("delete")
        .expect("k1 existed");
    let r4 = store.put(&k2, b"c".to_vec()).await.expect("put");
    assert!(r1 < r2);

    let mut watch = store.watch(prefix, r2).await.expect("watch");
    let r5 = store.put(&k3, b"live1".to_vec()).await.expect("put");

    assert_eq!(next_event(&mut watch).await, put_event(&k2, b"b", r2, r2));
    assert_eq!(next_event(&mut watch).await, delete_event(&k1, r3));
    assert_eq!(next_event(&mut watch).await, put_event(&k2, b"c", r2, r4));
    assert_eq!(
        next_event(&mut watch).await,
        put_event(&k3, b"live1", r5, r5)
    );
    // The next write must be the next event: nothing replayed twice.
    let r6 = store.put(&k3, b"live2".to_vec()).await.expect("put");
    assert_eq!(
        next_event(&mut watch).await,
        put_event(&k3, b"live2", r5, r6)
    );
}

/// A watch started from history while another task keeps writing sees every write exactly once,
/// in order.
pub async fn check_watch_replay_during_writes(store: SharedStore) {
    const WRITES: usize = 200;
    let prefix = "/conformance/watch-during-writes/";
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut written = Vec::with_capacity(WRITES);
            for i in 0..WRITES {
                let key = format!("{prefix}{}", i % 5);
                let revision = store
                    .put(&key, i.to_string().into_bytes())
                    .await
                    .expect("put");
                written.push((revision, key, i.to_string().into_bytes()));
                // The receiver may have stopped listening; that is fine.
                let _ = progress_tx.send(revision);
            }
            written
        })
    };
    // Start watching from the first write once some history exists and writes are ongoing.
    let mut first = None;
    for _ in 0..20 {
        let revision = tokio::time::timeout(WAIT, progress.recv())
            .await
            .expect("writer progress")
            .expect("writer running");
        first.get_or_insert(revision);
    }
    let first = first.expect("at least one write");
    let mut watch = store.watch(prefix, first).await.expect("watch");
    drop(progress);
    let written = tokio::time::timeout(WAIT, writer)
        .await
        .expect("writer finished in time")
        .expect("writer task");
    assert_eq!(written[0].0, first);

    let mut seen = Vec::with_capacity(WRITES);
    while seen.len() < WRITES {
        match next_event(&mut watch).await {
            WatchEvent::Put(kv) => seen.push((kv.mod_revision, kv.key, kv.value)),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, written, "watch must see every write once, in order");
}

/// A watch only reports keys under its prefix ("/a/" excludes "/ab/" and "/a").
pub async fn check_watch_prefix_isolation(store: SharedStore) {
    let base = "/conformance/watch-prefix";
    let inside = format!("{base}/a/1");
    let mut watch = store.watch(&format!("{base}/a/"), 0).await.expect("watch");
    store
        .put(&format!("{base}/ab/1"), b"x".to_vec())
        .await
        .expect("put");
    store
        .put(&format!("{base}/b"), b"x".to_vec())
        .await
        .expect("put");
    store
        .put(&format!("{base}/a"), b"x".to_vec())
        .await
        .expect("put");
    let r1 = store.put(&inside, b"in".to_vec()).await.expect("put");
    assert_eq!(
        next_event(&mut watch).await,
        put_event(&inside, b"in", r1, r1)
    );

    store.delete(&format!("{base}/ab/1")).await.expect("delete");
    store.delete(&format!("{base}/a")).await.expect("delete");
    let r2 = store
        .delete(&inside)
        .await
        .expect("delete")
        .expect("existed");
    assert_eq!(next_event(&mut watch).await, delete_event(&inside, r2));
}

/// Concurrent read-modify-write loops using compare_and_swap never lose an update.
pub async fn check_concurrent_cas_increments(store: SharedStore) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 25;
    const MAX_ATTEMPTS: u32 = 100_000;
    let key = "/conformance/cas-counter/n";
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            let mut current = store.get(key).await.expect("get");
            for _ in 0..INCREMENTS {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < MAX_ATTEMPTS, "compare_and_swap never succeeds");
                    let (expected, n) = match &current {
                        None => (None, 0),
                        Some(kv) => {
                            let text = std::str::from_utf8(&kv.value).expect("utf-8 counter");
                            (
                                Some(kv.mod_revision),
                                text.parse::<u64>().expect("numeric counter"),
                            )
                        }
                    };
                    let next = (n + 1).to_string().into_bytes();
                    match store
                        .compare_and_swap(key, expected, next.clone())
                        .await
                        .expect("compare_and_swap")
                    {
                        Ok(revision) => {
                            revisions.push(revision);
                            current = Some(KeyValue {
                                key: key.to_owned(),
                                value: next,
                                create_revision: current
                                    .as_ref()
                                    .map_or(revision, |kv| kv.create_revision),
                                mod_revision: revision,
                            });
                            break;
                        }
                        // Retry from the state the conflict reported.
                        Err(latest) => current = latest,
                    }
                }
            }
            revisions
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        let revisions = tokio::time::timeout(WAIT, task)
            .await
            .expect("increment task finished in time")
            .expect("increment task");
        all.extend(revisions);
    }
    assert_eq!(
        all.len() as u64,
        TASKS * INCREMENTS,
        "every success has its own revision"
    );
    let kv = store.get(key).await.expect("get").expect("counter exists");
    assert_eq!(kv.value, (TASKS * INCREMENTS).to_string().into_bytes());
    assert_eq!(
        Some(&kv.mod_revision),
        all.last(),
        "last success is the current state"
    );
}
