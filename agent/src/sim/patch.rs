//! The two JSON patch formats the simulated API server takes besides apply: RFC 7386 merge
//! patches (strategic merge patches are treated as merge patches) and RFC 6902 JSON patches.

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch (also used for strategic merge patches, whose directives are
/// dropped and whose lists are replaced whole).
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub(crate) fn json_patch(target: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let field = |k: &str| op.get(k).and_then(Value::as_str);
        let name = field("op").ok_or(format!("operation {i}: missing \"op\""))?;
        let path = field("path").ok_or(format!("operation {i}: missing \"path\""))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("operation {i} ({name}): missing \"value\""))
        };
        let from = || field("from").ok_or(format!("operation {i} ({name}): missing \"from\""));
        let at = |e: String| format!("operation {i} ({name} {path}): {e}");
        match name {
            "add" => pointer_add(&mut doc, path, value()?).map_err(at)?,
            "remove" => {
                pointer_remove(&mut doc, path).map_err(at)?;
            }
            "replace" => {
                pointer_remove(&mut doc, path).map_err(at)?;
                pointer_add(&mut doc, path, value()?).map_err(at)?;
            }
            "move" => {
                let v = pointer_remove(&mut doc, from()?).map_err(at)?;
                pointer_add(&mut doc, path, v).map_err(at)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| at("\"from\" does not exist".into()))?;
                pointer_add(&mut doc, path, v).map_err(at)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(at("test failed".into()));
                }
            }
            other => return Err(format!("operation {i}: unsupported op {other:?}")),
        }
    }
    Ok(doc)
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let i = path.rfind('/').ok_or("not a JSON pointer")?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..i].to_string(), last))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>().map_err(|_| "bad array index")?
            };
            if i > a.len() {
                return Err("array index out of range".into());
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err("the parent does not exist".into()),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or("the path does not exist".into()),
        Some(Value::Array(a)) => {
            let i = last.parse::<usize>().map_err(|_| "bad array index")?;
            if i >= a.len() {
                return Err("array index out of range".into());
            }
            Ok(a.remove(i))
        }
        _ => Err("the path does not exist".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches() {
        let mut t = json!({"a": {"b": 1, "c": [1]}, "d": 1});
        merge_patch(
            &mut t,
            &json!({"a": {"b": null, "c": [2]}, "e": {"f": 1}, "$retainKeys": []}),
        );
        assert_eq!(t, json!({"a": {"c": [2]}, "d": 1, "e": {"f": 1}}));
        let ops = json!([
            {"op": "add", "path": "/a/c/-", "value": 3},
            {"op": "replace", "path": "/d", "value": 2},
            {"op": "remove", "path": "/e"},
            {"op": "test", "path": "/d", "value": 2},
            {"op": "copy", "from": "/d", "path": "/g~1h"},
        ]);
        assert_eq!(
            json_patch(&t, &ops).unwrap(),
            json!({"a": {"c": [2, 3]}, "d": 2, "g/h": 2})
        );
        assert!(json_patch(&t, &json!([{"op": "remove", "path": "/zz"}])).is_err());
    }
}
