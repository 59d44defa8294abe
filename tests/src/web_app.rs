//! The app most fleet tests deploy: `web`, in `apps/web` of the fleet repository — a Namespace
//! `shop`, a Deployment `web` (nginx) in it and, when a test changes releases, a ConfigMap
//! `settings` whose version each release sets.

use std::path::Path;

use crate::TestRepo;

/// The app's Namespace.
pub const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";

/// The app's Deployment: one replica of nginx.
pub const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - {name: web, image: 'nginx:1.27'}\n";

/// The ConfigMap `settings` at `version`: a new release of the app.
pub fn settings(version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  version: \"{version}\"\n"
    )
}

/// `flotilla.yaml` for the app, promoted by pipeline `pipeline` from the `ring: canary`
/// clusters (no soak) to the `ring: prod` ones; `prod` adds settings to the prod stage (e.g.
/// `", approval: manual"`).
pub fn canary_then_prod(pipeline: &str, prod: &str) -> String {
    format!(
        "apps:
  web:
    path: apps/web
    namespace: shop
    targets: {{}}
    pipeline: {pipeline}
pipelines:
  {pipeline}:
    stages:
      - {{name: canary, selector: {{matchLabels: {{ring: canary}}}}, soak: 0s}}
      - {{name: prod, selector: {{matchLabels: {{ring: prod}}}}{prod}}}
"
    )
}

/// A repository at `dir/repo` with `flotilla.yaml` = `fleet` and the app (with the ConfigMap at
/// `settings`, when given) committed as `web 1`; returns it and the commit.
pub fn repo(dir: &Path, fleet: &str, settings_version: Option<&str>) -> (TestRepo, String) {
    let repo = TestRepo::init(&dir.join("repo"));
    repo.write("flotilla.yaml", fleet);
    repo.write("apps/web/namespace.yaml", NAMESPACE);
    repo.write("apps/web/deployment.yaml", DEPLOYMENT);
    if let Some(version) = settings_version {
        repo.write("apps/web/config.yaml", &settings(version));
    }
    let commit = repo.commit("web 1");
    (repo, commit)
}
