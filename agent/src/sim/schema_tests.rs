//! Tests of the simulated cluster's schema validation through `kube::Client`: each write path
//! refuses what a real API server refuses, with its code, reason and message, stores nothing
//! it refused, and drops unknown fields under `fieldValidation=Warn` / `Ignore`.

use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams, ValidationDirective,
};
use kube::core::{ApiResource, Status};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::{SimCluster, SimConfig};

/// A cluster whose objects settle at once (CRDs are Established when applied).
fn cluster() -> (SimCluster, Client) {
    let sim = SimCluster::new(SimConfig {
        ready_delay: std::time::Duration::ZERO,
        ..SimConfig::default()
    });
    let client = sim.client();
    (sim, client)
}

fn deployment(replicas: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    })
}

fn refused<T: std::fmt::Debug>(answer: Result<T, kube::Error>) -> Box<Status> {
    match answer.expect_err("the API server should refuse this") {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn stored_replicas(sim: &SimCluster) -> Option<Value> {
    sim.object("apps/v1", "Deployment", Some("default"), "web")
        .map(|d| d["spec"]["replicas"].clone())
}

/// A request sent as is; the answer's code, `Warning` headers and body.
async fn send(
    client: &Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Vec<String>, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(kube::client::Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let res = client.send(req).await.unwrap();
    let code = res.status().as_u16();
    let warnings = res
        .headers()
        .get_all(http::header::WARNING)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (code, warnings, serde_json::from_slice(&bytes).unwrap())
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

#[tokio::test]
async fn create_and_replace_with_a_wrong_type_are_bad_requests() {
    let (sim, client) = cluster();
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let body: Deployment = serde_json::from_value(deployment(json!(2))).unwrap();
    // kube's typed API cannot even send a string replica count: send it raw.
    let mut wrong = deployment(json!("2"));
    let (code, _, answer) = send(&client, "POST", DEPLOYMENTS, "application/json", &wrong).await;
    assert_eq!(code, 400);
    assert_eq!(answer["reason"], "BadRequest");
    assert_eq!(
        answer["message"],
        "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
    );
    assert!(answer.get("details").is_none(), "{answer}");
    assert_eq!(stored_replicas(&sim), None, "nothing stored");

    // An object where a list belongs, deep in the template.
    wrong = deployment(json!(2));
    wrong["spec"]["template"]["spec"]["containers"] = json!({"name": "app"});
    let (code, _, answer) = send(&client, "POST", DEPLOYMENTS, "application/json", &wrong).await;
    assert_eq!(code, 400);
    assert_eq!(
        answer["message"],
        "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal object into Go struct field PodSpec.spec.template.spec.containers of type []v1.Container"
    );

    // A replace with a wrong type changes nothing.
    api.create(&PostParams::default(), &body).await.unwrap();
    let mut wrong = deployment(json!(2));
    wrong["metadata"]["labels"] = json!({"tier": 1});
    let (code, _, answer) = send(
        &client,
        "PUT",
        &format!("{DEPLOYMENTS}/web"),
        "application/json",
        &wrong,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        answer["message"],
        "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels of type string"
    );
    let live = sim
        .object("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert!(live["metadata"].get("labels").is_none(), "{live}");
}

#[tokio::test]
async fn formats_the_decoder_checks_are_refused_too() {
    let (_sim, client) = cluster();
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "s"}, "data": {"key": "hello!"}});
    let (code, _, answer) = send(
        &client,
        "POST",
        "/api/v1/namespaces/default/secrets",
        "application/json",
        &secret,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        answer["message"],
        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 5"
    );

    let mut d = deployment(json!(1));
    d["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"limits": {"cpu": "1 core"}});
    let (code, _, answer) = send(&client, "POST", DEPLOYMENTS, "application/json", &d).await;
    assert_eq!(code, 400);
    assert_eq!(
        answer["message"],
        "Deployment in version \"v1\" cannot be handled as a Deployment: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    );
    // Numbers are quantities too, and int-or-string takes both.
    d["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"limits": {"cpu": 1, "memory": "128Mi"}});
    d["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}});
    let (code, _, answer) = send(&client, "POST", DEPLOYMENTS, "application/json", &d).await;
    assert_eq!(code, 201, "{answer}");
}

#[tokio::test]
async fn unknown_fields_follow_field_validation() {
    let (sim, client) = cluster();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "colour": "red"},
               "data": {"a": "1"}, "extra": {"x": 1}})
    };
    // kube's typed ConfigMap would drop unknown fields itself: send them raw.
    let uri = "/api/v1/namespaces/default/configmaps";

    // Strict (kubectl's default): refused, every unknown field named.
    let (code, _, answer) = send(
        &client,
        "POST",
        &format!("{uri}?fieldValidation=Strict"),
        "application/json",
        &cm("strict"),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        answer["message"],
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"extra\", unknown field \"metadata.colour\""
    );
    assert!(api.get_opt("strict").await.unwrap().is_none());

    // Warn (the default): stored without them, one warning each.
    let (code, warnings, answer) =
        send(&client, "POST", uri, "application/json", &cm("warned")).await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(
        warnings,
        [
            r#"299 - "unknown field \"extra\"""#,
            r#"299 - "unknown field \"metadata.colour\"""#
        ]
    );
    let live = sim
        .object("v1", "ConfigMap", Some("default"), "warned")
        .unwrap();
    assert!(live.get("extra").is_none() && live["metadata"].get("colour").is_none());
    assert_eq!(live["data"]["a"], "1");

    // Ignore: stored without them, silently.
    let (code, warnings, _) = send(
        &client,
        "POST",
        &format!("{uri}?fieldValidation=Ignore"),
        "application/json",
        &cm("ignored"),
    )
    .await;
    assert_eq!((code, warnings.len()), (201, 0));
    assert!(
        sim.object("v1", "ConfigMap", Some("default"), "ignored")
            .unwrap()
            .get("extra")
            .is_none()
    );

    let (code, _, answer) = send(
        &client,
        "POST",
        &format!("{uri}?fieldValidation=Loose"),
        "application/json",
        &cm("bad"),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("fieldValidation: Unsupported value: \"Loose\""),
        "{answer}"
    );
    // A clean object passes Strict.
    let clean = json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "clean"}, "data": {"a": "1"}});
    let (code, warnings, _) = send(
        &client,
        "POST",
        &format!("{uri}?fieldValidation=Strict"),
        "application/json",
        &clean,
    )
    .await;
    assert_eq!((code, warnings.len()), (201, 0));
}

