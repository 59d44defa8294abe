//! The Kubernetes manifests in `deploy/` parse into their typed API objects, and the agent's
//! Deployment asks for exactly the permissions and Secret its flags need.

use flotilla_agent::k8s_openapi::api::apps::v1::Deployment;
use flotilla_agent::k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, Service, ServiceAccount,
};
use flotilla_agent::k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, Role, RoleBinding,
};
use serde::Deserialize;
use serde_json::Value;

fn documents(path: &str) -> Vec<Value> {
    let full = format!("{}/../deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{full}: {e}")))
        .collect()
}

#[derive(Default)]
struct Parsed {
    deployments: Vec<Deployment>,
    roles: Vec<Role>,
    cluster_roles: Vec<ClusterRole>,
    cluster_bindings: Vec<ClusterRoleBinding>,
}

/// Parses every document into the struct of its kind.
fn check(path: &str) -> Parsed {
    let mut p = Parsed::default();
    let (deployments, roles) = (&mut p.deployments, &mut p.roles);
    for doc in documents(path) {
        let kind = doc["kind"].as_str().unwrap().to_string();
        let parsed = match kind.as_str() {
            "Namespace" => serde_json::from_value::<Namespace>(doc).map(|_| ()),
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(doc).map(|_| ()),
            "Role" => serde_json::from_value::<Role>(doc).map(|r| roles.push(r)),
            "RoleBinding" => serde_json::from_value::<RoleBinding>(doc).map(|_| ()),
            "ClusterRole" => {
                serde_json::from_value::<ClusterRole>(doc).map(|r| p.cluster_roles.push(r))
            }
            "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(doc)
                .map(|b| p.cluster_bindings.push(b)),
            "Deployment" => serde_json::from_value::<Deployment>(doc).map(|d| deployments.push(d)),
            "PersistentVolumeClaim" => {
                serde_json::from_value::<PersistentVolumeClaim>(doc).map(|_| ())
            }
            "Service" => serde_json::from_value::<Service>(doc).map(|_| ()),
            other => panic!("{path}: unexpected kind {other}"),
        };
        parsed.unwrap_or_else(|e| panic!("{path}: {kind}: {e}"));
    }
    p
}

#[test]
fn hub_manifests_are_valid_objects() {
    assert_eq!(check("hub/hub.yaml").deployments.len(), 1);
}

#[test]
fn agent_manifests_grant_least_privilege() {
    let p = check("agent/agent.yaml");
    let pod = p.deployments[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap();
    assert!(args.contains(&"--cluster=kube".to_string()), "{args:?}");
    let secret = args
        .iter()
        .find_map(|a| a.strip_prefix("--state-secret="))
        .expect("agent keeps its identity in a Secret");
    let loc = flotilla_agent::StateLocation::parse_secret(secret).unwrap();
    let flotilla_agent::StateLocation::Secret { namespace, name } = loc else {
        panic!("not a secret location")
    };
    // The metrics port is declared, and Prometheus is told where to scrape it.
    let listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-listen="))
        .expect("a metrics address");
    let port: i32 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = container.ports.clone().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p.container_port == port && p.name.as_deref() == Some("metrics")),
        "{ports:?}"
    );
    let annotations = p.deployments[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    // The bundle cache is a writable volume (the root file system is read-only).
    let cache = args
        .iter()
        .find_map(|a| a.strip_prefix("--cache-dir="))
        .expect("a cache dir");
    let mounts = container.volume_mounts.clone().unwrap();
    assert!(mounts.iter().any(|m| m.mount_path == cache), "{mounts:?}");
    // The agent learns its namespace (inventories live there) from the downward API.
    let env = container.env.clone().unwrap();
    let ns_env = env.iter().find(|e| e.name == "POD_NAMESPACE").unwrap();
    let field = ns_env
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "metadata.namespace");

    // In its namespace: the identity Secret by name, and the inventory ConfigMaps.
    let role = &p.roles[0];
    assert_eq!(role.metadata.namespace.as_deref(), Some(namespace.as_str()));
    let rules = role.rules.as_ref().unwrap();
    let named = rules
        .iter()
        .find(|r| r.resource_names.as_ref().is_some_and(|n| n.contains(&name)))
        .expect("a rule for the identity Secret");
    assert_eq!(named.verbs, vec!["get", "patch"]);
    for r in rules {
        let res = r.resources.as_ref().unwrap();
        assert!(
            res == &vec!["secrets".to_string()] || res == &vec!["configmaps".to_string()],
            "{res:?}"
        );
    }
    // Cluster-wide: the usual app kinds, nothing privilege-bearing, no wildcards.
    let apply = &p.cluster_roles[0];
    let mut kinds = Vec::new();
    for r in apply.rules.as_ref().unwrap() {
        let res = r.resources.as_ref().unwrap();
        assert!(!res.iter().any(|x| x == "*"), "{res:?}");
        assert!(
            !r.verbs
                .iter()
                .any(|v| v == "*" || v == "escalate" || v == "bind")
        );
        assert!(
            !r.api_groups
                .as_ref()
                .unwrap()
                .iter()
                .any(|g| g == "*" || g.starts_with("rbac.")),
            "{r:?}"
        );
        kinds.extend(res.iter().cloned());
    }
    for needed in [
        "namespaces",
        "deployments",
        "customresourcedefinitions",
        "jobs",
    ] {
        assert!(kinds.iter().any(|k| k == needed), "{needed} missing");
    }
    assert_eq!(
        p.cluster_bindings[0].role_ref.name,
        apply.metadata.name.clone().unwrap()
    );

    // The opt-in for apps that manage RBAC: cluster-admin, for the same service account.
    let admin = check("agent/cluster-admin.yaml");
    let b = &admin.cluster_bindings[0];
    assert_eq!(b.role_ref.name, "cluster-admin");
    assert_eq!(
        b.subjects.as_ref().unwrap()[0].name,
        p.cluster_bindings[0].subjects.as_ref().unwrap()[0].name
    );
}
