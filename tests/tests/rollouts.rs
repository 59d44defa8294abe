//! Operator controls on rollouts through the real CLI code path: a real hub, a real git
//! repository and three agents on simulated clusters (one canary, two prod behind a manual
//! approval). Status and list output, approve, pause/resume, rollback, pin/unpin, the audit log
//! of who did what, and refused actions that change nothing.

use std::time::Duration;

use flotilla_agent::sim::SimCluster;
use flotilla_tests::web_app::{self, settings};
use flotilla_tests::*;
use serde_json::{Value, json};

const ADMIN: &str = "spiffe://flotilla.local/admin/admin";

const CLUSTERS: [(&str, &str); 3] = [
    ("canary-1", "canary"),
    ("prod-1", "prod"),
    ("prod-2", "prod"),
];

/// A hub with three connected agents and the source added; the first commit has gone through
/// the canary stage and waits for the approval of `prod`.
struct Fleet {
    hub: TestHub,
    repo: TestRepo,
    c1: String,
    agents: Vec<TestAgent>,
    _sims: Vec<SimCluster>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start() -> Self {
        let dir = test_dir();
        let (repo, c1) = web_app::repo(
            dir.path(),
            &web_app::canary_then_prod("regions", ", approval: manual"),
            Some("1"),
        );
        let hub = TestHub::start_in(dir.path()).await;
        let mut agents = Vec::new();
        let mut sims = Vec::new();
        for (name, ring) in CLUSTERS {
            let sim = sim_cluster(Duration::from_millis(50));
            let labels = [("ring", ring)];
            agents.push(hub.join_sim(dir.path(), name, &labels, &sim, |_| {}).await);
            sims.push(sim);
        }
        add_fleet_source(&hub, &repo.path).await;
        let fleet = Self {
            hub,
            repo,
            c1,
            agents,
            _sims: sims,
            _dir: dir,
        };
        fleet
            .wait_rollout("the first commit to wait for the approval of prod", |r| {
                r["revision"] == fleet.c1.as_str() && r["state"] == "waiting_approval"
            })
            .await;
        fleet
    }

    /// The fleet once the canary runs the first commit; returns it and that commit.
    async fn on_canary() -> (Self, String) {
        let f = Self::start().await;
        let c1 = f.c1.clone();
        f.wait_runs("canary-1", &c1).await;
        (f, c1)
    }

    /// The fleet once the first commit was approved for prod and its rollout succeeded; returns
    /// it and that commit.
    async fn released() -> (Self, String) {
        let f = Self::start().await;
        let c1 = f.c1.clone();
        f.approve_prod().await;
        f.wait_rollout("c1 to succeed", |r| r["state"] == "succeeded")
            .await;
        (f, c1)
    }

    async fn status(&self) -> Value {
        cli_json(&self.hub, &["rollout", "status", "web"]).await
    }

