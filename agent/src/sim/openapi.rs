//! The built-in kinds' OpenAPI schemas and the walk of an object against them.
//!
//! The schemas are `k8s-openapi`'s (its `schemars` feature): for every built-in type, the
//! schema generated from Kubernetes' own OpenAPI document, collected by `schemars` into one
//! definitions map at first use. The walk follows the object and its schema together, notes
//! every value a Go decoder of the type would refuse or drop (`Fault`: where, what the schema
//! expected, the Go type, the value), and drops unknown fields as that decoder does. What the
//! server answers for those faults is `schema`'s business.

use std::sync::OnceLock;

use k8s_openapi::Resource;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

use super::gotext;
use super::resources::ResourceType;

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
pub(crate) struct At {
    /// The Go struct holding the field (`DeploymentSpec`): Go's `UnmarshalTypeError.Struct`.
    pub go_struct: String,
    /// The struct fields from the root, dotted (`spec.replicas`): `UnmarshalTypeError.Field`.
    pub go_field: String,
    /// The strict decoder's path, with indices and map keys (`spec.containers[0].foo`).
    pub json: String,
    /// structured-merge-diff's path (`.spec.containers[0].foo`).
    pub typed: String,
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
pub(crate) struct Fault {
    pub what: What,
    pub at: At,
    /// The Go type of the field.
    pub go_type: String,
    /// The offending value.
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum What {
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
pub(crate) enum Expect {
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
pub(crate) fn walk(rt: &ResourceType, obj: &mut Value) -> Option<Vec<Fault>> {
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