#[tokio::test]
async fn apply_refuses_what_does_not_type_with_a_500() {
    let (sim, client) = cluster();
    let api: Api<Deployment> = Api::default_namespaced(client);
    let pp = PatchParams::apply("test");
    let s = refused(
        api.patch("web", &pp, &Patch::Apply(deployment(json!("2"))))
            .await,
    );
    // structuredmerge.go returns a plain error: 500, no reason.
    assert_eq!(s.code, 500);
    assert_eq!(s.reason, "");
    assert_eq!(
        s.message,
        "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): .spec.replicas: expected numeric (int or float), got string"
    );
    assert_eq!(stored_replicas(&sim), None, "nothing stored");

    api.patch("web", &pp, &Patch::Apply(deployment(json!(2))))
        .await
        .unwrap();
    // Several errors, unknown fields among them whatever fieldValidation says.
    let mut wrong = deployment(json!(3));
    wrong["spec"]["paused"] = json!("yes");
    wrong["spec"]["template"]["spec"]["containers"][0]["image"] = json!(5);
    wrong["spec"]["replica"] = json!(3);
    let ignore = PatchParams {
        field_validation: Some(ValidationDirective::Ignore),
        ..pp.clone()
    };
    let s = refused(api.patch("web", &ignore, &Patch::Apply(&wrong)).await);
    assert_eq!(s.code, 500);
    assert_eq!(
        s.message,
        "failed to create typed patch object (default/web; apps/v1, Kind=Deployment): errors:\n  .spec.paused: expected boolean, got &{yes}\n  .spec.replica: field not declared in schema\n  .spec.template.spec.containers[0].image: expected string, got &value.valueUnstructured{Value:5}"
    );
    // What types but does not convert fails after the merge.
    let s = refused(
        api.patch("web", &pp, &Patch::Apply(deployment(json!(2.5))))
            .await,
    );
    assert_eq!(s.code, 500);
    assert_eq!(
        s.message,
        "failed to convert new object (default/web; apps/v1, Kind=Deployment) to proper version: cannot convert float64 to int32"
    );
    // A refused apply loses nothing.
    assert_eq!(stored_replicas(&sim), Some(json!(2)));
}

