//! Schema validation of the built-in kinds: the simulated API server refuses an object a real
//! one refuses (a string where an integer belongs, an object where a list does, an unknown
//! field, a malformed quantity or base64 value) with the real server's code, reason and
//! message, on every write path: create, replace, the merge / JSON / strategic patches (the
//! patched result) and server-side apply (the applied configuration and the merged result).
//! Unknown kinds (custom resources) are not checked, as a real server with a CRD whose schema
//! preserves unknown fields would not.
//!
//! Where the schemas come from: `k8s-openapi`'s `schemars` feature. For every built-in type it
//! carries the schema generated from Kubernetes' own OpenAPI document (property names, types,
//! formats, `x-kubernetes-int-or-string`), and `schemars` collects them into one definitions
//! map at first use. We chose it over strict `serde` decoding into the `k8s-openapi` types,
//! whose `Deserialize` impls skip unknown fields and whose errors ("invalid type: string
//! \"2\", expected i32") are not the server's: a walk over the schema knows the field path, the
//! Go struct and the Go type a real message names. No crates.io package carries the OpenAPI
//! documents themselves. What the schema lacks: list-map keys (an apply error in a keyed list
//! names the element `[0]` where a real server writes `[name="web"]`), enums, formats other
//! than quantities, base64 and int-or-string, and the semantic validation a real server does
//! after decoding (required fields, selectors matching labels, …).
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

use std::sync::OnceLock;

use k8s_openapi::Resource;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

use super::api::ApiError;
use super::gotext;
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

// === The schemas ===

/// Every built-in kind's schema, and the definitions they refer to.
struct Schemas {
    defs: Map<String, Value>,
    /// (group, kind) → the definition of the kind's type.
    roots: Vec<(&'static str, &'static str, String)>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(load)
}

fn root<T: Resource + JsonSchema>(g: &mut SchemaGenerator) -> (&'static str, &'static str, String) {
    g.subschema_for::<T>();
    (T::GROUP, T::KIND, T::schema_name().into_owned())
}

/// The schemas of the kinds `resources::BUILT_INS` serves (a test keeps the two in step).
fn load() -> Schemas {
    use k8s_openapi::api::admissionregistration::v1 as admission;
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    use k8s_openapi::api::{autoscaling::v2 as autoscaling, coordination::v1 as coordination};
    use k8s_openapi::api::{networking::v1 as networking, policy::v1 as policy, rbac::v1 as rbac};
    use k8s_openapi::api::{scheduling::v1 as scheduling, storage::v1 as storage};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    let mut g = SchemaGenerator::default();
    let roots = vec![
        root::<core::Namespace>(&mut g),
        root::<core::ConfigMap>(&mut g),
        root::<core::Secret>(&mut g),
        root::<core::Service>(&mut g),
        root::<core::ServiceAccount>(&mut g),
        root::<core::Pod>(&mut g),
        root::<core::PersistentVolumeClaim>(&mut g),
        root::<core::PersistentVolume>(&mut g),
        root::<core::Endpoints>(&mut g),
        root::<core::Event>(&mut g),
        root::<core::LimitRange>(&mut g),
        root::<core::ResourceQuota>(&mut g),
        root::<core::Node>(&mut g),
        root::<apps::Deployment>(&mut g),
        root::<apps::StatefulSet>(&mut g),
        root::<apps::DaemonSet>(&mut g),
        root::<apps::ReplicaSet>(&mut g),
        root::<apps::ControllerRevision>(&mut g),
        root::<batch::Job>(&mut g),
        root::<batch::CronJob>(&mut g),
        root::<networking::Ingress>(&mut g),
        root::<networking::IngressClass>(&mut g),
        root::<networking::NetworkPolicy>(&mut g),
        root::<rbac::Role>(&mut g),
        root::<rbac::RoleBinding>(&mut g),
        root::<rbac::ClusterRole>(&mut g),
        root::<rbac::ClusterRoleBinding>(&mut g),
        root::<policy::PodDisruptionBudget>(&mut g),
        root::<autoscaling::HorizontalPodAutoscaler>(&mut g),
        root::<apiextensions::CustomResourceDefinition>(&mut g),
        root::<storage::StorageClass>(&mut g),
        root::<scheduling::PriorityClass>(&mut g),
        root::<admission::ValidatingWebhookConfiguration>(&mut g),
        root::<admission::MutatingWebhookConfiguration>(&mut g),
        root::<coordination::Lease>(&mut g),
    ];
    Schemas {
        defs: g.take_definitions(false),
        roots,
    }
}

