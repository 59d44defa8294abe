//! The objects of a bundle: their identity, the order they are applied in, and the per-object
//! opt-outs read from annotations.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::hooks::{Hook, is_hook};

/// `flotilla.io/prune: disabled` on an object keeps it in the cluster when it leaves the bundle.
pub const PRUNE_ANNOTATION: &str = "flotilla.io/prune";

/// Identifies one object in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjKey {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    /// The key of a Kubernetes object; `None` when it lacks apiVersion, kind or name.
    pub fn of(obj: &Value) -> Option<ObjKey> {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let meta = obj.get("metadata");
        Some(ObjKey {
            api_version: s(obj.get("apiVersion"))?,
            kind: s(obj.get("kind"))?,
            namespace: s(meta.and_then(|m| m.get("namespace"))).unwrap_or_default(),
            name: s(meta.and_then(|m| m.get("name")))?,
        })
    }

    /// The key of an object named by `metadata.generateName` (and no name): the prefix stands
    /// for the name.
    pub fn generated(obj: &Value) -> Option<ObjKey> {
        let mut named = obj.clone();
        let prefix = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())?;
        named["metadata"]["name"] = prefix.into();
        ObjKey::of(&named)
    }

    /// `(group, version)` of the apiVersion (`""` group for the core API).
    pub fn group_version(&self) -> (&str, &str) {
        match self.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version.as_str()),
        }
    }

    pub fn is_crd(&self) -> bool {
        self.kind == "CustomResourceDefinition" && self.group_version().0 == "apiextensions.k8s.io"
    }

    pub fn is_namespace(&self) -> bool {
        self.kind == "Namespace" && self.api_version == "v1"
    }

    /// Apply order: CRDs, Namespaces, other cluster-scoped objects, namespaced objects.
    pub fn phase(&self) -> u8 {
        if self.is_crd() {
            0
        } else if self.is_namespace() {
            1
        } else if self.namespace.is_empty() {
            2
        } else {
            3
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of a bundle, kept as compact JSON: a parsed `serde_json::Value` costs about
/// twenty times its text in memory, and the agent holds every object of every app for drift
/// checks. It is parsed again only when it is applied.
#[derive(Debug, Clone)]
pub struct Obj {
    pub key: ObjKey,
    json: Box<str>,
}

impl Obj {
    pub fn new(key: ObjKey, value: &Value) -> Self {
        Self {
            key,
            json: serde_json::to_string(value)
                .expect("a JSON value serializes")
                .into_boxed_str(),
        }
    }

    /// The object as the bundle has it.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).expect("kept as valid JSON")
    }
}

/// Whether an object (from the bundle or live) opts out of pruning.
pub fn prune_disabled(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(PRUNE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("disabled")
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleParseError {
    #[error("bundle is not a JSON array of objects: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("bundle object #{0} has no apiVersion, kind or metadata.name")]
    NoIdentity(usize),
    #[error("bundle lists {0} twice")]
    Duplicate(ObjKey),
    #[error(
        "bundle object #{index} ({kind} with generateName {prefix:?}) has no metadata.name and is \
         not a Helm hook: applying it would create a new object at every reconcile"
    )]
    GenerateName {
        index: usize,
        kind: String,
        prefix: String,
    },
    #[error("bundle object #{0}: helm.sh/hook-weight {1:?} is not an integer")]
    HookWeight(usize, String),
}

/// Parses a canonical bundle (a JSON array of objects) into objects in apply order and the
/// Helm hooks the agent runs (`hooks`; hooks it never runs are dropped).
pub fn parse_bundle(bytes: &[u8]) -> Result<(Vec<Obj>, Vec<Hook>), BundleParseError> {
    let values: Vec<Value> = serde_json::from_slice(bytes)?;
    let mut objs = Vec::with_capacity(values.len());
    let mut hooks = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        if is_hook(&value) {
            hooks.extend(Hook::parse(i, &value)?);
            continue;
        }
        let key = match ObjKey::of(&value) {
            Some(key) => key,
            None => {
                return Err(match ObjKey::generated(&value) {
                    Some(k) => BundleParseError::GenerateName {
                        index: i,
                        kind: k.kind,
                        prefix: k.name,
                    },
                    None => BundleParseError::NoIdentity(i),
                });
            }
        };
        objs.push(Obj::new(key, &value));
    }
    objs.sort_by(|a, b| (a.key.phase(), &a.key).cmp(&(b.key.phase(), &b.key)));
    if let Some(w) = objs.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(BundleParseError::Duplicate(w[0].key.clone()));
    }
    Ok((objs, hooks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bundle_is_ordered_crds_namespaces_cluster_scoped_namespaced() {
        let bundle = json!([
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}},
            {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "shop"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.com"}},
        ]);
        let (objs, _) = parse_bundle(&serde_json::to_vec(&bundle).unwrap()).unwrap();
        let kinds: Vec<&str> = objs.iter().map(|o| o.key.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "ClusterRole",
                "Deployment",
                "Widget"
            ]
        );
    }

    #[test]
    fn bad_bundles_are_named() {
        let e = parse_bundle(b"{}").unwrap_err();
        assert!(matches!(e, BundleParseError::NotJson(_)), "{e}");
        let e =
            parse_bundle(br#"[{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}]"#).unwrap_err();
        assert!(e.to_string().contains("#0"), "{e}");
        let cm =
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"n"}}"#;
        let e = parse_bundle(format!("[{cm},{cm}]").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("ConfigMap n/a twice"), "{e}");
    }

    #[test]
    fn hooks_are_set_apart_and_a_generate_name_object_must_be_one() {
        let bundle = json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}},
            {"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"generateName": "m-", "namespace": "n",
                          "annotations": {"helm.sh/hook": "pre-install"}}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "t", "namespace": "n", "annotations": {"helm.sh/hook": "test"}}},
        ]);
        let (objs, hooks) = parse_bundle(&serde_json::to_vec(&bundle).unwrap()).unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].key.name, "c");
        assert_eq!(hooks.len(), 1, "the test hook is dropped");
        assert!(hooks[0].generate);
        assert_eq!(hooks[0].key.name, "m-");

        let plain = json!([{"apiVersion": "batch/v1", "kind": "Job",
                            "metadata": {"generateName": "m-", "namespace": "n"}}]);
        let e = parse_bundle(&serde_json::to_vec(&plain).unwrap()).unwrap_err();
        assert!(
            matches!(e, BundleParseError::GenerateName { index: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("not a Helm hook"), "{e}");
    }

    #[test]
    fn prune_annotation_is_read() {
        assert!(prune_disabled(
            &json!({"metadata": {"annotations": {"flotilla.io/prune": "disabled"}}})
        ));
        assert!(!prune_disabled(
            &json!({"metadata": {"annotations": {"flotilla.io/prune": "enabled"}}})
        ));
        assert!(!prune_disabled(&json!({"metadata": {}})));
    }
}
