//! The reconciler against the simulated cluster for `createNamespace`, Helm hooks and
//! `generateName`: what is created, in which order, what is deleted and when. Time is paused:
//! intervals and timeouts pass as soon as nothing else can run.

use std::time::Duration;

use flotilla_proto::state::{Health, Phase};
use flotilla_proto::v1::{AppDesired, AppOptions, AppStatus, DesiredState};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};

use super::namespace::CREATED_LABEL;
use super::objects::ObjKey;
use super::status::StatusBoard;
use super::{ReconcileConfig, Reconciler};
use crate::AgentStatus;
use crate::bundles::BundleStore;
use crate::sim::{RecordedRequest, SimCluster, SimConfig};

const DEADLINE: Duration = Duration::from_secs(3600);

struct App {
    name: &'static str,
    revision: &'static str,
    objects: Vec<Value>,
    options: AppOptions,
}

fn app(name: &'static str, revision: &'static str, objects: Vec<Value>) -> App {
    App {
        name,
        revision,
        objects,
        options: AppOptions::default(),
    }
}

/// `app` with `createNamespace: true` for `ns`.
fn creating(ns: &str, mut a: App) -> App {
    a.options.create_namespace = true;
    a.options.namespace = ns.into();
    a
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

impl Harness {
    async fn new() -> Self {
        Self::with_sim(SimConfig::default()).await
    }

    /// On a simulated cluster configured by `cfg` (recording every request).
    async fn with_sim(cfg: SimConfig) -> Self {
        let sim = SimCluster::new(SimConfig {
            record_requests: 100_000,
            ..cfg
        });
        let dir = tempfile::tempdir().unwrap();
        let bundles = BundleStore::new(dir.path());
        Self::start(sim, bundles, dir, None)
    }

    fn start(
        sim: SimCluster,
        bundles: BundleStore,
        dir: tempfile::TempDir,
        initial: Option<DesiredState>,
    ) -> Self {
        let generation = initial.as_ref().map(|d| d.generation).unwrap_or(0);
        let (desired, desired_rx) = watch::channel(initial);
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let board = StatusBoard::default();
        let (stop, stop_rx) = watch::channel(false);
        let cfg = ReconcileConfig {
            backend: "simulated",
            ..ReconcileConfig::default()
        };
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

    /// Stops this reconciler and starts a new one on the same cluster and bundle cache, from
    /// the desired state saved on disk (an agent restart).
    async fn restart(self) -> Self {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        let initial = self.bundles.load_desired();
        Self::start(self.sim, self.bundles, self._dir, initial)
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
                    options: Some(a.options.clone()),
                    ..Default::default()
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

    /// Waits until the agent's status, at the current generation, satisfies `ok`.
    async fn wait_until(&mut self, what: &str, ok: impl Fn(&AgentStatus) -> bool) {
        let generation = self.generation;
        let waited = tokio::time::timeout(
            DEADLINE,
            self.status
                .wait_for(|s| s.reconciled_generation == generation && ok(s)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !waited {
            panic!("never {what}; statuses: {:#?}", self.status.borrow().apps);
        }
    }

    /// Waits until `app`'s status satisfies `ok` and returns it.
    async fn wait(&mut self, app: &str, what: &str, ok: impl Fn(&AppStatus) -> bool) -> AppStatus {
        self.wait_until(&format!("{app} {what}"), |s| {
            s.apps.iter().any(|a| a.app == app && ok(a))
        })
        .await;
        let s = self.status.borrow();
        s.apps.iter().find(|a| a.app == app).unwrap().clone()
    }

    /// Waits until `app` was removed (its removal reported).
    async fn wait_removed(&mut self, app: &str) -> AppStatus {
        self.wait_until(&format!("{app} removed"), |s| {
            !s.apps.iter().any(|a| a.app == app)
        })
        .await;
        let s = self.board.get(app).expect("the removal is on the board");
        assert_eq!(s.phase(), Phase::Removed);
        s
    }

    fn live(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        self.sim.object(api_version, kind, ns, name)
    }

    fn namespace(&self, name: &str) -> Option<Value> {
        self.live("v1", "Namespace", None, name)
    }

    /// The app's inventory ConfigMap data.
    fn inventory(&self, app: &str) -> Option<Value> {
        self.live(
            "v1",
            "ConfigMap",
            Some("flotilla-system"),
            &format!("flotilla-app-{app}"),
        )
        .map(|cm| cm["data"].clone())
    }

    /// Applies `obj` as another tool would (field manager `someone-else`, taking over fields).
    async fn apply_by_hand(&self, obj: Value) {
        let key = ObjKey::of(&obj).unwrap();
        let (group, version) = key.group_version();
        let gvk = GroupVersionKind::gvk(group, version, &key.kind);
        let client = self.sim.client();
        let (ar, caps) = pinned_kind(&client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            Api::namespaced_with(client, &key.namespace, &ar)
        } else {
            Api::all_with(client, &ar)
        };
        api.patch(
            &key.name,
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        self.sim.requests()
    }
}

fn configmap(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns}, "data": {"a": "1"}})
}

fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}}}})
}

