//! What promotion must never delete, with a real hub, a real git repository and real agents on
//! simulated clusters: a rollback of a failed release keeps every object a cluster ran before
//! it (same uid, no DELETE sent); removals — a relabelled cluster, an app taken out of
//! `flotilla.yaml`, a removed source — go through the pipeline and wait for an approval when
//! they are large; `source remove` says what it removes and asks first; two sources cannot both
//! own one app.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::cluster::SimConfig;
use flotilla_agent::sim::SimCluster;
use flotilla_tests::web_app::{NAMESPACE, settings};
use flotilla_tests::*;
use serde_json::Value;

/// The Deployment; a new `image` with the annotation `flotilla.io/simulate: fail` is a bad
/// release (the simulated cluster never makes it ready).
fn deployment(annotation: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations: {{{annotation}}}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - {{name: web, image: '{image}'}}\n"
    )
}

/// `web` on every `env: prod` cluster through canary → eu → us.
fn fleet_yaml(us_stage: &str, extra: &str) -> String {
    format!(
        "\
apps:
  web:
    path: apps/web
    namespace: shop
    targets: {{matchLabels: {{env: prod}}}}
    pipeline: regions
{extra}pipelines:
  regions:
    healthTimeout: 4s
    onFailure: rollback
    stages:
      - {{name: canary, selector: {{matchLabels: {{ring: canary}}}}, soak: 0s}}
      - {{name: eu, selector: {{matchLabels: {{ring: eu}}}}, soak: 0s}}
      - {us_stage}
"
    )
}

const US_AUTO: &str = "{name: us, selector: {matchLabels: {ring: us}}, soak: 0s}";
/// Behind an approval and a long soak: a rollout that reaches `us` never succeeds in a test.
const US_GATED: &str =
    "{name: us, selector: {matchLabels: {ring: us}}, approval: manual, soak: 1h}";

const CLUSTERS: [(&str, &str); 3] = [("can1", "canary"), ("eu1", "eu"), ("us1", "us")];

/// The removal note of the source's first app (empty without one).
fn removal_note(src: &Value) -> &str {
    src["app_states"][0]["removal"].as_str().unwrap_or_default()
}

struct Fleet {
    hub: TestHub,
    repo: TestRepo,
    agents: Vec<TestAgent>,
    sims: BTreeMap<String, SimCluster>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Three connected agents (`env: prod`), the repository at its first commit, not yet added.
    async fn start(yaml: &str) -> Self {
        let dir = test_dir();
        let repo = TestRepo::init(&dir.path().join("repo"));
        repo.write("flotilla.yaml", yaml);
        repo.write("apps/web/namespace.yaml", NAMESPACE);
        repo.write("apps/web/deployment.yaml", &deployment("", "nginx:1.27"));
        repo.write("apps/web/config.yaml", &settings("1"));
        repo.commit("web 1");
        let hub = TestHub::start_in(dir.path()).await;
        let mut agents = Vec::new();
        let mut sims = BTreeMap::new();
        for (name, ring) in CLUSTERS {
            let sim = SimCluster::new(SimConfig {
                ready_delay: Duration::from_millis(50),
                record_requests: 1_000_000,
                ..SimConfig::default()
            });
            let labels = [("ring", ring), ("env", "prod")];
            agents.push(hub.join_sim(dir.path(), name, &labels, &sim, |_| {}).await);
            sims.insert(name.to_string(), sim);
        }
        Self {
            hub,
            repo,
            agents,
            sims,
            _dir: dir,
        }
    }

    /// A fleet without approvals whose first commit went everywhere; returns that commit.
    async fn released() -> (Self, String) {
        let f = Self::start(&fleet_yaml(US_AUTO, "")).await;
        add_fleet_source(&f.hub, &f.repo.path).await;
        let c1 = f.repo.git(&["rev-parse", "HEAD"]);
        f.wait_rollout("v1 to succeed", |r| r["state"] == "succeeded")
            .await;
        for (cluster, _) in CLUSTERS {
            f.wait_runs(cluster, &c1).await;
        }
        (f, c1)
    }

