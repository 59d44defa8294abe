//! Reading manifest and patch files from a tree into documents: size limits, YAML (multi-document,
//! alias budget) and JSON parsing, empty documents skipped, `kind: List` expanded.

use serde_json::Value;

use super::Limits;
use super::error::{Origin, RenderError};
use super::tree::SourceTree;
use super::yaml::{self, Budget, YamlError};

/// A parsed document (a mapping) and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceDoc {
    pub origin: Origin,
    pub value: Value,
}

/// Whether a file name is read as manifests: `.yaml`, `.yml` or `.json`.
pub(crate) fn is_manifest(name: &str) -> bool {
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Reads the file `file` (stored at the symlink-free path `real`, `size` bytes per the tree)
/// into its non-empty documents, each a mapping.
pub(crate) fn read_documents(
    tree: &dyn SourceTree,
    file: &str,
    real: &str,
    size: u64,
    limits: &Limits,
    budget: &Budget,
) -> Result<Vec<SourceDoc>, RenderError> {
    let too_large = |size| RenderError::FileTooLarge {
        file: file.to_owned(),
        size,
        limit: limits.max_file_bytes,
    };
    if size > limits.max_file_bytes {
        return Err(too_large(size));
    }
    let bytes = tree.read(real)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    let values = if file.ends_with(".json") {
        if !budget.take(bytes.len() as u64) {
            return Err(RenderError::ExpansionLimit {
                file: file.to_owned(),
                limit: limits.max_bundle_bytes,
            });
        }
        vec![
            serde_json::from_slice::<Value>(&bytes).map_err(|e| RenderError::Json {
                file: file.to_owned(),
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })?,
        ]
    } else {
        yaml::parse_documents(&bytes, budget).map_err(|e| yaml_error(file, e, limits))?
    };
    into_documents(file, values)
}

/// The documents of a tool's multi-document YAML output (`kubectl kustomize`, `helm template`),
/// as if read from a file named `file`.
pub(crate) fn parse_output(
    file: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<SourceDoc>, RenderError> {
    let budget = Budget::new(limits.max_bundle_bytes);
    let values = yaml::parse_documents(bytes, &budget).map_err(|e| yaml_error(file, e, limits))?;
    into_documents(file, values)
}

/// Non-empty documents, `List`s expanded; each must be a mapping.
fn into_documents(file: &str, values: Vec<Value>) -> Result<Vec<SourceDoc>, RenderError> {
    let mut docs = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_owned(),
            document: i + 1,
            item: None,
        };
        match value {
            Value::Null => {}
            Value::Object(_) if is_list(&value) => {
                let Some(Value::Array(items)) = value.get("items") else {
                    continue;
                };
                for (j, item) in items.iter().enumerate() {
                    let origin = Origin {
                        item: Some(j + 1),
                        ..origin.clone()
                    };
                    if !item.is_object() {
                        return Err(RenderError::NotAnObject { origin });
                    }
                    docs.push(SourceDoc {
                        origin,
                        value: item.clone(),
                    });
                }
            }
            Value::Object(_) => docs.push(SourceDoc { origin, value }),
            _ => return Err(RenderError::NotAnObject { origin }),
        }
    }
    Ok(docs)
}

/// A `v1` `List` (as `kubectl get -o yaml` writes) whose items are the objects.
fn is_list(value: &Value) -> bool {
    value.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && value.get("kind").and_then(Value::as_str) == Some("List")
        && value.get("items").is_some_and(Value::is_array)
}

fn yaml_error(file: &str, err: YamlError, limits: &Limits) -> RenderError {
    match err {
        YamlError::Syntax {
            location,
            field,
            message,
        } => RenderError::Yaml {
            file: file.to_owned(),
            location,
            message: if field.is_empty() {
                message
            } else {
                format!("{field}: {message}")
            },
        },
        YamlError::Aliases { location } => RenderError::AliasBomb {
            file: file.to_owned(),
            location,
        },
        YamlError::Budget { .. } => RenderError::ExpansionLimit {
            file: file.to_owned(),
            limit: limits.max_bundle_bytes,
        },
    }
}
