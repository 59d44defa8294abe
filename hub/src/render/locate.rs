//! Finding the line and column of a field path in a YAML document, for problems found after
//! parsing (unknown references, cycles, names).
//!
//! Positions come from `serde_yaml_ng` itself: it attaches the mark of the node being read to any
//! error a visitor raises. [`locate`] re-reads the document with a visitor that walks down a
//! [`FieldPath`] and raises an error where it ends, and takes that error's location. So every
//! position is the parser's own, flow and block style alike, with no second YAML parser.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::yaml::Location;

// === field paths ===

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path to a field in a YAML document, shown as `apps.web.overlays[0].vars`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    /// The path one key further down.
    pub fn key(&self, key: impl Into<String>) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.into()));
        FieldPath(segs)
    }

    /// The path one sequence index further down.
    pub fn index(&self, index: usize) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        FieldPath(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// === locating a field path ===

/// The message the probe raises; any other error means the document itself is broken.
const PROBE: &str = "\u{0}flotilla-probe";

/// The line and column of the node at `path` in the single-document YAML `text` (of the key
/// itself when `at_key`). When the path does not exist, the location of its deepest existing
/// ancestor.
pub(crate) fn locate(text: &str, path: &FieldPath, at_key: bool) -> Option<Location> {
    let probe = Probe {
        path: &path.0,
        at_key,
    };
    match probe.deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Err(err) if err.to_string().contains(PROBE) => err.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

struct Probe<'p> {
    path: &'p [Seg],
    at_key: bool,
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

fn here<E: de::Error>() -> E {
    E::custom(PROBE)
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(here())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(here())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(here())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(here())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(here())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(here())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some((Seg::Index(target), rest)) = self.path.split_first() {
            let mut i = 0;
            while i < *target {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Err(here());
                }
                i += 1;
            }
            seq.next_element_seed(Probe {
                path: rest,
                at_key: self.at_key,
            })?;
        }
        Err(here())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some((Seg::Key(target), rest)) = self.path.split_first() {
            let key_only = self.at_key && rest.is_empty();
            while let Some(key) = map.next_key_seed(KeyProbe {
                target: key_only.then_some(target.as_str()),
            })? {
                if key == *target {
                    map.next_value_seed(Probe {
                        path: rest,
                        at_key: self.at_key,
                    })?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Err(here())
    }
}

/// Reads a key as a string; raises the probe error on the key `target`.
struct KeyProbe<'t> {
    target: Option<&'t str>,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl KeyProbe<'_> {
    fn check<E: de::Error>(self, key: String) -> Result<String, E> {
        if self.target == Some(key.as_str()) {
            Err(here())
        } else {
            Ok(key)
        }
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.check(v.to_owned())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        self.check(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        self.check(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        self.check(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        self.check(v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        self.check("null".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(segs: &[Seg]) -> FieldPath {
        FieldPath(segs.to_vec())
    }

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    const DOC: &str = "apps:\n  web:\n    path: apps/web\n    dependsOn: [a, b]\n  db: {path: x}\n";

    #[test]
    fn locate_finds_values_keys_and_flow_items() {
        let at = |path: FieldPath, key| locate(DOC, &path, key).map(|l| (l.line, l.column));
        assert_eq!(
            at(p(&[k("apps"), k("web"), k("path")]), false),
            Some((3, 11))
        );
        assert_eq!(at(p(&[k("apps"), k("web")]), true), Some((2, 3)));
        let dep = p(&[k("apps"), k("web"), k("dependsOn"), Seg::Index(1)]);
        assert_eq!(at(dep, false), Some((4, 20)));
        assert_eq!(
            at(p(&[k("apps"), k("db"), k("path")]), false),
            Some((5, 14))
        );
        // A missing field points at its parent mapping.
        assert_eq!(at(p(&[k("apps"), k("db"), k("nope")]), false), Some((5, 7)));
    }

    #[test]
    fn field_path_display() {
        let path = FieldPath::default()
            .key("apps")
            .key("web")
            .key("overlays")
            .index(0);
        assert_eq!(path.to_string(), "apps.web.overlays[0]");
    }
}