    async fn sync(&self) -> Value {
        cli_json(&self.hub, &["source", "sync", "fleet"]).await
    }

    async fn commit(&self, msg: &str) -> String {
        let c = self.repo.commit(msg);
        self.sync().await;
        c
    }

    async fn rollout(&self) -> Option<Value> {
        let out = cli(&self.hub, &["rollout", "status", "web", "-o", "json"])
            .await
            .ok()?;
        Some(serde_json::from_str(&out).unwrap())
    }

    async fn wait_rollout(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || async { self.rollout().await.filter(|r| ok(r)) }).await
    }

    /// `cluster get NAME -o json`'s entry for web.
    async fn web_on(&self, cluster: &str) -> Option<Value> {
        app_on(&self.hub, cluster, "web").await
    }

    /// Waits until `cluster` is desired on `rev` and reports it applied and healthy.
    async fn wait_runs(&self, cluster: &str, rev: &str) {
        wait_runs(&self.hub, cluster, "web", rev).await
    }

    /// The app's objects on `cluster`'s simulated API, by kind/name, with their uids.
    fn objects(&self, cluster: &str) -> BTreeMap<String, String> {
        self.sims[cluster]
            .objects()
            .into_iter()
            .filter(|o| {
                let m = &o["metadata"];
                m["namespace"] == "shop" || (o["kind"] == "Namespace" && m["name"] == "shop")
            })
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    ),
                    o["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    fn has_deployment(&self, cluster: &str) -> bool {
        self.sims[cluster]
            .object("apps/v1", "Deployment", Some("shop"), "web")
            .is_some()
    }

    /// DELETE requests `cluster`'s agent sent since the last `clear_requests`.
    fn deletes(&self, cluster: &str) -> Vec<String> {
        self.sims[cluster]
            .requests()
            .into_iter()
            .filter(|r| r.method == "DELETE")
            .map(|r| r.path)
            .collect()
    }

    async fn wait_gone(&self, cluster: &str) {
        eventually(
            &format!("{cluster} to delete the app's objects"),
            || async {
                (!self.has_deployment(cluster) && self.web_on(cluster).await.is_none())
                    .then_some(())
            },
        )
        .await
    }

    /// Waits until the hub forgot the app (every cluster let go of it).
    async fn wait_record_gone(&self) {
        eventually("the app's record to go", || async {
            cli(&self.hub, &["rollout", "status", "web"])
                .await
                .is_err()
                .then_some(())
        })
        .await;
    }

    async fn stop(self) {
        for a in self.agents {
            a.stop().await.unwrap();
        }
    }
}

