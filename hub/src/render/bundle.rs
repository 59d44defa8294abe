//! Rendering an app for a cluster into a canonical, content-addressed bundle: read manifests,
//! substitute variables, apply overlays, default namespaces, check identities, serialize
//! canonically and digest.

use std::collections::BTreeSet;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Limits;
use super::config::{AppConfig, FleetConfig};
use super::error::{Origin, RenderError};
use super::manifests::{SourceDoc, is_manifest, read_documents};
use super::objects::{ObjectKey, is_cluster_scoped, missing_field, namespace_of, set_namespace};
use super::overlay::{PatchTarget, merge_patch};
use super::selector::ClusterInfo;
use super::tree::{self, Resolved, SourceTree, TreeError};
use super::vars::{Scope, substitute};
use super::yaml::Budget;

/// An app rendered for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedApp {
    /// The objects, sorted by (group, kind, namespace, name).
    pub objects: Vec<Value>,
    /// The canonical bundle: a compact JSON array of `objects`, keys sorted (see
    /// [`canonical_bundle`]).
    pub canonical: Vec<u8>,
    /// `sha256:<hex>` of `canonical`.
    pub digest: String,
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The clusters among `clusters` that `app` targets (none when the app is unknown).
pub fn targeted_clusters<'c>(
    config: &FleetConfig,
    app: &str,
    clusters: &'c [ClusterInfo],
) -> Vec<&'c ClusterInfo> {
    match config.apps.get(app) {
        Some(app) => clusters
            .iter()
            .filter(|c| app.targets.matches(&c.labels))
            .collect(),
        None => Vec::new(),
    }
}

/// Renders `app` for `cluster` (reads the tree each time; to render one app for many clusters,
/// load it once with [`AppManifests::load`]).
pub fn render_app(
    tree: &dyn SourceTree,
    config: &FleetConfig,
    app: &str,
    cluster: &ClusterInfo,
    limits: &Limits,
) -> Result<RenderedApp, RenderError> {
    AppManifests::load(tree, config, app, limits)?.render(cluster)
}

/// An app's manifests and patch files, read and parsed once, ready to render for any cluster.
#[derive(Debug, Clone)]
pub struct AppManifests {
    app: String,
    config: AppConfig,
    limits: Limits,
    docs: Vec<SourceDoc>,
    /// Per overlay, the documents of its patch files in order.
    patches: Vec<Vec<SourceDoc>>,
    /// No manifest or patch refers to a cluster built-in (`${cluster.…}`): the rendering
    /// depends on the cluster only through the overlays that match it.
    cluster_free: bool,
}

