//! Tests of the simulated cluster through `kube::Client`, so kube's real request and response
//! code runs against it. Time is paused: the status simulator's delays pass instantly.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, Status};
use kube::discovery::{self, Discovery, Scope};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::{SimCluster, SimConfig};

const DELAY: Duration = Duration::from_secs(2);

fn cluster(ready_delay: Duration) -> (SimCluster, Client) {
    let sim = SimCluster::new(SimConfig {
        ready_delay,
        record_requests: 10_000,
        ..SimConfig::default()
    });
    let client = sim.client();
    (sim, client)
}

fn deployment(name: &str, replicas: i64, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    })
}

fn apply_params(manager: &str) -> PatchParams {
    PatchParams::apply(manager)
}

async fn apply(
    api: &Api<Deployment>,
    name: &str,
    body: &Value,
    pp: &PatchParams,
) -> Result<Deployment, kube::Error> {
    api.patch(name, pp, &Patch::Apply(body)).await
}

/// Applies Deployment `web` with `replicas` and no labels as field manager `manager`.
async fn apply_web(api: &Api<Deployment>, replicas: i64, manager: &str) -> Deployment {
    let body = deployment("web", replicas, json!({}));
    apply(api, "web", &body, &apply_params(manager))
        .await
        .expect("apply web")
}

/// The API server's refusal of a call that must fail.
fn refused<T: std::fmt::Debug>(answer: Result<T, kube::Error>) -> Box<Status> {
    status(answer.expect_err("the API server should refuse this"))
}

fn status(err: kube::Error) -> Box<Status> {
    match err {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn generation(d: &Deployment) -> i64 {
    d.metadata.generation.unwrap()
}

fn rv(d: &Deployment) -> String {
    d.metadata.resource_version.clone().unwrap()
}

/// Which managers own `field` (a FieldsV1 path such as `["f:spec", "f:replicas"]`).
fn owners(d: &Deployment, field: &[&str]) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            let fields = serde_json::to_value(&e.fields_v1).unwrap();
            field.iter().try_fold(&fields, |v, k| v.get(*k)).is_some()
        })
        .map(|e| e.manager.clone().unwrap())
        .collect()
}

fn condition<'a>(conditions: &'a [Value], type_: &str) -> &'a Value {
    conditions
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

// === Discovery ===

#[tokio::test]
async fn version_and_discovery_of_built_ins() {
    let (_sim, client) = cluster(DELAY);
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(
        (v.major.as_str(), v.minor.as_str(), v.git_version.as_str()),
        ("1", "36", "v1.36.0-flotilla-simulated")
    );

    let gvk = GroupVersionKind::gvk("apps", "v1", "Deployment");
    let (ar, caps) = discovery::pinned_kind(&client, &gvk).await.unwrap();
    assert_eq!(ar.plural, "deployments");
    assert_eq!(ar.api_version, "apps/v1");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));

    let ns = GroupVersionKind::gvk("", "v1", "Namespace");
    let (ar, caps) = discovery::pinned_kind(&client, &ns).await.unwrap();
    assert_eq!(
        (ar.plural.as_str(), caps.scope),
        ("namespaces", Scope::Cluster)
    );

    for d in [
        Discovery::new(client.clone()).run().await.unwrap(),
        Discovery::new(client.clone())
            .run_aggregated()
            .await
            .unwrap(),
    ] {
        let (ar, _) = d
            .resolve_gvk(&GroupVersionKind::gvk(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
            ))
            .unwrap();
        assert_eq!(ar.plural, "clusterroles");
        assert!(
            d.resolve_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap"))
                .is_some()
        );
        assert!(
            d.resolve_gvk(&GroupVersionKind::gvk(
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler"
            ))
            .is_some()
        );
    }

    let err = discovery::pinned_kind(&client, &GroupVersionKind::gvk("nope.io", "v1", "X"))
        .await
        .unwrap_err();
    assert_eq!(status(err).code, 404);
}

/// The cluster's CustomResourceDefinitions.
fn crds(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    )
}

