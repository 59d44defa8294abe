//! Schema validation of the built-in kinds: the simulated API server refuses an object a real
//! one refuses (a string where an integer belongs, an object where a list does, an unknown
//! field, a malformed quantity or base64 value) with the real server's code, reason and
//! message, on every write path: create, replace, the merge / JSON / strategic patches (the
//! patched result) and server-side apply (the applied configuration and the merged result).
//! Unknown kinds (custom resources) are not checked, as a real server with a CRD whose schema
//! preserves unknown fields would not.
//!
//! Where the schemas come from (`openapi`): `k8s-openapi`'s `schemars` feature. For every
//! built-in type it carries the schema generated from Kubernetes' own OpenAPI document
//! (property names, types, formats, `x-kubernetes-int-or-string`), and `schemars` collects them
//! into one definitions map at first use. We chose it over strict `serde` decoding into the `k8s-openapi` types,
//! whose `Deserialize` impls skip unknown fields and whose errors ("invalid type: string
//! \"2\", expected i32") are not the server's: a walk over the schema knows the field path, the
//! Go struct and the Go type a real message names. No crates.io package carries the OpenAPI
//! documents themselves. What the schema lacks: list-map keys (an apply error in a keyed list
//! names the element `[0]` where a real server writes `[name="web"]`), enums, formats other
//! than quantities, base64 and int-or-string, and the semantic validation a real server does
//! after decoding (required fields, selectors matching labels, …). Fields are visited in key
//! order (serde_json's maps are sorted) where Go follows the document, so the first of several
//! errors, and the order of unknown fields, may differ from a real server's; and an apply lists
//! every unknown field where structured-merge-diff stops at the first in each object.
//!
//! The answers, as a v1.34 API server gives them (each formatter cites its source):
//! - create / replace (`handlers/create.go`, `update.go`: `transformDecodeError`): 400
//!   BadRequest, `Deployment in version "v1" cannot be handled as a Deployment: json: cannot
//!   unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32`; unknown
//!   fields under `fieldValidation=Strict`: the same frame around `strict decoding error:
//!   unknown field "spec.foo", unknown field "spec.bar"`;
//! - merge / JSON patch (`handlers/patch.go`, `jsonPatcher`): 422 Invalid with no kind or name,
//!   ` "" is invalid: patch: Invalid value: "<patched object as JSON>": <the decode error>`;
//!   strategic merge patch (`smpPatcher`, `applyPatchToObject`): the same, with the patch in Go's
//!   `%+v` and the unstructured converter's error (`unrecognized type: int32`);
//! - server-side apply (`managedfields/internal/structuredmerge.go`): 500 with no reason,
//!   `failed to create typed patch object (web/web; apps/v1, Kind=Deployment):
//!   .spec.replicas: expected numeric (int or float), got string`, unknown fields included
//!   (`.spec.foo: field not declared in schema`) whatever `fieldValidation` says (an apply
//!   configuration is always strict: kubernetes PR 105916); a value that types but does not
//!   convert (`replicas: 2.5`, a bad quantity): 500 `failed to convert new object (…) to proper
//!   version: …` (kubernetes issues 122480, 139253 show the 500s);
//! - `fieldValidation` (`handlers/rest.go`, KEP-2885): `Strict` (kubectl's default) refuses
//!   unknown fields, `Warn` (the default when the parameter is absent) accepts the object
//!   without them and answers a `Warning: 299 - "unknown field \"spec.foo\""` header per field,
//!   `Ignore` drops them silently. Either way an unknown field is never stored.

use serde_json::Value;

use super::api::ApiError;
use super::gotext;
use super::openapi::{Expect, Fault, What, walk};
use super::resources::ResourceType;

// === fieldValidation ===

/// The `fieldValidation` query parameter: what to do with unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    /// Absent or empty is `Warn`, the server's default.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// The patch formats besides apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Json,
    Strategic,
}

// === Entry points ===

/// Checks a create or replace body as the server decodes it into the Go type, and drops its
/// unknown fields. Returns the warnings to answer with.
pub(crate) fn check_body(
    rt: &ResourceType,
    obj: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some(faults) = walk(rt, obj) else {
        return Ok(Vec::new());
    };
    // handlers/create.go: `transformDecodeError` ("%s in version %q cannot be handled as a
    // %s: %v"), a BadRequest with no details.
    let frame = |err: String| {
        ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {err}",
            kind = rt.kind,
            version = rt.version
        ))
    };
    if let Some(err) = faults.iter().find_map(Fault::json_decode_error) {
        return Err(frame(err));
    }
    unknown_fields(&faults, validation).map_err(frame)
}