/// A hook Job `name` in `ns` with the given `helm.sh/*` annotations.
fn hook_job(ns: &str, name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": ns, "annotations": annotations},
           "spec": {"backoffLimit": 0,
                    "template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "m", "image": "busybox"}]}}}})
}

fn healthy(s: &AppStatus) -> bool {
    s.phase() == Phase::Applied && s.health() == Health::Healthy
}

fn index_of(
    reqs: &[RecordedRequest],
    what: &str,
    pred: impl Fn(&RecordedRequest) -> bool,
) -> usize {
    reqs.iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no request {what}"))
}

fn is_write(r: &RecordedRequest, path: &str) -> bool {
    (r.method == "PATCH" || r.method == "POST") && r.path == path
}

// === createNamespace ===

#[tokio::test(start_paused = true)]
async fn a_created_namespace_is_recorded_and_deleted_with_the_app() {
    let mut h = Harness::new().await;
    h.set(&[creating(
        "guestbook",
        app("gb", "r1", vec![configmap("guestbook", "ui")]),
    )]);
    h.wait("gb", "healthy", healthy).await;
    let ns = h.namespace("guestbook").expect("created");
    assert_eq!(ns["metadata"]["labels"][CREATED_LABEL], "true");
    let inv = h.inventory("gb").unwrap();
    assert_eq!(inv["namespaces"], r#"["guestbook"]"#);
    let reqs = h.requests();
    let ns_apply = index_of(&reqs, "creating the namespace", |r| {
        is_write(r, "/api/v1/namespaces/guestbook")
    });
    let cm_apply = index_of(&reqs, "applying the ConfigMap", |r| {
        is_write(r, "/api/v1/namespaces/guestbook/configmaps/ui")
    });
    assert!(ns_apply < cm_apply);

    // Another revision keeps it; removing the app deletes it.
    h.set(&[creating(
        "guestbook",
        app("gb", "r2", vec![configmap("guestbook", "ui2")]),
    )]);
    h.wait("gb", "healthy at r2", |s| s.revision == "r2" && healthy(s))
        .await;
    assert!(h.namespace("guestbook").is_some());
    h.set(&[]);
    let s = h.wait_removed("gb").await;
    assert_eq!(s.message, "no longer desired; objects pruned");
    assert!(h.namespace("guestbook").is_none(), "deleted with the app");
    assert!(h.inventory("gb").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_namespace_holding_a_foreign_object_is_kept_and_the_reason_shows() {
    let mut h = Harness::new().await;
    h.set(&[creating(
        "shop",
        app("shop", "r1", vec![configmap("shop", "settings")]),
    )]);
    h.wait("shop", "healthy", healthy).await;
    h.apply_by_hand(configmap("shop", "not-ours")).await;
    h.set(&[]);
    let s = h.wait_removed("shop").await;
    assert!(
        s.message.contains(
            "namespace shop kept: it holds 1 objects Flotilla did not apply (ConfigMap not-ours)"
        ),
        "{}",
        s.message
    );
    assert!(h.namespace("shop").is_some(), "not deleted");
    assert!(
        h.live("v1", "ConfigMap", Some("shop"), "not-ours")
            .is_some()
    );
    assert!(
        h.live("v1", "ConfigMap", Some("shop"), "settings")
            .is_none(),
        "the app's own objects were pruned"
    );
    // Still recorded, so a later removal (after a restart) tries again.
    assert_eq!(h.inventory("shop").unwrap()["namespaces"], r#"["shop"]"#);
}

#[tokio::test(start_paused = true)]
async fn a_namespace_that_existed_before_is_never_recorded_nor_deleted() {
    let mut h = Harness::new().await;
    h.apply_by_hand(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}))
        .await;
    h.set(&[creating(
        "team",
        app("t", "r1", vec![configmap("team", "c")]),
    )]);
    h.wait("t", "healthy", healthy).await;
    assert!(h.inventory("t").unwrap().get("namespaces").is_none());
    let ns = h.namespace("team").unwrap();
    assert!(ns["metadata"]["labels"].get(CREATED_LABEL).is_none());
    h.set(&[]);
    h.wait_removed("t").await;
    assert!(h.namespace("team").is_some(), "never deleted");
    assert!(h.live("v1", "ConfigMap", Some("team"), "c").is_none());
}

#[tokio::test(start_paused = true)]
async fn two_apps_share_a_created_namespace_until_the_last_one_goes() {
    let mut h = Harness::new().await;
    let a = || creating("shared", app("a", "r1", vec![configmap("shared", "a")]));
    let b = || creating("shared", app("b", "r1", vec![configmap("shared", "b")]));
    h.set(&[a(), b()]);
    h.wait("a", "healthy", healthy).await;
    h.wait("b", "healthy", healthy).await;
    for app in ["a", "b"] {
        assert_eq!(
            h.inventory(app).unwrap()["namespaces"],
            r#"["shared"]"#,
            "{app}"
        );
    }
    h.set(&[b()]);
    h.wait_removed("a").await;
    assert!(h.namespace("shared").is_some(), "b still uses it");
    assert!(h.live("v1", "ConfigMap", Some("shared"), "b").is_some());
    h.set(&[]);
    h.wait_removed("b").await;
    assert!(
        h.namespace("shared").is_none(),
        "the last app took it along"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_namespace_fails_with_the_servers_message_and_a_hint() {
    let mut h = Harness::new().await;
    h.set(&[app("gb", "r1", vec![configmap("guestbook", "ui")])]);
    let s = h.wait("gb", "failed", |s| s.phase() == Phase::Failed).await;
    assert!(
        s.message.contains(
            r#"namespaces "guestbook" not found (set `createNamespace: true` on the app to have Flotilla create it)"#
        ),
        "{}",
        s.message
    );
}

// === Helm hooks ===

#[tokio::test(start_paused = true)]
async fn a_pre_install_hook_completes_before_the_rest_is_applied() {
    let mut h = Harness::new().await;
    h.set(&[creating(
        "shop",
        app(
            "shop",
            "r1",
            vec![
                deployment("shop", "web", 2),
                hook_job("shop", "migrate", json!({"helm.sh/hook": "pre-install"})),
                // Not an install hook: never applied now.
                hook_job(
                    "shop",
                    "upgrade-only",
                    json!({"helm.sh/hook": "pre-upgrade"}),
                ),
            ],
        ),
    )]);
    let s = h.wait("shop", "healthy", healthy).await;
    assert_eq!(s.objects.unwrap().total, 1, "hooks are not desired objects");
    let job = h
        .live("batch/v1", "Job", Some("shop"), "migrate")
        .expect("kept (before-hook-creation only)");
    let complete = job["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Complete" && c["status"] == "True");
    assert!(complete);
    let reqs = h.requests();
    let job_path = "/apis/batch/v1/namespaces/shop/jobs/migrate";
    let created = index_of(&reqs, "applying the hook", |r| is_write(r, job_path));
    let deploy = index_of(&reqs, "applying the Deployment", |r| {
        is_write(r, "/apis/apps/v1/namespaces/shop/deployments/web")
    });
    assert!(created < deploy);
    assert!(
        reqs[created..deploy]
            .iter()
            .filter(|r| r.method == "GET" && r.path == job_path)
            .count()
            >= 2,
        "the agent read the Job until it was Complete"
    );
    assert!(!reqs.iter().any(|r| r.path.ends_with("/upgrade-only")));
    // Recorded, so that removing the app deletes it.
    let hooks: Value =
        serde_json::from_str(h.inventory("shop").unwrap()["hooks"].as_str().unwrap()).unwrap();
    assert_eq!(
        hooks["done"],
        json!(["pre", "post"]),
        "post had nothing to run"
    );
    assert_eq!(hooks["install"], true);
    assert_eq!(hooks["created"][0]["name"], "migrate");
    h.set(&[]);
    h.wait_removed("shop").await;
    assert!(h.live("batch/v1", "Job", Some("shop"), "migrate").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failed_pre_upgrade_hook_fails_the_revision_and_leaves_the_previous_one() {
    let mut h = Harness::new().await;
    h.set(&[creating(
        "shop",
        app("shop", "r1", vec![deployment("shop", "web", 1)]),
    )]);
    h.wait("shop", "healthy", healthy).await;
    let mut failing = hook_job("shop", "migrate", json!({"helm.sh/hook": "pre-upgrade"}));
    failing["metadata"]["annotations"]["flotilla.io/simulate"] = "fail".into();
    h.set(&[creating(
        "shop",
        app(
            "shop",
            "r2",
            vec![
                deployment("shop", "web", 3),
                configmap("shop", "new"),
                failing,
                hook_job("shop", "first-time", json!({"helm.sh/hook": "pre-install"})),
            ],
        ),
    )]);
    let s = h
        .wait("shop", "failed at r2", |s| {
            s.revision == "r2" && s.phase() == Phase::Failed
        })
        .await;
    assert_eq!(s.health(), Health::Degraded);
    assert_eq!(
        s.message,
        "pre-upgrade hook Job shop/migrate failed: BackoffLimitExceeded: Job has reached the \
         specified backoff limit; nothing else of revision r2 was applied"
    );
    let web = h
        .live("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert_eq!(
        web["spec"]["replicas"], 1,
        "the previous revision is untouched"
    );
    assert!(h.live("v1", "ConfigMap", Some("shop"), "new").is_none());
    assert!(
        h.live("batch/v1", "Job", Some("shop"), "first-time")
            .is_none(),
        "not an install"
    );
    assert_eq!(h.inventory("shop").unwrap()["revision"], "r1");

    // It stays failed, across a restart too, without running the hook again.
    let posts = |h: &Harness| {
        h.requests()
            .iter()
            .filter(|r| is_write(r, "/apis/batch/v1/namespaces/shop/jobs/migrate"))
            .count()
    };
    assert_eq!(posts(&h), 1);
    let mut h = h.restart().await;
    h.wait("shop", "failed after a restart", |s| {
        s.revision == "r2" && s.phase() == Phase::Failed && s.message.contains("pre-upgrade hook")
    })
    .await;
    assert_eq!(posts(&h), 1);
}

#[tokio::test(start_paused = true)]
async fn test_hooks_are_never_applied() {
    let mut h = Harness::new().await;
    let test_pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "smoke", "namespace": "default",
                     "annotations": {"helm.sh/hook": "test"}},
        "spec": {"containers": [{"name": "t", "image": "busybox"}]}});
    let test_success = hook_job(
        "default",
        "legacy-test",
        json!({"helm.sh/hook": "test-success"}),
    );
    h.set(&[app(
        "t",
        "r1",
        vec![configmap("default", "c"), test_pod, test_success],
    )]);
    let s = h.wait("t", "healthy", healthy).await;
    assert_eq!(s.objects.unwrap().total, 1);
    assert!(
        !h.requests()
            .iter()
            .any(|r| r.path.ends_with("/smoke") || r.path.ends_with("/legacy-test"))
    );
    assert!(h.live("v1", "Pod", Some("default"), "smoke").is_none());
}

#[tokio::test(start_paused = true)]
async fn hook_succeeded_deletes_the_hook_and_before_hook_creation_replaces_it() {
    let mut h = Harness::new().await;
    let bundle = |rev: &'static str| {
        app(
            "a",
            rev,
            vec![
                configmap("default", rev),
                hook_job(
                    "default",
                    "cleanup",
                    json!({"helm.sh/hook": "post-install,post-upgrade",
                           "helm.sh/hook-delete-policy": "hook-succeeded"}),
                ),
                hook_job(
                    "default",
                    "migrate",
                    json!({"helm.sh/hook": "pre-install,pre-upgrade",
                           "helm.sh/hook-delete-policy": "before-hook-creation"}),
                ),
            ],
        )
    };
    h.set(&[bundle("r1")]);
    h.wait("a", "healthy", healthy).await;
    let reqs = h.requests();
    let cleanup = "/apis/batch/v1/namespaces/default/jobs/cleanup";
    let created = index_of(&reqs, "running the post hook", |r| is_write(r, cleanup));
    let cm = index_of(&reqs, "applying r1", |r| {
        is_write(r, "/api/v1/namespaces/default/configmaps/r1")
    });
    assert!(cm < created, "post-install runs after the rest");
    assert!(
        reqs[created..]
            .iter()
            .any(|r| r.method == "DELETE" && r.path == cleanup),
        "deleted once it succeeded"
    );
    assert!(
        h.live("batch/v1", "Job", Some("default"), "cleanup")
            .is_none()
    );
    let first = h
        .live("batch/v1", "Job", Some("default"), "migrate")
        .unwrap();

    h.set(&[bundle("r2")]);
    h.wait("a", "healthy at r2", |s| s.revision == "r2" && healthy(s))
        .await;
    let second = h
        .live("batch/v1", "Job", Some("default"), "migrate")
        .unwrap();
    assert_ne!(
        first["metadata"]["uid"], second["metadata"]["uid"],
        "the previous instance was deleted and the hook created again"
    );
    let hooks: Value =
        serde_json::from_str(h.inventory("a").unwrap()["hooks"].as_str().unwrap()).unwrap();
    assert_eq!(hooks["install"], Value::Null, "r2 was an upgrade");
    assert_eq!(hooks["done"], json!(["pre", "post"]));
    assert_eq!(
        hooks["created"].as_array().unwrap().len(),
        1,
        "only migrate stays"
    );
}

#[tokio::test(start_paused = true)]
async fn a_generate_name_hook_is_created_with_post_and_removed_with_the_app() {
    let mut h = Harness::new().await;
    let mut hook = hook_job("default", "", json!({"helm.sh/hook": "pre-install"}));
    hook["metadata"] = json!({"generateName": "migrate-", "namespace": "default",
                              "annotations": {"helm.sh/hook": "pre-install"}});
    h.set(&[app("g", "r1", vec![configmap("default", "c"), hook])]);
    h.wait("g", "healthy", healthy).await;
    let reqs = h.requests();
    let post = index_of(&reqs, "POSTing the hook", |r| {
        r.method == "POST" && r.path == "/apis/batch/v1/namespaces/default/jobs"
    });
    assert_eq!(
        reqs[post].param("fieldManager").as_deref(),
        Some("flotilla-agent")
    );
    let jobs: Vec<String> = h
        .sim
        .objects()
        .into_iter()
        .filter(|o| o["kind"] == "Job")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(jobs.len(), 1);
    assert!(
        jobs[0].starts_with("migrate-") && jobs[0].len() > "migrate-".len(),
        "{jobs:?}"
    );
    h.set(&[]);
    h.wait_removed("g").await;
    assert!(
        h.live("batch/v1", "Job", Some("default"), &jobs[0])
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_generate_name_object_that_is_not_a_hook_is_refused() {
    let mut h = Harness::new().await;
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": "migrate-", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "busybox"}]}}}});
    h.set(&[app("g", "r1", vec![configmap("default", "c"), job])]);
    let s = h.wait("g", "failed", |s| s.phase() == Phase::Failed).await;
    assert_eq!(
        s.message,
        "bundle unreadable: bundle object #1 (Job with generateName \"migrate-\") has no \
         metadata.name and is not a Helm hook: applying it would create a new object at every \
         reconcile"
    );
    assert!(!h.requests().iter().any(|r| r.method == "POST"));
}

#[tokio::test(start_paused = true)]
async fn hooks_run_once_per_revision_not_at_drift_checks_or_restarts() {
    let mut h = Harness::new().await;
    h.set(&[app(
        "a",
        "r1",
        vec![
            configmap("default", "c"),
            hook_job(
                "default",
                "pre",
                json!({"helm.sh/hook": "pre-install,pre-upgrade"}),
            ),
            hook_job(
                "default",
                "post",
                json!({"helm.sh/hook": "post-install,post-upgrade"}),
            ),
        ],
    )]);
    h.wait("a", "healthy", healthy).await;
    let runs = |h: &Harness| {
        h.requests()
            .iter()
            .filter(|r| {
                r.method == "PATCH"
                    && r.path
                        .starts_with("/apis/batch/v1/namespaces/default/jobs/")
            })
            .count()
    };
    assert_eq!(runs(&h), 2);
    // A drift check that heals a changed object.
    h.apply_by_hand(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "default"}, "data": {"a": "2"}}))
        .await;
    h.wait("a", "healed", |s| s.healed > 0 && healthy(s)).await;
    assert_eq!(runs(&h), 2, "a drift pass runs no hook");
    let mut h = h.restart().await;
    // Healthy means the post stage was looked at (it is pending until then).
    h.wait("a", "healthy after a restart", healthy).await;
    assert_eq!(runs(&h), 2, "a restart runs no hook for the same revision");
}

#[tokio::test(start_paused = true)]
async fn a_failed_post_install_hook_fails_the_revision_after_its_objects_applied() {
    let mut h = Harness::new().await;
    let mut check = hook_job(
        "default",
        "check",
        json!({"helm.sh/hook": "post-install",
        "helm.sh/hook-delete-policy": "hook-failed"}),
    );
    check["metadata"]["annotations"]["flotilla.io/simulate"] = "fail".into();
    h.set(&[app("a", "r1", vec![configmap("default", "c"), check])]);
    let s = h.wait("a", "failed", |s| s.phase() == Phase::Failed).await;
    assert_eq!(s.health(), Health::Degraded);
    assert_eq!(
        s.message,
        "post-install hook Job default/check failed: BackoffLimitExceeded: Job has reached the \
         specified backoff limit"
    );
    assert!(
        h.live("v1", "ConfigMap", Some("default"), "c").is_some(),
        "applied before"
    );
    assert!(
        h.live("batch/v1", "Job", Some("default"), "check")
            .is_none(),
        "hook-failed deleted it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hook_not_done_within_the_health_timeout_fails_the_revision() {
    // Jobs take an hour here; the app allows a minute.
    let mut h = Harness::with_sim(SimConfig {
        ready_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await;
    let mut a = app(
        "a",
        "r1",
        vec![
            configmap("default", "c"),
            hook_job("default", "slow", json!({"helm.sh/hook": "pre-install"})),
        ],
    );
    a.options.health_timeout_ms = 60_000;
    h.set(&[a]);
    let s = h
        .wait("a", "running the hook", |s| {
            s.phase() == Phase::Applying && s.message.starts_with("running")
        })
        .await;
    assert!(
        s.message
            .starts_with("running pre-install hook Job default/slow (1 of 1)"),
        "{}",
        s.message
    );
    let s = h.wait("a", "failed", |s| s.phase() == Phase::Failed).await;
    assert!(
        s.message
            .starts_with("pre-install hook Job default/slow failed: not done within 1m"),
        "{}",
        s.message
    );
    assert!(
        h.live("v1", "ConfigMap", Some("default"), "c").is_none(),
        "nothing else applied"
    );
}
