//! What a kustomization reads: the directory that holds it and every local base, component,
//! patch and generator file it names, transitively, so that only those are copied for
//! `kubectl kustomize` and the render is cached by their content. Remote bases (git URLs) are
//! listed, since they need the network.

use std::collections::BTreeSet;

use serde_json::Value;

use super::super::error::RenderError;
use super::super::tree::{self, Resolved, SourceTree, TreeError};

/// The names kustomize looks for, in its order.
pub(crate) const FILE_NAMES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Fields whose entries may be remote (kustomize fetches them with git or HTTP).
const REMOTE_FIELDS: [&str; 3] = ["resources", "bases", "components"];

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The smallest directory holding everything the kustomization reads (`""`: the root).
    pub root: String,
    /// Remote references (git or HTTP URLs), which need the network.
    pub remote: Vec<String>,
}

/// Scans the kustomization in the (real) directory `dir`.
pub(crate) fn scan(tree: &dyn SourceTree, dir: &str) -> Result<Scan, RenderError> {
    let mut read = BTreeSet::from([dir.to_owned()]);
    let mut queue = vec![dir.to_owned()];
    let mut seen = BTreeSet::new();
    let mut remote = Vec::new();
    while let Some(d) = queue.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        let Some(value) = kustomization(tree, &d)? else {
            continue;
        };
        let mut strings = Vec::new();
        collect_strings(&value, &mut strings);
        for s in strings {
            let candidate = generator_path(s);
            if candidate.is_empty() || candidate.contains('\n') {
                continue;
            }
            let joined = tree::join(&d, candidate);
            let Ok(path) = tree::normalize(&joined) else {
                if candidate.starts_with("..") {
                    return Err(RenderError::Tool {
                        what: format!("kustomize build {dir}"),
                        message: format!(
                            "{d}: {candidate:?} is outside the source path; a kustomization may only use files of the source"
                        ),
                    });
                }
                continue;
            };
            match tree::resolve(tree, &path) {
                Ok(Resolved::Dir { path }) => {
                    read.insert(path.clone());
                    queue.push(path);
                }
                Ok(Resolved::File { path, .. }) => {
                    read.insert(parent(&path).to_owned());
                }
                Err(TreeError::SymlinkEscapes { link, target }) => {
                    return Err(TreeError::SymlinkEscapes { link, target }.into());
                }
                Err(_) => {}
            }
        }
        for field in REMOTE_FIELDS {
            for entry in value
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(s) = entry.as_str()
                    && is_remote(s)
                {
                    remote.push(s.to_owned());
                }
            }
        }
    }
    let root = read
        .iter()
        .map(String::as_str)
        .reduce(common_ancestor)
        .unwrap_or("")
        .to_owned();
    Ok(Scan { root, remote })
}

/// The parsed kustomization file of `dir`, if it has one that parses (one that does not is
/// kustomize's to report, in its own words).
fn kustomization(tree: &dyn SourceTree, dir: &str) -> Result<Option<Value>, RenderError> {
    let names: Vec<String> = match tree.entries(dir) {
        Ok(entries) => entries.into_iter().map(|e| e.name).collect(),
        Err(_) => return Ok(None),
    };
    let Some(name) = FILE_NAMES.iter().find(|n| names.iter().any(|m| m == *n)) else {
        return Ok(None);
    };
    let file = tree::join(dir, name);
    let bytes = match tree::resolve(tree, &file)? {
        Resolved::File { path, .. } => tree.read(&path)?,
        Resolved::Dir { .. } => return Ok(None),
    };
    Ok(serde_yaml_ng::from_slice::<Value>(&bytes).ok())
}

fn collect_strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A generator source `key=path` names `path`.
fn generator_path(s: &str) -> &str {
    match s.split_once('=') {
        Some((key, path)) if !key.contains('/') => path,
        _ => s,
    }
}

fn is_remote(s: &str) -> bool {
    s.contains("://")
        || s.starts_with("git@")
        || s.starts_with("github.com/")
        || s.starts_with("gitlab.com/")
        || s.starts_with("bitbucket.org/")
        || s.contains("?ref=")
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// The deepest directory containing both `a` and `b` (tree paths).
fn common_ancestor<'a>(a: &'a str, b: &str) -> &'a str {
    let mut end = 0;
    let mut ai = a.split('/');
    let mut bi = b.split('/');
    let mut first = true;
    loop {
        match (ai.next(), bi.next()) {
            (Some(x), Some(y)) if x == y && !x.is_empty() => {
                end += x.len() + usize::from(!first);
                first = false;
            }
            _ => break,
        }
    }
    &a[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::DirTree;

    fn write(root: &std::path::Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn common_ancestors() {
        assert_eq!(common_ancestor("a/b/c", "a/b/d"), "a/b");
        assert_eq!(common_ancestor("a/b", "a/bc"), "a");
        assert_eq!(common_ancestor("a", "b"), "");
        assert_eq!(common_ancestor("", "a"), "");
        assert_eq!(
            common_ancestor("web/overlays/prod", "web/overlays/prod"),
            "web/overlays/prod"
        );
    }

    #[test]
    fn the_root_covers_bases_components_and_generator_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "web/base/kustomization.yaml",
            "resources: [deployment.yaml]\n",
        );
        write(r, "web/base/deployment.yaml", "kind: Deployment\n");
        write(r, "shared/files/app.properties", "a=1\n");
        write(
            r,
            "web/overlays/prod/kustomization.yaml",
            "resources: [../../base, https://example.invalid/x.yaml]\n\
             configMapGenerator:\n- name: c\n  files: [props=../../../shared/files/app.properties]\n\
             images: [{name: web, newTag: '2'}]\n",
        );
        let tree = DirTree::new(r);
        let scan = scan(&tree, "web/overlays/prod").unwrap();
        assert_eq!(scan.root, "");
        assert_eq!(scan.remote, vec!["https://example.invalid/x.yaml"]);

        write(r, "solo/kustomization.yaml", "resources: [cm.yaml]\n");
        write(r, "solo/cm.yaml", "kind: ConfigMap\n");
        assert_eq!(scan_root(&tree, "solo"), "solo");
        write(
            r,
            "web2/overlays/a/kustomization.yaml",
            "resources: [../../base]\n",
        );
        write(r, "web2/base/kustomization.yaml", "resources: []\n");
        assert_eq!(scan_root(&tree, "web2/overlays/a"), "web2");
    }

    fn scan_root(tree: &DirTree, dir: &str) -> String {
        scan(tree, dir).unwrap().root
    }

    #[test]
    fn a_reference_above_the_source_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "k/kustomization.yaml",
            "resources: [../../outside]\n",
        );
        let err = scan(&DirTree::new(dir.path()), "k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the source path"), "{err}");
    }
}
