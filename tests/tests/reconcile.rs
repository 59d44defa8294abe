//! From a commit to objects in the (simulated) cluster and back to the CLI: real hub, real git
//! repository, real mTLS sessions; the agent applies into a simulated Kubernetes API reached
//! through `kube::Client`. Also: the agent keeps self-healing while the hub is down and reports
//! what happened when it comes back.

use std::time::Duration;

use flotilla_agent::sim::SimCluster;
use flotilla_tests::*;
use serde_json::{Value, json};

const FLEET: &str = "apps:\n  web:\n    path: apps/web\n    namespace: shop\n    targets: {}\n    healthTimeout: 5m\n";

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
const CONFIG: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: live\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - {name: web, image: 'nginx:1.27'}\n";

fn repo(dir: &std::path::Path) -> (TestRepo, String) {
    let repo = TestRepo::init(&dir.join("repo"));
    repo.write("flotilla.yaml", FLEET);
    repo.write("apps/web/namespace.yaml", NAMESPACE);
    repo.write("apps/web/config.yaml", CONFIG);
    repo.write("apps/web/deployment.yaml", DEPLOYMENT);
    let c1 = repo.commit("web r1");
    (repo, c1)
}

/// A hub with the repository as its source, and one agent (`eu-1`, checking for drift every
/// 300 ms) connected from a simulated cluster whose workloads become ready after `ready_delay`.
struct OneCluster {
    hub: TestHub,
    repo: TestRepo,
    c1: String,
    agent: TestAgent,
    sim: SimCluster,
    _dir: tempfile::TempDir,
}

impl OneCluster {
    async fn start(ready_delay: Duration) -> Self {
        let dir = test_dir();
        let (repo, c1) = repo(dir.path());
        let hub = TestHub::start_in(dir.path()).await;
        let sim = sim_cluster(ready_delay);
        let agent = hub
            .join_sim(dir.path(), "eu-1", &[], &sim, |cfg| {
                cfg.drift_interval = Duration::from_millis(300);
            })
            .await;
        add_fleet_source(&hub, &repo.path).await;
        Self {
            hub,
            repo,
            c1,
            agent,
            sim,
            _dir: dir,
        }
    }
}

/// `flotilla cluster get NAME -o json`'s entry for `app`, once `ok` holds for it.
async fn cluster_app(
    hub: &TestHub,
    cluster: &str,
    app: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(&format!("{cluster}/{app} as expected"), || async {
        let c = cli_json(hub, &["cluster", "get", cluster]).await;
        c["apps"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == app && ok(a))
            .cloned()
    })
    .await
}

