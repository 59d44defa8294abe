//! The Kubernetes objects of one generated app: its own Namespace plus Deployments, ClusterIP
//! Services and ConfigMaps. The same generator feeds the in-process apply measurement (JSON
//! bundles) and the git repository the hub renders for the idle agents (YAML manifests).

use serde_json::{Value, json};

/// How many objects of each kind an app has (besides its one Namespace).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AppShape {
    pub deployments: usize,
    pub services: usize,
    pub configmaps: usize,
}

impl AppShape {
    /// 20 objects: the Namespace, 6 Deployments, 6 Services, 7 ConfigMaps.
    pub const SMALL: AppShape = AppShape {
        deployments: 6,
        services: 6,
        configmaps: 7,
    };

    /// About `total` objects (at least 4): the Namespace and the rest split evenly over the
    /// three kinds, ConfigMaps taking the remainder.
    pub fn of_total(total: usize) -> Self {
        let rest = total.max(4) - 1;
        let third = rest / 3;
        AppShape {
            deployments: third,
            services: third,
            configmaps: rest - 2 * third,
        }
    }

    pub fn objects(&self) -> usize {
        1 + self.deployments + self.services + self.configmaps
    }
}

/// The objects of the app whose namespace is `ns`. With `set_namespace` false, namespaced
/// objects leave `metadata.namespace` unset (the app's `namespace:` in `flotilla.yaml` fills
/// it in when the hub renders).
pub fn app_objects(ns: &str, shape: AppShape, set_namespace: bool) -> Vec<Value> {
    // An object of `kind` named `name` with `labels`, and `body` beside its metadata.
    let object = |api_version: &str, kind: &str, name: &str, labels: Value, body: Value| {
        let mut o = json!({"apiVersion": api_version, "kind": kind,
                           "metadata": {"name": name, "labels": labels}});
        if set_namespace {
            o["metadata"]["namespace"] = json!(ns);
        }
        for (k, v) in body.as_object().expect("a JSON object") {
            o[k] = v.clone();
        }
        o
    };
    let mut out = Vec::with_capacity(shape.objects());
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"team": "bench"}},
    }));
    for i in 0..shape.deployments {
        let name = format!("web-{i}");
        out.push(object(
            "apps/v1",
            "Deployment",
            &name,
            json!({"app": name}),
            json!({"spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{
                        "name": "main",
                        "image": format!("registry.example/{ns}/{name}:1.0.{i}"),
                        "ports": [{"containerPort": 8080}],
                        "env": [{"name": "MODE", "value": "bench"}],
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                    }]},
                },
            }}),
        ));
    }
    for i in 0..shape.services {
        let name = format!("web-{i}");
        let spec = json!({
            "type": "ClusterIP",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        });
        let labels = json!({"app": name});
        out.push(object(
            "v1",
            "Service",
            &name,
            labels,
            json!({"spec": spec}),
        ));
    }
    for i in 0..shape.configmaps {
        let name = format!("config-{i}");
        let data = json!({
            "LOG_LEVEL": "info",
            "FEATURE_FLAGS": "a,b,c",
            "ENDPOINT": format!("http://web-{}.{ns}.svc:80", i % shape.deployments.max(1)),
            "INDEX": i.to_string(),
        });
        let labels = json!({"app": ns});
        out.push(object(
            "v1",
            "ConfigMap",
            &name,
            labels,
            json!({"data": data}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_add_up() {
        assert_eq!(AppShape::SMALL.objects(), 20);
        assert_eq!(AppShape::of_total(1000).objects(), 1000);
        assert_eq!(AppShape::of_total(20).objects(), 20);
        let objs = app_objects("app-1", AppShape::SMALL, true);
        assert_eq!(objs.len(), 20);
        assert!(
            objs[1..]
                .iter()
                .all(|o| o["metadata"]["namespace"] == "app-1")
        );
        let bare = app_objects("app-1", AppShape::SMALL, false);
        assert!(
            bare.iter()
                .all(|o| o["metadata"].get("namespace").is_none())
        );
    }
}
