//! A rollout survives `kill -9` of the hub process: the real `flotilla-hub` binary is killed
//! while a revision waits for approval between stages, restarted on the same data dir and port,
//! and the rollout resumes exactly where it was — the canary keeps the revision without being
//! sent it again, production gets it only after the approval. Agents run in-process on
//! simulated clusters and reconnect by themselves.

use std::process::Command;

use flotilla_tests::hub_process::{self as common, Hub, free_port, until, web_revision};
use flotilla_tests::{TestAgent, bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_where_it_was_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (port, http) = (free_port(), free_port());
    let hub = Hub::start(&data, port, http);

    // Prod waits for an approval.
    let (repo, r1) = common::fleet_repo(dir.path(), ", approval: manual");

    let mut agents = Vec::new();
    for (name, ring) in [
        ("canary-1", "canary"),
        ("prod-1", "prod"),
        ("prod-2", "prod"),
    ] {
        let cfg = common::agent_config(&hub, dir.path(), name, &[&format!("ring={ring}")]);
        agents.push(TestAgent::start_with(cfg));
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status.clone()).collect();
    common::add_and_sync(&hub, &repo);

    // Canary gets r1 and is healthy; prod waits for approval.
    until("canary healthy on r1", || {
        (web_revision(&statuses[0].borrow()).as_deref() == Some(r1.as_str())).then_some(())
    })
    .await;
    let status = until("prod waiting for approval", || {
        let s = hub.cli(&["rollout", "status", "web"]);
        (s["stages"][1]["state"] == "waiting_approval").then_some(s)
    })
    .await;
    assert_eq!(status["revision"], r1.as_str());
    assert_eq!(status["state"], "waiting_approval");
    assert_eq!(status["stages"][0]["state"], "succeeded");
    let canary_generation = statuses[0].borrow().desired_generation;
    assert!(statuses[1].borrow().apps.is_empty());

    // kill -9, and start again on the same data dir and port.
    hub.kill9();
    let hub = Hub::start(&data, port, http);
    let after = until("the rollout is served again", || {
        let out = Command::new(bin("flotilla"))
            .arg("--config")
            .arg(data.join("admin.yaml"))
            .args(["rollout", "status", "web", "-o", "json"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    })
    .await;
    assert_eq!(after["revision"], r1.as_str());
    assert_eq!(after["state"], "waiting_approval");
    assert_eq!(after["stages"][0]["state"], "succeeded");
    assert_eq!(after["stages"][1]["state"], "waiting_approval");
    until("agents reconnect", || {
        statuses
            .iter()
            .all(|s| s.borrow().sessions_opened >= 2 && s.borrow().connected)
            .then_some(())
    })
    .await;
    assert_eq!(
        statuses[0].borrow().desired_generation,
        canary_generation,
        "the canary was not sent anything new"
    );
    assert!(statuses[1].borrow().apps.is_empty(), "prod still waits");

    hub.cli(&["rollout", "approve", "web", "prod"]);
    for s in &statuses[1..] {
        until("prod healthy on r1", || {
            (web_revision(&s.borrow()).as_deref() == Some(r1.as_str())).then_some(())
        })
        .await;
    }
    let done = until("succeeded", || {
        let s = hub.cli(&["rollout", "status", "web"]);
        (s["state"] == "succeeded").then_some(s)
    })
    .await;
    assert_eq!(done["stages"][1]["updated"], 2);
    for a in agents {
        let _ = a.stop().await;
    }
}
