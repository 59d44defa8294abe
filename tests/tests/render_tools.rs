//! Kustomize and Helm sources end to end, with the real kubectl and helm (`.ci/tools`): a hub
//! renders a kustomization with per-cluster overlays and a chart with per-cluster values from a
//! real git repository, agents apply them on SIMULATED clusters (creating the apps'
//! namespaces), and a broken chart keeps the last good revision with helm's own message.

use std::time::Duration;

use flotilla_tests::*;

const FLEET: &str = "\
apps:
  guestbook:
    path: guestbook/overlays/prod
    namespace: guestbook
    createNamespace: true
    targets: {}
    overlays:
      - when: {matchLabels: {env: staging}}
        path: guestbook/overlays/staging
  cache:
    path: charts/cache
    namespace: cache
    createNamespace: true
    targets: {}
    helm:
      values:
        replicas: ${cluster.labels.size}
        color: ${color}
    vars: {color: blue}
";

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: example/guestbook:1}
";

/// A pre-install/pre-upgrade hook: a Job with a generated name, deleted once it succeeded.
const CHART_HOOK: &str = "\
apiVersion: batch/v1
kind: Job
metadata:
  generateName: {{ .Release.Name }}-migrate-
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-delete-policy: hook-succeeded
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: migrate, image: example/cache-migrate:1}
";

const CHART_DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {color: {{ .Values.color | quote }}}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: cache}}
  template:
    metadata: {labels: {app: cache}}
    spec:
      containers:
      - {name: cache, image: example/cache:1}
";

fn fleet_repo(dir: &std::path::Path) -> TestRepo {
    let repo = TestRepo::init(&dir.join("repo"));
    repo.write("flotilla.yaml", FLEET);
    repo.write(
        "guestbook/base/kustomization.yaml",
        "resources: [deployment.yaml]\nlabels:\n- pairs: {team: guestbook}\n",
    );
    repo.write("guestbook/base/deployment.yaml", DEPLOYMENT);
    repo.write(
        "guestbook/overlays/prod/kustomization.yaml",
        "resources: [../../base]\nnamePrefix: prod-\npatches:\n- target: {kind: Deployment, name: web}\n  patch: |-\n    - {op: replace, path: /spec/replicas, value: 2}\n",
    );
    repo.write(
        "guestbook/overlays/staging/kustomization.yaml",
        "resources: [../../base]\nnamePrefix: staging-\n",
    );
    repo.write(
        "charts/cache/Chart.yaml",
        "apiVersion: v2\nname: cache\nversion: 1.0.0\n",
    );
    repo.write("charts/cache/values.yaml", "replicas: 1\ncolor: none\n");
    repo.write("charts/cache/templates/deployment.yaml", CHART_DEPLOYMENT);
    repo.write("charts/cache/templates/migrate.yaml", CHART_HOOK);
    repo
}

/// Where in the simulated cluster's request log the first write of `what` (a path part) is.
fn first_write(sim: &flotilla_agent::sim::SimCluster, what: &str) -> usize {
    sim.requests()
        .iter()
        .position(|r| r.method != "GET" && r.path.contains(what))
        .unwrap_or_else(|| panic!("no write of {what}"))
}