impl Schemas {
    fn root(&self, rt: &ResourceType) -> Option<&Value> {
        let (_, _, def) = self
            .roots
            .iter()
            .find(|(g, k, _)| *g == rt.group && *k == rt.kind)?;
        self.defs.get(def)
    }

    /// What `schema` (following `$ref`s) expects, and the definition it names.
    fn node<'s>(&'s self, schema: &'s Value) -> Node<'s> {
        let mut schema = schema;
        let mut def = None;
        while let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target.rsplit('/').next().unwrap_or(target);
            match self.defs.get_key_value(name) {
                Some((name, s)) => {
                    schema = s;
                    def = Some(name.as_str());
                }
                None => {
                    return Node {
                        shape: Shape::Any,
                        def: None,
                    };
                }
            }
        }
        let shape = match def {
            Some("io.k8s.apimachinery.pkg.util.intstr.IntOrString") => Shape::IntOrString,
            Some("io.k8s.apimachinery.pkg.api.resource.Quantity") => Shape::Quantity,
            // Any JSON: k8s-openapi calls these objects; Go holds them as raw JSON.
            Some(
                "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON"
                | "io.k8s.apimachinery.pkg.runtime.RawExtension"
                | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
            ) => Shape::Any,
            _ => shape_of(schema),
        };
        Node { shape, def }
    }

    /// The Go type a real server names for `node`: `int32`, `[]v1.Container`,
    /// `map[string]string`, `v1.PodSpec`.
    fn go_type(&self, node: &Node<'_>) -> String {
        match node.shape {
            Shape::Struct(_) | Shape::Any | Shape::OneOf(_) => node
                .def
                .map(go_name)
                .unwrap_or_else(|| "map[string]interface {}".into()),
            Shape::IntOrString => "int32".into(),
            Shape::Quantity => "resource.Quantity".into(),
            Shape::Map(elem) => format!("map[string]{}", self.go_type(&self.node(elem))),
            Shape::List(elem) => format!("[]{}", self.go_type(&self.node(elem))),
            Shape::Int(format) => format.into(),
            Shape::Float => "float64".into(),
            Shape::Bool => "bool".into(),
            Shape::Str => "string".into(),
            Shape::Bytes => "[]uint8".into(),
        }
    }
}

/// `io.k8s.api.core.v1.PodSpec` → `v1.PodSpec` (Go's package and type).
fn go_name(def: &str) -> String {
    let mut parts = def.rsplit('.');
    let ty = parts.next().unwrap_or(def);
    match parts.next() {
        Some(pkg) => format!("{pkg}.{ty}"),
        None => ty.to_string(),
    }
}

/// `io.k8s.api.core.v1.PodSpec` → `PodSpec` (the struct a Go decode error names).
fn go_struct(def: &str) -> &str {
    def.rsplit('.').next().unwrap_or(def)
}

fn shape_of(schema: &Value) -> Shape<'_> {
    if let Some(alternatives) = schema.get("oneOf").and_then(Value::as_array) {
        return Shape::OneOf(alternatives);
    }
    let text = |k: &str| schema.get(k).and_then(Value::as_str);
    let properties = schema.get("properties").and_then(Value::as_object);
    match text("type") {
        Some("object") | None if properties.is_some() => {
            Shape::Struct(properties.expect("checked"))
        }
        Some("object") => match schema.get("additionalProperties") {
            Some(elem @ Value::Object(_)) => Shape::Map(elem),
            _ => Shape::Any,
        },
        Some("array") => Shape::List(schema.get("items").unwrap_or(&Value::Null)),
        Some("integer") => Shape::Int(text("format").unwrap_or("int64")),
        Some("number") => Shape::Float,
        Some("boolean") => Shape::Bool,
        Some("string") if text("format") == Some("byte") => Shape::Bytes,
        Some("string") => Shape::Str,
        _ => Shape::Any,
    }
}

