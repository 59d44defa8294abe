//! Label and field selectors of list and delete-collection requests.

use serde_json::Value;

use super::fields;

/// One term of a label or field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A label selector (`a=b,c!=d,e,!f,g in (h,i)`) or field selector (`metadata.name=x`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector(Vec<Term>);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            terms.push(
                Self::term(part).ok_or_else(|| format!("unable to parse requirement: {part:?}"))?,
            );
        }
        Ok(Self(terms))
    }

    fn term(p: &str) -> Option<Term> {
        let set = |rest: &str| -> Option<Vec<String>> {
            let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            Some(inner.split(',').map(|v| v.trim().to_string()).collect())
        };
        if let Some(k) = p.strip_prefix('!') {
            return Some(Term::NotExists(k.trim().to_string()));
        }
        if let Some((k, rest)) = p.split_once(" notin ") {
            return Some(Term::NotIn(k.trim().to_string(), set(rest)?));
        }
        if let Some((k, rest)) = p.split_once(" in ") {
            return Some(Term::In(k.trim().to_string(), set(rest)?));
        }
        if let Some((k, v)) = p.split_once("!=") {
            return Some(Term::NotEq(k.trim().to_string(), v.trim().to_string()));
        }
        if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            return Some(Term::Eq(k.trim().to_string(), v.trim().to_string()));
        }
        if p.contains(|c: char| c.is_whitespace() || c == '(' || c == ')') {
            return None;
        }
        Some(Term::Exists(p.to_string()))
    }

    fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Eq(k, v) => value(k).as_deref() == Some(v.as_str()),
            Term::NotEq(k, v) => value(k).as_deref() != Some(v.as_str()),
            Term::In(k, vs) => value(k).is_some_and(|x| vs.contains(&x)),
            Term::NotIn(k, vs) => value(k).is_none_or(|x| !vs.contains(&x)),
            Term::Exists(k) => value(k).is_some(),
            Term::NotExists(k) => value(k).is_none(),
        })
    }

    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.matches(|k| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(String::from)
        })
    }

    /// Field selectors: any dotted path of the object, compared as a string.
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|k| {
            let path: Vec<String> = k.split('.').map(String::from).collect();
            match fields::get(object, &path)? {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "n", "labels": labels}})
    }

    #[test]
    fn label_selectors() {
        let o = labelled(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| Selector::parse(s).unwrap().matches_labels(&o);
        assert!(m("app=web,tier"));
        assert!(m("app==web"));
        assert!(!m("app=db"));
        assert!(m("app!=db,!missing"));
        assert!(m("tier in (front, back)"));
        assert!(!m("tier notin (front)"));
        assert!(m(""));
        assert!(Selector::parse("a in b").is_err());
        let f = Selector::parse("metadata.name=n").unwrap();
        assert!(f.matches_fields(&o));
    }
}
