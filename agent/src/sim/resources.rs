//! The resource types the simulated cluster serves: a fixed table of built-in kinds, plus the
//! kinds of established CustomResourceDefinitions, read from the stored CRD objects on demand.

use serde_json::Value;

/// One built-in kind: where it lives, its plural, its scope and whether it has a status
/// subresource.
struct BuiltIn {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
) -> BuiltIn {
    BuiltIn {
        group,
        version,
        kind,
        plural,
        namespaced,
        status,
    }
}

const NS: bool = true;
const CLUSTER: bool = false;
const STATUS: bool = true;
const NO_STATUS: bool = false;

#[rustfmt::skip]
const BUILT_INS: &[BuiltIn] = &[
    kind("", "v1", "Namespace", "namespaces", CLUSTER, STATUS),
    kind("", "v1", "ConfigMap", "configmaps", NS, NO_STATUS),
    kind("", "v1", "Secret", "secrets", NS, NO_STATUS),
    kind("", "v1", "Service", "services", NS, STATUS),
    kind("", "v1", "ServiceAccount", "serviceaccounts", NS, NO_STATUS),
    kind("", "v1", "Pod", "pods", NS, STATUS),
    kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", NS, STATUS),
    kind("", "v1", "PersistentVolume", "persistentvolumes", CLUSTER, STATUS),
    kind("", "v1", "Endpoints", "endpoints", NS, NO_STATUS),
    kind("", "v1", "Event", "events", NS, NO_STATUS),
    kind("", "v1", "LimitRange", "limitranges", NS, NO_STATUS),
    kind("", "v1", "ResourceQuota", "resourcequotas", NS, STATUS),
    kind("", "v1", "Node", "nodes", CLUSTER, STATUS),
    kind("apps", "v1", "Deployment", "deployments", NS, STATUS),
    kind("apps", "v1", "StatefulSet", "statefulsets", NS, STATUS),
    kind("apps", "v1", "DaemonSet", "daemonsets", NS, STATUS),
    kind("apps", "v1", "ReplicaSet", "replicasets", NS, STATUS),
    kind("apps", "v1", "ControllerRevision", "controllerrevisions", NS, NO_STATUS),
    kind("batch", "v1", "Job", "jobs", NS, STATUS),
    kind("batch", "v1", "CronJob", "cronjobs", NS, STATUS),
    kind("networking.k8s.io", "v1", "Ingress", "ingresses", NS, STATUS),
    kind("networking.k8s.io", "v1", "IngressClass", "ingressclasses", CLUSTER, NO_STATUS),
    kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", NS, NO_STATUS),
    kind("rbac.authorization.k8s.io", "v1", "Role", "roles", NS, NO_STATUS),
    kind("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", NS, NO_STATUS),
    kind("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", CLUSTER, NO_STATUS),
    kind("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", CLUSTER, NO_STATUS),
    kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", NS, STATUS),
    kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", NS, STATUS),
    kind("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", CLUSTER, STATUS),
    kind("storage.k8s.io", "v1", "StorageClass", "storageclasses", CLUSTER, NO_STATUS),
    kind("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", CLUSTER, NO_STATUS),
    kind("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", CLUSTER, NO_STATUS),
    kind("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", CLUSTER, NO_STATUS),
    kind("coordination.k8s.io", "v1", "Lease", "leases", NS, NO_STATUS),
];

/// Group and plural of the CustomResourceDefinition resource.
pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

/// A servable resource: one (group, version, plural).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    /// Has a `/status` subresource: main writes keep `.status`, status writes change only it.
    pub status: bool,
    /// Defined by a CustomResourceDefinition.
    pub custom: bool,
}

impl ResourceType {
    fn built_in(b: &BuiltIn) -> Self {
        Self {
            group: b.group.into(),
            version: b.version.into(),
            kind: b.kind.into(),
            plural: b.plural.into(),
            singular: b.kind.to_ascii_lowercase(),
            namespaced: b.namespaced,
            status: b.status,
            custom: false,
        }
    }

    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `configmaps`: how the real server names a resource in messages.
    pub fn qualified_resource(&self) -> String {
        qualify(&self.plural, &self.group)
    }

    /// `Deployment.apps`, or `ConfigMap`.
    pub fn qualified_kind(&self) -> String {
        qualify(&self.kind, &self.group)
    }

    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

fn qualify(name: &str, group: &str) -> String {
    if group.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{group}")
    }
}

/// The built-in resource at (group, version, plural).
pub(crate) fn built_in(group: &str, version: &str, plural: &str) -> Option<ResourceType> {
    BUILT_INS
        .iter()
        .find(|b| b.group == group && b.version == version && b.plural == plural)
        .map(ResourceType::built_in)
}

/// The built-in resource of (group, kind), in any version.
pub(crate) fn built_in_kind(group: &str, kind: &str) -> Option<ResourceType> {
    BUILT_INS
        .iter()
        .find(|b| b.group == group && b.kind == kind)
        .map(ResourceType::built_in)
}

/// Every built-in resource.
#[cfg(test)]
pub(crate) fn all_built_ins() -> Vec<ResourceType> {
    BUILT_INS.iter().map(ResourceType::built_in).collect()
}