/// What a schema expects.
#[derive(Debug, Clone, Copy)]
enum Shape<'s> {
    /// Anything (raw JSON, a schema-less object).
    Any,
    /// An int32 or a string (`x-kubernetes-int-or-string`).
    IntOrString,
    /// A quantity: a string or number `resource.ParseQuantity` takes.
    Quantity,
    /// A Go struct: these properties and no others.
    Struct(&'s Map<String, Value>),
    /// A Go map with string keys and values of this schema.
    Map(&'s Value),
    /// A Go slice of this schema.
    List(&'s Value),
    /// An integer of this Go type (`int32`, `int64`).
    Int(&'s str),
    Float,
    Bool,
    Str,
    /// A `[]byte`, base64 in JSON.
    Bytes,
    /// One of these (JSONSchemaProps or a bool, or a list, …).
    OneOf(&'s [Value]),
}

struct Node<'s> {
    shape: Shape<'s>,
    def: Option<&'s str>,
}

// === The walk ===

/// Where a value sits, as each of the server's messages spells it.
#[derive(Debug, Clone, Default)]
struct At {
    /// The Go struct holding the field (`DeploymentSpec`): Go's `UnmarshalTypeError.Struct`.
    go_struct: String,
    /// The struct fields from the root, dotted (`spec.replicas`): `UnmarshalTypeError.Field`.
    go_field: String,
    /// The strict decoder's path, with indices and map keys (`spec.containers[0].foo`).
    json: String,
    /// structured-merge-diff's path (`.spec.containers[0].foo`).
    typed: String,
}

impl At {
    fn field(&self, go_struct: &str, name: &str) -> At {
        At {
            go_struct: go_struct.to_string(),
            go_field: dotted(&self.go_field, name),
            json: dotted(&self.json, name),
            typed: format!("{}.{name}", self.typed),
        }
    }

    fn key(&self, key: &str) -> At {
        At {
            json: dotted(&self.json, key),
            typed: format!("{}.{key}", self.typed),
            ..self.clone()
        }
    }

    fn index(&self, i: usize) -> At {
        At {
            json: format!("{}[{i}]", self.json),
            typed: format!("{}[{i}]", self.typed),
            ..self.clone()
        }
    }
}

fn dotted(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Something a decoder of the built-in type would refuse or drop.
#[derive(Debug, Clone)]
struct Fault {
    what: What,
    at: At,
    /// The Go type of the field.
    go_type: String,
    /// The offending value.
    value: Value,
}

#[derive(Debug, Clone)]
enum What {
    /// A value of the wrong JSON type (or an integer that does not fit).
    Type(Expect),
    /// A field the type does not have.
    Unknown,
    /// A quantity `ParseQuantity` refuses, with its message.
    Quantity(&'static str),
    /// Base64 corrupt at this byte.
    Base64(usize),
}

/// What the schema expected where a type fault was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Map,
    List,
    Int,
    Float,
    Bool,
    Str,
    Bytes,
    IntOrString,
    OneOf,
}

/// Walks `obj` against the schema of `rt`, dropping unknown fields; `None` when `rt` has no
/// schema here (custom resources).
fn walk(rt: &ResourceType, obj: &mut Value) -> Option<Vec<Fault>> {
    if rt.custom {
        return None;
    }
    let schemas = schemas();
    let root = schemas.root(rt)?;
    let mut w = Walker {
        schemas,
        faults: Vec::new(),
    };
    w.value(root, obj, &At::default());
    Some(w.faults)
}

struct Walker<'s> {
    schemas: &'s Schemas,
    faults: Vec<Fault>,
}

impl<'s> Walker<'s> {
    fn fault(&mut self, what: What, node: &Node<'_>, value: &Value, at: &At) {
        self.faults.push(Fault {
            what,
            at: at.clone(),
            go_type: self.schemas.go_type(node),
            value: value.clone(),
        });
    }

    fn value(&mut self, schema: &'s Value, value: &mut Value, at: &At) {
        // Go decodes null into anything (the zero value); structured-merge-diff takes it too.
        if value.is_null() {
            return;
        }
        let node = self.schemas.node(schema);
        let mismatch = |expect| What::Type(expect);
        match node.shape {
            Shape::Any => {}
            Shape::Struct(properties) => {
                let Value::Object(fields) = value else {
                    return self.fault(mismatch(Expect::Map), &node, value, at);
                };
                let name = node.def.map(go_struct).unwrap_or_default();
                let keys: Vec<String> = fields.keys().cloned().collect();
                for key in keys {
                    let here = at.field(name, &key);
                    match properties.get(&key) {
                        Some(s) => {
                            let child = fields.get_mut(&key).expect("listed");
                            self.value(s, child, &here);
                        }
                        None => {
                            let dropped = fields.remove(&key).expect("listed");
                            self.faults.push(Fault {
                                what: What::Unknown,
                                at: here,
                                go_type: String::new(),
                                value: dropped,
                            });
                        }
                    }
                }
            }
            Shape::Map(elem) => {
                let Value::Object(entries) = value else {
                    return self.fault(mismatch(Expect::Map), &node, value, at);
                };
                for (key, child) in entries.iter_mut() {
                    self.value(elem, child, &at.key(key));
                }
            }
            Shape::List(elem) => {
                let Value::Array(items) = value else {
                    return self.fault(mismatch(Expect::List), &node, value, at);
                };
                for (i, child) in items.iter_mut().enumerate() {
                    self.value(elem, child, &at.index(i));
                }
            }
            Shape::Int(format) => {
                if !fits(value, format) {
                    self.fault(mismatch(Expect::Int), &node, value, at);
                }
            }
            Shape::Float => {
                if !value.is_number() {
                    self.fault(mismatch(Expect::Float), &node, value, at);
                }
            }
            Shape::Bool => {
                if !value.is_boolean() {
                    self.fault(mismatch(Expect::Bool), &node, value, at);
                }
            }
            Shape::Str => {
                if !value.is_string() {
                    self.fault(mismatch(Expect::Str), &node, value, at);
                }
            }
            Shape::Bytes => match value.as_str().map(gotext::base64_corrupt_at) {
                None => self.fault(mismatch(Expect::Bytes), &node, value, at),
                Some(Some(offset)) => self.fault(What::Base64(offset), &node, value, at),
                Some(None) => {}
            },
            Shape::IntOrString => {
                if !value.is_string() && !fits(value, "int32") {
                    self.fault(mismatch(Expect::IntOrString), &node, value, at);
                }
            }
            Shape::Quantity => {
                let text = match &*value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Err(why) = gotext::parse_quantity(&text) {
                    self.fault(What::Quantity(why), &node, value, at);
                }
            }
            Shape::OneOf(alternatives) => {
                let fits_one = alternatives.iter().any(|alt| {
                    let mut scratch = Walker {
                        schemas: self.schemas,
                        faults: Vec::new(),
                    };
                    scratch.value(alt, &mut value.clone(), at);
                    scratch.faults.is_empty()
                });
                if !fits_one {
                    self.fault(mismatch(Expect::OneOf), &node, value, at);
                }
            }
        }
    }
}

/// An integral JSON number in the range of Go's `format` (`int32`, `int64`).
fn fits(value: &Value, format: &str) -> bool {
    let Some(n) = value.as_i64() else {
        return false;
    };
    format != "int32" || i32::try_from(n).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::resources;

    #[test]
    fn every_built_in_kind_has_its_schema() {
        let kinds = resources::all_built_ins();
        assert!(kinds.len() > 30);
        for rt in kinds {
            let root = schemas().root(&rt);
            assert!(root.is_some(), "no schema for {}", rt.qualified_kind());
            let node = schemas().node(root.expect("checked"));
            assert!(matches!(node.shape, Shape::Struct(_)), "{}", rt.kind);
        }
        assert_eq!(schemas().roots.len(), resources::all_built_ins().len());
    }

    #[test]
    fn go_names_are_package_and_type() {
        assert_eq!(go_name("io.k8s.api.core.v1.PodSpec"), "v1.PodSpec");
        assert_eq!(go_struct("io.k8s.api.core.v1.PodSpec"), "PodSpec");
        let s = schemas();
        let spec = s.defs.get("io.k8s.api.core.v1.PodSpec").expect("PodSpec");
        let containers = &spec["properties"]["containers"];
        assert_eq!(s.go_type(&s.node(containers)), "[]v1.Container");
        let meta = s
            .defs
            .get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .expect("meta");
        assert_eq!(
            s.go_type(&s.node(&meta["properties"]["labels"])),
            "map[string]string"
        );
        let secret = s.defs.get("io.k8s.api.core.v1.Secret").expect("Secret");
        assert_eq!(
            s.go_type(&s.node(&secret["properties"]["data"])),
            "map[string][]uint8"
        );
    }
}