#[tokio::test]
async fn a_commit_is_applied_and_its_health_shows_in_the_cli() {
    let OneCluster {
        hub,
        repo,
        c1,
        agent: a,
        sim,
        _dir,
    } = OneCluster::start(Duration::from_millis(200)).await;

    let web = cluster_app(&hub, "eu-1", "web", |a| a["health"] == "healthy").await;
    assert_eq!(web["revision"], c1.as_str());
    assert_eq!(web["phase"], "applied");
    assert_eq!(
        web["objects"],
        json!({"total": 3, "current": 3, "in_progress": 0, "failed": 0, "unknown": 0})
    );
    assert_eq!(web["drifted"], 0);
    let c = cli_json(&hub, &["cluster", "get", "eu-1"]).await;
    assert_eq!(c["name"], "eu-1");
    assert_eq!(c["state"], "connected");
    assert_eq!(c["backend"], "simulated");
    let deployment = sim
        .object("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert_eq!(deployment["status"]["readyReplicas"], 2);
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(app["clusters"][0]["applied_revision"], c1.as_str());
    assert_eq!(app["clusters"][0]["health"], "healthy");
    let table = cli(&hub, &["cluster", "get", "eu-1", "-o", "table"])
        .await
        .unwrap();
    assert!(table.contains("3/3 current"), "{table}");

    // A revision with an object in a namespace that does not exist: the rest applies, that one
    // is reported, and the revision does not count as applied.
    repo.write(
        "apps/web/stray.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n  namespace: nowhere\n",
    );
    repo.write(
        "apps/web/config.yaml",
        &CONFIG.replace("live", "maintenance"),
    );
    let c2 = repo.commit("web r2 with a stray object");
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let web = cluster_app(&hub, "eu-1", "web", |a| {
        a["revision"] == c2.as_str() && a["phase"] == "failed"
    })
    .await;
    assert_eq!(web["objects"]["failed"], 1);
    assert_eq!(web["worst"][0]["name"], "stray");
    assert!(
        web["worst"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nowhere"),
        "{web}"
    );
    let settings = sim
        .object("v1", "ConfigMap", Some("shop"), "settings")
        .unwrap();
    assert_eq!(
        settings["data"]["mode"], "maintenance",
        "the good objects applied"
    );
    let app = cli_json(&hub, &["app", "get", "web"]).await;
    assert_eq!(app["clusters"][0]["desired_revision"], c2.as_str());
    assert!(
        app["clusters"][0]["applied_revision"].is_null(),
        "a failed revision is not applied: {app}"
    );
    a.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_hub_down_the_agent_keeps_healing_and_reports_on_reconnect() {
    let OneCluster {
        mut hub,
        c1,
        agent: mut a,
        sim,
        _dir,
        ..
    } = OneCluster::start(Duration::ZERO).await;
    cluster_app(&hub, "eu-1", "web", |a| a["health"] == "healthy").await;

    hub.stop().await;
    wait_status(&mut a.status, "the agent notices", |s| !s.connected).await;
    // Someone deletes the Deployment while the hub is away.
    let deployments: flotilla_agent::kube::Api<
        flotilla_agent::k8s_openapi::api::apps::v1::Deployment,
    > = flotilla_agent::kube::Api::namespaced(sim.client(), "shop");
    deployments
        .delete("web", &Default::default())
        .await
        .unwrap();
    let st = wait_status(&mut a.status, "self-heal while offline", |s| {
        s.apps.iter().any(|a| a.app == "web" && a.healed >= 1)
    })
    .await;
    assert!(!st.connected);
    assert!(
        sim.object("apps/v1", "Deployment", Some("shop"), "web")
            .is_some()
    );

    hub.restart().await;
    let web = cluster_app(&hub, "eu-1", "web", |a| a["healed"].as_u64() >= Some(1)).await;
    assert_eq!(web["revision"], c1.as_str());
    let w = web["worst"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|o| o["name"] == "web" && o["reason"] == "DriftHealed"),
        "{web}"
    );
    a.stop().await.unwrap();
}

#[tokio::test]
async fn a_revision_the_api_server_refuses_shows_its_message_and_keeps_the_last_one() {
    let OneCluster {
        hub,
        repo,
        agent: a,
        sim,
        _dir,
        ..
    } = OneCluster::start(Duration::ZERO).await;
    cluster_app(&hub, "eu-1", "web", |a| a["health"] == "healthy").await;

    // A chart or overlay that quotes `replicas`: a real API server refuses the Deployment,
    // and so does the simulated one. The ConfigMap the revision drops must not be pruned.
    repo.write(
        "apps/web/deployment.yaml",
        &DEPLOYMENT.replace("replicas: 2", "replicas: \"3\""),
    );
    repo.git(&["rm", "-q", "apps/web/config.yaml"]);
    let c2 = repo.commit("web r2 with replicas as a string");
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let web = cluster_app(&hub, "eu-1", "web", |a| {
        a["revision"] == c2.as_str() && a["phase"] == "failed"
    })
    .await;
    let refusal = "failed to create typed patch object (shop/web; apps/v1, Kind=Deployment): \
                   .spec.replicas: expected numeric (int or float), got string";
    assert_eq!(web["worst"][0]["name"], "web", "{web}");
    let message = web["worst"][0]["message"].as_str().unwrap();
    assert!(message.contains(refusal), "{message}");
    assert_eq!(web["objects"]["failed"], 1, "{web}");

    let deployment = sim
        .object("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "the last revision's spec stays"
    );
    assert!(
        sim.object("v1", "ConfigMap", Some("shop"), "settings")
            .is_some(),
        "nothing pruned after a refused apply"
    );
    a.stop().await.unwrap();
}