/// Every built-in resource of (group, version); `None` when that group/version is not built in.
pub(crate) fn built_ins_in(group: &str, version: &str) -> Option<Vec<ResourceType>> {
    let list: Vec<ResourceType> = BUILT_INS
        .iter()
        .filter(|b| b.group == group && b.version == version)
        .map(ResourceType::built_in)
        .collect();
    (!list.is_empty()).then_some(list)
}

/// The built-in API groups (without the core group) with their one version, in table order.
pub(crate) fn built_in_groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for b in BUILT_INS.iter().filter(|b| !b.group.is_empty()) {
        if !out.iter().any(|(g, _)| *g == b.group) {
            out.push((b.group, b.version));
        }
    }
    out
}

// === CustomResourceDefinitions ===

/// What a stored CRD defines, read from its spec.
#[derive(Debug, Clone)]
pub(crate) struct CrdInfo {
    pub group: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    /// Served versions with whether each has a status subresource, in spec order.
    pub versions: Vec<(String, bool)>,
    /// The storage version (else the first served one).
    pub storage: Option<String>,
    pub established: bool,
}

impl CrdInfo {
    /// Reads a CRD object; `None` when its spec lacks what serving needs.
    pub fn from_object(crd: &Value) -> Option<Self> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        let kind = text(names, "kind")?;
        let plural = text(names, "plural")?;
        let versions: Vec<(String, bool)> = spec
            .get("versions")?
            .as_array()?
            .iter()
            .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
            .filter_map(|v| {
                let status = v
                    .pointer("/subresources/status")
                    .is_some_and(|s| !s.is_null());
                Some((text(v, "name")?, status))
            })
            .collect();
        let storage = spec
            .get("versions")?
            .as_array()?
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
            .and_then(|v| text(v, "name"))
            .or_else(|| versions.first().map(|(v, _)| v.clone()));
        let established = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Established")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            });
        Some(Self {
            group: text(spec, "group")?,
            singular: text(names, "singular").unwrap_or_else(|| kind.to_ascii_lowercase()),
            kind,
            plural,
            namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            versions,
            storage,
            established,
        })
    }

    pub fn resource(&self, version: &str) -> Option<ResourceType> {
        let (version, status) = self.versions.iter().find(|(v, _)| v == version)?;
        Some(ResourceType {
            group: self.group.clone(),
            version: version.clone(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
            singular: self.singular.clone(),
            namespaced: self.namespaced,
            status: *status,
            custom: true,
        })
    }
}

/// Kubernetes version ordering: GA > beta > alpha > anything else, higher numbers first.
pub(crate) fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(major) = digits.parse::<u32>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    let minor = |s: &str| s.parse::<u32>().ok();
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta").and_then(minor) {
        (2, major, n)
    } else if let Some(n) = tail.strip_prefix("alpha").and_then(minor) {
        (1, major, n)
    } else {
        (0, 0, 0)
    }
}

// === Names ===

/// Checks `name` the way the real server checks names of this kind; the error text is the
/// real server's wording.
pub(crate) fn validate_name(rt: &ResourceType, name: &str) -> Result<(), String> {
    if rt.group == "rbac.authorization.k8s.io" {
        // RBAC names are path segments ("system:aggregate-to-edit").
        return if name == "." || name == ".." {
            Err(format!("may not be '{name}'"))
        } else if name.contains('/') || name.contains('%') {
            Err(format!(
                "may not contain '{}'",
                if name.contains('/') { "/" } else { "%" }
            ))
        } else {
            Ok(())
        };
    }
    if rt.is("", "Namespace") {
        return dns1123_label(name);
    }
    if rt.is("", "Service") {
        return dns1035_label(name);
    }
    dns1123_subdomain(name)
}

fn label_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns1123_subdomain(name: &str) -> Result<(), String> {
    check_name(
        name,
        253,
        name.split('.').all(label_chars_ok),
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
    )
}

fn dns1123_label(name: &str) -> Result<(), String> {
    check_name(
        name,
        63,
        label_chars_ok(name),
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
    )
}

fn dns1035_label(name: &str) -> Result<(), String> {
    check_name(
        name,
        63,
        label_chars_ok(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
    )
}

/// The API server's verdict on a name: too long (over `max` characters) first, then, unless
/// it has the right form (`well_formed`), the message saying what that form is.
fn check_name(name: &str, max: usize, well_formed: bool, form: &str) -> Result<(), String> {
    if name.len() > max {
        Err(format!("must be no more than {max} characters"))
    } else if well_formed {
        Ok(())
    } else {
        Err(form.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha1", "v2beta1", "v1", "v1beta2", "foo", "v2"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(v, ["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }

    #[test]
    fn names_are_checked_per_kind() {
        let rt = |g: &str, k: &str| built_in_kind(g, k).unwrap();
        let cm = rt("", "ConfigMap");
        assert!(validate_name(&cm, "a.b-c").is_ok());
        assert!(validate_name(&cm, "Web").is_err());
        assert!(validate_name(&cm, "-a").is_err());
        assert!(validate_name(&cm, &"a".repeat(254)).is_err());
        assert!(validate_name(&rt("", "Namespace"), "a.b").is_err());
        assert!(validate_name(&rt("", "Service"), "1a").is_err());
        let cr = rt("rbac.authorization.k8s.io", "ClusterRole");
        assert!(validate_name(&cr, "system:aggregate-to-edit").is_ok());
        assert!(validate_name(&cr, "a/b").is_err());
    }
}
