//! YAML parsing shared by `flotilla.yaml` and manifests: documents into JSON values with a budget
//! on the expanded size (so alias bombs fail fast), merge keys applied, duplicate keys and tags
//! rejected; and splitting `serde_yaml_ng` errors into location, field and message.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A 1-based line and column in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

// === errors ===

/// A YAML problem found while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum YamlError {
    /// A syntax or type error, with where it is when known.
    Syntax {
        location: Option<Location>,
        /// The field path reported by the parser (may be empty).
        field: String,
        message: String,
    },
    /// The document dereferences aliases too often (`serde_yaml_ng`'s repetition limit).
    Aliases { location: Option<Location> },
    /// The parsed values outgrow the size budget (aliases count at their expanded size).
    Budget { location: Option<Location> },
}

/// The text `serde_yaml_ng` reports when a document dereferences aliases too often.
const REPETITION_LIMIT: &str = "repetition limit exceeded";

/// Splits a `serde_yaml_ng` error into location, field path and message.
pub(crate) fn split_error(err: &serde_yaml_ng::Error) -> YamlError {
    let location = err.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    let mut text = err.to_string();
    if let Some(loc) = err.location() {
        for suffix in [
            format!(" at line {} column {}", loc.line(), loc.column()),
            format!(" at position {}", loc.index()),
        ] {
            if let Some(at) = text.find(&suffix) {
                text.replace_range(at..at + suffix.len(), "");
                break;
            }
        }
    }
    if text.contains(REPETITION_LIMIT) {
        return YamlError::Aliases { location };
    }
    let (field, message) = match text.split_once(": ") {
        Some((path, rest))
            if !path.is_empty()
                && !path.contains(char::is_whitespace)
                && !path.contains(['`', '"', '\'']) =>
        {
            (path.to_owned(), rest.to_owned())
        }
        _ => (String::new(), text),
    };
    YamlError::Syntax {
        location,
        field,
        message,
    }
}

// === bounded parsing ===

/// A budget on the expanded size of parsed YAML, in approximate bytes of JSON output (always at
/// most the real size, so a document within the bundle limit never runs out of budget).
#[derive(Debug)]
pub(crate) struct Budget {
    remaining: Cell<u64>,
    exhausted: Cell<bool>,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Self {
        Budget {
            remaining: Cell::new(limit),
            exhausted: Cell::new(false),
        }
    }

    /// Spends `cost`; false once the budget is gone.
    pub(crate) fn take(&self, cost: u64) -> bool {
        match self.remaining.get().checked_sub(cost) {
            Some(left) => {
                self.remaining.set(left);
                true
            }
            None => {
                self.exhausted.set(true);
                false
            }
        }
    }

    fn spend<E: de::Error>(&self, cost: u64) -> Result<(), E> {
        if self.take(cost) {
            Ok(())
        } else {
            Err(E::custom("document expands beyond the size limit"))
        }
    }
}

/// Parses every document of a YAML stream into JSON values (an empty document gives
/// `Value::Null`), spending `budget`. Merge keys (`<<`) are applied; duplicate keys, YAML tags
/// and non-scalar keys are errors.
pub(crate) fn parse_documents(bytes: &[u8], budget: &Budget) -> Result<Vec<Value>, YamlError> {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_slice(bytes) {
        match (NodeSeed { budget }).deserialize(document) {
            Ok(value) => docs.push(value),
            Err(err) => {
                let split = split_error(&err);
                return Err(match split {
                    YamlError::Syntax { location, .. } if budget.exhausted.get() => {
                        YamlError::Budget { location }
                    }
                    other => other,
                });
            }
        }
    }
    Ok(docs)
}

/// Deserializes one node into a JSON value.
struct NodeSeed<'b> {
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.spend(5)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.spend(2)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.spend(2)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.spend(2)?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("number {v} cannot be represented in JSON")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.spend(v.len() as u64 + 2)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.spend(4)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.spend(2)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed {
            budget: self.budget,
        })? {
            self.budget.spend(1)?;
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.budget.spend(2)?;
        let mut out = Map::new();
        let mut merged: Vec<Map<String, Value>> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            seen: &out,
            budget: self.budget,
        })? {
            let value = map.next_value_seed(NodeSeed {
                budget: self.budget,
            })?;
            if key == "<<" {
                merged.extend(merge_sources::<A::Error>(value)?);
            } else {
                out.insert(key, value);
            }
        }
        // YAML merge keys: explicit keys win; among merged mappings the first one wins.
        for source in merged {
            for (k, v) in source {
                out.entry(k).or_insert(v);
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, _variant): (String, _) = data.variant()?;
        Err(de::Error::custom(format!(
            "YAML tag !{tag} is not supported"
        )))
    }
}

fn merge_sources<E: de::Error>(value: Value) -> Result<Vec<Map<String, Value>>, E> {
    match value {
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(m) => Ok(m),
                _ => Err(E::custom("a merge key (<<) list may only hold mappings")),
            })
            .collect(),
        _ => Err(E::custom(
            "a merge key (<<) needs a mapping or a list of mappings",
        )),
    }
}

/// Deserializes a mapping key: a scalar, turned into a string; a repeated key is an error
/// (raised here so that its location is the key's).
struct KeySeed<'a> {
    seen: &'a Map<String, Value>,
    budget: &'a Budget,
}

impl KeySeed<'_> {
    fn accept<E: de::Error>(self, key: String) -> Result<String, E> {
        self.budget.spend(key.len() as u64 + 3)?;
        if key != "<<" && self.seen.contains_key(&key) {
            return Err(E::custom(format!("duplicate key {key:?}")));
        }
        Ok(key)
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.accept(v.to_owned())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        self.accept(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        self.accept(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        self.accept(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        self.accept(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_applies_merge_keys_and_rejects_duplicates() {
        let budget = Budget::new(1 << 20);
        let docs = parse_documents(b"a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  q: 3\n", &budget).unwrap();
        assert_eq!(docs[0]["b"], serde_json::json!({"p": 1, "q": 3}));
        let err = parse_documents(b"a: 1\nb: 2\na: 3\n", &budget).unwrap_err();
        match err {
            YamlError::Syntax {
                location, message, ..
            } => {
                assert_eq!(location, Some(Location { line: 3, column: 1 }));
                assert!(message.contains("duplicate key \"a\""), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