/// Whether a string value of `value` refers to a cluster built-in (or might: a literal
/// `$${cluster.` counts too).
fn mentions_cluster(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("${cluster."),
        Value::Array(items) => items.iter().any(mentions_cluster),
        Value::Object(map) => map.values().any(mentions_cluster),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

impl AppManifests {
    /// Reads the manifests under the app's directory (recursive, sorted, hidden entries skipped,
    /// `.yaml`/`.yml`/`.json`, patch files left out) and every overlay's patch files.
    pub fn load(
        tree: &dyn SourceTree,
        config: &FleetConfig,
        app: &str,
        limits: &Limits,
    ) -> Result<Self, RenderError> {
        let app_config = config
            .apps
            .get(app)
            .ok_or_else(|| RenderError::UnknownApp(app.to_owned()))?;
        let budget = Budget::new(limits.max_bundle_bytes);
        let mut patch_files = BTreeSet::new();
        let mut patches = Vec::new();
        for overlay in &app_config.overlays {
            let mut docs = Vec::new();
            for patch in &overlay.patches {
                let file = tree::join(&config.source_path, patch);
                let (real, size) = match tree::resolve(tree, &file)? {
                    Resolved::File { path, size } => (path, size),
                    Resolved::Dir { .. } => return Err(TreeError::NotAFile { path: file }.into()),
                };
                docs.extend(read_documents(tree, &file, &real, size, limits, &budget)?);
                patch_files.insert(real);
            }
            patches.push(docs);
        }
        let dir = tree::join(&config.source_path, &app_config.path);
        match tree::resolve(tree, &dir) {
            Ok(Resolved::Dir { .. }) => {}
            Ok(Resolved::File { .. }) | Err(TreeError::NotFound { .. }) => {
                return Err(RenderError::AppPathNotFound {
                    app: app.to_owned(),
                    path: dir,
                });
            }
            Err(e) => return Err(e.into()),
        }
        let mut docs = Vec::new();
        for found in tree::walk_files(tree, &dir, &is_manifest)? {
            if patch_files.contains(&found.real) {
                continue;
            }
            docs.extend(read_documents(
                tree,
                &found.path,
                &found.real,
                found.size,
                limits,
                &budget,
            )?);
        }
        let cluster_free = !docs
            .iter()
            .chain(patches.iter().flatten())
            .any(|d| mentions_cluster(&d.value));
        Ok(AppManifests {
            app: app.to_owned(),
            config: app_config.clone(),
            limits: *limits,
            docs,
            patches,
            cluster_free,
        })
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// What the rendering for `cluster` depends on, when that is less than the cluster itself:
    /// the overlays that match it, unless the manifests refer to cluster built-ins. Clusters
    /// with the same key render alike, so a fleet renders once per distinct key.
    pub fn render_key(&self, cluster: &ClusterInfo) -> Option<Vec<usize>> {
        self.cluster_free.then(|| self.matching(cluster))
    }

    fn matching(&self, cluster: &ClusterInfo) -> Vec<usize> {
        (0..self.config.overlays.len())
            .filter(|&i| self.config.overlays[i].when.matches(&cluster.labels))
            .collect()
    }

    /// Renders the app for `cluster` (whether the app targets it is the caller's business).
    pub fn render(&self, cluster: &ClusterInfo) -> Result<RenderedApp, RenderError> {
        let matching = self.matching(cluster);
        let mut scope = Scope::new(cluster);
        for &i in matching.iter().rev() {
            scope = scope.with_layer(&self.config.overlays[i].vars);
        }
        let scope = scope.with_layer(&self.config.vars);

        let mut objects = Vec::with_capacity(self.docs.len());
        for doc in &self.docs {
            let value = substituted(doc, &scope)?;
            if let Some(field) = missing_field(&value) {
                return Err(RenderError::MissingField {
                    origin: doc.origin.clone(),
                    field,
                });
            }
            objects.push((doc.origin.clone(), value));
        }
        for &i in &matching {
            for doc in &self.patches[i] {
                self.apply_patch(doc, &scope, &mut objects)?;
            }
        }
        self.finish(objects)
    }

    fn is_cluster_scoped(&self, object: &Value) -> bool {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        is_cluster_scoped(kind, &self.config.cluster_scoped_kinds)
    }

    /// The namespace `object` ends up in (its own, or the app's default if it is namespaced).
    fn effective_namespace<'v>(&'v self, object: &'v Value) -> Option<&'v str> {
        if self.is_cluster_scoped(object) {
            return None;
        }
        namespace_of(object).or(self.config.namespace.as_deref())
    }

    fn apply_patch(
        &self,
        doc: &SourceDoc,
        scope: &Scope<'_>,
        objects: &mut [(Origin, Value)],
    ) -> Result<(), RenderError> {
        let patch = substituted(doc, scope)?;
        let target = PatchTarget::of(&patch).map_err(|reason| RenderError::InvalidPatch {
            origin: doc.origin.clone(),
            reason,
        })?;
        let mut hit = false;
        for (_, object) in objects.iter_mut() {
            let namespace = self.effective_namespace(object).map(str::to_owned);
            if target.matches(object, namespace.as_deref()) {
                merge_patch(object, &patch);
                hit = true;
            }
        }
        if !hit {
            return Err(RenderError::PatchUnmatched {
                origin: doc.origin.clone(),
                target: target.to_string(),
            });
        }
        Ok(())
    }

    /// Defaults namespaces, rejects duplicates, sorts, serializes and digests.
    fn finish(&self, objects: Vec<(Origin, Value)>) -> Result<RenderedApp, RenderError> {
        let mut keyed = Vec::with_capacity(objects.len());
        for (origin, mut object) in objects {
            let key = match (missing_field(&object), ObjectKey::of(&object)) {
                (None, Some(key)) => key,
                (field, _) => {
                    return Err(RenderError::MissingField {
                        origin,
                        field: field.unwrap_or("metadata.name"),
                    });
                }
            };
            let key = if self.is_cluster_scoped(&object) || !key.namespace.is_empty() {
                key
            } else {
                let Some(ns) = self.config.namespace.as_deref() else {
                    return Err(RenderError::NoNamespace {
                        origin,
                        object: key.to_string(),
                        app: self.app.clone(),
                    });
                };
                set_namespace(&mut object, ns);
                ObjectKey {
                    namespace: ns.to_owned(),
                    ..key
                }
            };
            keyed.push((key, origin, object));
        }
        // Stable: objects with equal keys stay in file order, so `first` is the earlier file.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in keyed.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(RenderError::Duplicate {
                    object: pair[0].0.to_string(),
                    first: pair[0].1.clone(),
                    second: pair[1].1.clone(),
                });
            }
        }
        let objects: Vec<Value> = keyed.into_iter().map(|(_, _, o)| o).collect();
        let canonical = canonical_bundle(&objects);
        let size = canonical.len() as u64;
        if size > self.limits.max_bundle_bytes {
            return Err(RenderError::BundleTooLarge {
                app: self.app.clone(),
                size,
                limit: self.limits.max_bundle_bytes,
            });
        }
        Ok(RenderedApp {
            digest: digest_of(&canonical),
            objects,
            canonical,
        })
    }
}

fn substituted(doc: &SourceDoc, scope: &Scope<'_>) -> Result<Value, RenderError> {
    let mut value = doc.value.clone();
    substitute(&mut value, scope).map_err(|error| RenderError::Variable {
        origin: doc.origin.clone(),
        error,
    })?;
    Ok(value)
}

/// The canonical bundle of sorted `objects`: their canonical JSON array (see
/// [`canonical_json`]).
pub fn canonical_bundle(objects: &[Value]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_canonical(object, &mut out);
    }
    out.push(b']');
    out
}

/// The canonical JSON form of `value`: compact, mapping keys sorted by their UTF-8 bytes, strings
/// escaped minimally (`"`, `\`, and control characters), numbers as `serde_json` prints them.
/// Equal values always give equal bytes, whatever key order or file layout they came from.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_escapes() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [true, null], "x": "q\"\n\u0001é"}}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": "q\"\n\u0001é", "y": [true, null]}, "b": 1}"#)
                .unwrap();
        let bytes = canonical_json(&a);
        assert_eq!(bytes, canonical_json(&b));
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"a":{"x":"q\"\n\u0001é","y":[true,null]},"b":1}"#
        );
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, a);
        assert_eq!(canonical_json(&json!(1.5)), b"1.5");
    }

    #[test]
    fn digest_format() {
        assert_eq!(
            digest_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
