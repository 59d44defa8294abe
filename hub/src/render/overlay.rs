//! Overlay patches: JSON merge patches (RFC 7386) and how a patch document picks the objects it
//! applies to (`kind` + `metadata.name`, and `metadata.namespace` / the `apiVersion` group when
//! the patch gives them).

use serde_json::{Map, Value};

use super::objects::{self, group_of};

/// Applies a JSON merge patch (RFC 7386) to `target`: mappings merge key by key, `null` removes
/// a key, anything else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The objects a patch document applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatchTarget {
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

impl PatchTarget {
    /// Reads the target from a patch document; the reason when it has none.
    pub fn of(patch: &Value) -> Result<PatchTarget, &'static str> {
        if !patch.is_object() {
            return Err("a patch document must be a mapping");
        }
        fn string(v: Option<&Value>) -> Option<&str> {
            v.and_then(Value::as_str).filter(|s| !s.is_empty())
        }
        let kind =
            string(patch.get("kind")).ok_or("a patch needs kind (the kind of its target)")?;
        let meta = patch.get("metadata");
        let name = string(meta.and_then(|m| m.get("name")))
            .ok_or("a patch needs metadata.name (the name of its target)")?;
        Ok(PatchTarget {
            group: string(patch.get("apiVersion")).map(|v| group_of(v).to_owned()),
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: string(meta.and_then(|m| m.get("namespace"))).map(str::to_owned),
        })
    }

    /// Whether the patch applies to `object`, whose namespace once defaulted is
    /// `effective_namespace`.
    pub fn matches(&self, object: &Value, effective_namespace: Option<&str>) -> bool {
        let field = |name: &str| object.get(name).and_then(Value::as_str);
        field("kind") == Some(self.kind.as_str())
            && object
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                == Some(self.name.as_str())
            && self
                .group
                .as_deref()
                .is_none_or(|g| field("apiVersion").map(objects::group_of) == Some(g))
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| effective_namespace == Some(ns))
    }
}

impl std::fmt::Display for PatchTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind)?;
        if let Some(g) = self.group.as_deref().filter(|g| !g.is_empty()) {
            write!(f, ".{g}")?;
        }
        f.write_str(" ")?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386 section 3.
        let mut doc = json!({"title": "Goodbye!", "author": {"givenName": "John",
            "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut doc, &patch);
        assert_eq!(
            doc,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        let mut scalar = json!({"a": "b"});
        merge_patch(&mut scalar, &json!({"a": {"bb": {"ccc": null}}}));
        assert_eq!(scalar, json!({"a": {"bb": {}}}));
        let mut list = json!([1]);
        merge_patch(&mut list, &json!({"a": 1}));
        assert_eq!(list, json!({"a": 1}));
    }

    #[test]
    fn targets_match_kind_name_and_optional_namespace_and_group() {
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api"}});
        let t =
            PatchTarget::of(&json!({"kind": "Deployment", "metadata": {"name": "api"}})).unwrap();
        assert!(t.matches(&obj, Some("web")));
        let t = PatchTarget::of(&json!({"apiVersion": "apps/v1beta1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "web"}}))
        .unwrap();
        assert!(t.matches(&obj, Some("web")));
        assert!(!t.matches(&obj, Some("other")));
        let t = PatchTarget::of(&json!({"apiVersion": "v1", "kind": "Deployment",
            "metadata": {"name": "api"}}))
        .unwrap();
        assert!(!t.matches(&obj, None));
        assert!(PatchTarget::of(&json!({"kind": "Deployment"})).is_err());
        assert!(PatchTarget::of(&json!(["x"])).is_err());
    }
}