/// Checks what a merge, JSON or strategic merge patch made of the live object (`patched`,
/// whose unknown fields are dropped). Returns the warnings to answer with.
pub(crate) fn check_patched(
    rt: &ResourceType,
    kind: PatchKind,
    patch: &Value,
    patched: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    // handlers/patch.go quotes the patched object as JSON (`jsonPatcher`) or the patch in Go's
    // `%+v` (`applyPatchToObject`) as the invalid value of the field `patch`.
    let shown = match kind {
        PatchKind::Strategic => gotext::v(patch),
        PatchKind::Merge | PatchKind::Json => serde_json::to_string(patched).unwrap_or_default(),
    };
    let Some(faults) = walk(rt, patched) else {
        return Ok(Vec::new());
    };
    let fatal = match kind {
        // `runtime.DecodeInto` with the JSON codec: the decoder's own error.
        PatchKind::Merge | PatchKind::Json => faults.iter().find_map(Fault::json_decode_error),
        // `DefaultUnstructuredConverter.FromUnstructuredWithValidation`.
        PatchKind::Strategic => faults.iter().find_map(Fault::converter_error),
    };
    match fatal {
        Some(err) => Err(ApiError::invalid_patch(&shown, &err)),
        None => {
            unknown_fields(&faults, validation).map_err(|err| ApiError::invalid_patch(&shown, &err))
        }
    }
}

/// Checks an apply configuration as structured-merge-diff types it: every type error and
/// unknown field, whatever `fieldValidation` says.
pub(crate) fn check_apply(rt: &ResourceType, config: &Value) -> Result<(), ApiError> {
    let mut copy = config.clone();
    let Some(faults) = walk(rt, &mut copy) else {
        return Ok(());
    };
    let errors: Vec<String> = faults.iter().filter_map(Fault::typed_error).collect();
    if errors.is_empty() {
        return Ok(());
    }
    // structured-merge-diff `ValidationErrors.Error()`: one error alone, several under
    // "errors:" one per line.
    let errors = if errors.len() == 1 {
        errors.concat()
    } else {
        format!("errors:\n  {}", errors.join("\n  "))
    };
    Err(ApiError::unknown_500(format!(
        "failed to create typed patch object ({}): {errors}",
        gvknn(rt, config)
    )))
}

/// Checks the object an apply produced as the server converts it to the Go type (what
/// typed but does not convert: `2.5` for an integer, a malformed quantity).
pub(crate) fn check_applied(
    rt: &ResourceType,
    config: &Value,
    merged: &Value,
) -> Result<(), ApiError> {
    let mut copy = merged.clone();
    let Some(faults) = walk(rt, &mut copy) else {
        return Ok(());
    };
    match faults.iter().find_map(Fault::converter_error) {
        Some(err) => Err(ApiError::unknown_500(format!(
            "failed to convert new object ({}) to proper version: {err}",
            gvknn(rt, config)
        ))),
        None => Ok(()),
    }
}

/// `objectGVKNN` of structuredmerge.go: `namespace/name; group/version, Kind=Kind`.
fn gvknn(rt: &ResourceType, obj: &Value) -> String {
    let meta = |k: &str| {
        obj.pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    format!(
        "{}/{}; {}/{}, Kind={}",
        meta("namespace"),
        meta("name"),
        rt.group,
        rt.version,
        rt.kind
    )
}

/// Unknown fields under `validation`: the strict decoding error (`runtime.strictDecodingError`:
/// "strict decoding error: " and the fields joined by ", "), or the warnings.
fn unknown_fields(faults: &[Fault], validation: FieldValidation) -> Result<Vec<String>, String> {
    let unknown: Vec<String> = faults
        .iter()
        .filter(|f| matches!(f.what, What::Unknown))
        .map(|f| format!("unknown field {}", gotext::quote(&f.at.json)))
        .collect();
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            Err(format!("strict decoding error: {}", unknown.join(", ")))
        }
        FieldValidation::Warn => Ok(unknown),
        _ => Ok(Vec::new()),
    }
}
// === The messages ===

