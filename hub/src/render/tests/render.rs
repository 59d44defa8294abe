//! Rendering: reading, variables, overlays, namespaces, identities, canonical digests, cache.

use serde_json::{Value, json};

use super::super::{
    AppManifests, BundleCache, Limits, RenderError, RenderedApp, digest_of, targeted_clusters,
    walk_files,
};
use super::{Repo, cluster, render_err, render_web, repo, web_repo, web_with};

fn render(r: &Repo, labels: &[(&str, &str)]) -> RenderedApp {
    render_web(r, labels).expect("renders")
}

fn names(rendered: &RenderedApp) -> Vec<String> {
    rendered
        .objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(rendered: &'a RenderedApp, kind: &str, name: &str) -> &'a Value {
    rendered
        .objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
}

#[test]
fn reads_multi_document_recursive_sorted_and_skips_hidden() {
    let r = web_repo(&[
        (
            "apps/web/b.yaml",
            &format!("{}---\n---\n# only a comment\n---\n{}", cm("b1"), cm("b2")),
        ),
        ("apps/web/sub/deeper/a.yml", &cm("deep")),
        (
            "apps/web/c.json",
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "json"}}"#,
        ),
        ("apps/web/.hidden.yaml", &cm("hidden-file")),
        ("apps/web/.git/x.yaml", &cm("hidden-dir")),
        ("apps/web/README.md", "not yaml: ["),
        ("apps/web/notes.txt", "{"),
    ]);
    let out = render(&r, &[]);
    assert_eq!(
        names(&out),
        [
            "ConfigMap/b1",
            "ConfigMap/b2",
            "ConfigMap/deep",
            "ConfigMap/json"
        ]
    );
    let files: Vec<String> = walk_files(&r.tree, "apps/web", &|n| {
        n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json")
    })
    .unwrap()
    .into_iter()
    .map(|f| f.path)
    .collect();
    assert_eq!(
        files,
        [
            "apps/web/b.yaml",
            "apps/web/c.json",
            "apps/web/sub/deeper/a.yml"
        ]
    );
}

#[test]
fn list_documents_are_expanded() {
    let list = "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: one}}\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: two}}\n";
    let r = web_repo(&[("apps/web/list.yaml", list)]);
    assert_eq!(names(&render(&r, &[])), ["ConfigMap/one", "ConfigMap/two"]);
}

#[test]
fn vars_precedence_overlay_over_app_over_cluster() {
    let config = web_with(
        "    vars: {replicas: 2, tier: app, color: app, cluster.name: from-app}
    overlays:
      - when: {matchLabels: {region: eu}}
        vars: {replicas: 4, tier: eu}
      - when: {matchLabels: {ring: canary}}
        vars: {replicas: 5}
",
    );
    let deploy = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  labels: {tier: '${tier}', color: '${color}', region: '${cluster.labels.region}'}
  annotations: {cluster: '${cluster.name}', missing: '${nope:-fallback}', text: 'n=${replicas}'}
spec:
  replicas: ${replicas}
  paused: ${paused:-false}
";
    let r = repo(&[("flotilla.yaml", &config), ("apps/web/deploy.yaml", deploy)]);
    let out = render(&r, &[("region", "eu"), ("ring", "canary")]);
    let d = find(&out, "Deployment", "api");
    assert_eq!(
        d["spec"]["replicas"],
        json!(5),
        "the last matching overlay wins"
    );
    assert_eq!(d["spec"]["paused"], json!(false));
    assert_eq!(d["metadata"]["labels"]["tier"], "eu", "overlay over app");
    assert_eq!(d["metadata"]["labels"]["color"], "app");
    assert_eq!(d["metadata"]["labels"]["region"], "eu");
    assert_eq!(
        d["metadata"]["annotations"]["cluster"], "from-app",
        "app over cluster.*"
    );
    assert_eq!(d["metadata"]["annotations"]["missing"], "fallback");
    assert_eq!(d["metadata"]["annotations"]["text"], "n=5");
    let plain = render(&r, &[("region", "us")]);
    let d = find(&plain, "Deployment", "api");
    assert_eq!(d["spec"]["replicas"], json!(2));
    assert_eq!(d["metadata"]["labels"]["tier"], "app");
    assert_eq!(d["metadata"]["labels"]["region"], "us");
}

