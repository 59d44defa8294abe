//! Kustomize and Helm apps rendered with the real tools (`.ci/tools` installs them into
//! `~/.cache/flotilla/tools`, or `FLOTILLA_TOOLS_DIR`).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::{Repo, cluster, repo};
use crate::render::{
    AppManifests, ClusterInfo, Limits, RenderEnv, RenderError, RenderedApp, ToolConfig, Tools,
};

/// Where `.ci/tools` put kubectl and helm.
fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("FLOTILLA_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/flotilla/tools")
        });
    for tool in ["kubectl", "helm"] {
        assert!(
            dir.join(tool).is_file(),
            "{} is missing: run .ci/tools (it fetches the real kubectl and helm)",
            dir.join(tool).display()
        );
    }
    dir
}

fn tools() -> Arc<Tools> {
    let dir = tools_dir();
    Arc::new(Tools::new(ToolConfig {
        kustomize_bin: dir.join("kubectl"),
        helm_bin: dir.join("helm"),
        ..ToolConfig::default()
    }))
}

fn env(tools: &Arc<Tools>) -> RenderEnv {
    RenderEnv {
        tools: tools.clone(),
        network: false,
    }
}

fn render(
    r: &Repo,
    tools: &Arc<Tools>,
    app: &str,
    c: &ClusterInfo,
) -> Result<RenderedApp, RenderError> {
    let config = r.config();
    AppManifests::load_with(&r.tree, &config, app, &Limits::default(), env(tools))?.render(c)
}

fn object<'a>(r: &'a RenderedApp, kind: &str, name: &str) -> &'a Value {
    r.objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:#?}", r.objects))
}

const KUSTOMIZE_FLEET: &str = "\
apps:
  web:
    path: web/overlays/prod
    namespace: web
    targets: {}
    vars: {team: payments}
    overlays:
      - when: {matchLabels: {env: staging}}
        path: web/overlays/staging
";

fn kustomize_repo() -> Repo {
    repo(&[
        ("flotilla.yaml", KUSTOMIZE_FLEET),
        (
            "web/base/kustomization.yaml",
            "resources: [deployment.yaml, service.yaml]\ncommonLabels: {app: web}\n",
        ),
        (
            "web/base/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations: {team: '${team}', cluster: '${cluster.name}'}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: web\n        image: example/web:1.0\n",
        ),
        (
            "web/base/service.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n",
        ),
        (
            "web/overlays/prod/kustomization.yaml",
            "resources: [../../base]\nnamePrefix: prod-\nimages: [{name: example/web, newTag: '2.0'}]\n\
             patches:\n- path: replicas.yaml\n- target: {kind: Service, name: web}\n  patch: |-\n    - op: add\n      path: /spec/ports/0/targetPort\n      value: 8080\n\
             configMapGenerator:\n- name: settings\n  literals: [MODE=prod]\n",
        ),
        (
            "web/overlays/prod/replicas.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 5}\n",
        ),
        (
            "web/overlays/staging/kustomization.yaml",
            "resources: [../../base]\nnamePrefix: staging-\n",
        ),
    ])
}

#[test]
fn a_kustomization_with_a_base_two_overlays_and_patches_renders_per_cluster() {
    let tools = tools();
    let r = kustomize_repo();
    let prod = render(&r, &tools, "web", &cluster("eu-1", &[("env", "prod")])).unwrap();
    let d = object(&prod, "Deployment", "prod-web");
    // Strategic-merge patch, images, commonLabels, namePrefix, the app's default namespace.
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "example/web:2.0"
    );
    assert_eq!(d["metadata"]["labels"]["app"], "web");
    assert_eq!(d["metadata"]["namespace"], "web");
    // Variables are substituted in the output as in plain manifests.
    assert_eq!(d["metadata"]["annotations"]["team"], "payments");
    assert_eq!(d["metadata"]["annotations"]["cluster"], "eu-1");
    // JSON 6902 patch and a generator (with kustomize's content hash suffix).
    assert_eq!(
        object(&prod, "Service", "prod-web")["spec"]["ports"][0]["targetPort"],
        8080
    );
    assert!(
        prod.objects.iter().any(|o| o["kind"] == "ConfigMap"
            && o["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("prod-settings-")),
        "{:#?}",
        prod.objects
    );

    let staging = render(&r, &tools, "web", &cluster("eu-2", &[("env", "staging")])).unwrap();
    let d = object(&staging, "Deployment", "staging-web");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "example/web:1.0"
    );
    // Two kustomizations, built once each whatever the number of clusters.
    for i in 0..5 {
        render(
            &r,
            &tools,
            "web",
            &cluster(&format!("p{i}"), &[("env", "prod")]),
        )
        .unwrap();
    }
    assert_eq!(tools.runs(), 2);
}

