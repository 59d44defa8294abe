//! The etcd store against a real etcd (the installed `etcd` binary, started by each test on
//! free loopback ports): the backend-independent conformance suite, key prefixes, watches that
//! resume after the leader is killed, compaction, batches split to etcd's transaction limit,
//! a clear error without quorum, and a hub that runs on etcd and finds its state again after a
//! restart.

use std::sync::Arc;

use flotilla_hub::server::StoreKind;
use flotilla_hub::store::conformance::{self, next_event};
use flotilla_hub::store::{CasOp, SharedStore, Store, StoreError, WatchEvent};
use flotilla_tests::etcd::EtcdCluster;
use flotilla_tests::{TestHub, eventually, operator_ca, test_dir};

#[tokio::test]
async fn the_conformance_suite_passes_on_a_real_etcd() {
    let etcd = EtcdCluster::start(1).await;
    let store: SharedStore = Arc::new(etcd.store("").await);
    conformance::run_all(store).await;
}

#[tokio::test]
async fn a_prefix_keeps_two_fleets_apart_on_one_etcd() {
    let etcd = EtcdCluster::start(1).await;
    let a = etcd.store("/fleet-a").await;
    let b = etcd.store("/fleet-b").await;
    a.put("/clusters/x", b"a".to_vec()).await.unwrap();
    b.put("/clusters/y", b"b".to_vec()).await.unwrap();
    let (in_a, _) = a.list("/").await.unwrap();
    let keys: Vec<&str> = in_a.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/clusters/x"],
        "fleet a sees only its own keys, unprefixed"
    );
    assert!(b.get("/clusters/x").await.unwrap().is_none());
    // A list larger than one page is one consistent snapshot, in key order.
    for i in 0..2_500 {
        b.put(&format!("/many/{i:05}"), vec![1]).await.unwrap();
    }
    let (many, at) = b.list("/many/").await.unwrap();
    assert_eq!(many.len(), 2_500);
    assert!(many.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(at, b.revision().await.unwrap());
}

#[tokio::test]
async fn a_watch_resumes_without_gap_or_duplicate_after_the_leader_is_killed() {
    let mut etcd = EtcdCluster::start(3).await;
    let store = etcd.store("").await;
    let start = store.revision().await.unwrap() + 1;
    let mut watch = store.watch("/w/", start).await.unwrap();
    for i in 0..20 {
        store.put(&format!("/w/{i:02}"), vec![i]).await.unwrap();
    }
    let leader = etcd.leader().await;
    etcd.kill(leader);
    // The survivors elect a new leader; writes go on through the same store.
    let mut written = 20;
    eventually("a write after the leader was killed", || {
        let store = store.clone();
        async move { store.put("/w/20", vec![20]).await.ok() }
    })
    .await;
    written += 1;
    for i in 21..40u8 {
        store.put(&format!("/w/{i:02}"), vec![i]).await.unwrap();
        written += 1;
    }
    let mut seen = Vec::new();
    let mut last = 0;
    while seen.len() < written {
        match next_event(&mut watch).await {
            WatchEvent::Put(kv) => {
                assert!(kv.mod_revision > last, "events in revision order");
                last = kv.mod_revision;
                seen.push(kv.key);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<String> = (0..40).map(|i| format!("/w/{i:02}")).collect();
    assert_eq!(seen, expected, "every write once, in order");
    etcd.restart(leader);
}

#[tokio::test]
async fn a_watch_from_compacted_history_reports_compacted() {
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store("").await;
    for i in 0..5u8 {
        store.put("/c/k", vec![i]).await.unwrap();
    }
    let now = store.revision().await.unwrap();
    store.compact(now).await.unwrap();
    let (requested, oldest) = conformance::assert_watch_compacted(&store, "/c/", 2).await;
    assert_eq!((requested, oldest), (2, now));
    // From the compaction point on, history is there.
    let mut w = store.watch("/c/", now).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), now);
}

#[tokio::test]
async fn a_batch_beyond_the_transaction_limit_is_refused_whole() {
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store("").await;
    assert_eq!(store.max_batch_ops(), 128, "etcd's default --max-txn-ops");
    let ops: Vec<CasOp> = (0..129)
        .map(|i| CasOp::put(format!("/b/{i}"), None, vec![1]))
        .collect();
    let err = store.compare_and_swap_many(ops).await.unwrap_err();
    assert!(err.to_string().contains("--max-txn-ops"), "{err}");
    assert!(
        store.list("/b/").await.unwrap().0.is_empty(),
        "nothing written"
    );
    let ops: Vec<CasOp> = (0..128)
        .map(|i| CasOp::put(format!("/b/{i}"), None, vec![1]))
        .collect();
    let revisions = store.compare_and_swap_many(ops).await.unwrap().unwrap();
    assert_eq!(revisions.len(), 128);
    assert!(
        revisions.windows(2).all(|w| w[0] == w[1]),
        "one etcd transaction, one revision"
    );
}

#[tokio::test]
async fn without_quorum_writes_fail_with_a_clear_error_and_resume_after() {
    let mut etcd = EtcdCluster::start(3).await;
    let store = etcd.store("").await;
    store.put("/q/before", vec![1]).await.unwrap();
    etcd.kill(1);
    etcd.kill(2);
    let err = eventually("a refused write without quorum", || {
        let store = store.clone();
        async move { store.put("/q/during", vec![2]).await.err() }
    })
    .await;
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{msg}");
    assert!(msg.contains("etcd put /q/during"), "names the call: {msg}");
    etcd.restart(1);
    etcd.restart(2);
    eventually("writes to resume with quorum back", || {
        let store = store.clone();
        async move { store.put("/q/after", vec![3]).await.ok() }
    })
    .await;
    assert_eq!(
        store.get("/q/before").await.unwrap().unwrap().value,
        vec![1]
    );
}

#[tokio::test]
async fn a_hub_on_etcd_keeps_its_clusters_across_a_restart() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let mut config = TestHub::config(dir.path());
    config.store = StoreKind::Etcd(etcd.config("/flotilla"));
    let (_, ca, key) = operator_ca(dir.path());
    config.ca_files = Some((ca, key));
    let mut hub = TestHub::start(config).await;
    let agent_dir = dir.path().join("agent");
    let mut agent = hub.join(&agent_dir, "edge-1").await;
    agent.connected().await;
    hub.wait_state("edge-1", "connected").await;
    agent.stop().await.unwrap();
    hub.restart().await;
    let c = hub.cluster("edge-1").await;
    assert_eq!(c.name, "edge-1");
    // What the hub wrote is in etcd, under the prefix.
    let raw = etcd.store("").await;
    let (keys, _) = raw.list("/flotilla/").await.unwrap();
    assert!(
        keys.iter().any(|kv| kv.key.contains("edge-1")),
        "the cluster's record is in etcd: {:?}",
        keys.iter().map(|k| &k.key).collect::<Vec<_>>()
    );
}