#[test]
fn overlay_patches_apply_to_matching_clusters_in_order() {
    let config = web_with(
        "    vars: {size: small}
    overlays:
      - when: {matchLabels: {region: eu}}
        vars: {size: large}
        patches: [apps/web/patches/eu.yaml]
      - when: {matchExpressions: [{key: ring, operator: In, values: [canary]}]}
        patches: [patches/canary.yaml]
",
    );
    let deploy = "apiVersion: apps/v1
kind: Deployment
metadata: {name: api, labels: {keep: 'yes', drop: 'yes'}}
spec: {replicas: 1, template: {spec: {containers: [{name: api, image: 'api:1'}]}}}
";
    let eu = "kind: Deployment
metadata: {name: api, labels: {drop: null, size: '${size}'}}
spec: {replicas: 3}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: web}
data: {mode: eu}
";
    let canary = "apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec: {replicas: 5, template: {spec: {containers: [{name: api, image: 'api:2'}]}}}
";
    let r = repo(&[
        ("flotilla.yaml", &config),
        ("apps/web/deploy.yaml", deploy),
        (
            "apps/web/settings.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: base}\n",
        ),
        ("apps/web/patches/eu.yaml", eu),
        ("patches/canary.yaml", canary),
    ]);
    let us = render(&r, &[("region", "us")]);
    assert_eq!(
        names(&us),
        ["ConfigMap/settings", "Deployment/api"],
        "patch files are not manifests"
    );
    assert_eq!(find(&us, "Deployment", "api")["spec"]["replicas"], 1);
    assert_eq!(find(&us, "ConfigMap", "settings")["data"]["mode"], "base");

    let eu_out = render(&r, &[("region", "eu")]);
    let d = find(&eu_out, "Deployment", "api");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["metadata"]["labels"],
        json!({"keep": "yes", "size": "large"})
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "api:1"
    );
    assert_eq!(find(&eu_out, "ConfigMap", "settings")["data"]["mode"], "eu");

    let both = render(&r, &[("region", "eu"), ("ring", "canary")]);
    let d = find(&both, "Deployment", "api");
    assert_eq!(
        d["spec"]["replicas"], 5,
        "later overlays patch after earlier ones"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "api:2"
    );
    assert_eq!(d["metadata"]["labels"]["size"], "large");
}

#[test]
fn default_namespace_for_namespaced_kinds_only() {
    let config = web_with("    clusterScopedKinds: [Widget]\n");
    let objects = "apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: elsewhere, namespace: other}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: global}
---
apiVersion: example.com/v1
kind: Gadget
metadata: {name: local}
";
    let r = repo(&[("flotilla.yaml", &config), ("apps/web/all.yaml", objects)]);
    let out = render(&r, &[]);
    let ns = |kind, name| find(&out, kind, name)["metadata"].get("namespace").cloned();
    assert_eq!(ns("Deployment", "api"), Some(json!("web")));
    assert_eq!(ns("ConfigMap", "elsewhere"), Some(json!("other")));
    assert_eq!(ns("Gadget", "local"), Some(json!("web")));
    assert_eq!(ns("ClusterRole", "reader"), None);
    assert_eq!(ns("Namespace", "web"), None);
    assert_eq!(ns("Widget", "global"), None, "app-level clusterScopedKinds");
    // Sorted by (group, kind, namespace, name): the core group first.
    assert_eq!(
        names(&out),
        [
            "ConfigMap/elsewhere",
            "Namespace/web",
            "Deployment/api",
            "Gadget/local",
            "Widget/global",
            "ClusterRole/reader"
        ]
    );

    let no_default = repo(&[
        (
            "flotilla.yaml",
            "apps:\n  web: {path: apps/web, targets: {}}\n",
        ),
        (
            "apps/web/a.yaml",
            &format!(
                "{}---\n{}",
                cm("ok-in-ns").replace("name: ok-in-ns", "name: ok\n  namespace: x"),
                cm("nons")
            ),
        ),
    ]);
    let err = render_err(&no_default);
    assert!(matches!(err, RenderError::NoNamespace { .. }));
    assert_eq!(
        err.to_string(),
        "apps/web/a.yaml (document 2): ConfigMap nons has no namespace, and app web sets no default namespace"
    );
}

