//! The leader election of hub replicas on a real etcd (started by the test): one leader at a
//! time; the lead moves within the lease time when its holder dies without a word (its task
//! aborted, the lease left to expire, as after `kill -9`) and at once when it stops cleanly; a
//! replica that lost the lead cannot write through its fenced store.

use std::time::{Duration, Instant};

use flotilla_hub::store::election::{self, LEADER_KEY, ReplicaInfo, Role};
use flotilla_hub::store::etcd::EtcdStore;
use flotilla_hub::store::{Store, StoreError};
use flotilla_tests::etcd::EtcdCluster;
use flotilla_tests::{eventually, test_dir};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LEASE: Duration = Duration::from_secs(3);

struct Candidate {
    role: watch::Receiver<Role>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn candidate(store: &EtcdStore, name: &str) -> Candidate {
    let (role_tx, role) = watch::channel(Role::Candidate);
    let (stop, stop_rx) = watch::channel(false);
    let me = ReplicaInfo {
        name: name.into(),
        endpoint: format!("{name}:7443"),
        started_ms: 0,
        version: "test".into(),
        lease: 0,
    };
    let task = tokio::spawn(election::run(store.clone(), me, LEASE, role_tx, stop_rx));
    Candidate { role, stop, task }
}

async fn leads(c: &Candidate) -> u64 {
    eventually("a leader", || async {
        match *c.role.borrow() {
            Role::Leader { term } => Some(term),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn one_replica_leads_and_the_lead_moves_when_it_dies() {
    let _dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store("/fleet").await;
    let a = candidate(&store, "replica-a");
    let term_a = leads(&a).await;
    let b = candidate(&store, "replica-b");
    eventually("replica b to follow replica a", || async {
        matches!(&*b.role.borrow(), Role::Follower { leader } if leader == "replica-a")
            .then_some(())
    })
    .await;
    let names: Vec<String> = election::replicas(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["replica-a", "replica-b"]);
    assert_eq!(
        election::leader(&store).await.unwrap().unwrap().name,
        "replica-a"
    );

    // The leader's fenced store writes while it leads.
    let fenced_a = store.fenced_by(LEADER_KEY, term_a, "the lead");
    fenced_a.put("/rollouts/web", b"a".to_vec()).await.unwrap();

    // Replica a dies without a word: its task is gone, its lease left to expire.
    a.task.abort();
    let died = Instant::now();
    let term_b = leads(&b).await;
    let moved = died.elapsed();
    eprintln!("the lead moved {moved:?} after its holder died (lease {LEASE:?})");
    assert!(term_b > term_a);
    // Whatever replica a still believes, its writes are refused, and nothing is written.
    let err = fenced_a
        .put("/rollouts/web", b"stale".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(
        err.to_string().contains("no longer holds the lead"),
        "{err}"
    );
    let cas = fenced_a
        .compare_and_swap("/rollouts/web", None, b"stale".to_vec())
        .await;
    assert!(matches!(cas, Err(StoreError::Fenced { .. })), "{cas:?}");
    assert_eq!(
        store.get("/rollouts/web").await.unwrap().unwrap().value,
        b"a".to_vec()
    );
    // The new leader's do go through.
    let fenced_b = store.fenced_by(LEADER_KEY, term_b, "the lead");
    fenced_b.put("/rollouts/web", b"b".to_vec()).await.unwrap();
    // Replica a's registration went with its lease.
    eventually("replica a's registration to expire", || async {
        let names: Vec<String> = election::replicas(&store)
            .await
            .ok()?
            .into_iter()
            .map(|r| r.name)
            .collect();
        (names == ["replica-b"]).then_some(())
    })
    .await;
    b.task.abort();
}

#[tokio::test]
async fn a_leader_that_stops_cleanly_hands_over_at_once() {
    let _dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store("").await;
    let a = candidate(&store, "a");
    leads(&a).await;
    let b = candidate(&store, "b");
    eventually("b to follow", || async {
        matches!(&*b.role.borrow(), Role::Follower { .. }).then_some(())
    })
    .await;
    let stopped = Instant::now();
    a.stop.send_replace(true);
    a.task.await.unwrap();
    leads(&b).await;
    eprintln!("the lead moved {:?} after a clean stop", stopped.elapsed());
    assert!(
        election::replicas(&store)
            .await
            .unwrap()
            .iter()
            .all(|r| r.name == "b"),
        "a's registration went with its revoked lease"
    );
    b.task.abort();
}

#[tokio::test]
async fn the_lead_holds_through_the_loss_of_one_etcd_member() {
    let _dir = test_dir();
    let mut etcd = EtcdCluster::start(3).await;
    let store = etcd.store("").await;
    let a = candidate(&store, "a");
    let term = leads(&a).await;
    // One member lost (even etcd's leader): the replica keeps leading under the same term.
    let etcd_leader = etcd.leader().await;
    etcd.kill(etcd_leader);
    let fenced = store.fenced_by(LEADER_KEY, term, "the lead");
    eventually("a fenced write with one member down", || {
        let fenced = fenced.clone();
        async move { fenced.put("/k", b"1".to_vec()).await.ok() }
    })
    .await;
    assert_eq!(*a.role.borrow(), Role::Leader { term });
    etcd.restart(etcd_leader);
    a.task.abort();
}
