//! `flotilla status` against a real fleet: a hub, a git source with one app, agents on
//! simulated clusters in two regions and one without the label; one cluster never connects and
//! one is stopped after the app is applied on it.

use std::time::Duration;

use flotilla_tests::web_app;
use flotilla_tests::*;
use serde_json::{Value, json};

const FLEET: &str = "apps:\n  web:\n    path: apps/web\n    namespace: shop\n    targets: {}\n";

/// The clusters that run an agent: name and region label (`None`: no label).
const RUNNING: [(&str, Option<&str>); 4] = [
    ("eu-1", Some("eu")),
    ("eu-2", Some("eu")),
    ("us-1", Some("us")),
    ("edge-1", None),
];

/// The `regions` entry of `status` for `region` (`null`: the clusters without the label).
fn region<'a>(status: &'a Value, region: &Value) -> &'a Value {
    status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| &r["region"] == region)
        .unwrap_or_else(|| panic!("no region {region} in {status:#}"))
}

#[tokio::test]
async fn status_shows_the_fleet_per_region_and_the_worst_clusters() {
    let dir = test_dir();
    let (repo, _) = web_app::repo(dir.path(), FLEET, None);
    let hub = TestHub::start_in(dir.path()).await;

    let mut agents = Vec::new();
    let mut sims = Vec::new();
    for (name, region) in RUNNING {
        let labels: Vec<(&str, &str)> = region.map(|r| ("region", r)).into_iter().collect();
        let sim = sim_cluster(Duration::from_millis(50));
        let a = hub.join_sim(dir.path(), name, &labels, &sim, |_| {}).await;
        agents.push((name, a));
        sims.push(sim);
    }
    // Registered, but its agent never starts.
    hub.add_cluster("us-2", &[("region", "us")]).await;

    let empty = cli_json(&hub, &["status"]).await;
    assert_eq!(
        empty["totals"]["clusters"],
        json!({"connected": 4, "total": 5})
    );
    assert_eq!(empty["rollouts"], json!([]));

    add_fleet_source(&hub, &repo.path).await;
    // The app is applied and healthy on every cluster with an agent.
    let status = eventually("web to be healthy on the four running clusters", || async {
        let s = cli_json(&hub, &["status"]).await;
        (s["totals"]["apps"]["healthy"] == 4).then_some(s)
    })
    .await;
    assert_eq!(status["group_by"], "region");
    // The cluster that never connected holds the rollout of web back.
    let web = &status["rollouts"][0];
    assert_eq!(web["app"], "web", "{status:#}");
    assert_eq!(web["state"], "progressing");
    assert_eq!(web["stage"], "all");
    assert_eq!(web["stage_total"], 5);
    assert_eq!(status["totals"]["rollouts"], 1);

    // eu-2 goes away.
    let at = agents.iter().position(|(n, _)| *n == "eu-2").unwrap();
    let (_, eu2) = agents.remove(at);
    eu2.stop().await.unwrap();
    hub.wait_state("eu-2", "disconnected").await;

    let status = cli_json(&hub, &["status"]).await;
    let eu = region(&status, &json!("eu"));
    assert_eq!(eu["clusters"], json!({"connected": 1, "total": 2}));
    // web on eu-2 is no longer watched by anyone: not healthy.
    assert_eq!(
        eu["apps"],
        json!({"healthy": 1, "progressing": 0, "degraded": 1})
    );
    let us = region(&status, &json!("us"));
    assert_eq!(us["clusters"], json!({"connected": 1, "total": 2}));
    // web is desired on us-2 too, but nothing runs it there.
    assert_eq!(
        us["apps"],
        json!({"healthy": 1, "progressing": 0, "degraded": 1})
    );
    let none = region(&status, &Value::Null);
    assert_eq!(none["clusters"], json!({"connected": 1, "total": 1}));
    assert_eq!(
        none["apps"],
        json!({"healthy": 1, "progressing": 0, "degraded": 0})
    );
    let order: Vec<&str> = status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap_or("(none)"))
        .collect();
    assert_eq!(order, ["eu", "us", "(none)"]);
    assert_eq!(
        status["totals"]["clusters"],
        json!({"connected": 3, "total": 5})
    );

    // The disconnected cluster first, then the one that never connected; healthy ones not at all.
    let worst = status["worst"].as_array().unwrap();
    let names: Vec<&str> = worst
        .iter()
        .map(|w| w["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eu-2", "us-2"], "{status:#}");
    assert_eq!(worst[0]["region"], "eu");
    assert_eq!(worst[0]["state"], "disconnected");
    let reason = worst[0]["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("disconnected "), "{reason}");
    assert_eq!(worst[1]["reasons"], json!(["never connected"]));

    // --worst N lists only the first N.
    let one = cli_json(&hub, &["status", "--worst", "1"]).await;
    assert_eq!(one["worst"].as_array().unwrap().len(), 1);
    assert_eq!(one["worst"][0]["cluster"], "eu-2");
    assert_eq!(one["totals"]["clusters_with_problems"], 2);

    // Grouped by a label no cluster has: one group.
    let by = cli_json(&hub, &["status", "--by", "tier"]).await;
    assert_eq!(by["group_by"], "tier");
    assert_eq!(by["regions"].as_array().unwrap().len(), 1);
    assert_eq!(by["regions"][0]["region"], Value::Null);
    assert_eq!(
        by["regions"][0]["clusters"],
        json!({"connected": 3, "total": 5})
    );

    let table = cli(&hub, &["status"]).await.unwrap();
    for want in [
        "REGION",
        "eu",
        "us",
        "(none)",
        "1/2 connected",
        "WORST CLUSTERS",
        "eu-2",
        "never connected",
        "all (progressing)",
    ] {
        assert!(table.contains(want), "{want:?} missing from\n{table}");
    }

    for (_, a) in agents {
        a.stop().await.unwrap();
    }
}
