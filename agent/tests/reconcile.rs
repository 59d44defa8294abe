//! The reconciler against the simulated cluster, through `kube::Client`: apply and ordering,
//! inventories and pruning, health, drift and self-heal, dependencies, conflicts, bad objects.
//! Time is paused: intervals and timeouts pass as soon as nothing else can run.

use std::time::Duration;

use flotilla_agent::AgentStatus;
use flotilla_agent::bundles::BundleStore;
use flotilla_agent::cluster::SimConfig;
use flotilla_agent::k8s_openapi::api::apps::v1::Deployment;
use flotilla_agent::k8s_openapi::api::core::v1::ConfigMap;
use flotilla_agent::kube::api::{DynamicObject, Patch, PatchParams};
use flotilla_agent::kube::discovery::ApiResource;
use flotilla_agent::kube::{Api, Resource};
use flotilla_agent::reconcile::status::StatusBoard;
use flotilla_agent::reconcile::{ReconcileConfig, Reconciler};
use flotilla_agent::sim::SimCluster;
use flotilla_proto::state::{Health, Phase};
use flotilla_proto::v1::{AppDesired, AppOptions, AppStatus, DesiredState};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(3600);

/// One app as the hub would send it.
#[derive(Clone)]
struct App {
    name: &'static str,
    revision: &'static str,
    objects: Vec<Value>,
    options: AppOptions,
    depends_on: Vec<String>,
}

fn app(name: &'static str, revision: &'static str, objects: Vec<Value>) -> App {
    App {
        name,
        revision,
        objects,
        options: AppOptions::default(),
        depends_on: vec![],
    }
}

impl App {
    /// This app with its options set by `set`.
    fn with_options(mut self, set: impl FnOnce(&mut AppOptions)) -> Self {
        set(&mut self.options);
        self
    }
}

struct Harness {
    sim: SimCluster,
    bundles: BundleStore,
    desired: watch::Sender<Option<DesiredState>>,
    status: watch::Receiver<AgentStatus>,
    board: StatusBoard,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    generation: u64,
    _dir: tempfile::TempDir,
}

fn config() -> ReconcileConfig {
    ReconcileConfig {
        backend: "simulated",
        ..ReconcileConfig::default()
    }
}

impl Harness {
    /// A reconciler with the default settings on a default simulated cluster.
    async fn plain() -> Self {
        Self::new(SimConfig::default()).await
    }

    /// The same on a simulated cluster where workloads become ready `delay` after they are
    /// applied.
    async fn with_ready_delay(delay: Duration) -> Self {
        Self::new(SimConfig {
            ready_delay: delay,
            ..SimConfig::default()
        })
        .await
    }

    /// A reconciler with the default settings on a simulated cluster configured by `sim_cfg`
    /// (recording every request).
    async fn new(sim_cfg: SimConfig) -> Self {
        let sim = SimCluster::new(SimConfig {
            record_requests: 100_000,
            ..sim_cfg
        });
        let dir = tempfile::tempdir().unwrap();
        Self::start(sim, BundleStore::new(dir.path()), dir, config(), None).await
    }

    async fn start(
        sim: SimCluster,
        bundles: BundleStore,
        dir: tempfile::TempDir,
        cfg: ReconcileConfig,
        initial: Option<DesiredState>,
    ) -> Self {
        let generation = initial.as_ref().map(|d| d.generation).unwrap_or(0);
        let (desired, desired_rx) = watch::channel(initial);
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let board = StatusBoard::default();
        let (stop, stop_rx) = watch::channel(false);
        let r = Reconciler::new(sim.client(), cfg, bundles.clone(), board.clone(), status_tx);
        let task = tokio::spawn(r.run(desired_rx, stop_rx));
        Self {
            sim,
            bundles,
            desired,
            status,
            board,
            stop,
            task,
            generation,
            _dir: dir,
        }
    }