/// Applies the Widget CRD ([`crd`]) as field manager `manager`.
async fn apply_crd(crds: &Api<DynamicObject>, manager: &str) {
    crds.patch(
        "widgets.example.com",
        &apply_params(manager),
        &Patch::Apply(crd()),
    )
    .await
    .expect("apply the Widget CRD");
}

fn crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}},
            }],
        },
    })
}

#[tokio::test(start_paused = true)]
async fn crd_kinds_are_served_once_established_and_go_with_the_crd() {
    let (_sim, client) = cluster(DELAY);
    let crds = crds(&client);
    let mut misnamed = crd();
    misnamed["metadata"]["name"] = "widgets".into();
    let err = refused(
        crds.patch(
            "widgets",
            &apply_params("flotilla"),
            &Patch::Apply(misnamed),
        )
        .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    apply_crd(&crds, "flotilla").await;
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let err = discovery::pinned_kind(&client, &gvk).await.unwrap_err();
    assert_eq!(status(err).code, 404, "not served before it is Established");

    tokio::time::sleep(Duration::from_millis(150)).await;
    let crd = crds.get("widgets.example.com").await.unwrap();
    let conditions = crd.data["status"]["conditions"].as_array().unwrap().clone();
    assert_eq!(condition(&conditions, "Established")["status"], "True");
    assert_eq!(condition(&conditions, "NamesAccepted")["status"], "True");

    let (ar, caps) = discovery::pinned_kind(&client, &gvk).await.unwrap();
    assert_eq!(
        (ar.plural.as_str(), caps.scope),
        ("widgets", Scope::Namespaced)
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}, "status": {"ignored": true}});
    let created = widgets
        .patch("w1", &apply_params("flotilla"), &Patch::Apply(&w))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["size"], 3);
    assert!(
        created.data.get("status").is_none(),
        "status is a subresource"
    );
    assert_eq!(
        widgets.list(&Default::default()).await.unwrap().items.len(),
        1
    );

    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        refused(discovery::pinned_kind(&client, &gvk).await).code,
        404
    );
    let err = widgets.get("w1").await.unwrap_err();
    assert_eq!(status(err).code, 404);
}

// === Server-side apply ===