#[tokio::test]
async fn patches_are_checked_once_merged_with_a_422() {
    let (sim, client) = cluster();
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.patch(
        "web",
        &PatchParams::apply("test"),
        &Patch::Apply(deployment(json!(2))),
    )
    .await
    .unwrap();
    let uri = format!("{DEPLOYMENTS}/web");

    let merge = json!({"spec": {"replicas": "3"}});
    let (code, _, answer) = send(
        &client,
        "PATCH",
        &uri,
        "application/merge-patch+json",
        &merge,
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(answer["reason"], "Invalid");
    let message = answer["message"].as_str().unwrap();
    // NewInvalid with no kind and no name, the patched object quoted as JSON.
    assert!(
        message.starts_with(" \"\" is invalid: patch: Invalid value: \"{"),
        "{message}"
    );
    assert!(
        message.ends_with("\": json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"),
        "{message}"
    );
    assert_eq!(answer["details"]["causes"][0]["field"], "patch");
    assert_eq!(
        answer["details"]["causes"][0]["reason"],
        "FieldValueInvalid"
    );

    let (code, _, answer) = send(
        &client,
        "PATCH",
        &uri,
        "application/strategic-merge-patch+json",
        &merge,
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        answer["message"],
        " \"\" is invalid: patch: Invalid value: \"map[spec:map[replicas:3]]\": unrecognized type: int32"
    );

    let ops = json!([{"op": "add", "path": "/spec/template/spec/containers", "value": "app"}]);
    let (code, _, answer) = send(&client, "PATCH", &uri, "application/json-patch+json", &ops).await;
    assert_eq!(code, 422);
    assert!(
        answer["message"].as_str().unwrap().ends_with(
            "json: cannot unmarshal string into Go struct field PodSpec.spec.template.spec.containers of type []v1.Container"
        ),
        "{answer}"
    );

    // An unknown field a merge patch brings: Strict refuses, Warn drops it with a warning.
    let extra = json!({"spec": {"replicas": 4, "surge": 1}});
    let (code, _, answer) = send(
        &client,
        "PATCH",
        &format!("{uri}?fieldValidation=Strict"),
        "application/merge-patch+json",
        &extra,
    )
    .await;
    assert_eq!(code, 422);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .ends_with("strict decoding error: unknown field \"spec.surge\""),
        "{answer}"
    );
    assert_eq!(stored_replicas(&sim), Some(json!(2)), "nothing changed yet");
    let (code, warnings, _) = send(
        &client,
        "PATCH",
        &uri,
        "application/merge-patch+json",
        &extra,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(warnings, [r#"299 - "unknown field \"spec.surge\"""#]);
    let live = sim
        .object("apps/v1", "Deployment", Some("default"), "web")
        .unwrap();
    assert_eq!(live["spec"]["replicas"], 4);
    assert!(live["spec"].get("surge").is_none());
}

#[tokio::test]
async fn custom_resources_are_not_checked_and_typed_writes_pass() {
    let (sim, client) = cluster();
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": true}}}]},
    });
    crds.patch(
        "widgets.example.com",
        &PatchParams::apply("test"),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "metadata": {"name": "w", "namespace": "default"},
                        "spec": {"replicas": "2", "anything": {"goes": [1, "x"]}}});
    let (code, _, answer) = send(
        &client,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets?fieldValidation=Strict",
        "application/json",
        &widget,
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    let live = sim
        .object("example.com/v1", "Widget", Some("default"), "w")
        .unwrap();
    assert_eq!(live["spec"]["anything"], json!({"goes": [1, "x"]}));

    // A well-typed Secret with base64 data and a typed Deployment go through.
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "data": {"k": "aGVsbG8="}}))
            .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(client);
    let d: Deployment = serde_json::from_value(deployment(json!(1))).unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}