    async fn wait_rollout(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || async {
            // Before the first sync the app has no record yet ("unknown app").
            let out = cli(&self.hub, &["rollout", "status", "web", "-o", "json"])
                .await
                .ok()?;
            let r: Value = serde_json::from_str(&out).unwrap();
            ok(&r).then_some(r)
        })
        .await
    }

    /// A new commit of the app with another ConfigMap content, synced now.
    async fn commit(&self, version: &str) -> String {
        self.repo.write("apps/web/config.yaml", &settings(version));
        let c = self.repo.commit(&format!("web {version}"));
        cli_json(&self.hub, &["source", "sync", "fleet"]).await;
        c
    }

    /// [`Fleet::commit`], once the new commit's rollout waits for the approval of prod.
    async fn commit_to_prod_approval(&self, version: &str) -> String {
        let c = self.commit(version).await;
        self.wait_rollout(&format!("web {version} to wait for prod"), |r| {
            r["revision"] == c.as_str() && r["state"] == "waiting_approval"
        })
        .await;
        c
    }

    /// `cluster get NAME -o json`'s entry for web.
    async fn web_on(&self, cluster: &str) -> Option<Value> {
        app_on(&self.hub, cluster, "web").await
    }

    /// Waits until `cluster` is desired on `rev` and reports it applied and healthy.
    async fn wait_runs(&self, cluster: &str, rev: &str) {
        wait_runs(&self.hub, cluster, "web", rev).await
    }

    async fn approve_prod(&self) -> Value {
        cli_json(&self.hub, &["rollout", "approve", "web", "prod"]).await
    }

    async fn stop(self) {
        for a in self.agents {
            a.stop().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_manual_stage_waits_for_approval_and_the_approval_is_audited() {
    let (f, c1) = Fleet::on_canary().await;

    let r = f.status().await;
    assert_eq!(r["app"], "web");
    assert_eq!(r["pipeline"], "regions");
    assert_eq!(r["revision"], c1.as_str());
    assert_eq!(r["state"], "waiting_approval");
    assert_eq!(r["last_good_revision"], Value::Null, "the first revision");
    assert_eq!(r["current_stage"], "prod");
    assert_eq!(
        (r["updated"].clone(), r["total"].clone()),
        (json!(1), json!(3))
    );
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{r}");
    let canary = &stages[0];
    assert_eq!(canary["name"], "canary");
    assert_eq!(canary["state"], "succeeded");
    assert_eq!(canary["revision"], c1.as_str());
    assert_eq!(canary["clusters"], json!(["canary-1"]));
    assert_eq!(canary["updated"], 1);
    assert_eq!(canary["failures"], json!({}));
    assert_eq!(canary["approval"], "auto");
    assert_eq!(canary["soak"], "0s");
    let prod = &stages[1];
    assert_eq!(prod["name"], "prod");
    assert_eq!(prod["state"], "waiting_approval");
    assert_eq!(prod["revision"], c1.as_str());
    assert_eq!(prod["clusters"], json!(["prod-1", "prod-2"]));
    assert_eq!(prod["updated"], 0);
    assert_eq!(prod["approval"], "manual");
    assert_eq!(prod["approved_by"], Value::Null);
    assert!(
        f.web_on("prod-1").await.is_none(),
        "prod gets nothing before the approval"
    );

    let list = cli(&f.hub, &["rollout", "list"]).await.unwrap();
    for col in [
        "APP",
        "PIPELINE",
        "REVISION",
        "STATE",
        "STAGE",
        "UPDATED",
        "LAST GOOD",
    ] {
        assert!(list.contains(col), "{list}");
    }
    assert!(
        list.contains(&c1[..12]) && !list.contains(&c1[..13]),
        "{list}"
    );
    assert!(list.contains("prod (waiting_approval)"), "{list}");
    assert!(list.contains("1/3"), "{list}");
    let table = cli(&f.hub, &["rollout", "status", "web"]).await.unwrap();
    assert!(
        table.contains("canary") && table.contains("manual"),
        "{table}"
    );

    let before = now_ms();
    let approved = f.approve_prod().await;
    assert_eq!(approved["stages"][1]["approved_by"], ADMIN);
    let r = f
        .wait_rollout("the rollout to succeed", |r| r["state"] == "succeeded")
        .await;
    assert_eq!(r["last_good_revision"], c1.as_str());
    assert_eq!(r["stages"][1]["state"], "succeeded");
    assert_eq!(r["stages"][1]["updated"], 2);
    assert_eq!(r["stages"][1]["approved_by"], ADMIN);
    for (c, _) in CLUSTERS {
        f.wait_runs(c, &c1).await;
    }
    let list = cli_json(&f.hub, &["rollout", "list"]).await;
    assert_eq!(list[0]["app"], "web");
    assert_eq!(list[0]["state"], "succeeded");
    assert_eq!(
        (list[0]["updated"].clone(), list[0]["total"].clone()),
        (json!(3), json!(3))
    );

    let audit = audit_log(&f.hub).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    let e = &audit[0];
    assert_eq!(e["who"], ADMIN);
    assert_eq!(e["action"], "rollout.approve");
    assert_eq!(e["app"], "web");
    assert_eq!(e["stage"], "prod");
    assert_eq!(e["revision"], c1.as_str());
    let at = e["at_unix_ms"].as_u64().unwrap();
    assert!(at >= before.saturating_sub(1000), "{e}");
    assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    let table = cli(&f.hub, &["audit"]).await.unwrap();
    assert!(
        table.contains("rollout.approve") && table.contains(ADMIN),
        "{table}"
    );
    f.stop().await;
}

/// Unix ms now, for a lower bound on audit timestamps.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn pause_holds_a_new_revision_resume_moves_it_and_rollback_puts_every_cluster_back() {
    let (f, c1) = Fleet::released().await;

    let paused = cli_json(&f.hub, &["rollout", "pause", "web"]).await;
    assert_eq!(paused["paused"], true);
    assert_eq!(
        paused["state"], "succeeded",
        "nothing in flight to show as paused"
    );
    let c2 = f.commit("2").await;
    // The sync handed the revision to the engine, which ran a pass before answering; a second
    // sync runs another. Neither may move a paused app.
    cli_json(&f.hub, &["source", "sync", "fleet"]).await;
    let r = f.status().await;
    assert_eq!(r["revision"], c2.as_str());
    assert_eq!(r["state"], "paused");
    assert_eq!(r["stages"][0]["state"], "pending");
    assert_eq!(r["stages"][0]["updated"], 0);
    let canary = f.web_on("canary-1").await.unwrap();
    assert_eq!(canary["desired_revision"], c1.as_str(), "paused: {canary}");

    let resumed = cli_json(&f.hub, &["rollout", "resume", "web"]).await;
    assert_eq!(resumed["paused"], false);
    f.wait_runs("canary-1", &c2).await;
    f.wait_rollout("c2 to wait for prod", |r| r["state"] == "waiting_approval")
        .await;
    f.approve_prod().await;
    f.wait_rollout("c2 to succeed", |r| r["state"] == "succeeded")
        .await;
    for (c, _) in CLUSTERS {
        f.wait_runs(c, &c2).await;
    }

    let out = cli(&f.hub, &["rollout", "rollback", "web", "--to", &c1[..10]])
        .await
        .unwrap();
    assert!(out.contains(&format!("rolled back to {c1}")), "{out}");
    let r = f.status().await;
    assert_eq!(r["state"], "rolled_back");
    assert_eq!(r["revision"], c2.as_str());
    assert_eq!(r["last_good_revision"], c1.as_str());
    assert!(
        r["message"].as_str().unwrap().contains("rolled back"),
        "{r}"
    );
    for (c, _) in CLUSTERS {
        f.wait_runs(c, &c1).await;
    }
    let app = cli_json(&f.hub, &["app", "get", "web"]).await;
    for c in app["clusters"].as_array().unwrap() {
        assert_eq!(c["desired_revision"], c1.as_str(), "{app}");
    }

    let audit = audit_log(&f.hub).await;
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rollout.approve",
            "rollout.pause",
            "rollout.resume",
            "rollout.approve",
            "rollout.rollback"
        ]
    );
    assert!(audit.iter().all(|e| e["who"] == ADMIN && e["app"] == "web"));
    assert_eq!(audit[4]["revision"], c1.as_str());
    assert_eq!(audit[3]["revision"], c2.as_str());
    let newest = cli_json(&f.hub, &["audit", "--limit", "2"]).await;
    assert_eq!(newest.as_array().unwrap().len(), 2);
    assert_eq!(newest[1]["action"], "rollout.rollback", "newest last");
    f.stop().await;
}