#[tokio::test]
async fn apply_creates_is_idempotent_and_removes_dropped_fields() {
    let (sim, client) = cluster(DELAY);
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let pp = apply_params("flotilla");
    let body = deployment("web", 2, json!({"a": "1", "b": "2"}));
    let d1 = apply(&api, "web", &body, &pp).await.unwrap();
    assert_eq!(generation(&d1), 1);
    let uid = d1.metadata.uid.clone().unwrap();
    assert_eq!(uid.len(), 36);
    assert!(d1.metadata.creation_timestamp.is_some());
    let entry = &d1.metadata.managed_fields.as_ref().unwrap()[0];
    assert_eq!(entry.manager.as_deref(), Some("flotilla"));
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    assert_eq!(entry.fields_type.as_deref(), Some("FieldsV1"));
    assert_eq!(owners(&d1, &["f:spec", "f:replicas"]), ["flotilla"]);
    assert_eq!(
        owners(&d1, &["f:metadata", "f:labels", "f:b"]),
        ["flotilla"]
    );

    // The same config again changes nothing.
    let d2 = apply(&api, "web", &body, &pp).await.unwrap();
    assert_eq!((generation(&d2), rv(&d2)), (1, rv(&d1)));

    // A label dropped from the config is removed; only metadata changed: generation holds.
    let d3 = apply(&api, "web", &deployment("web", 2, json!({"a": "1"})), &pp)
        .await
        .unwrap();
    let labels = d3.metadata.labels.clone().unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(generation(&d3), 1);
    assert_ne!(rv(&d3), rv(&d1));

    // A spec change moves the generation.
    let d4 = apply(&api, "web", &deployment("web", 3, json!({"a": "1"})), &pp)
        .await
        .unwrap();
    assert_eq!(generation(&d4), 2);
    assert_eq!(d4.metadata.uid.as_deref(), Some(uid.as_str()));

    let stored = sim
        .object("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert_eq!(stored["spec"]["replicas"], 3);
    assert!(sim.objects().iter().any(|o| o["metadata"]["name"] == "web"));
}

#[tokio::test]
async fn an_update_takes_ownership_and_a_later_apply_conflicts_until_forced() {
    let (_sim, client) = cluster(DELAY);
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let body = deployment("web", 2, json!({}));
    apply(&api, "web", &body, &apply_params("flotilla"))
        .await
        .unwrap();

    // Someone edits replicas by hand (an Update operation).
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    let edited = api
        .patch(
            "web",
            &edit,
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(owners(&edited, &["f:spec", "f:replicas"]), ["kubectl-edit"]);
    assert_eq!(generation(&edited), 2);

    // Re-applying the same config now conflicts on replicas only.
    let err = refused(apply(&api, "web", &body, &apply_params("flotilla")).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
    );
    let causes = err.details.unwrap().causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".spec.replicas");
    assert_eq!(
        causes[0].message,
        "conflict with \"kubectl-edit\" using apps/v1"
    );

    // Another manager applying the live value shares the field without conflict.
    let shared = deployment("web", 5, json!({}));
    apply(&api, "web", &shared, &apply_params("other"))
        .await
        .unwrap();

    // Forcing takes replicas over from both.
    let forced = apply(&api, "web", &body, &apply_params("flotilla").force())
        .await
        .unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(owners(&forced, &["f:spec", "f:replicas"]), ["flotilla"]);
}

#[tokio::test]
async fn several_conflicts_are_listed() {
    let (_sim, client) = cluster(DELAY);
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
    api.patch(
        "c",
        &apply_params("a"),
        &Patch::Apply(cm(json!({"x": "1", "y": "1"}))),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "c",
            &apply_params("b"),
            &Patch::Apply(cm(json!({"x": "2", "y": "2"}))),
        )
        .await
        .unwrap_err();
    assert_eq!(
        status(err).message,
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .data.x\n- .data.y"
    );
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let (sim, client) = cluster(DELAY);
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let live = apply_web(&api, 2, "flotilla").await;

    let dry = apply_params("other").dry_run().force();
    let answer = apply(&api, "web", &deployment("web", 7, json!({"x": "y"})), &dry)
        .await
        .unwrap();
    assert_eq!(answer.spec.as_ref().unwrap().replicas, Some(7));
    assert_eq!(generation(&answer), 2);
    let after = api.get("web").await.unwrap();
    assert_eq!(after.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!((generation(&after), rv(&after)), (1, rv(&live)));
    assert_eq!(after.metadata.managed_fields, live.metadata.managed_fields);

    // Nor does a dry-run create or delete.
    let created = apply(&api, "new", &deployment("new", 1, json!({})), &dry)
        .await
        .unwrap();
    assert_eq!(created.metadata.name.as_deref(), Some("new"));
    assert!(api.get_opt("new").await.unwrap().is_none());
    let dp = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    api.delete("web", &dp).await.unwrap();
    assert!(api.get_opt("web").await.unwrap().is_some());

    // The requests say what was asked.
    let patches: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    let last = patches.last().unwrap();
    assert_eq!(
        last.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        last.path,
        "/apis/apps/v1/namespaces/default/deployments/new"
    );
    assert_eq!(last.param("fieldManager").as_deref(), Some("other"));
    assert_eq!(last.param("force").as_deref(), Some("true"));
    assert_eq!(last.param("dryRun").as_deref(), Some("All"));
    assert_eq!(patches[0].param("dryRun"), None);
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["metadata"]["name"], "new");
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

// === Rules and errors ===

#[tokio::test]
async fn the_real_servers_rules_and_errors() {
    let (_sim, client) = cluster(DELAY);
    let one = |name: &str| deployment(name, 1, json!({}));
    let missing: Api<Deployment> = Api::namespaced(client.clone(), "nope");
    let err = refused(apply(&missing, "web", &one("web"), &apply_params("f")).await);
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, "namespaces \"nope\" not found")
    );

    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let err = refused(api.get("web").await);
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "deployments.apps \"web\" not found");

    let no_manager = PatchParams::default();
    let err = refused(apply(&api, "web", &one("web"), &no_manager).await);
    assert_eq!(
        (err.code, err.message.as_str()),
        (400, "fieldManager is required for apply requests")
    );

    let err = refused(apply(&api, "Web", &one("Web"), &apply_params("f")).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .starts_with("Deployment.apps \"Web\" is invalid: metadata.name"),
        "{}",
        err.message
    );

    let mut wrong = deployment("web", 1, json!({}));
    wrong["kind"] = "StatefulSet".into();
    let err = refused(apply(&api, "web", &wrong, &apply_params("f")).await);
    assert_eq!(err.code, 400);

    // Create, AlreadyExists, stale replace, status subresource.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c".into());
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let err = refused(cms.create(&PostParams::default(), &cm).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "v".to_string())].into());
    cms.replace("c", &PostParams::default(), &changed)
        .await
        .unwrap();
    let err = refused(cms.replace("c", &PostParams::default(), &changed).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("the object has been modified"),
        "{}",
        err.message
    );

    let d = apply_web(&api, 1, "f").await;
    let with_status = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 9}, "metadata": {"labels": {"l": "1"}}})),
        )
        .await
        .unwrap();
    assert_ne!(
        with_status.status.as_ref().unwrap().replicas,
        Some(9),
        "main writes keep status"
    );
    let st = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 9}, "spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().replicas, Some(9));
    assert_eq!(
        st.spec.unwrap().replicas,
        Some(1),
        "status writes change only status"
    );
    assert_eq!(st.metadata.generation, d.metadata.generation);

    let patched = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": null, "k2": "v2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().keys().collect::<Vec<_>>(), ["k2"]);

    // JSON patch (kube's `Patch::Json` needs a feature we do not build: send it raw); unknown
    // patch types are refused clearly.
    let raw = |content_type: &str, body: &str| {
        http::Request::patch("/api/v1/namespaces/default/configmaps/c?fieldManager=jp")
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let ops = r#"[{"op": "add", "path": "/data/k3", "value": "v3"}, {"op": "remove", "path": "/data/k2"}]"#;
    let patched: ConfigMap = client
        .request(raw("application/json-patch+json", ops))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().keys().collect::<Vec<_>>(), ["k3"]);
    let err = client
        .request::<ConfigMap>(raw("application/xml", "<x/>"))
        .await
        .unwrap_err();
    assert_eq!(status(err).code, 415);

    // Unknown resource in a known group/version.
    let unknown =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", "Gizmo"), "gizmos");
    let gizmos: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &unknown);
    assert_eq!(refused(gizmos.get("x").await).code, 404);
}

