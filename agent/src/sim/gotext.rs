//! How the real API server, a Go program, spells values and checks scalar formats in its
//! messages: Go's `%v`, `%#v` and `%T` of a decoded JSON value (`interface{}` holding
//! `map[string]interface{}`, `[]interface{}`, `string`, `int64`, `float64`, `bool`), the
//! `resource.Quantity` parser's verdicts and `encoding/base64`'s offset of the first corrupt
//! byte. `schema` quotes them so messages read as a real cluster's do.

use serde_json::{Number, Value};

/// Go's `%v` of a decoded JSON value: `map[a:1 b:[x y]]`, strings bare, `<nil>` for null.
pub(crate) fn v(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(v).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by_key(|(k, _)| *k);
            let items: Vec<String> = entries
                .iter()
                .map(|(k, x)| format!("{k}:{}", v(x)))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

/// Go's `%#v` of a decoded JSON value: `map[string]interface {}{"a":1}`, strings quoted.
pub(crate) fn sharp_v(value: &Value) -> String {
    match value {
        Value::Null => "interface {}(nil)".into(),
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(sharp_v).collect();
            format!("[]interface {{}}{{{}}}", items.join(", "))
        }
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by_key(|(k, _)| *k);
            let items: Vec<String> = entries
                .iter()
                .map(|(k, x)| format!("{}:{}", quote(k), sharp_v(x)))
                .collect();
            format!("map[string]interface {{}}{{{}}}", items.join(", "))
        }
        other => v(other),
    }
}

/// Go's `%T` of a decoded JSON value (numbers decode to `int64` when integral).
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// Go's `reflect.Kind` of a decoded JSON value, as the unstructured converter names it.
pub(crate) fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "slice",
        Value::Object(_) => "map",
        Value::Null => "invalid",
        other => type_name(other),
    }
}

/// A string as Go's `%q` writes it (close enough: JSON escaping).
pub(crate) fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Go's `%v` of a number: integers as they are, floats in `strconv`'s shortest `%g`
/// (`2.5`, `1`, `1e+06`).
fn number(n: &Number) -> String {
    match n.as_f64().filter(|_| n.is_f64()) {
        Some(f) => float(f),
        None => n.to_string(),
    }
}

fn float(f: f64) -> String {
    // Rust's `{:e}` is the shortest round-trip form too: `1.5e6`, `2.5e0`.
    let text = format!("{f:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exp: i32 = exponent.parse().unwrap_or(0);
    if (-4..6).contains(&exp) || !f.is_finite() {
        return format!("{f}");
    }
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exponent),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// `resource.ParseQuantity`'s verdict on `text` (`Quantity.UnmarshalJSON` strips the quotes
/// of a string and passes numbers as written). The messages are its `ErrFormatWrong` and
/// `ErrSuffix` (k8s.io/apimachinery/pkg/api/resource/quantity.go).
pub(crate) fn parse_quantity(text: &str) -> Result<(), &'static str> {
    const FORMAT: &str = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
    const SUFFIX: &str = "unable to parse quantity's suffix";
    let text = text.trim();
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(split);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(FORMAT);
    }
    let letters = suffix
        .find(|c: char| !"eEinumkKMGTP".contains(c))
        .unwrap_or(suffix.len());
    let rest = &suffix[letters..];
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FORMAT);
    }
    const KNOWN: &[&str] = &[
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    if KNOWN.contains(&suffix) {
        return Ok(());
    }
    match suffix.strip_prefix(['e', 'E']) {
        Some(exp) if !exp.is_empty() && exp.parse::<i32>().is_ok() => Ok(()),
        _ => Err(SUFFIX),
    }
}

/// Where `encoding/base64`'s standard (padded) decoding finds `text` corrupt, `None` when it
/// decodes. Like Go, carriage returns and newlines are skipped.
pub(crate) fn base64_corrupt_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    let mut in_quantum = 0usize;
    let mut quantum_start = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\r' || b == b'\n' {
            i += 1;
            continue;
        }
        if in_quantum == 0 {
            quantum_start = i;
        }
        if b == b'=' {
            // Padding ends the input: one '=' after three symbols, two after two.
            let need = match in_quantum {
                2 => 2,
                3 => 1,
                _ => return Some(i),
            };
            let mut seen = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\r' | b'\n' => {}
                    b'=' if seen < need => seen += 1,
                    _ => return Some(i),
                }
                i += 1;
            }
            return (seen < need).then_some(bytes.len());
        }
        if !alphabet(b) {
            return Some(i);
        }
        in_quantum = (in_quantum + 1) % 4;
        i += 1;
    }
    (in_quantum != 0).then_some(quantum_start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_read_as_go_prints_them() {
        let value = json!({"b": [1, "x"], "a": 2.5, "c": null, "d": true});
        assert_eq!(v(&value), "map[a:2.5 b:[1 x] c:<nil> d:true]");
        assert_eq!(
            sharp_v(&value),
            r#"map[string]interface {}{"a":2.5, "b":[]interface {}{1, "x"}, "c":interface {}(nil), "d":true}"#
        );
        assert_eq!(v(&json!(1_000_000.0)), "1e+06");
        assert_eq!(v(&json!(1.5e-7)), "1.5e-07");
        assert_eq!(v(&json!(2.0)), "2");
        assert_eq!(v(&json!(123456.0)), "123456");
        assert_eq!(type_name(&json!("2")), "string");
        assert_eq!(type_name(&json!(2)), "int64");
        assert_eq!(type_name(&json!({})), "map[string]interface {}");
        assert_eq!(kind_name(&json!([])), "slice");
    }

    #[test]
    fn quantities_parse_as_kubernetes_parses_them() {
        for ok in [
            "1",
            "100m",
            "1.5Gi",
            "0.5",
            "+2k",
            "1e3",
            "5E-2",
            "128974848",
            "129e6",
        ] {
            assert_eq!(parse_quantity(ok), Ok(()), "{ok}");
        }
        assert!(
            parse_quantity("1 core")
                .unwrap_err()
                .starts_with("quantities must match")
        );
        assert!(
            parse_quantity("")
                .unwrap_err()
                .starts_with("quantities must match")
        );
        assert!(
            parse_quantity("true")
                .unwrap_err()
                .starts_with("quantities must match")
        );
        assert!(
            parse_quantity("1Gb")
                .unwrap_err()
                .starts_with("quantities must match")
        );
        assert_eq!(
            parse_quantity("5Mk"),
            Err("unable to parse quantity's suffix")
        );
    }

    #[test]
    fn base64_is_checked_as_go_decodes_it() {
        assert_eq!(base64_corrupt_at("aGVsbG8="), None);
        assert_eq!(base64_corrupt_at("aGVs\nbG8="), None);
        assert_eq!(base64_corrupt_at(""), None);
        assert_eq!(base64_corrupt_at("hello!"), Some(5));
        assert_eq!(base64_corrupt_at("aGVsbG8"), Some(4));
        assert_eq!(base64_corrupt_at("aGVsbG8=x"), Some(8));
        assert_eq!(base64_corrupt_at("a==="), Some(1));
    }
}