#[tokio::test]
async fn a_pinned_cluster_keeps_its_revision_until_unpinned() {
    let (f, c1) = Fleet::released().await;

    let pin = cli_json(&f.hub, &["cluster", "pin", "prod-2", "web", &c1[..12]]).await;
    assert_eq!(
        pin,
        json!({"cluster": "prod-2", "app": "web", "revision": c1})
    );
    let c2 = f.commit("2").await;
    let r = f
        .wait_rollout("c2 to wait for prod", |r| {
            r["revision"] == c2.as_str() && r["state"] == "waiting_approval"
        })
        .await;
    assert_eq!(r["pins"], json!({"prod-2": c1}));
    assert_eq!(
        r["stages"][1]["clusters"],
        json!(["prod-1"]),
        "a pinned cluster is skipped"
    );
    f.approve_prod().await;
    f.wait_rollout("c2 to succeed", |r| r["state"] == "succeeded")
        .await;
    f.wait_runs("prod-1", &c2).await;
    f.wait_runs("prod-2", &c1).await;

    let out = cli(&f.hub, &["cluster", "unpin", "prod-2", "web"])
        .await
        .unwrap();
    assert!(out.contains("prod-2 unpinned"), "{out}");
    f.wait_runs("prod-2", &c2).await;
    assert_eq!(f.status().await["pins"], json!({}));

    let audit = audit_log(&f.hub).await;
    let pins: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("cluster."))
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["cluster"].as_str().unwrap(),
                e["revision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pins,
        [
            ("cluster.pin", "prod-2", c1.as_str()),
            ("cluster.unpin", "prod-2", c1.as_str())
        ]
    );
    f.stop().await;
}