#[tokio::test]
async fn metadata_only_reads_and_no_watches() {
    let (_sim, client) = cluster(Duration::ZERO);
    let api: Api<Deployment> = Api::namespaced(client, "default");
    apply(
        &api,
        "web",
        &deployment("web", 1, json!({"a": "1"})),
        &apply_params("f"),
    )
    .await
    .unwrap();
    let meta = api.get_metadata("web").await.unwrap();
    assert_eq!(meta.metadata.labels.unwrap()["a"], "1");
    let list = api.list_metadata(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    // kube reads a watch answer as a stream of events; the refusal is its one item.
    let events = api.watch(&Default::default(), "0").await.unwrap();
    let first = futures::StreamExt::next(&mut std::pin::pin!(events)).await;
    let err = first.expect("one item").expect_err("watches are refused");
    assert_eq!(status(err).code, 405);
}

#[tokio::test]
async fn deleting_a_namespace_deletes_what_is_in_it() {
    let (sim, client) = cluster(Duration::ZERO);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team".into());
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let api: Api<Deployment> = Api::namespaced(client.clone(), "team");
    apply_web(&api, 1, "f").await;
    let other: Api<Deployment> = Api::namespaced(client.clone(), "default");
    apply_web(&other, 1, "f").await;

    let answer = namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    assert!(answer.is_right(), "a Status when deleted at once");
    assert!(namespaces.get_opt("team").await.unwrap().is_none());
    assert!(
        sim.object("apps/v1", "Deployment", Some("team"), "web")
            .is_none()
    );
    assert!(other.get_opt("web").await.unwrap().is_some());
    let err = refused(api.get("web").await);
    assert_eq!(err.code, 404);
    let err = refused(namespaces.delete("default", &DeleteParams::default()).await);
    assert_eq!(err.code, 403);
}

#[tokio::test]
async fn label_selectors_filter_lists() {
    let (_sim, client) = cluster(Duration::ZERO);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, tier) in [("a", "front"), ("b", "back"), ("c", "front")] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"tier": tier, "app": "x"}}});
        api.patch(name, &apply_params("f"), &Patch::Apply(cm))
            .await
            .unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect()
    };
    let lp = kube::api::ListParams::default().labels("tier=front,app");
    assert_eq!(names(api.list(&lp).await.unwrap()), ["a", "c"]);
    let all: Api<ConfigMap> = Api::all(client);
    assert_eq!(all.list(&Default::default()).await.unwrap().items.len(), 3);
}