#[tokio::test]
async fn rolling_back_a_failed_release_deletes_nothing_the_clusters_ran_before() {
    // Issue 12: v1 and v2 each reach us1 but never succeed (us waits for approval, then soaks);
    // v3 fails in canary. Every cluster must end on v2 with the very same objects.
    let f = Fleet::start(&fleet_yaml(US_GATED, "")).await;
    add_fleet_source(&f.hub, &f.repo.path).await;
    let mut revs = Vec::new();
    for version in ["1", "2"] {
        let c = if version == "1" {
            f.repo.git(&["rev-parse", "HEAD"])
        } else {
            f.repo.write("apps/web/config.yaml", &settings(version));
            f.commit(&format!("web {version}")).await
        };
        f.wait_rollout(&format!("v{version} to wait for us"), |r| {
            r["revision"] == c.as_str() && r["state"] == "waiting_approval"
        })
        .await;
        cli_json(&f.hub, &["rollout", "approve", "web", "us"]).await;
        for (cluster, _) in CLUSTERS {
            f.wait_runs(cluster, &c).await;
        }
        let r = f.rollout().await.unwrap();
        assert_eq!(r["state"], "progressing", "v{version} soaks in us: {r}");
        revs.push(c);
    }
    let v2 = revs[1].clone();
    let before: BTreeMap<&str, BTreeMap<String, String>> =
        CLUSTERS.iter().map(|(c, _)| (*c, f.objects(c))).collect();
    for (c, objs) in &before {
        assert_eq!(objs.len(), 3, "{c}: {objs:?}");
    }
    for sim in f.sims.values() {
        sim.clear_requests();
    }

    // v3: a bad release (the simulated cluster fails the Deployment).
    f.repo.write("apps/web/config.yaml", &settings("3"));
    f.repo.write(
        "apps/web/deployment.yaml",
        &deployment("flotilla.io/simulate: fail", "nginx:1.28"),
    );
    let v3 = f.commit("web 3 (bad)").await;
    let r = f
        .wait_rollout("v3 to fail in canary and roll back", |r| {
            r["revision"] == v3.as_str() && r["state"] == "rolled_back"
        })
        .await;
    assert_eq!(
        r["last_good_revision"],
        Value::Null,
        "no rollout ever succeeded"
    );
    for (cluster, _) in CLUSTERS {
        f.wait_runs(cluster, &v2).await;
    }
    let app = cli_json(&f.hub, &["app", "get", "web"]).await;
    assert_eq!(app["clusters"].as_array().unwrap().len(), 3, "{app}");
    for (cluster, objs) in &before {
        assert_eq!(
            &f.objects(cluster),
            objs,
            "{cluster}: the same objects (same uids) after the rollback"
        );
        assert_eq!(f.deletes(cluster), Vec::<String>::new(), "{cluster}");
    }
    f.stop().await;
}

#[tokio::test]
async fn relabelling_clusters_out_waits_for_approval_then_goes_stage_by_stage() {
    let f = Fleet::start(&fleet_yaml(
        "{name: us, selector: {matchLabels: {ring: us}}, approval: manual}",
        "",
    ))
    .await;
    add_fleet_source(&f.hub, &f.repo.path).await;
    let c1 = f.repo.git(&["rev-parse", "HEAD"]);
    f.wait_rollout("v1 to wait for us", |r| r["state"] == "waiting_approval")
        .await;
    cli_json(&f.hub, &["rollout", "approve", "web", "us"]).await;
    f.wait_rollout("v1 to succeed", |r| r["state"] == "succeeded")
        .await;
    for (cluster, _) in CLUSTERS {
        f.wait_runs(cluster, &c1).await;
    }

    // A mistyped label takes eu1 and us1 out of the targets: 2 of 3 clusters > maxRemoval 10%.
    // (Paused meanwhile, so that the first relabel alone — 1 of 3, within maxRemoval rounded
    // up — does not start removing before the second one lands; a paused removal does not move.)
    cli(&f.hub, &["rollout", "pause", "web"]).await.unwrap();
    for c in ["eu1", "us1"] {
        cli(&f.hub, &["cluster", "label", c, "env=prdo"])
            .await
            .unwrap();
    }
    f.sync().await;
    let app = cli_json(&f.hub, &["app", "get", "web"]).await;
    let note = app["removal"].as_str().unwrap_or_default();
    assert!(
        note.contains("from 2 of its 3 clusters") && note.contains("flotilla rollout approve web"),
        "{app}"
    );
    let src = cli_json(&f.hub, &["source", "get", "fleet"]).await;
    assert!(removal_note(&src).contains("maxRemoval"), "{src}");
    let r = f.rollout().await.unwrap();
    assert_eq!(r["removal"]["state"], "waiting_approval", "{r}");
    // Nothing was removed: the desired entries are all there, whatever the engine does next.
    for (cluster, _) in CLUSTERS {
        assert!(f.web_on(cluster).await.is_some(), "{cluster} keeps the app");
        assert!(f.has_deployment(cluster), "{cluster}");
    }

    // Resumed, it still waits. Approved: eu1 loses it; the removal then waits for the
    // approval of us, like a release.
    cli(&f.hub, &["rollout", "resume", "web"]).await.unwrap();
    let r = f.rollout().await.unwrap();
    assert_eq!(r["removal"]["state"], "waiting_approval", "{r}");
    assert!(f.has_deployment("eu1"));
    cli_json(&f.hub, &["rollout", "approve", "web"]).await;
    f.wait_gone("eu1").await;
    let r = f
        .wait_rollout("the removal to wait for us", |r| {
            r["removal"]["state"] == "waiting_approval"
        })
        .await;
    let us = r["removal"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "us")
        .unwrap()
        .clone();
    assert_eq!(us["state"], "waiting_approval", "{r}");
    assert!(f.has_deployment("us1"), "us1 waits for its stage");
    assert!(f.has_deployment("can1"), "can1 is still targeted");
    cli_json(&f.hub, &["rollout", "approve", "web", "us"]).await;
    f.wait_gone("us1").await;
    f.wait_rollout("the removal to finish", |r| {
        r["removal"]["state"] == "succeeded"
    })
    .await;
    assert!(f.has_deployment("can1"));
    assert_eq!(f.deletes("can1"), Vec::<String>::new());
    f.stop().await;
}

