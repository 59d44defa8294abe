//! One shared copy of strings that repeat across the fleet's records: app names, revisions and
//! bundle digests, which 10,000 clusters' statuses of one app mostly share. Strings no record
//! holds any more are dropped whenever the set has doubled since it was last swept, so the set
//! stays bounded by the strings in use.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Default)]
struct Strings {
    set: HashSet<Arc<str>>,
    /// Size of the set after the last sweep.
    swept_at: usize,
}

static STRINGS: Mutex<Option<Strings>> = Mutex::new(None);

/// Strings are swept no sooner than when the set holds this many.
const SWEEP_FROM: usize = 1024;

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    let mut guard = STRINGS.lock().unwrap_or_else(|e| e.into_inner());
    let strings = guard.get_or_insert_with(Strings::default);
    if let Some(a) = strings.set.get(s) {
        return a.clone();
    }
    if strings.set.len() >= SWEEP_FROM.max(2 * strings.swept_at) {
        // Held by the set alone: no record uses it.
        strings.set.retain(|a| Arc::strong_count(a) > 1);
        strings.swept_at = strings.set.len();
    }
    let a: Arc<str> = Arc::from(s);
    strings.set.insert(a.clone());
    a
}

/// Serializes a shared string as a string (`#[serde(serialize_with = "...")]`).
pub fn serialize<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// Deserializes a string as its shared copy (`#[serde(deserialize_with = "...")]`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    let s = std::borrow::Cow::<str>::deserialize(d)?;
    Ok(intern(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_string_and_unused_ones_go() {
        let a = intern("sha256:interned-test-a");
        let b = intern("sha256:interned-test-a");
        assert!(Arc::ptr_eq(&a, &b));
        // Enough unused strings to force sweeps: the set stays bounded by what is held.
        for i in 0..10 * SWEEP_FROM {
            intern(&format!("interned-test-unused-{i}"));
        }
        let len = STRINGS.lock().unwrap().as_ref().map_or(0, |s| s.set.len());
        assert!(len < 4 * SWEEP_FROM, "{len} strings kept");
        assert!(
            Arc::ptr_eq(&a, &intern("sha256:interned-test-a")),
            "held ones stay"
        );
    }
}