#[test]
fn a_fleet_in_three_value_sets_costs_three_renders() {
    let tools = tools();
    let r = kustomize_repo();
    // No `${cluster.…}` in the output: clusters share render keys by their matching overlays.
    r.write(
        "web/base/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: example/web}]}\n",
    );
    let chart = chart_repo();
    let config = r.config();
    let limits = Limits::default();
    let app = AppManifests::load_with(&r.tree, &config, "web", &limits, env(&tools)).unwrap();
    let clusters: Vec<ClusterInfo> = (0..300)
        .map(|i| cluster(&format!("c{i}"), &[("env", ["prod", "staging"][i % 2])]))
        .collect();
    let keys: std::collections::BTreeSet<_> = clusters
        .iter()
        .map(|c| app.render_key(c).expect("shared key"))
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(tools.runs(), 2);

    // Helm: values naming a cluster label render once per distinct value.
    let config = chart.config();
    let app = AppManifests::load_with(&chart.tree, &config, "db", &limits, env(&tools)).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    for (i, c) in clusters.iter().enumerate() {
        let c = cluster(&c.name, &[("tier", ["gold", "silver", "bronze"][i % 3])]);
        keys.insert(app.render_key(&c).expect("values make the key"));
        app.render(&c).unwrap();
    }
    assert_eq!(keys.len(), 3, "one key per value set");
    assert_eq!(tools.runs(), 2 + 3);
}

fn chart_repo() -> Repo {
    repo(&[
        (
            "flotilla.yaml",
            "apps:\n  db:\n    path: charts/db\n    namespace: data\n    targets: {}\n    vars: {size: 3}\n\
             \x20   helm:\n      releaseName: main\n      valuesFiles: [values/common.yaml]\n      values:\n        replicas: ${size}\n        tier: ${cluster.labels.tier:-none}\n\
             \x20   overlays:\n      - when: {matchLabels: {tier: gold}}\n        helm: {valuesFiles: [values/gold.yaml], values: {replicas: 9}}\n",
        ),
        (
            "values/common.yaml",
            "image: example/db:1\nmetrics: {enabled: false}\n",
        ),
        ("values/gold.yaml", "metrics: {enabled: true}\n"),
        (
            "charts/db/Chart.yaml",
            "apiVersion: v2\nname: db\nversion: 0.1.0\ndependencies:\n- name: metrics\n  version: 0.2.0\n  condition: metrics.enabled\n",
        ),
        (
            "charts/db/values.yaml",
            "replicas: 1\nimage: example/db:0\ntier: none\nmetrics: {enabled: false}\n",
        ),
        ("charts/db/.helmignore", "*.bak\n"),
        (
            "charts/db/templates/statefulset.yaml",
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: {{ .Release.Name }}-db\n  namespace: {{ .Release.Namespace }}\n  labels: {tier: {{ .Values.tier | quote }}}\nspec:\n  replicas: {{ .Values.replicas }}\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: {{ .Values.image | quote }}}]}\n",
        ),
        (
            "charts/db/templates/migrate.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: {{ .Release.Name }}-migrate-\n  annotations: {helm.sh/hook: pre-upgrade, helm.sh/hook-delete-policy: hook-succeeded}\nspec:\n  template:\n    spec: {restartPolicy: Never, containers: [{name: m, image: example/db-migrate}]}\n",
        ),
        (
            "charts/db/templates/tests/test.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}-test\n  annotations: {helm.sh/hook: test}\nspec: {containers: [{name: t, image: busybox}]}\n",
        ),
        (
            "charts/db/charts/metrics/Chart.yaml",
            "apiVersion: v2\nname: metrics\nversion: 0.2.0\n",
        ),
        (
            "charts/db/charts/metrics/templates/svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: {{ .Release.Name }}-metrics}\nspec: {ports: [{port: 9090}]}\n",
        ),
    ])
}

#[test]
fn a_chart_renders_with_per_cluster_values_and_a_vendored_dependency() {
    let tools = tools();
    let r = chart_repo();
    let gold = render(&r, &tools, "db", &cluster("g", &[("tier", "gold")])).unwrap();
    let sts = object(&gold, "StatefulSet", "main-db");
    assert_eq!(
        sts["spec"]["replicas"], 9,
        "overlay values win over the app's"
    );
    assert_eq!(
        sts["metadata"]["labels"]["tier"], "gold",
        "a cluster label in values"
    );
    assert_eq!(
        sts["metadata"]["namespace"], "data",
        "the app's namespace is the release's"
    );
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "example/db:1"
    );
    // The dependency is enabled by the gold values file.
    object(&gold, "Service", "main-metrics");
    // Hooks stay in the bundle for the agent (it runs them, and skips the test hook);
    // a generateName hook is let through.
    let hook = gold
        .objects
        .iter()
        .find(|o| o["kind"] == "Job")
        .expect("hook job");
    assert_eq!(hook["metadata"]["generateName"], "main-migrate-");

    let plain = render(&r, &tools, "db", &cluster("p", &[])).unwrap();
    let sts = object(&plain, "StatefulSet", "main-db");
    assert_eq!(
        sts["spec"]["replicas"], 3,
        "the app's values, with a variable"
    );
    assert_eq!(sts["metadata"]["labels"]["tier"], "none");
    assert!(
        !plain.objects.iter().any(|o| o["kind"] == "Service"),
        "metrics disabled"
    );
}