// === Status simulator ===

#[tokio::test(start_paused = true)]
async fn a_deployment_becomes_ready_after_the_delay() {
    let (_sim, client) = cluster(DELAY);
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let d = apply_web(&api, 3, "flotilla").await;
    let st = d.status.unwrap();
    assert_eq!(
        (st.observed_generation, st.replicas, st.ready_replicas),
        (Some(1), Some(3), Some(0))
    );
    let progressing = &st.conditions.unwrap()[0];
    assert_eq!(
        (progressing.type_.as_str(), progressing.reason.as_deref()),
        ("Progressing", Some("ReplicaSetUpdated"))
    );

    tokio::time::sleep(DELAY / 2).await;
    let st = api.get("web").await.unwrap().status.unwrap();
    assert_eq!(st.ready_replicas, Some(0), "not before the delay");

    tokio::time::sleep(DELAY).await;
    let ready = api.get("web").await.unwrap();
    let st = ready.status.clone().unwrap();
    assert_eq!(
        (
            st.ready_replicas,
            st.available_replicas,
            st.updated_replicas
        ),
        (Some(3), Some(3), Some(3))
    );
    let conditions: Vec<Value> = serde_json::to_value(st.conditions.unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(condition(&conditions, "Available")["status"], "True");
    assert_eq!(
        condition(&conditions, "Progressing")["reason"],
        "NewReplicaSetAvailable"
    );
    // The simulator owns status through the status subresource, so spec applies never conflict.
    let entry = ready
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|e| e.manager.as_deref() == Some("flotilla-simulator"))
        .unwrap();
    assert_eq!(
        (entry.operation.as_deref(), entry.subresource.as_deref()),
        (Some("Update"), Some("status"))
    );

    // A spec change starts over; a settle for an old generation does nothing.
    apply_web(&api, 4, "flotilla").await;
    tokio::time::sleep(DELAY / 2).await;
    apply_web(&api, 5, "flotilla").await;
    tokio::time::sleep(DELAY * 3 / 4).await;
    let st = api.get("web").await.unwrap().status.unwrap();
    assert_eq!(
        (st.observed_generation, st.ready_replicas),
        (Some(3), Some(0))
    );
    tokio::time::sleep(DELAY).await;
    let st = api.get("web").await.unwrap().status.unwrap();
    assert_eq!(st.ready_replicas, Some(5));
}