#[tokio::test]
async fn an_app_taken_out_of_flotilla_yaml_leaves_canary_first_after_approval() {
    let (f, _) = Fleet::released().await;

    // A bad merge drops the app: nothing happens until someone approves.
    f.repo.write("flotilla.yaml", "apps: {}\n");
    let c2 = f.commit("drop web").await;
    let src = cli_json(&f.hub, &["source", "get", "fleet"]).await;
    assert_eq!(src["commit"], c2.as_str());
    let web = &src["app_states"][0];
    assert_eq!(
        web["name"], "web",
        "the app is listed until it is gone: {src}"
    );
    assert!(
        web["removal"]
            .as_str()
            .unwrap()
            .contains("from 3 of its 3 clusters"),
        "{src}"
    );
    for (cluster, _) in CLUSTERS {
        assert!(f.web_on(cluster).await.is_some(), "{cluster} keeps the app");
    }
    let table = cli(&f.hub, &["app", "get", "web"]).await.unwrap();
    assert!(
        table.contains("waits") || table.contains("approve"),
        "{table}"
    );

    cli_json(&f.hub, &["rollout", "approve", "web"]).await;
    f.wait_gone("can1").await;
    f.wait_gone("eu1").await;
    f.wait_gone("us1").await;
    // The record goes once every cluster let go; the source no longer lists the app.
    f.wait_record_gone().await;
    let src = f.sync().await;
    assert_eq!(src["apps"], serde_json::json!([]), "{src}");
    let audit = audit_log(&f.hub).await;
    assert!(
        audit.iter().any(|e| e["action"] == "rollout.approve"
            && e["detail"].as_str().unwrap_or_default().contains("removal")),
        "{audit:?}"
    );
    f.stop().await;
}