/// etcd serving TLS and requiring client certificates (made by the test): the store connects
/// with the CA, certificate and key; a client without a certificate is refused with an error
/// naming etcd; and `flotilla-hub serve` given `--etcd-ca/--etcd-cert/--etcd-key` starts on it
/// and leads.
#[tokio::test]
async fn a_hub_reaches_an_etcd_that_requires_client_certificates() {
    use flotilla_tests::hub_process::{Hub, free_port, leads};
    let dir = test_dir();
    let etcd = EtcdCluster::start_tls(1).await;
    let pki = etcd.pki.clone().unwrap();
    assert!(etcd.url("").starts_with("etcd://127.0.0.1:"));
    let store = etcd.store("/tls").await;
    store.put("/x", b"1".to_vec()).await.unwrap();
    assert_eq!(store.get("/x").await.unwrap().unwrap().value, b"1");

    let mut anonymous = etcd.config("/tls");
    anonymous.tls.as_mut().unwrap().identity = None;
    let err = match flotilla_hub::store::etcd::EtcdStore::connect(&anonymous).await {
        Ok(s) => s
            .get("/x")
            .await
            .expect_err("refused without a client certificate"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("etcd"), "{err}");

    let (_, ca, key) = operator_ca(dir.path());
    let store_url = etcd.url("/fleet");
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let (ca, key) = (path(&ca), path(&key));
    let (etcd_ca, etcd_cert, etcd_key) =
        (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let args = [
        "--store",
        store_url.as_str(),
        "--etcd-ca",
        etcd_ca.as_str(),
        "--etcd-cert",
        etcd_cert.as_str(),
        "--etcd-key",
        etcd_key.as_str(),
        "--ca-cert",
        ca.as_str(),
        "--ca-key",
        key.as_str(),
        "--replica-name",
        "tls-1",
    ];
    let http = free_port();
    let hub = Hub::start_with(&dir.path().join("hub"), free_port(), http, &args, &[]);
    eventually("the hub on TLS etcd to lead", || leads(http)).await;
    // (On a loaded machine the lease may lapse and be taken again: ask until it leads.)
    let status = eventually("hub status to say it leads", || async {
        let status = hub.cli(&["hub", "status"]);
        (status["role"] == "leader").then_some(status)
    })
    .await;
    assert_eq!(status["store"], "etcd");
    let (fleet, _) = etcd.store("/fleet").await.list("/election/").await.unwrap();
    assert!(
        fleet.iter().any(|kv| kv.key == "/election/leader"),
        "the hub wrote through TLS"
    );
}