#[tokio::test]
async fn kustomize_and_helm_apps_reach_their_clusters_and_a_broken_chart_keeps_the_last_good_one() {
    let dir = test_dir();
    let repo = fleet_repo(dir.path());
    let c1 = repo.commit("guestbook and cache");
    let (hub, http) = TestHub::start_with_http(TestHub::config(dir.path())).await;
    // Simulated clusters that keep their request log (to see the order of writes).
    let recording = || {
        flotilla_agent::sim::SimCluster::new(flotilla_agent::sim::SimConfig {
            record_requests: 10_000,
            ..Default::default()
        })
    };
    let (prod, staging) = (recording(), recording());
    let _a = hub
        .join_sim(
            dir.path(),
            "prod-1",
            &[("env", "prod"), ("size", "3")],
            &prod,
            |_| {},
        )
        .await;
    let _b = hub
        .join_sim(
            dir.path(),
            "stage-1",
            &[("env", "staging"), ("size", "1")],
            &staging,
            |_| {},
        )
        .await;
    add_fleet_source(&hub, &repo.path).await;
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c1.as_str(), "{src}");
    for cluster in ["prod-1", "stage-1"] {
        for app in ["guestbook", "cache"] {
            wait_runs(&hub, cluster, app, &c1).await;
        }
    }

    // What the simulated clusters hold: the apps' namespaces, created by the agents; each
    // cluster's kustomize overlay; the chart's values from the cluster's label and a variable.
    for (sim, name, replicas) in [(&prod, "prod-web", 2), (&staging, "staging-web", 1)] {
        assert!(sim.object("v1", "Namespace", None, "guestbook").is_some());
        let d = sim
            .object("apps/v1", "Deployment", Some("guestbook"), name)
            .unwrap_or_else(|| panic!("{name} applied"));
        assert_eq!(d["spec"]["replicas"], replicas);
        assert_eq!(d["metadata"]["labels"]["team"], "guestbook");
    }
    for (sim, replicas) in [(&prod, 3), (&staging, 1)] {
        let d = sim
            .object("apps/v1", "Deployment", Some("cache"), "cache")
            .expect("the chart's Deployment");
        assert_eq!(d["spec"]["replicas"], replicas);
        assert_eq!(d["metadata"]["labels"]["color"], "blue");
        // The chart's pre-install hook ran first (created with POST: it has a generated
        // name) and was deleted once it succeeded.
        let job = first_write(sim, "/namespaces/cache/jobs");
        assert!(job < first_write(sim, "/namespaces/cache/deployments"));
        assert!(
            !sim.objects().iter().any(|o| o["kind"] == "Job"),
            "hook-succeeded deletes the hook"
        );
    }

    // `source get` names the renderers and the tools' versions; readiness shows them too.
    let src = cli_json(&hub, &["source", "get", "fleet"]).await;
    let tools: Vec<&str> = src["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tools[0].starts_with("helm v4."), "{src}");
    assert!(tools[1].starts_with("kustomize v5."), "{src}");
    let renderer = |app: &str| {
        src["app_states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == app)
            .map(|a| a["renderer"].clone())
    };
    assert_eq!(renderer("guestbook").unwrap(), "kustomize");
    assert_eq!(renderer("cache").unwrap(), "helm");
    let (code, body) = flotilla_tests::bench::hub::http_get(http, "/readyz")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("kustomize: kustomize v5.") && body.contains("helm: helm v4."),
        "{body}"
    );

    // A broken template: the chart fails with helm's message and keeps its last good revision
    // on every cluster; the kustomization, unchanged, is not disturbed.
    repo.write(
        "charts/cache/templates/broken.yaml",
        "{{ .Values.missing.field }}\n",
    );
    let c2 = repo.commit("break the chart");
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c2.as_str());
    let app = cli_json(&hub, &["app", "get", "cache"]).await;
    let error = app["error"].as_str().unwrap_or_default();
    assert!(error.contains("helm template charts/cache:"), "{app}");
    assert!(error.contains("nil pointer"), "{app}");
    assert_eq!(app["commit"], c1.as_str(), "{app}");
    let text = cli(&hub, &["source", "get", "fleet"]).await.unwrap();
    assert!(text.contains("app cache: error: cluster "), "{text}");
    assert!(
        text.contains(": helm template charts/cache: Error: "),
        "{text}"
    );
    for sim in [&prod, &staging] {
        assert!(
            sim.object("apps/v1", "Deployment", Some("cache"), "cache")
                .is_some()
        );
    }
    for cluster in ["prod-1", "stage-1"] {
        let a = app_on(&hub, cluster, "cache").await.unwrap();
        assert_eq!(a["desired_revision"], c1.as_str());
    }

    // A broken kustomization too: kustomize's message, the last good revision kept.
    repo.write(
        "guestbook/overlays/prod/kustomization.yaml",
        "resources: [../../base, missing.yaml]\n",
    );
    let c_bad = repo.commit("break the kustomization");
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert_eq!(src["commit"], c_bad.as_str());
    let app = cli_json(&hub, &["app", "get", "guestbook"]).await;
    let error = app["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("kustomize build guestbook/overlays/prod:"),
        "{app}"
    );
    assert!(error.contains("missing.yaml"), "{app}");
    assert_ne!(app["commit"], c_bad.as_str(), "{app}");
    assert!(
        prod.object("apps/v1", "Deployment", Some("guestbook"), "prod-web")
            .is_some()
    );
    repo.git(&[
        "checkout",
        "-q",
        "HEAD~1",
        "--",
        "guestbook/overlays/prod/kustomization.yaml",
    ]);

    // Fixed: the next commit renders and reaches the clusters.
    repo.git(&["rm", "-q", "charts/cache/templates/broken.yaml"]);
    repo.write(
        "charts/cache/templates/deployment.yaml",
        &CHART_DEPLOYMENT.replace("labels: {", "labels: {fixed: \"yes\", "),
    );
    let c3 = repo.commit("fix the chart");
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    wait_runs(&hub, "prod-1", "cache", &c3).await;
    let app = cli_json(&hub, &["app", "get", "cache"]).await;
    assert!(app["error"].is_null(), "{app}");
    let d = prod
        .object("apps/v1", "Deployment", Some("cache"), "cache")
        .unwrap();
    assert_eq!(d["metadata"]["labels"]["fixed"], "yes");
}

