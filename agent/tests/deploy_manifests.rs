//! The Kubernetes manifests in `deploy/` parse into their typed API objects, and the agent's
//! Deployment asks for exactly the permissions and Secret its flags need.

use flotilla_agent::k8s_openapi::api::apps::v1::Deployment;
use flotilla_agent::k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, Service, ServiceAccount,
};
use flotilla_agent::k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Deserialize;
use serde_json::Value;

fn documents(path: &str) -> Vec<Value> {
    let full = format!("{}/../deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{full}: {e}")))
        .collect()
}

/// Parses every document into the struct of its kind; returns the typed Deployments and Roles.
fn check(path: &str) -> (Vec<Deployment>, Vec<Role>) {
    let (mut deployments, mut roles) = (vec![], vec![]);
    for doc in documents(path) {
        let kind = doc["kind"].as_str().unwrap().to_string();
        let parsed = match kind.as_str() {
            "Namespace" => serde_json::from_value::<Namespace>(doc).map(|_| ()),
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(doc).map(|_| ()),
            "Role" => serde_json::from_value::<Role>(doc).map(|r| roles.push(r)),
            "RoleBinding" => serde_json::from_value::<RoleBinding>(doc).map(|_| ()),
            "Deployment" => serde_json::from_value::<Deployment>(doc).map(|d| deployments.push(d)),
            "PersistentVolumeClaim" => {
                serde_json::from_value::<PersistentVolumeClaim>(doc).map(|_| ())
            }
            "Service" => serde_json::from_value::<Service>(doc).map(|_| ()),
            other => panic!("{path}: unexpected kind {other}"),
        };
        parsed.unwrap_or_else(|e| panic!("{path}: {kind}: {e}"));
    }
    (deployments, roles)
}

#[test]
fn hub_manifests_are_valid_objects() {
    let (deployments, _) = check("hub/hub.yaml");
    assert_eq!(deployments.len(), 1);
}

#[test]
fn agent_manifests_grant_exactly_the_identity_secret() {
    let (deployments, roles) = check("agent/agent.yaml");
    let pod = deployments[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert!(args.contains(&"--cluster=kube".to_string()), "{args:?}");
    let secret = args
        .iter()
        .find_map(|a| a.strip_prefix("--state-secret="))
        .expect("agent keeps its identity in a Secret");
    let loc = flotilla_agent::StateLocation::parse_secret(secret).unwrap();
    let flotilla_agent::StateLocation::Secret { namespace, name } = loc else {
        panic!("not a secret location")
    };
    let role = &roles[0];
    assert_eq!(role.metadata.namespace.as_deref(), Some(namespace.as_str()));
    let rules = role.rules.as_ref().unwrap();
    let named = rules
        .iter()
        .find(|r| r.resource_names.as_ref().is_some_and(|n| n.contains(&name)))
        .expect("a rule for the identity Secret");
    assert_eq!(named.verbs, vec!["get", "patch"]);
    // Nothing broader than Secrets is granted.
    assert!(
        rules
            .iter()
            .all(|r| r.resources.as_ref().unwrap() == &vec!["secrets".to_string()])
    );
}