#[tokio::test(start_paused = true)]
async fn a_deployment_annotated_to_fail_exceeds_its_deadline() {
    let (_sim, client) = cluster(DELAY);
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let mut body = deployment("web", 1, json!({}));
    body["metadata"]["annotations"] = json!({"flotilla.io/simulate": "fail"});
    apply(&api, "web", &body, &apply_params("flotilla"))
        .await
        .unwrap();
    tokio::time::sleep(DELAY * 2).await;
    let st = api.get("web").await.unwrap().status.unwrap();
    assert_eq!(st.ready_replicas, Some(0));
    let conditions: Vec<Value> = serde_json::to_value(st.conditions.unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let progressing = condition(&conditions, "Progressing");
    assert_eq!(
        (&progressing["status"], &progressing["reason"]),
        (&json!("False"), &json!("ProgressDeadlineExceeded"))
    );
    assert_eq!(
        progressing["message"],
        "ReplicaSet \"web-sim\" has timed out progressing (simulated failure)"
    );
    assert_eq!(condition(&conditions, "Available")["status"], "False");
}

#[tokio::test(start_paused = true)]
async fn a_job_completes() {
    let (_sim, client) = cluster(DELAY);
    let api: Api<Job> = Api::namespaced(client, "default");
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"completions": 2, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "m", "image": "busybox"}]}}}});
    let created = api
        .patch("migrate", &apply_params("flotilla"), &Patch::Apply(&job))
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().active, Some(1));
    tokio::time::sleep(DELAY + Duration::from_millis(1)).await;
    let st = api.get("migrate").await.unwrap().status.unwrap();
    assert_eq!((st.succeeded, st.active), (Some(2), Some(0)));
    assert!(st.completion_time.is_some());
    let complete = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Complete")
        .unwrap();
    assert_eq!(complete.status, "True");
}

#[tokio::test]
async fn with_no_delay_workloads_are_ready_at_once() {
    let (_sim, client) = cluster(Duration::ZERO);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = apply_web(&api, 2, "flotilla").await;
    assert_eq!(d.status.unwrap().ready_replicas, Some(2));
    let pods: Api<DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods"),
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let p = pods
        .patch("p", &apply_params("f"), &Patch::Apply(&pod))
        .await
        .unwrap();
    assert_eq!(p.data["status"]["phase"], "Running");
    assert_eq!(p.data["status"]["containerStatuses"][0]["ready"], true);
}

#[tokio::test]
async fn other_kinds_settle_as_their_controllers_would() {
    let (_sim, client) = cluster(Duration::ZERO);
    let dynamic = |group: &str, version: &str, kind: &str, plural: &str| {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        Api::<DynamicObject>::namespaced_with(client.clone(), "default", &ar)
    };
    let apply_dyn = async |api: &Api<DynamicObject>, body: Value| {
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(&name, &apply_params("f"), &Patch::Apply(&body))
            .await
            .unwrap()
            .data["status"]
            .clone()
    };
    let template = json!({"metadata": {"labels": {"app": "a"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});

    let sts = apply_dyn(
        &dynamic("apps", "v1", "StatefulSet", "statefulsets"),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "a"}},
                "template": template}}),
    )
    .await;
    assert_eq!(
        (&sts["readyReplicas"], &sts["updatedReplicas"]),
        (&json!(2), &json!(2))
    );
    assert_eq!(sts["currentRevision"], sts["updateRevision"]);

    let ds = apply_dyn(
        &dynamic("apps", "v1", "DaemonSet", "daemonsets"),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template}}),
    )
    .await;
    assert_eq!(
        (&ds["desiredNumberScheduled"], &ds["numberReady"]),
        (&json!(3), &json!(3))
    );

    let pvc = apply_dyn(
        &dynamic("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    assert_eq!(pvc["phase"], "Bound");

    let services = dynamic("", "v1", "Service", "services");
    let svc = |name: &str, type_: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": type_, "ports": [{"port": 80}]}})
    };
    let lb = apply_dyn(&services, svc("web", "LoadBalancer")).await;
    assert_eq!(lb["loadBalancer"]["ingress"][0]["ip"], "203.0.113.1");
    let plain = apply_dyn(&services, svc("internal", "ClusterIP")).await;
    assert!(plain.is_null(), "{plain}");

    // CRDs are established at once without a delay; a CR annotated to fail says so.
    let crds = crds(&client);
    apply_crd(&crds, "f").await;
    let widget = apply_dyn(
        &dynamic("example.com", "v1", "Widget", "widgets"),
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "annotations": {"flotilla.io/simulate": "fail"}}}),
    )
    .await;
    let ready = condition(widget["conditions"].as_array().unwrap(), "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("SimulatedFailure"))
    );
}