#[tokio::test]
async fn refused_actions_are_one_line_and_change_nothing() {
    let (f, c1) = Fleet::on_canary().await;
    let before = f.status().await;

    let cases: [(&[&str], &str); 9] = [
        (&["rollout", "approve", "web", "nope"], "no stage \"nope\""),
        (
            &["rollout", "approve", "web", "canary"],
            "stage canary needs no approval",
        ),
        (&["rollout", "status", "nope"], "unknown app \"nope\""),
        (&["rollout", "pause", "nope"], "unknown app \"nope\""),
        (
            &["rollout", "rollback", "web", "--to", "0123456789ab"],
            "revision 0123456789ab is not among the kept renderings",
        ),
        (
            &["rollout", "rollback", "web"],
            "no good revision to roll back to",
        ),
        (
            &["cluster", "pin", "prod-1", "web", "0123456789ab"],
            "revision 0123456789ab is not among the kept renderings",
        ),
        (
            &["cluster", "pin", "nowhere", "web", &c1],
            "unknown cluster \"nowhere\"",
        ),
        (
            &["cluster", "unpin", "prod-1", "web"],
            "cluster prod-1 is not pinned for app web",
        ),
    ];
    for (args, want) in cases {
        let err = cli(&f.hub, args).await.unwrap_err();
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.trim_end().contains('\n'), "{args:?}: one line: {err}");
    }
    let err = cli(&f.hub, &["audit", "--limit", "0"]).await.unwrap_err();
    assert!(err.contains("--limit"), "{err}");
    assert!(
        audit_log(&f.hub).await.is_empty(),
        "refused actions are not audited"
    );
    assert_eq!(f.status().await, before, "nothing changed");
    assert!(f.web_on("prod-1").await.is_none());
    f.stop().await;
}

// === Pins changed while a rollout is in flight ===

/// A cluster pinned while its stage has not started yet stays in the stage's cluster list but
/// counts as done: the stage does not wait for it to report the rollout's revision.
#[tokio::test]
async fn a_cluster_pinned_during_a_rollout_does_not_stall_its_stage() {
    let (f, c1) = Fleet::released().await;
    let c2 = f.commit_to_prod_approval("2").await;
    cli(&f.hub, &["cluster", "pin", "prod-2", "web", &c1])
        .await
        .unwrap();
    f.approve_prod().await;
    f.wait_rollout("c2 to succeed without prod-2", |r| {
        r["state"] == "succeeded"
    })
    .await;
    f.wait_runs("prod-1", &c2).await;
    f.wait_runs("prod-2", &c1).await;
    f.stop().await;
}

/// A cluster unpinned while a rollout is in flight is in none of its stages; when the rollout
/// succeeds every target gets the revision, that cluster too.
#[tokio::test]
async fn a_cluster_unpinned_during_a_rollout_gets_the_new_revision() {
    let (f, c1) = Fleet::released().await;
    cli(&f.hub, &["cluster", "pin", "prod-2", "web", &c1])
        .await
        .unwrap();
    let c2 = f.commit_to_prod_approval("2").await;
    cli(&f.hub, &["cluster", "unpin", "prod-2", "web"])
        .await
        .unwrap();
    f.approve_prod().await;
    f.wait_rollout("c2 to succeed", |r| r["state"] == "succeeded")
        .await;
    f.wait_runs("prod-1", &c2).await;
    f.wait_runs("prod-2", &c2).await;
    f.stop().await;
}