#[test]
fn a_generate_name_object_that_is_no_hook_is_refused_with_the_reason() {
    let tools = tools();
    let r = chart_repo();
    r.write(
        "charts/db/templates/migrate.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata: {generateName: x-}\nspec: {template: {spec: {restartPolicy: Never, containers: [{name: m, image: x}]}}}\n",
    );
    let err = render(&r, &tools, "db", &cluster("p", &[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("generateName") && err.contains("hook"),
        "{err}"
    );
}

#[test]
fn broken_charts_and_kustomizations_fail_with_the_tools_own_message() {
    let tools = tools();
    let r = chart_repo();
    r.write(
        "charts/db/templates/broken.yaml",
        "{{ .Values.nope.deeper }}\n",
    );
    let err = render(&r, &tools, "db", &cluster("p", &[])).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RenderError::Tool { .. }), "{err:?}");
    assert!(text.starts_with("helm template charts/db:"), "{text}");
    assert!(
        text.contains("nil pointer") || text.contains("deeper"),
        "{text}"
    );

    let k = kustomize_repo();
    k.write(
        "web/overlays/prod/kustomization.yaml",
        "resources: [missing.yaml]\n",
    );
    let text = render(&k, &tools, "web", &cluster("p", &[]))
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("kustomize build web/overlays/prod:"),
        "{text}"
    );
    assert!(text.contains("missing.yaml"), "{text}");

    // A chart missing a vendored dependency says so (helm's words).
    let r = chart_repo();
    std::fs::remove_dir_all(r.path().join("charts/db/charts")).unwrap();
    let text = render(&r, &tools, "db", &cluster("g", &[("tier", "gold")]))
        .unwrap_err()
        .to_string();
    assert!(text.contains("metrics"), "{text}");
}

#[test]
fn a_remote_base_needs_a_source_that_allows_the_network() {
    let tools = tools();
    let r = kustomize_repo();
    r.write(
        "web/overlays/prod/kustomization.yaml",
        "resources: [../../base, 'https://github.com/example/infra//base?ref=v1']\n",
    );
    let text = render(&r, &tools, "web", &cluster("p", &[]))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("does not allow renders to reach the network"),
        "{text}"
    );
    assert_eq!(tools.runs(), 0, "nothing was run");
}

#[test]
fn helm_is_only_for_charts() {
    let tools = tools();
    let r = kustomize_repo();
    r.write(
        "flotilla.yaml",
        "apps:\n  web:\n    path: web/base\n    namespace: web\n    targets: {}\n    helm: {releaseName: web}\n",
    );
    let text = render(&r, &tools, "web", &cluster("p", &[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        text,
        "app web: `helm` is set, but web/base has no Chart.yaml"
    );
}

#[test]
fn a_chart_from_a_repository_is_named_by_repo_chart_and_an_exact_version() {
    let limits = Limits::default();
    let err = |app: &str| {
        crate::render::parse_config(
            "flotilla.yaml",
            &format!("apps:\n  db:\n    targets: {{}}\n{app}"),
            &limits,
        )
        .unwrap_err()
        .to_string()
    };
    let e = err("    helm: {repo: 'https://charts.example.com', chart: db, version: ^1.2.0}\n");
    assert!(
        e.contains("apps.db.helm.version") && e.contains("not a range"),
        "{e}"
    );
    let e = err("    helm: {repo: 'https://charts.example.com', version: 1.2.0}\n");
    assert!(
        e.contains("apps.db.helm.chart") && e.contains("`chart` is missing"),
        "{e}"
    );
    let e = err("    helm: {repo: 'ftp://charts.example.com', chart: db, version: 1.2.0}\n");
    assert!(
        e.contains("must start with https://, http:// or oci://"),
        "{e}"
    );
    let e = err(
        "    path: charts/db\n    helm: {repo: 'oci://r.example.com/c', chart: db, version: 1.2.0}\n",
    );
    assert!(e.contains("takes no `path`"), "{e}");
    let e = err("    path: db\n    createNamespace: true\n");
    assert!(
        e.contains("createNamespace needs the app's namespace"),
        "{e}"
    );
    // Without `helm.repo`, `path` stays required.
    let e = err("    namespace: db\n");
    assert!(e.contains("apps.db.path"), "{e}");
    crate::render::parse_config(
        "flotilla.yaml",
        "apps:\n  db:\n    targets: {}\n    helm: {repo: 'oci://r.example.com/c', chart: db, version: 1.2.0}\n",
        &limits,
    )
    .expect("a remote chart needs no path");
}