#[tokio::test]
async fn source_remove_says_what_it_removes_asks_first_and_can_keep_the_objects() {
    use std::io::IsTerminal;
    let (f, _) = Fleet::released().await;
    let before: BTreeMap<&str, BTreeMap<String, String>> =
        CLUSTERS.iter().map(|(c, _)| (*c, f.objects(c))).collect();
    for sim in f.sims.values() {
        sim.clear_requests();
    }

    if !std::io::stdin().is_terminal() {
        // A script without --yes is refused, and nothing changes.
        let e = cli(&f.hub, &["source", "remove", "fleet"])
            .await
            .unwrap_err();
        assert!(
            e.contains("takes 1 apps off 3 clusters") && e.contains("--yes"),
            "{e}"
        );
        cli_json(&f.hub, &["source", "get", "fleet"]).await;
    }
    let out = cli(
        &f.hub,
        &["source", "remove", "fleet", "--yes", "--keep-resources"],
    )
    .await
    .unwrap();
    assert!(
        out.contains("web: can1, eu1, us1") && out.contains("stay in the clusters"),
        "{out}"
    );
    // Every agent lets go of the app (no status, no inventory) but deletes nothing.
    for (cluster, _) in CLUSTERS {
        eventually(&format!("{cluster} to let go of web"), || async {
            f.web_on(cluster).await.is_none().then_some(())
        })
        .await;
    }
    f.wait_record_gone().await;
    for (cluster, objs) in &before {
        assert_eq!(&f.objects(cluster), objs, "{cluster} keeps its objects");
        let deletes = f.deletes(cluster);
        assert!(
            deletes
                .iter()
                .all(|p| p.contains("/configmaps/flotilla-app-web")),
            "{cluster}: only the inventory goes: {deletes:?}"
        );
    }
    let audit = audit_log(&f.hub).await;
    assert!(
        audit.iter().any(|e| e["action"] == "source.remove"),
        "{audit:?}"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_second_source_defining_the_same_app_is_refused_and_nothing_flips() {
    let (f, c1) = Fleet::released().await;
    // Source b: another repository that also defines web, with other content.
    let other = TestRepo::init(&f.repo.path.parent().unwrap().join("other"));
    other.write("flotilla.yaml", &fleet_yaml(US_AUTO, ""));
    other.write("apps/web/config.yaml", &settings("from b"));
    other.commit("b's web");
    cli_json(
        &f.hub,
        &[
            "source",
            "add",
            "b",
            "--url",
            other.path.to_str().unwrap(),
            "--interval",
            "1h",
        ],
    )
    .await;
    let rollouts = &f.hub.running().rollouts;
    let mut generations = BTreeMap::new();
    for (c, _) in CLUSTERS {
        generations.insert(c, rollouts.desired_of(c).await.unwrap());
    }
    for _ in 0..3 {
        let b = cli_json(&f.hub, &["source", "sync", "b"]).await;
        let web = &b["app_states"][0];
        assert!(
            web["error"]
                .as_str()
                .unwrap()
                .contains("already defined by source fleet"),
            "{b}"
        );
        f.sync().await;
    }
    for (c, _) in CLUSTERS {
        assert_eq!(
            rollouts.desired_of(c).await.unwrap(),
            generations[c],
            "{c}: no desired-state change"
        );
    }
    let app = cli_json(&f.hub, &["app", "get", "web"]).await;
    assert_eq!(app["source"], "fleet", "{app}");
    assert!(app["error"].is_null(), "{app}");
    let conflict = app["conflicts"][0].as_str().unwrap_or_default();
    assert!(
        conflict.starts_with("source b: app web is already defined by source fleet"),
        "{app}"
    );
    let r = f.rollout().await.unwrap();
    assert_eq!(r["source"], "fleet");
    assert_eq!(r["revision"], c1.as_str());
    f.stop().await;
}

#[tokio::test]
async fn a_removal_waiting_for_approval_survives_a_hub_restart() {
    let (mut f, c1) = Fleet::released().await;
    f.repo.write("flotilla.yaml", "apps: {}\n");
    f.commit("drop web").await;
    let r = f.rollout().await.unwrap();
    assert_eq!(r["removal"]["state"], "waiting_approval", "{r}");

    f.hub.restart().await;
    // After the restart the hub rewrote every desired state from the records: the clusters keep
    // the app, the removal still waits.
    for (cluster, _) in CLUSTERS {
        f.wait_runs(cluster, &c1).await;
        assert!(f.has_deployment(cluster), "{cluster}");
    }
    let r = f.rollout().await.unwrap();
    assert_eq!(r["removal"]["state"], "waiting_approval", "{r}");
    let src = f.sync().await;
    assert!(removal_note(&src).contains("maxRemoval"), "{src}");

    cli_json(&f.hub, &["rollout", "approve", "web"]).await;
    for (cluster, _) in CLUSTERS {
        f.wait_gone(cluster).await;
    }
    f.wait_record_gone().await;
    f.stop().await;
}