    async fn stop(self) -> (SimCluster, tempfile::TempDir) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        (self.sim, self._dir)
    }

    fn set(&mut self, apps: &[App]) {
        self.generation += 1;
        let apps = apps
            .iter()
            .map(|a| {
                let canonical = serde_json::to_vec(&a.objects).unwrap();
                AppDesired {
                    app: a.name.into(),
                    revision: a.revision.into(),
                    bundle_digest: self.bundles.put(&canonical).unwrap(),
                    bundle_size: canonical.len() as u64,
                    trace_context: String::new(),
                    depends_on: a.depends_on.clone(),
                    options: Some(a.options.clone()),
                }
            })
            .collect();
        let d = DesiredState {
            generation: self.generation,
            apps,
        };
        self.bundles.save_desired(&d).unwrap();
        self.desired.send_replace(Some(d));
    }

    /// Waits until `app`'s status satisfies `ok` (paused time: the deadline is virtual).
    async fn wait(&mut self, app: &str, what: &str, ok: impl Fn(&AppStatus) -> bool) -> AppStatus {
        let generation = self.generation;
        let found = {
            let waited = tokio::time::timeout(
                DEADLINE,
                self.status.wait_for(|s| {
                    s.reconciled_generation == generation
                        && s.apps.iter().any(|a| a.app == app && ok(a))
                }),
            )
            .await;
            match waited {
                Ok(Ok(s)) => Some(s.apps.iter().find(|a| a.app == app).unwrap().clone()),
                _ => None,
            }
        };
        match found {
            Some(s) => s,
            None => panic!(
                "app {app}: never {what} (reconciler ended: {}); requests: {:?}; last: {:#?}",
                self.task.is_finished(),
                self.sim
                    .requests()
                    .iter()
                    .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                    .collect::<Vec<_>>(),
                self.status.borrow().apps.iter().find(|a| a.app == app)
            ),
        }
    }

    fn live(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        self.sim.object(api_version, kind, ns, name)
    }

    /// Patches the `K` `ns/name` in the cluster behind the agent's back, as another tool or a
    /// person would.
    async fn patch_by_hand<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        name: &str,
        params: &PatchParams,
        patch: Patch<Value>,
    ) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.sim.client(), ns, &ApiResource::erase::<K>(&()));
        api.patch(name, params, &patch).await.unwrap();
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn configmap(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns}, "data": data})
}

fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}}}})
}

fn failing(mut obj: Value) -> Value {
    obj["metadata"]["annotations"] = json!({"flotilla.io/simulate": "fail"});
    obj
}

fn healthy(s: &AppStatus) -> bool {
    s.phase() == Phase::Applied && s.health() == Health::Healthy
}

fn counts(s: &AppStatus) -> (u32, u32, u32, u32) {
    let c = s.objects.unwrap_or_default();
    (c.total, c.current, c.in_progress, c.failed)
}

fn managers(obj: &Value) -> Vec<String> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["manager"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn applies_in_order_and_reports_health() {
    let mut h = Harness::plain().await;
    h.set(&[app(
        "shop",
        "r1",
        vec![
            deployment("shop", "web", 3),
            configmap("shop", "settings", json!({"mode": "live"})),
            namespace("shop"),
        ],
    )]);
    let s = h.wait("shop", "healthy", healthy).await;
    assert_eq!(counts(&s), (3, 3, 0, 0));
    assert_eq!(s.revision, "r1");
    assert!(s.message.contains("simulated"), "{}", s.message);
    let web = h
        .live("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert!(managers(&web).contains(&"flotilla-agent".to_string()));
    assert_eq!(web["status"]["readyReplicas"], 3);
    // The Namespace went first: the simulated API refuses objects in a missing namespace.
    let applies: Vec<String> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && !r.path.contains("/configmaps/flotilla-app-"))
        .map(|r| r.path)
        .collect();
    assert_eq!(applies.len(), 3, "{applies:?}");
    assert_eq!(applies[0], "/api/v1/namespaces/shop");
    // The inventory lists the three objects.
    let inv = h
        .live(
            "v1",
            "ConfigMap",
            Some("flotilla-system"),
            "flotilla-app-shop",
        )
        .unwrap();
    let listed: Vec<Value> =
        serde_json::from_str(inv["data"]["objects"].as_str().unwrap()).unwrap();
    assert_eq!(listed.len(), 3);
    h.stop().await;
}

fn crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                                  "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

fn widget(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "example.com/v1", "kind": "Widget",
           "metadata": {"name": name, "namespace": ns}, "spec": {"size": 3}})
}

