//! Kubernetes object facts that rendering needs without API discovery: the identity of an object
//! ([`ObjectKey`]), which kinds are cluster-scoped, and default namespaces.

use std::fmt;

use serde_json::Value;

/// Kinds that are cluster-scoped, whatever their API group: the built-in Kubernetes ones plus
/// widely used custom resources. An app adds its own with `clusterScopedKinds`.
pub const CLUSTER_SCOPED_KINDS: &[&str] = &[
    // core
    "Namespace",
    "Node",
    "PersistentVolume",
    "ComponentStatus",
    // storage
    "StorageClass",
    "CSIDriver",
    "CSINode",
    "VolumeAttachment",
    "VolumeAttributesClass",
    // apiextensions / apiregistration
    "CustomResourceDefinition",
    "APIService",
    // rbac
    "ClusterRole",
    "ClusterRoleBinding",
    // scheduling, node, networking
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "IPAddress",
    "ServiceCIDR",
    // admission
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    // certificates, flow control, resource
    "CertificateSigningRequest",
    "ClusterTrustBundle",
    "FlowSchema",
    "PriorityLevelConfiguration",
    "DeviceClass",
    "ResourceSlice",
    "StorageVersionMigration",
    // common custom resources
    "ClusterIssuer",
    "ClusterSecretStore",
    "ClusterExternalSecret",
    "ClusterPolicy",
    "ClusterPolicyReport",
    "GatewayClass",
];

/// Whether objects of `kind` are cluster-scoped, given an app's extra `clusterScopedKinds`.
pub fn is_cluster_scoped(kind: &str, extra: &[String]) -> bool {
    CLUSTER_SCOPED_KINDS.contains(&kind) || extra.iter().any(|k| k == kind)
}

/// The identity of an object: API group, kind, namespace and name. Two objects with the same
/// key are the same object, whatever their API version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The API group (`""` for the core group).
    pub group: String,
    pub kind: String,
    /// `""` for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The key of an object that has `apiVersion`, `kind` and `metadata.name` strings.
    pub fn of(object: &Value) -> Option<ObjectKey> {
        let api_version = object.get("apiVersion")?.as_str()?;
        Some(ObjectKey {
            group: group_of(api_version).to_owned(),
            kind: object.get("kind")?.as_str()?.to_owned(),
            namespace: namespace_of(object).unwrap_or_default().to_owned(),
            name: object.get("metadata")?.get("name")?.as_str()?.to_owned(),
        })
    }
}

impl ObjectKey {
    /// The key of a rendered object: [`Self::of`], or for an object named by
    /// `metadata.generateName` (the API server picks the name), that prefix as its name.
    pub fn of_rendered(object: &Value) -> Option<ObjectKey> {
        ObjectKey::of(object).or_else(|| {
            Some(ObjectKey {
                group: group_of(object.get("apiVersion")?.as_str()?).to_owned(),
                kind: object.get("kind")?.as_str()?.to_owned(),
                namespace: namespace_of(object).unwrap_or_default().to_owned(),
                name: object
                    .get("metadata")?
                    .get("generateName")?
                    .as_str()?
                    .to_owned(),
            })
        })
    }
}

/// Whether `object` is a Helm hook (annotated `helm.sh/hook`), which the agent runs around the
/// rest of the bundle rather than applying it with it.
pub fn is_hook(object: &Value) -> bool {
    object
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get("helm.sh/hook"))
        .and_then(Value::as_str)
        .is_some_and(|h| !h.trim().is_empty())
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        f.write_str(" ")?;
        if !self.namespace.is_empty() {
            write!(f, "{}/", self.namespace)?;
        }
        f.write_str(&self.name)
    }
}

/// The group part of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(group, _)| group)
        .unwrap_or("")
}

/// `metadata.namespace`, if set to a non-empty string.
pub fn namespace_of(object: &Value) -> Option<&str> {
    object
        .get("metadata")?
        .get("namespace")?
        .as_str()
        .filter(|ns| !ns.is_empty())
}

/// Sets `metadata.namespace` (the object must have a `metadata` mapping).
pub fn set_namespace(object: &mut Value, namespace: &str) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(namespace.to_owned()));
    }
}

/// A required string field that is missing or empty, if any: `apiVersion`, `kind` or
/// `metadata.name` (a Helm hook may have `metadata.generateName` instead).
pub fn missing_field(object: &Value) -> Option<&'static str> {
    let is_set = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let meta = |field| object.get("metadata").and_then(|m| m.get(field));
    let named = is_set(meta("name")) || (is_hook(object) && is_set(meta("generateName")));
    if !is_set(object.get("apiVersion")) {
        Some("apiVersion")
    } else if !is_set(object.get("kind")) {
        Some("kind")
    } else if !named {
        Some("metadata.name")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_group_kinds_and_display() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "api", "namespace": "web"}});
        let key = ObjectKey::of(&d).unwrap();
        assert_eq!(key.group, "apps");
        assert_eq!(key.to_string(), "Deployment.apps web/api");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}});
        assert_eq!(ObjectKey::of(&ns).unwrap().to_string(), "Namespace web");
        assert!(is_cluster_scoped("ClusterRole", &[]));
        assert!(!is_cluster_scoped("Widget", &[]));
        assert!(is_cluster_scoped("Widget", &["Widget".into()]));
    }

    #[test]
    fn missing_fields_in_order() {
        assert_eq!(missing_field(&json!({})), Some("apiVersion"));
        assert_eq!(missing_field(&json!({"apiVersion": "v1"})), Some("kind"));
        let no_name = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
        assert_eq!(missing_field(&no_name), Some("metadata.name"));
        let empty = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ""}});
        assert_eq!(missing_field(&empty), Some("metadata.name"));
    }
}