impl Fault {
    /// Go's JSON decoder (`encoding/json` as forked in sigs.k8s.io/json): its
    /// `UnmarshalTypeError` ("json: cannot unmarshal %s into Go struct field %s.%s of type
    /// %s"), or the error of a type's own `UnmarshalJSON` (quantities), or base64's.
    /// Unknown fields are not decode errors.
    fn json_decode_error(&self) -> Option<String> {
        let what = match &self.what {
            What::Unknown => return None,
            What::Quantity(why) => return Some((*why).to_string()),
            What::Base64(offset) => {
                return Some(format!("illegal base64 data at input byte {offset}"));
            }
            What::Type(expect) => expect,
        };
        // `UnmarshalTypeError.Value`: the JSON kind, or "number <literal>" for a number that
        // does not fit the integer type.
        let found = match &self.value {
            Value::String(_) => "string".to_string(),
            Value::Bool(_) => "bool".to_string(),
            Value::Array(_) => "array".to_string(),
            Value::Object(_) => "object".to_string(),
            Value::Number(n) if matches!(what, Expect::Int | Expect::IntOrString) => {
                format!("number {n}")
            }
            Value::Number(_) | Value::Null => "number".to_string(),
        };
        Some(format!(
            "json: cannot unmarshal {found} into Go struct field {}.{} of type {}",
            self.at.go_struct, self.at.go_field, self.go_type
        ))
    }

    /// `runtime.DefaultUnstructuredConverter.FromUnstructured` (apimachinery
    /// `runtime/converter.go`): what decoded JSON cannot become the Go type. It converts
    /// integers to any number type without a range check, so it misses what only the JSON
    /// decoder catches.
    fn converter_error(&self) -> Option<String> {
        let expect = match &self.what {
            What::Unknown => return None,
            What::Quantity(why) => return Some((*why).to_string()),
            What::Base64(offset) => {
                return Some(format!("illegal base64 data at input byte {offset}"));
            }
            What::Type(expect) => *expect,
        };
        let from = gotext::kind_name(&self.value);
        let integral = self.value.is_i64() || self.value.is_u64();
        Some(match expect {
            Expect::Map if self.go_type.starts_with("map[") => {
                format!("cannot restore map from {from}")
            }
            Expect::Map => format!("cannot restore struct from: {from}"),
            Expect::List | Expect::Bytes => format!("cannot restore slice from {from}"),
            Expect::Int if integral => return None,
            Expect::Int | Expect::Float if self.value.is_number() => {
                format!("cannot convert {from} to {}", self.go_type)
            }
            Expect::Str if integral => format!("cannot convert {from} to string"),
            // Types with their own UnmarshalJSON get the value re-encoded as JSON.
            Expect::IntOrString | Expect::OneOf => format!(
                "json: cannot unmarshal {} into Go value of type {}",
                json_kind(&self.value),
                self.go_type
            ),
            _ => format!("unrecognized type: {}", self.go_type),
        })
    }

    /// structured-merge-diff's typed validation (`typed/validate.go`, `typed/helpers.go`):
    /// numbers of any kind are numeric, and int-or-string and quantities take any scalar.
    fn typed_error(&self) -> Option<String> {
        let message = match &self.what {
            What::Unknown => "field not declared in schema".to_string(),
            What::Base64(_) => return None,
            What::Quantity(_) if is_scalar(&self.value) => return None,
            What::Quantity(_) => {
                format!("expected any scalar, got &{{{}}}", gotext::v(&self.value))
            }
            What::Type(expect) => match expect {
                Expect::Map => format!("expected map, got &{{{}}}", gotext::v(&self.value)),
                Expect::List => format!("expected list, got &{{{}}}", gotext::v(&self.value)),
                Expect::Int | Expect::Float if self.value.is_number() => return None,
                Expect::Int | Expect::Float => format!(
                    "expected numeric (int or float), got {}",
                    gotext::type_name(&self.value)
                ),
                Expect::Bool => format!("expected boolean, got &{{{}}}", gotext::v(&self.value)),
                Expect::Str | Expect::Bytes => format!(
                    "expected string, got &value.valueUnstructured{{Value:{}}}",
                    gotext::sharp_v(&self.value)
                ),
                Expect::IntOrString if is_scalar(&self.value) => return None,
                Expect::IntOrString => {
                    format!("expected any scalar, got &{{{}}}", gotext::v(&self.value))
                }
                Expect::OneOf => return None,
            },
        };
        Some(format!("{}: {message}", self.at.typed))
    }
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        _ => "number",
    }
}
