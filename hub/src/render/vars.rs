//! `${name}` substitution in the string values of parsed manifests.
//!
//! Syntax: `${name}`, `${name:-default}`, and `$${` for a literal `${`. Names are looked up in
//! the matching overlays' vars (the last matching overlay first), then the app's vars, then the
//! built-ins `cluster.name` and `cluster.labels.KEY`. Substitution runs on string scalars after
//! parsing, never on raw text, so a value cannot inject YAML structure; mapping keys are left
//! alone, and substituted text is not scanned again. A string that is exactly one reference
//! takes the variable's type (string, number, boolean); a default there becomes a number if it
//! is an integer, a boolean if it is `true` or `false`, and a string otherwise.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::VarValue;
use super::selector::ClusterInfo;

/// Errors substituting variables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    #[error(
        "undefined variable {name:?} (define it in flotilla.yaml, or write ${{{name}:-default}})"
    )]
    Undefined { name: String },
    #[error("unterminated variable reference in {text:?} (write $${{ for a literal ${{)")]
    Unterminated { text: String },
    #[error("invalid variable name {name:?} in {text:?} (write $${{ for a literal ${{)")]
    InvalidName { name: String, text: String },
}

/// Whether `name` is a valid variable name: a letter or `_`, then letters, digits, `_`, `-`, `.`
/// and `/` (so `cluster.labels.topology.kubernetes.io/zone` is one name).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

/// The variables visible to one rendering.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// Highest priority first.
    layers: Vec<&'a BTreeMap<String, VarValue>>,
    cluster: &'a ClusterInfo,
}

impl<'a> Scope<'a> {
    /// A scope with only the cluster built-ins.
    pub fn new(cluster: &'a ClusterInfo) -> Self {
        Scope {
            layers: Vec::new(),
            cluster,
        }
    }

    /// Adds a layer of variables below the ones already added (add the highest priority first).
    pub fn with_layer(mut self, vars: &'a BTreeMap<String, VarValue>) -> Self {
        self.layers.push(vars);
        self
    }

    /// The value of `name`, if defined.
    pub fn lookup(&self, name: &str) -> Option<VarValue> {
        if let Some(v) = self.layers.iter().find_map(|l| l.get(name)) {
            return Some(v.clone());
        }
        if name == "cluster.name" {
            return Some(VarValue::String(self.cluster.name.clone()));
        }
        name.strip_prefix("cluster.labels.")
            .and_then(|key| self.cluster.labels.get(key))
            .map(|v| VarValue::String(v.clone()))
    }
}

/// Substitutes every string value in `value` (recursively; keys are left alone).
pub fn substitute(value: &mut Value, scope: &Scope<'_>) -> Result<(), VarError> {
    match value {
        Value::String(s) => {
            if let Some(new) = expand(s, scope)? {
                *value = new;
            }
        }
        Value::Array(items) => {
            for item in items {
                substitute(item, scope)?;
            }
        }
        Value::Object(map) => {
            for (_, item) in map.iter_mut() {
                substitute(item, scope)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Expands the references in `text`; `None` when there is nothing to do.
pub fn expand(text: &str, scope: &Scope<'_>) -> Result<Option<Value>, VarError> {
    if !text.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(inner_start) = tail.strip_prefix("${") {
            let close = inner_start
                .find('}')
                .ok_or_else(|| VarError::Unterminated {
                    text: text.to_owned(),
                })?;
            let inner = &inner_start[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                return Err(VarError::InvalidName {
                    name: name.to_owned(),
                    text: text.to_owned(),
                });
            }
            let after = &inner_start[close + 1..];
            let whole = out.is_empty() && at == 0 && after.is_empty();
            match (scope.lookup(name), default) {
                (Some(v), _) if whole => return Ok(Some(v.to_json())),
                (Some(v), _) => out.push_str(&v.to_string()),
                (None, Some(d)) if whole => return Ok(Some(typed_default(d))),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(VarError::Undefined {
                        name: name.to_owned(),
                    });
                }
            }
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(Value::String(out)))
}

fn typed_default(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match text.parse::<i64>() {
            Ok(n) if !text.starts_with('+') => Value::Number(n.into()),
            _ => Value::String(text.to_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, VarValue)]) -> BTreeMap<String, VarValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn cluster() -> ClusterInfo {
        ClusterInfo::new(
            "eu-1",
            [("region", "eu-west-1"), ("topology.k8s.io/zone", "a")],
        )
    }

    fn run(text: &str, scope: &Scope<'_>) -> Result<Value, VarError> {
        let mut v = json!(text);
        substitute(&mut v, scope)?;
        Ok(v)
    }

    #[test]
    fn layers_take_precedence_in_order() {
        let cluster = cluster();
        let overlay = vars(&[("replicas", VarValue::Number(5.into()))]);
        let app = vars(&[
            ("replicas", VarValue::Number(2.into())),
            ("tier", "web".into()),
        ]);
        let scope = Scope::new(&cluster).with_layer(&overlay).with_layer(&app);
        assert_eq!(run("${replicas}", &scope), Ok(json!(5)));
        assert_eq!(
            run("${tier}-${cluster.name}", &scope),
            Ok(json!("web-eu-1"))
        );
        assert_eq!(
            run(
                "${cluster.labels.region}/${cluster.labels.topology.k8s.io/zone}",
                &scope
            ),
            Ok(json!("eu-west-1/a"))
        );
        let shadow = vars(&[("cluster.name", "override".into())]);
        let scope = Scope::new(&cluster).with_layer(&shadow);
        assert_eq!(run("${cluster.name}", &scope), Ok(json!("override")));
    }

    #[test]
    fn defaults_escapes_and_types() {
        let cluster = cluster();
        let scope = Scope::new(&cluster);
        assert_eq!(run("${missing:-3}", &scope), Ok(json!(3)));
        assert_eq!(run("${missing:-true}", &scope), Ok(json!(true)));
        assert_eq!(run("${missing:-1.10}", &scope), Ok(json!("1.10")));
        assert_eq!(run("v${missing:-3}", &scope), Ok(json!("v3")));
        assert_eq!(run("${missing:-}", &scope), Ok(json!("")));
        assert_eq!(
            run("cost $5 and $${HOME}", &scope),
            Ok(json!("cost $5 and ${HOME}"))
        );
        assert_eq!(run("$", &scope), Ok(json!("$")));
    }

    #[test]
    fn undefined_unterminated_and_invalid_are_errors() {
        let cluster = cluster();
        let scope = Scope::new(&cluster);
        assert_eq!(
            run("x-${nope}", &scope),
            Err(VarError::Undefined {
                name: "nope".into()
            })
        );
        assert_eq!(
            run("${cluster.labels.missing}", &scope),
            Err(VarError::Undefined {
                name: "cluster.labels.missing".into()
            })
        );
        assert!(matches!(
            run("${open", &scope),
            Err(VarError::Unterminated { .. })
        ));
        assert!(matches!(
            run("${a b}", &scope),
            Err(VarError::InvalidName { .. })
        ));
        assert!(matches!(
            run("${}", &scope),
            Err(VarError::InvalidName { .. })
        ));
    }

    #[test]
    fn substituted_text_is_not_rescanned_and_keys_are_kept() {
        let cluster = cluster();
        let app = vars(&[("a", "${b}".into())]);
        let scope = Scope::new(&cluster).with_layer(&app);
        let mut v = json!({"${a}": ["${a}", {"k": "x${a}"}], "n": 1});
        substitute(&mut v, &scope).unwrap();
        assert_eq!(v, json!({"${a}": ["${b}", {"k": "x${b}"}], "n": 1}));
    }
}
