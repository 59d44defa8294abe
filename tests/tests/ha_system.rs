//! The hub replicas as real processes on a real three-member etcd (both started by the test),
//! with in-process agents on simulated clusters: a `kill -9` of the replica that leads an app's
//! rollout while the rollout waits between stages, and of the one holding every agent's
//! session. The other replica takes the lead and the sessions; the rollout finishes in the
//! plan's order (production gets nothing before its approval), every audit entry written
//! before the kill is still there, and the status journal the killed replica left is folded.

use std::time::Instant;

use flotilla_hub::store::Store;
use flotilla_tests::etcd::EtcdCluster;
use flotilla_tests::hub_process::{self as common, Hub, free_port, leads, until, web_revision};
use flotilla_tests::{TestAgent, operator_ca};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_finishes_after_a_kill_9_of_the_replica_leading_it() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start(3).await;
    let (_, ca, key) = operator_ca(dir.path());
    let store = etcd.url("/fleet");
    let ports = [(free_port(), free_port()), (free_port(), free_port())];
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(p, _)| format!("127.0.0.1:{p}"))
        .collect();
    let start = |i: usize| {
        let name = format!("replica-{}", i + 1);
        Hub::start_replica(dir.path(), ports[i], &store, (&ca, &key), &name, &endpoints)
    };
    let first = start(0);
    flotilla_tests::eventually("replica-1 to lead", || leads(ports[0].1)).await;
    let second = start(1);
    flotilla_tests::eventually("replica-2 to follow", || async {
        (!leads(ports[1].1).await?).then_some(())
    })
    .await;

    // Prod waits for an approval. The agents join through replica-1 (the first endpoint of
    // their tokens), whose sessions and lead the kill takes.
    let (repo, r1) = common::fleet_repo(dir.path(), ", approval: manual");
    let mut agents = Vec::new();
    for (name, ring) in [
        ("canary-1", "canary"),
        ("prod-1", "prod"),
        ("prod-2", "prod"),
    ] {
        let cfg = common::agent_config(&first, dir.path(), name, &[&format!("ring={ring}")]);
        agents.push(TestAgent::start_with(cfg));
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status.clone()).collect();
    common::add_and_sync(&first, &repo);
    until("canary healthy on r1", || {
        (web_revision(&statuses[0].borrow()).as_deref() == Some(r1.as_str())).then_some(())
    })
    .await;
    until("prod waiting for approval", || {
        let s = second.cli(&["rollout", "status", "web"]);
        (s["stages"][1]["state"] == "waiting_approval").then_some(())
    })
    .await;
    // An operator's actions through the leader, audited before the kill.
    first.cli(&["rollout", "pause", "web"]);
    first.cli(&["rollout", "resume", "web"]);
    let audited_before = second.cli(&["audit"]);
    let actions = |log: &serde_json::Value| -> Vec<String> {
        log.as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let before = actions(&audited_before);
    assert!(
        before.ends_with(&["rollout.pause".to_string(), "rollout.resume".to_string()]),
        "{before:?}"
    );
    let canary_generation = statuses[0].borrow().desired_generation;
    let opened: Vec<u64> = statuses
        .iter()
        .map(|s| s.borrow().sessions_opened)
        .collect();
    // Replica-1 journaled its sessions' reports under its name.
    let raw = etcd.store("/fleet").await;
    let journal_of_first = || async { raw.list("/status-log/replica-1/").await.unwrap().0.len() };
    assert!(journal_of_first().await > 0);

    first.kill9();
    let killed = Instant::now();
    flotilla_tests::eventually("replica-2 to lead after the kill -9", || async {
        leads(ports[1].1).await?.then_some(())
    })
    .await;
    let led_after = killed.elapsed();
    until("every agent to be connected to replica-2", || {
        statuses
            .iter()
            .zip(&opened)
            .all(|(s, n)| s.borrow().connected && s.borrow().sessions_opened > *n)
            .then_some(())
    })
    .await;
    eprintln!(
        "after a kill -9 of the leading replica: the lead moved in {led_after:?} (lease 3 s), \
         the 3 agents were connected to replica-2 {:?} after the kill",
        killed.elapsed()
    );

    // Where the rollout was: the canary is sent nothing new, prod still waits.
    let status = second.cli(&["rollout", "status", "web"]);
    assert_eq!(status["revision"], r1.as_str());
    assert_eq!(status["stages"][0]["state"], "succeeded");
    assert_eq!(status["stages"][1]["state"], "waiting_approval");
    assert_eq!(statuses[0].borrow().desired_generation, canary_generation);
    for s in &statuses[1..] {
        assert!(
            s.borrow().apps.is_empty(),
            "prod got nothing before its approval"
        );
    }
    // Nothing audited before the kill is lost.
    let after = actions(&second.cli(&["audit"]));
    assert!(after.starts_with(&before), "{before:?} then {after:?}");

    second.cli(&["rollout", "approve", "web", "prod"]);
    for s in &statuses[1..] {
        until("prod healthy on r1", || {
            (web_revision(&s.borrow()).as_deref() == Some(r1.as_str())).then_some(())
        })
        .await;
    }
    let done = until("the rollout to succeed", || {
        let s = second.cli(&["rollout", "status", "web"]);
        (s["state"] == "succeeded").then_some(s)
    })
    .await;
    assert_eq!(done["stages"][1]["updated"], 2);
    let last = actions(&second.cli(&["audit"]));
    assert_eq!(last.last().map(String::as_str), Some("rollout.approve"));
    // The journal the killed replica left is folded by the leader once its registration went.
    flotilla_tests::eventually("the killed replica's journal to be folded", || async {
        (journal_of_first().await == 0).then_some(())
    })
    .await;
    for a in agents {
        let _ = a.stop().await;
    }
    drop(second);
}