/// Stages whose selectors overlap: a cluster in the canary ring and in eu is the canary's. It
/// gets the revision once, in canary; eu holds only its own cluster, and the rollout succeeds
/// (it used to fail the app, and `rollout status` answered "unknown app").
#[tokio::test]
async fn overlapping_stages_give_a_cluster_to_the_first_stage_that_selects_it() {
    let dir = test_dir();
    let fleet = "apps:
  web:
    path: apps/web
    namespace: shop
    targets: {}
    pipeline: regions
pipelines:
  regions:
    stages:
      - {name: canary, selector: {matchLabels: {ring: canary}}, soak: 0s}
      - {name: eu, selector: {matchLabels: {geo: eu}}, soak: 0s}
";
    let (repo, c1) = web_app::repo(dir.path(), fleet, Some("1"));
    let hub = TestHub::start_in(dir.path()).await;
    let mut agents = Vec::new();
    let mut sims = Vec::new();
    for (name, labels) in [
        ("both-1", &[("ring", "canary"), ("geo", "eu")][..]),
        ("eu-1", &[("geo", "eu")][..]),
    ] {
        let sim = sim_cluster(Duration::from_millis(50));
        agents.push(hub.join_sim(dir.path(), name, labels, &sim, |_| {}).await);
        sims.push(sim);
    }
    add_fleet_source(&hub, &repo.path).await;
    let r = eventually("c1 rolled out through both stages", || async {
        let out = cli(&hub, &["rollout", "status", "web", "-o", "json"])
            .await
            .ok()?;
        let r: Value = serde_json::from_str(&out).unwrap();
        (r["revision"] == c1.as_str() && r["state"] == "succeeded").then_some(r)
    })
    .await;
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "no unstaged stage: {r}");
    assert_eq!(stages[0]["name"], "canary");
    assert_eq!(stages[0]["clusters"], json!(["both-1"]));
    assert_eq!(stages[0]["updated_clusters"], json!(["both-1"]));
    assert_eq!(stages[1]["name"], "eu");
    assert_eq!(stages[1]["clusters"], json!(["eu-1"]), "not both-1 again");
    assert_eq!(stages[1]["updated_clusters"], json!(["eu-1"]));
    assert!(r.get("errors").is_none(), "{r}");
    for c in ["both-1", "eu-1"] {
        wait_runs(&hub, c, "web", &c1).await;
    }
    drop(repo);
    for a in agents {
        a.stop().await.unwrap();
    }
}

/// An app with an error shows it in `rollout status`: before it ever had a good revision
/// (state none, no stages, instead of "unknown app"), and beside the last good one after.
#[tokio::test]
async fn rollout_status_shows_an_apps_errors() {
    let dir = test_dir();
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  x: \"${nope}\"\n";
    let repo = TestRepo::init(&dir.path().join("repo"));
    repo.write(
        "flotilla.yaml",
        "apps:\n  web:\n    path: apps/web\n    namespace: shop\n    targets: {}\n",
    );
    repo.write("apps/web/config.yaml", bad);
    repo.commit("web with an undefined variable");
    let hub = TestHub::start_in(dir.path()).await;
    // A registered cluster (no agent needed) for the app to be rendered for.
    hub.add_cluster("eu-1", &[("geo", "eu")]).await;
    add_fleet_source(&hub, &repo.path).await;
    cli_json(&hub, &["source", "sync", "fleet"]).await;

    let r = cli_json(&hub, &["rollout", "status", "web"]).await;
    assert_eq!(r["app"], "web");
    assert_eq!(r["source"], "fleet");
    assert_eq!(r["state"], "none");
    assert_eq!(r["stages"], json!([]));
    let errors = r["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{r}");
    let e = errors[0].as_str().unwrap();
    assert!(e.starts_with("source fleet: "), "{e}");
    assert!(e.contains("nope"), "{e}");
    let text = cli(&hub, &["rollout", "status", "web", "-o", "table"])
        .await
        .expect("rollout status answers");
    assert!(text.contains(&format!("error: {e}")), "{text}");
    // Still unknown: a name no source defines.
    let err = cli(&hub, &["rollout", "status", "db"]).await.unwrap_err();
    assert!(err.contains("unknown app"), "{err}");

    // Fixed: a revision and no errors; broken again: the last good revision and the error.
    repo.write("apps/web/config.yaml", &settings("1"));
    let good = repo.commit("web fixed");
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let r = cli_json(&hub, &["rollout", "status", "web"]).await;
    assert_eq!(r["revision"], good.as_str(), "{r}");
    assert!(r.get("errors").is_none(), "{r}");
    repo.write("apps/web/config.yaml", bad);
    repo.commit("web broken again");
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let r = cli_json(&hub, &["rollout", "status", "web"]).await;
    assert_eq!(r["revision"], good.as_str(), "the last good revision: {r}");
    assert_eq!(r["stages"].as_array().map(Vec::len), Some(1), "{r}");
    let errors = r["errors"].as_array().expect("errors");
    assert!(errors[0].as_str().unwrap().contains("nope"), "{errors:?}");
}