/// The chart `cache` 1.0.0 written to `dir/chart-src/cache`.
fn cache_chart(dir: &std::path::Path) -> std::path::PathBuf {
    let chart = dir.join("chart-src/cache");
    for (path, text) in [
        (
            "Chart.yaml",
            "apiVersion: v2\nname: cache\nversion: 1.0.0\n",
        ),
        ("values.yaml", "replicas: 1\ncolor: none\n"),
        ("templates/deployment.yaml", CHART_DEPLOYMENT),
    ] {
        let p = chart.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    chart
}

/// A fleet whose app `cache` is the chart `cache` 1.0.0 from `chart_repo`, with inline
/// `values`; a hub that reads chart credentials from `credentials` (written with
/// `credentials_yaml`); one simulated cluster `eu-1` running the first commit.
struct RemoteChartFleet {
    hub: TestHub,
    sim: flotilla_agent::sim::SimCluster,
    _agent: TestAgent,
    repo: TestRepo,
    /// The text of `flotilla.yaml`.
    fleet: String,
    credentials: std::path::PathBuf,
}

async fn remote_chart_fleet(
    dir: &std::path::Path,
    chart_repo: &str,
    credentials_yaml: &str,
    values: &str,
) -> RemoteChartFleet {
    let credentials = dir.join("helm-credentials.yaml");
    std::fs::write(&credentials, credentials_yaml).unwrap();
    let repo = TestRepo::init(&dir.join("repo"));
    let fleet = format!(
        "apps:\n  cache:\n    namespace: cache\n    createNamespace: true\n    targets: {{}}\n    helm:\n      repo: {chart_repo}\n      chart: cache\n      version: 1.0.0\n      values: {values}\n"
    );
    repo.write("flotilla.yaml", &fleet);
    let first = repo.commit("cache from a chart repository");
    let mut config = TestHub::config(dir);
    config.tools.helm_credentials = Some(credentials.clone());
    let hub = TestHub::start(config).await;
    let sim = sim_cluster(Duration::ZERO);
    let agent = hub.join_sim(dir, "eu-1", &[], &sim, |_| {}).await;
    add_fleet_source(&hub, &repo.path).await;
    let src = cli_json(&hub, &["source", "sync", "fleet"]).await;
    assert!(src["error"].is_null(), "{src}");
    wait_runs(&hub, "eu-1", "cache", &first).await;
    RemoteChartFleet {
        hub,
        sim,
        _agent: agent,
        repo,
        fleet,
        credentials,
    }
}

impl RemoteChartFleet {
    /// The chart's Deployment on the simulated cluster.
    fn deployment(&self) -> serde_json::Value {
        self.sim
            .object("apps/v1", "Deployment", Some("cache"), "cache")
            .expect("the fetched chart's Deployment")
    }

    /// Commits `flotilla.yaml` with `from` replaced by `to`, syncs, returns the commit.
    async fn commit_replacing(&self, from: &str, to: &str) -> String {
        self.repo
            .write("flotilla.yaml", &self.fleet.replace(from, to));
        let commit = self.repo.commit(&format!("{from} -> {to}"));
        cli_json(&self.hub, &["source", "sync", "fleet"]).await;
        commit
    }
}

#[tokio::test]
async fn a_chart_from_a_repository_is_fetched_once_per_version_with_its_credentials() {
    let dir = test_dir();
    // A chart repository on loopback with basic auth, holding cache 1.0.0 (`helm package`).
    let chart = cache_chart(dir.path());
    let charts = flotilla_tests::chart_repo::ChartRepo::start(
        &dir.path().join("served"),
        &[&chart],
        "fleet",
        "s3cret",
    )
    .await;
    let credentials = |password: &str| {
        format!(
            "repositories:\n- url: {}\n  username: fleet\n  password: {password}\n",
            charts.url
        )
    };
    let f = remote_chart_fleet(
        dir.path(),
        &charts.url,
        &credentials("s3cret"),
        "{replicas: 2, color: green}",
    )
    .await;
    let d = f.deployment();
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["labels"]["color"], "green");

    // Another commit with other values: the package comes from the hub's chart cache.
    let c2 = f.commit_replacing("color: green", "color: red").await;
    wait_runs(&f.hub, "eu-1", "cache", &c2).await;
    assert_eq!(
        charts.downloads("cache-1.0.0.tgz"),
        1,
        "fetched once per version"
    );

    // A version the repository does not have: helm's message, the last good revision kept.
    f.commit_replacing("1.0.0", "9.9.9").await;
    let app = cli_json(&f.hub, &["app", "get", "cache"]).await;
    let error = app["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("helm pull cache 9.9.9 from http://127.0.0.1:"),
        "{app}"
    );
    assert_eq!(app["commit"], c2.as_str());

    // Wrong credentials: the repository's refusal shows.
    std::fs::write(&f.credentials, credentials("wrong")).unwrap();
    f.commit_replacing("1.0.0", "1.0.1").await;
    let app = cli_json(&f.hub, &["app", "get", "cache"]).await;
    let error = app["error"].as_str().unwrap_or_default();
    assert!(error.contains("401"), "{app}");
    assert_eq!(app["commit"], c2.as_str());
}

#[tokio::test]
async fn a_chart_from_an_oci_registry_is_fetched_with_its_credentials() {
    let dir = test_dir();
    let chart = cache_chart(dir.path());
    let registry = flotilla_tests::chart_repo::OciRegistry::start(
        &dir.path().join("pkg"),
        &chart,
        ("cache", "1.0.0"),
        "fleet",
        "s3cret",
    )
    .await;
    let host = registry
        .url
        .trim_start_matches("oci://")
        .split('/')
        .next()
        .unwrap();
    let f = remote_chart_fleet(
        dir.path(),
        &registry.url,
        &format!(
            "repositories:\n- url: oci://{host}\n  username: fleet\n  password: s3cret\n  plainHttp: true\n"
        ),
        "{replicas: 3}",
    )
    .await;
    assert_eq!(f.deployment()["spec"]["replicas"], 3);
    assert_eq!(registry.chart_downloads(), 1);
}