#[test]
fn missing_api_version_kind_or_name() {
    for (doc, field) in [
        ("kind: ConfigMap\nmetadata: {name: a}\n", "apiVersion"),
        ("apiVersion: v1\nmetadata: {name: a}\n", "kind"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
            "metadata.name",
        ),
        ("apiVersion: v1\nkind: ConfigMap\n", "metadata.name"),
    ] {
        let r = web_repo(&[("apps/web/x.yaml", &format!("{}---\n{doc}", cm("fine")))]);
        let err = render_err(&r);
        assert!(matches!(err, RenderError::MissingField { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("apps/web/x.yaml (document 2): {field} is missing")
        );
    }
}

#[test]
fn duplicate_objects_name_both_files() {
    let r = web_repo(&[
        ("apps/web/a.yaml", &cm("dup")),
        (
            "apps/web/b/c.yaml",
            &format!(
                "{}---\n{}",
                cm("other"),
                cm("dup").replace("v1", "v1\n# same object")
            ),
        ),
    ]);
    let err = render_err(&r);
    assert_eq!(
        err.to_string(),
        "ConfigMap web/dup is defined twice: in apps/web/a.yaml (document 1) and in apps/web/b/c.yaml (document 2)"
    );
    // Same name in another namespace, or another group, is another object.
    let r = web_repo(&[
        ("apps/web/a.yaml", &cm("dup")),
        (
            "apps/web/b.yaml",
            &cm("dup").replace("name: dup", "name: dup\n  namespace: other"),
        ),
        (
            "apps/web/c.yaml",
            &cm("dup").replace("apiVersion: v1", "apiVersion: example.com/v1"),
        ),
    ]);
    assert_eq!(render(&r, &[]).objects.len(), 3);
}

#[test]
fn digest_is_stable_across_key_order_and_file_layout() {
    let one = web_repo(&[(
        "apps/web/all.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {x: '1', y: '2'}}\ndata: {k: v}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 2}\n",
    )]);
    let two = web_repo(&[
        (
            "apps/web/z/deploy.json",
            r#"{"spec": {"replicas": 2}, "metadata": {"name": "d", "namespace": "web"}, "kind": "Deployment", "apiVersion": "apps/v1"}"#,
        ),
        (
            "apps/web/a/cm.yml",
            "data:\n  k: v\nmetadata:\n  labels:\n    y: '2'\n    x: '1'\n  name: a\nkind: ConfigMap\napiVersion: v1\n",
        ),
    ]);
    let (a, b) = (render(&one, &[]), render(&two, &[]));
    assert_eq!(a.canonical, b.canonical);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.digest, digest_of(&a.canonical));
    assert!(a.digest.starts_with("sha256:") && a.digest.len() == 7 + 64);
    let text = String::from_utf8(a.canonical.clone()).unwrap();
    assert!(text.starts_with(r#"[{"apiVersion":"v1","data":{"k":"v"},"kind":"ConfigMap","metadata":{"labels":{"x":"1","y":"2"},"name":"a","namespace":"web"}}"#), "{text}");
    let parsed: Value = serde_json::from_slice(&a.canonical).unwrap();
    assert_eq!(parsed, Value::Array(a.objects.clone()));
}

#[test]
fn identical_renders_share_one_bundle() {
    let config = "apps:\n  web:\n    path: apps/web\n    namespace: web\n    targets: {matchLabels: {env: prod}}\n    overlays:\n      - when: {matchLabels: {region: eu}}\n        vars: {mode: eu}\n";
    let r = repo(&[
        ("flotilla.yaml", config),
        (
            "apps/web/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\ndata: {mode: '${mode:-default}', env: '${cluster.labels.env}'}\n",
        ),
    ]);
    let fleet = r.config();
    let clusters = [
        cluster("us-1", &[("env", "prod"), ("region", "us")]),
        cluster("us-2", &[("env", "prod"), ("region", "us")]),
        cluster("eu-1", &[("env", "prod"), ("region", "eu")]),
        cluster("dev-1", &[("env", "dev"), ("region", "us")]),
    ];
    let targets = targeted_clusters(&fleet, "web", &clusters);
    let target_names: Vec<&str> = targets.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(target_names, ["us-1", "us-2", "eu-1"]);
    assert!(targeted_clusters(&fleet, "nope", &clusters).is_empty());

    let app = AppManifests::load(&r.tree, &fleet, "web", &Limits::default()).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BundleCache::open(cache_dir.path()).unwrap();
    let refs: Vec<_> = targets
        .iter()
        .map(|c| cache.put(&app.render(c).unwrap().canonical).unwrap())
        .collect();
    assert_eq!(refs[0], refs[1]);
    assert_ne!(refs[0].digest, refs[2].digest);
    let files = std::fs::read_dir(cache_dir.path().join("sha256"))
        .unwrap()
        .count();
    assert_eq!(files, 2);
    let back = cache.get(&refs[2].digest).unwrap().unwrap();
    let objects: Vec<Value> = serde_json::from_slice(&back).unwrap();
    assert_eq!(objects[0]["data"]["mode"], "eu");
}

#[test]
fn clusters_matching_the_same_overlays_share_a_render_key_unless_manifests_name_the_cluster() {
    let config = "apps:\n  web:\n    path: apps/web\n    namespace: web\n    targets: {}\n    overlays:\n      - when: {matchLabels: {region: eu}}\n        vars: {mode: eu}\n        patches: [p.yaml]\n";
    let patch = "kind: ConfigMap\nmetadata: {name: m}\ndata: {patched: '${mode}'}\n";
    let plain =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\ndata: {mode: '${mode:-default}'}\n";
    let clusters = [
        cluster("eu-1", &[("region", "eu"), ("tier", "a")]),
        cluster("eu-2", &[("region", "eu"), ("tier", "b")]),
        cluster("us-1", &[("region", "us")]),
    ];
    let r = repo(&[
        ("flotilla.yaml", config),
        ("apps/web/cm.yaml", plain),
        ("p.yaml", patch),
    ]);
    let app = AppManifests::load(&r.tree, &r.config(), "web", &Limits::default()).unwrap();
    let keys: Vec<_> = clusters.iter().map(|c| app.render_key(c)).collect();
    assert!(keys.iter().all(Option::is_some));
    assert_eq!(keys[0], keys[1], "other labels do not matter");
    assert_ne!(keys[0], keys[2], "other overlays, another key");
    // Same key, same bundle: what makes rendering once per key safe.
    let digests: Vec<_> = clusters
        .iter()
        .map(|c| app.render(c).unwrap().digest)
        .collect();
    assert_eq!(digests[0], digests[1]);
    assert_ne!(digests[0], digests[2]);

    // A manifest, or a patch, that names a cluster built-in: every cluster renders on its own.
    for (manifest, patch) in [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\ndata: {tier: '${cluster.labels.tier}'}\n",
            patch,
        ),
        (
            plain,
            "kind: ConfigMap\nmetadata: {name: m}\ndata: {who: 'x-${cluster.name}'}\n",
        ),
    ] {
        let r = repo(&[
            ("flotilla.yaml", config),
            ("apps/web/cm.yaml", manifest),
            ("p.yaml", patch),
        ]);
        let app = AppManifests::load(&r.tree, &r.config(), "web", &Limits::default()).unwrap();
        assert!(clusters.iter().all(|c| app.render_key(c).is_none()));
        assert_ne!(
            app.render(&clusters[0]).unwrap().digest,
            app.render(&clusters[1]).unwrap().digest
        );
    }
}

#[test]
fn patch_errors_name_the_patch() {
    let config = web_with("    overlays:\n      - patches: [p.yaml]\n");
    let r = repo(&[
        ("flotilla.yaml", &config),
        ("apps/web/cm.yaml", &cm("real")),
        (
            "p.yaml",
            "kind: ConfigMap\nmetadata: {name: real}\ndata: {a: b}\n---\nkind: ConfigMap\nmetadata: {name: ghost}\n",
        ),
    ]);
    let err = render_err(&r);
    assert!(matches!(err, RenderError::PatchUnmatched { .. }));
    assert_eq!(
        err.to_string(),
        "p.yaml (document 2): the patch for ConfigMap ghost matches no object"
    );
    r.write(
        "p.yaml",
        "kind: ConfigMap\nmetadata: {name: real, namespace: elsewhere}\n",
    );
    assert!(matches!(render_err(&r), RenderError::PatchUnmatched { .. }));
    r.write("p.yaml", "metadata: {name: real}\n");
    assert_eq!(
        render_err(&r).to_string(),
        "p.yaml (document 1): invalid patch: a patch needs kind (the kind of its target)"
    );
}

#[test]
fn symlinks_inside_the_repository_are_followed() {
    let r = web_repo(&[
        ("shared/base/cm.yaml", &cm("shared")),
        ("shared/one.yaml", &cm("linked-file")),
    ]);
    r.symlink("apps/web/base", "../../shared/base");
    r.symlink("apps/web/one.yaml", "../../shared/one.yaml");
    r.symlink("apps/web/chain.yaml", "one.yaml");
    r.write("apps/web/own.yaml", &cm("own"));
    let err = render_err(&r);
    // chain.yaml and one.yaml are the same object through two links.
    assert!(matches!(err, RenderError::Duplicate { .. }), "{err}");
    std::fs::remove_file(r.path().join("apps/web/chain.yaml")).unwrap();
    assert_eq!(
        names(&render(&r, &[])),
        ["ConfigMap/linked-file", "ConfigMap/own", "ConfigMap/shared"]
    );
}
