//! Drift: the field paths where a live object differs from what applying the bundle would make
//! of it (the answer of a dry-run server-side apply). Comparing against the dry-run result rather
//! than the bundle itself means server-side defaults and fields other managers own never count.

use serde_json::Value;

/// At most this many paths are kept per object.
pub const MAX_PATHS: usize = 16;

/// Metadata the server changes on every write; never drift.
const VOLATILE_METADATA: [&str; 5] = [
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
];

/// The paths (`.spec.replicas`, `.metadata.labels.tier`) where `live` and `wanted` differ,
/// ignoring `status` and server-maintained metadata. Lists compare whole.
pub fn drifted_paths(live: &Value, wanted: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(l), Some(w)) = (live.as_object(), wanted.as_object()) else {
        if live != wanted {
            out.push(".".to_string());
        }
        return out;
    };
    let mut keys: Vec<&String> = l.keys().chain(w.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if k == "status" {
            continue;
        }
        let (lv, wv) = (l.get(k), w.get(k));
        if k == "metadata" {
            let strip = |v: Option<&Value>| -> Value {
                let mut v = v.cloned().unwrap_or(Value::Null);
                if let Some(m) = v.as_object_mut() {
                    for f in VOLATILE_METADATA {
                        m.remove(f);
                    }
                }
                v
            };
            diff(&strip(lv), &strip(wv), ".metadata", &mut out);
        } else {
            diff(
                lv.unwrap_or(&Value::Null),
                wv.unwrap_or(&Value::Null),
                &format!(".{k}"),
                &mut out,
            );
        }
    }
    out.truncate(MAX_PATHS);
    out
}

fn diff(live: &Value, wanted: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= MAX_PATHS || live == wanted {
        return;
    }
    match (live, wanted) {
        (Value::Object(l), Value::Object(w)) => {
            let mut keys: Vec<&String> = l.keys().chain(w.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff(
                    l.get(k).unwrap_or(&Value::Null),
                    w.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                    out,
                );
            }
        }
        _ => out.push(path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_objects_have_no_drift_whatever_the_server_metadata() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "7", "managedFields": [1]},
                          "spec": {"replicas": 2}, "status": {"ready": 1}});
        let wanted =
            json!({"metadata": {"name": "a", "resourceVersion": "8"}, "spec": {"replicas": 2}});
        assert!(drifted_paths(&live, &wanted).is_empty());
    }

    #[test]
    fn changed_added_and_removed_fields_are_named() {
        let live = json!({"metadata": {"name": "a", "labels": {"tier": "x"}},
                          "spec": {"replicas": 5, "extra": true, "ports": [1, 2]}});
        let wanted = json!({"metadata": {"name": "a", "labels": {"tier": "web"}},
                            "spec": {"replicas": 2, "ports": [1]}});
        assert_eq!(
            drifted_paths(&live, &wanted),
            [
                ".metadata.labels.tier",
                ".spec.extra",
                ".spec.ports",
                ".spec.replicas"
            ]
        );
    }

    #[test]
    fn paths_are_bounded() {
        let live: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("k{i:03}"), json!(i))).collect();
        let paths = drifted_paths(&json!({ "data": live }), &json!({"data": {}}));
        assert_eq!(paths.len(), MAX_PATHS);
    }
}