#[tokio::test(start_paused = true)]
async fn a_crd_and_its_resources_apply_in_one_bundle() {
    let mut h = Harness::with_ready_delay(Duration::from_secs(2)).await;
    h.set(&[app(
        "widgets",
        "r1",
        vec![
            widget("w", "one"),
            namespace("w"),
            crd(),
            widget("w", "two"),
        ],
    )]);
    let s = h.wait("widgets", "healthy", healthy).await;
    assert_eq!(counts(&s), (4, 4, 0, 0));
    assert!(
        h.live("example.com/v1", "Widget", Some("w"), "one")
            .is_some()
    );
    assert!(
        h.live("example.com/v1", "Widget", Some("w"), "two")
            .is_some()
    );
    // The CRD was applied, read until Established, and only then were widgets applied.
    let reqs = h.sim.requests();
    let pos = |pred: &dyn Fn(&flotilla_agent::sim::RecordedRequest) -> bool| {
        reqs.iter().position(pred).expect("request made")
    };
    let crd_apply = pos(&|r| r.method == "PATCH" && r.path.ends_with("/widgets.example.com"));
    let ns_apply = pos(&|r| r.method == "PATCH" && r.path == "/api/v1/namespaces/w");
    let widget_apply = pos(&|r| r.method == "PATCH" && r.path.contains("/widgets/"));
    assert!(crd_apply < ns_apply && ns_apply < widget_apply);
    assert!(
        reqs[crd_apply..widget_apply]
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/widgets.example.com")),
        "the agent waited for Established"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn removed_objects_are_pruned_and_opt_outs_are_kept() {
    let mut h = Harness::plain().await;
    let mut keep = configmap("p", "keep-me", json!({"a": "1"}));
    keep["metadata"]["annotations"] = json!({"flotilla.io/prune": "disabled"});
    h.set(&[app(
        "p",
        "r1",
        vec![
            namespace("p"),
            configmap("p", "a", json!({})),
            configmap("p", "b", json!({})),
            keep,
        ],
    )]);
    h.wait("p", "healthy", healthy).await;
    // Something the agent never applied, in the same namespace: never touched.
    h.patch_by_hand::<ConfigMap>(
        "p",
        "not-ours",
        &PatchParams::apply("someone-else"),
        Patch::Apply(configmap("p", "not-ours", json!({}))),
    )
    .await;

    h.set(&[app(
        "p",
        "r2",
        vec![namespace("p"), configmap("p", "a", json!({}))],
    )]);
    let s = h
        .wait("p", "healthy at r2", |s| s.revision == "r2" && healthy(s))
        .await;
    assert_eq!(counts(&s), (2, 2, 0, 0));
    assert!(
        h.live("v1", "ConfigMap", Some("p"), "b").is_none(),
        "pruned"
    );
    assert!(
        h.live("v1", "ConfigMap", Some("p"), "keep-me").is_some(),
        "annotation opt-out"
    );
    assert!(
        h.live("v1", "ConfigMap", Some("p"), "not-ours").is_some(),
        "not in the inventory"
    );
    let deletes: Vec<_> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].path, "/api/v1/namespaces/p/configmaps/b");
    let body: Value = serde_json::from_slice(&deletes[0].body).unwrap();
    assert_eq!(body["propagationPolicy"], "Background");

    // `prune: false` on the app: objects leaving the bundle stay.
    h.set(&[app("p", "r3", vec![namespace("p")]).with_options(|o| o.disable_prune = true)]);
    let s = h
        .wait("p", "healthy at r3", |s| s.revision == "r3" && healthy(s))
        .await;
    assert!(s.message.contains("prune disabled"), "{}", s.message);
    assert!(h.live("v1", "ConfigMap", Some("p"), "a").is_some());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pruning_survives_a_restart_with_an_empty_state_dir() {
    let mut h = Harness::plain().await;
    h.set(&[
        app(
            "one",
            "r1",
            vec![namespace("one"), configmap("one", "x", json!({}))],
        ),
        app(
            "two",
            "r1",
            vec![namespace("two"), configmap("two", "y", json!({}))],
        ),
    ]);
    h.wait("one", "healthy", healthy).await;
    h.wait("two", "healthy", healthy).await;
    let (sim, _old_dir) = h.stop().await;

    // A new agent process: same cluster, nothing on local disk. The new desired state drops
    // an object of `one` and the whole app `two`.
    let dir = tempfile::tempdir().unwrap();
    let bundles = BundleStore::new(dir.path());
    let mut h = Harness::start(sim, bundles, dir, config(), None).await;
    h.generation = 10;
    h.set(&[app("one", "r2", vec![namespace("one")])]);
    h.wait("one", "healthy at r2", |s| s.revision == "r2" && healthy(s))
        .await;
    tokio::time::timeout(DEADLINE, async {
        while h.live("v1", "Namespace", None, "two").is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the orphaned app `two` is pruned");
    assert!(h.live("v1", "ConfigMap", Some("one"), "x").is_none());
    assert!(h.live("v1", "ConfigMap", Some("two"), "y").is_none());
    assert!(
        h.live(
            "v1",
            "ConfigMap",
            Some("flotilla-system"),
            "flotilla-app-two"
        )
        .is_none()
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_workload_degrades_then_fails_at_its_health_timeout() {
    let mut h = Harness::plain().await;
    let objects = vec![namespace("bad"), failing(deployment("bad", "web", 2))];
    h.set(&[app("bad", "r1", objects).with_options(|o| o.health_timeout_ms = 300_000)]);
    let s = h
        .wait("bad", "degraded", |s| {
            s.health() == Health::Degraded && s.phase() == Phase::Applied
        })
        .await;
    assert_eq!(s.worst[0].reason, "ProgressDeadlineExceeded");
    let s = h
        .wait("bad", "failed", |s| s.phase() == Phase::Failed)
        .await;
    assert!(s.message.contains("not healthy within 5m"), "{}", s.message);
    assert!(s.message.contains("Deployment bad/web"), "{}", s.message);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn drift_is_healed_and_reported() {
    let mut h = Harness::plain().await;
    h.set(&[app(
        "d",
        "r1",
        vec![namespace("d"), deployment("d", "web", 2)],
    )]);
    h.wait("d", "healthy", healthy).await;
    // Someone scales it by hand (an Update: the field changes owner).
    h.patch_by_hand::<Deployment>(
        "d",
        "web",
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        },
        Patch::Merge(json!({"spec": {"replicas": 7}})),
    )
    .await;
    let s = h.wait("d", "healed", |s| s.healed == 1 && healthy(s)).await;
    assert_eq!(s.drifted, 0);
    let w = s.worst.iter().find(|w| w.name == "web").expect("named");
    assert_eq!(w.reason, "DriftHealed");
    assert_eq!(w.drifted_fields, [".spec.replicas"]);
    let web = h.live("apps/v1", "Deployment", Some("d"), "web").unwrap();
    assert_eq!(web["spec"]["replicas"], 2);
    // Drift was found by a dry-run apply.
    assert!(h.sim.requests().iter().any(|r| r.method == "PATCH"
        && r.param("dryRun").as_deref() == Some("All")
        && r.content_type.as_deref() == Some("application/apply-patch+yaml")));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_self_heal_off_drift_is_reported_not_fixed() {
    let mut h = Harness::plain().await;
    let objects = vec![namespace("d"), configmap("d", "c", json!({"k": "v"}))];
    h.set(&[app("d", "r1", objects).with_options(|o| o.disable_self_heal = true)]);
    h.wait("d", "healthy", healthy).await;
    h.patch_by_hand::<ConfigMap>(
        "d",
        "c",
        &PatchParams::default(),
        Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await;
    let s = h.wait("d", "drifted", |s| s.drifted == 1).await;
    assert_eq!(s.healed, 0);
    assert_eq!(s.worst[0].drifted_fields, [".data.k"]);
    assert!(s.message.contains("self-heal off"), "{}", s.message);
    let c = h.live("v1", "ConfigMap", Some("d"), "c").unwrap();
    assert_eq!(c["data"]["k"], "changed");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_app_waits_for_the_apps_it_depends_on() {
    let mut h = Harness::with_ready_delay(Duration::from_secs(30)).await;
    let infra = app(
        "infra",
        "r1",
        vec![namespace("infra"), deployment("infra", "db", 1)],
    );
    let mut web = app(
        "web",
        "r1",
        vec![namespace("web"), configmap("web", "c", json!({}))],
    );
    web.depends_on = vec!["infra".into()];
    h.set(&[web, infra]);
    let s = h
        .wait("web", "waiting", |s| {
            s.message.contains("waiting for app infra")
        })
        .await;
    assert_eq!(s.phase(), Phase::Applying);
    assert!(h.live("v1", "Namespace", None, "web").is_none());
    h.wait("web", "healthy", healthy).await;
    let infra = h.board.get("infra").unwrap();
    assert!(healthy(&infra));
    // The web namespace was created only after the database deployment was ready.
    let db = h
        .live("apps/v1", "Deployment", Some("infra"), "db")
        .unwrap();
    assert_eq!(db["status"]["readyReplicas"], 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn conflicts_fail_without_force_and_are_taken_with_it() {
    let mut h = Harness::plain().await;
    // Another tool applied the object first, with a different value.
    h.patch_by_hand::<ConfigMap>(
        "default",
        "shared",
        &PatchParams::apply("other-tool"),
        Patch::Apply(configmap("default", "shared", json!({"owner": "other"}))),
    )
    .await;
    h.set(&[app(
        "c",
        "r1",
        vec![configmap("default", "shared", json!({"owner": "flotilla"}))],
    )]);
    let s = h.wait("c", "failed", |s| s.phase() == Phase::Failed).await;
    assert_eq!(s.worst[0].reason, "ApplyConflict");
    assert!(
        s.worst[0].message.contains("other-tool"),
        "{}",
        s.worst[0].message
    );
    assert!(
        s.message.contains("1 of 1 objects failed to apply"),
        "{}",
        s.message
    );

    let objects = vec![configmap("default", "shared", json!({"owner": "flotilla"}))];
    h.set(&[app("c", "r2", objects).with_options(|o| o.force_conflicts = true)]);
    h.wait("c", "healthy", healthy).await;
    let live = h
        .live("v1", "ConfigMap", Some("default"), "shared")
        .unwrap();
    assert_eq!(live["data"]["owner"], "flotilla");
    let forced_req = h
        .sim
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH" && r.path.ends_with("/configmaps/shared"))
        .unwrap();
    assert_eq!(forced_req.param("force").as_deref(), Some("true"));
    assert_eq!(
        forced_req.param("fieldManager").as_deref(),
        Some("flotilla-agent")
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_bad_object_fails_alone() {
    let mut h = Harness::plain().await;
    let unknown = json!({"apiVersion": "nothere.example.com/v1", "kind": "Gadget",
                         "metadata": {"name": "g", "namespace": "m"}});
    h.set(&[app(
        "m",
        "r1",
        vec![namespace("m"), configmap("m", "good", json!({})), unknown],
    )]);
    let s = h.wait("m", "failed", |s| s.phase() == Phase::Failed).await;
    assert_eq!(counts(&s), (3, 2, 0, 1));
    assert_eq!(s.worst.len(), 1);
    assert_eq!(s.worst[0].kind, "Gadget");
    assert_eq!(s.worst[0].reason, "UnknownKind");
    assert!(h.live("v1", "ConfigMap", Some("m"), "good").is_some());
    h.stop().await;
}

/// A manifest a real API server refuses (a chart quoting `replicas`): the simulated one
/// refuses it too, the app fails with the server's own message, and the last revision stays
/// whole (the object keeps its spec, the object the new revision drops is not pruned).
#[tokio::test(start_paused = true)]
async fn an_object_the_api_server_refuses_fails_the_app_and_loses_nothing() {
    let mut h = Harness::plain().await;
    h.set(&[app(
        "shop",
        "r1",
        vec![
            namespace("shop"),
            deployment("shop", "web", 2),
            configmap("shop", "old", json!({"a": "1"})),
        ],
    )]);
    h.wait("shop", "healthy", healthy).await;

    let mut quoted = deployment("shop", "web", 3);
    quoted["spec"]["replicas"] = json!("3");
    h.set(&[app("shop", "r2", vec![namespace("shop"), quoted])]);
    let s = h
        .wait("shop", "failed", |s| s.phase() == Phase::Failed)
        .await;
    let refusal = "failed to create typed patch object (shop/web; apps/v1, Kind=Deployment): \
                   .spec.replicas: expected numeric (int or float), got string";
    assert!(s.message.contains(refusal), "{}", s.message);
    assert_eq!(counts(&s).3, 1);
    assert_eq!(s.worst[0].kind, "Deployment");
    assert_eq!(s.worst[0].reason, "ApplyFailed");
    assert!(s.worst[0].message.contains(refusal), "{:?}", s.worst[0]);

    let web = h
        .live("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert_eq!(web["spec"]["replicas"], 2, "r1's spec stays");
    assert!(
        h.live("v1", "ConfigMap", Some("shop"), "old").is_some(),
        "not pruned after a failed apply"
    );
    h.stop().await;
}
