//! Status ingest survives `kill -9` of the hub process: session clients report statuses
//! continuously to the real `flotilla-hub` binary, which acknowledges a report only once the
//! group commit that carried it is durable. The hub is killed with SIGKILL while they report,
//! restarted on the same data dir and port, and every status it acknowledged is in its records
//! (none older, none newer than what was sent). Twice: the second round reconnects, replaces
//! everything and reports on before the next kill.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_proto::v1::{Cluster, ListClustersRequest};
use flotilla_tests::bench::admin_client_at;
use flotilla_tests::bench::fleet::enroll;
use flotilla_tests::bench::reporter::{Load, Progress, Reporter, Tally, app_name, seq_of};
use flotilla_tests::hub_process::{DEADLINE, Hub, free_port, until};
use tokio::sync::watch;

const CLUSTERS: usize = 8;
const APPS: usize = 4;
/// Acknowledgements every round waits for (across its reporters) before the kill.
const ACKS_BEFORE_KILL: u64 = 400;

/// Every cluster's statuses as the restarted hub serves them (retried until it answers).
async fn clusters_after_restart(data: &std::path::Path) -> Vec<Cluster> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let attempt = async {
            admin_client_at(data)
                .await?
                .list_clusters(ListClustersRequest { with_apps: true })
                .await
                .map_err(anyhow::Error::from)
        };
        match attempt.await {
            Ok(r) => return r.into_inner().clusters,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the restarted hub never answered: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Each app of each cluster holds at least the newest report acknowledged for it, and nothing
/// newer than was sent.
fn assert_acknowledged_are_stored(tallies: &[Tally], clusters: &[Cluster]) {
    for t in tallies {
        let c = clusters
            .iter()
            .find(|c| c.name == t.cluster)
            .unwrap_or_else(|| panic!("no cluster {}", t.cluster));
        for (i, (acked, sent)) in t.acked_seq.iter().zip(&t.sent_seq).enumerate() {
            let stored = c
                .apps
                .iter()
                .find(|a| a.name == app_name(i))
                .and_then(|a| seq_of(&a.message))
                .unwrap_or(0);
            assert!(
                *acked <= stored && stored <= *sent,
                "{} {}: acknowledged seq {acked}, sent up to {sent}, stored {stored}",
                t.cluster,
                app_name(i)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_status_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (port, http) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let mut hub = Hub::start(&data, port, http);
    let admin = admin_client_at(&data).await.unwrap();
    let enrolled = enroll(&admin, CLUSTERS, 1, CLUSTERS)
        .await
        .unwrap()
        .enrolled;
    assert_eq!(enrolled.len(), CLUSTERS);
    drop(admin);

    let mut next_seq = vec![1u64; CLUSTERS];
    for round in 0..2 {
        let progress = Arc::new(Progress::default());
        // Never sent: the hub dies under the reporters.
        let (_stop, stop) = watch::channel(false);
        let mut tasks = Vec::new();
        for (who, first_seq) in enrolled.iter().zip(&next_seq) {
            let r = Reporter::connect(who, &addr, None).await.unwrap();
            let load = Load {
                apps: APPS,
                window: 4,
                first_seq: *first_seq,
            };
            tasks.push(tokio::spawn(r.run(load, progress.clone(), stop.clone())));
        }
        until("acknowledgements before the kill", || {
            (progress.acked.load(Ordering::Relaxed) >= ACKS_BEFORE_KILL).then_some(())
        })
        .await;

        hub.kill9();
        let mut tallies = Vec::new();
        for t in tasks {
            let t = t.await.unwrap();
            assert!(
                t.ended.is_some(),
                "{}: the session outlived the hub",
                t.cluster
            );
            tallies.push(t);
        }
        assert!(
            tallies.iter().all(|t| t.acked_seq.iter().any(|s| *s > 0)),
            "round {round}: every cluster had reports acknowledged"
        );

        hub = Hub::start(&data, port, http);
        let clusters = clusters_after_restart(&data).await;
        assert_acknowledged_are_stored(&tallies, &clusters);
        for (next, t) in next_seq.iter_mut().zip(&tallies) {
            *next = t.last_seq + 1;
        }
    }
    drop(hub);
}
