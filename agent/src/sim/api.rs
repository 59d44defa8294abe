//! HTTP routing of the simulated API server: `/version`, discovery (`/api`, `/apis`, their
//! group/version documents, and the aggregated v2 form), the object paths, and the `Status`
//! errors every failure is answered with.

use serde_json::{Value, json};

use super::gotext;
use super::objects::{self, Target};
use super::resources::ResourceType;
use super::store::State;

/// One request, as the handlers see it.
pub(crate) struct Req<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub body: &'a [u8],
}

impl Req<'_> {
    /// A query parameter, URL-decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    fn accepts(&self, what: &str) -> bool {
        self.accept.is_some_and(|a| a.contains(what))
    }

    /// The client asked for the aggregated (v2) discovery document.
    fn wants_aggregated(&self) -> bool {
        self.accepts("as=APIGroupDiscoveryList")
    }

    /// The client asked for metadata only (`PartialObjectMetadata[List]`).
    pub fn wants_metadata_only(&self) -> bool {
        self.accepts("as=PartialObjectMetadata")
    }
}

/// An answer: HTTP status, JSON body and `Warning` header texts.
pub(crate) struct Reply {
    pub code: u16,
    pub body: Value,
    pub warnings: Vec<String>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            code: 200,
            body,
            warnings: Vec::new(),
        }
    }

    /// The same answer with `Warning` headers.
    pub fn with_warnings(mut self, warnings: Vec<String>) -> Self {
        self.warnings.extend(warnings);
        self
    }
}

// === Errors ===

/// A failed request, answered as a Kubernetes `Status`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// An error about the object `name` of `rt`, with the details a real server gives: its
    /// name, group and resource.
    fn on_object(
        code: u16,
        reason: &'static str,
        rt: &ResourceType,
        name: &str,
        message: String,
    ) -> Self {
        Self::new(code, reason, message)
            .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} {name:?} not found", rt.qualified_resource());
        Self::on_object(404, "NotFound", rt, name, message)
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces {ns:?} not found"))
            .with_details(json!({"name": ns, "kind": "namespaces"}))
    }

    /// A path the server does not serve (unknown group, version, resource or subresource).
    pub fn no_such_path() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
            .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} {name:?} already exists", rt.qualified_resource());
        Self::on_object(409, "AlreadyExists", rt, name, message)
    }

    /// A failed precondition (a stale resourceVersion, another uid).
    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} {name:?}: {why}",
            rt.qualified_resource()
        );
        Self::on_object(409, "Conflict", rt, name, message)
    }

    /// 422: a field value the server rejects.
    pub fn invalid(rt: &ResourceType, name: &str, field: &str, value: &str, why: &str) -> Self {
        let cause = format!("Invalid value: {value:?}: {why}");
        Self::new(
            422,
            "Invalid",
            format!(
                "{} {name:?} is invalid: {field}: {cause}",
                rt.qualified_kind()
            ),
        )
        .with_details(json!({
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": cause, "field": field}],
        }))
    }

    /// 422 for a patch whose result the server cannot decode: `errors.NewInvalid` with no kind
    /// and no name (hence the message's leading ` ""`) and one cause on the field `patch`, the
    /// invalid value being what the server quotes (handlers/patch.go).
    pub fn invalid_patch(shown: &str, why: &str) -> Self {
        let cause = format!("Invalid value: {}: {why}", gotext::quote(shown));
        Self::new(422, "Invalid", format!(" \"\" is invalid: patch: {cause}")).with_details(
            json!({"causes": [{"reason": "FieldValueInvalid", "message": cause, "field": "patch"}]}),
        )
    }

    /// 500 with no reason: what a real server answers for an error its handler did not turn
    /// into a status (`responsewriters.ErrorToAPIStatus`, `StatusReasonUnknown`).
    pub fn unknown_500(message: impl Into<String>) -> Self {
        Self::new(500, "", message)
    }

    pub fn forbidden(rt: &ResourceType, name: &str, why: &str) -> Self {
        let message = format!("{} {name:?} is forbidden: {why}", rt.qualified_resource());
        Self::on_object(403, "Forbidden", rt, name, message)
    }

    pub fn method_not_allowed(method: &http::Method) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    pub fn watch_unsupported() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "watch is not supported by the simulated cluster: list and get instead",
        )
    }

    pub fn unsupported_media_type(content_type: Option<&str>) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
                content_type.unwrap_or("none")
            ),
        )
    }

    /// 409 with the causes a real server lists for an apply conflict.
    pub fn apply_conflict(message: String, causes: Vec<Value>) -> Self {
        Self::new(409, "Conflict", message).with_details(json!({"causes": causes}))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn into_reply(self) -> Reply {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        });
        // A real server leaves an unknown reason out.
        if !self.reason.is_empty() {
            body["reason"] = self.reason.into();
        }
        if let Some(d) = self.details {
            body["details"] = d;
        }
        Reply {
            code: self.code,
            body,
            warnings: Vec::new(),
        }
    }
}

// === Routing ===

/// Serves one request.
pub(crate) fn handle(state: &mut State, req: &Req<'_>) -> Reply {
    route(state, req).unwrap_or_else(ApiError::into_reply)
}

fn route(state: &mut State, req: &Req<'_>) -> Result<Reply, ApiError> {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let discovery = |r: Reply| {
        if req.method == http::Method::GET {
            Ok(r)
        } else {
            Err(ApiError::method_not_allowed(req.method))
        }
    };
    match segments.as_slice() {
        ["version"] => discovery(Reply::ok(version())),
        ["api"] if req.wants_aggregated() => discovery(Reply::ok(aggregated(state, true))),
        ["api"] => discovery(Reply::ok(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "simulated.invalid:443"}],
        }))),
        ["apis"] if req.wants_aggregated() => discovery(Reply::ok(aggregated(state, false))),
        ["apis"] => discovery(Reply::ok(group_list(state))),
        ["api", version] => discovery(Reply::ok(resource_list(state, "", version)?)),
        ["apis", group] => discovery(Reply::ok(api_group(state, group)?)),
        ["apis", group, version] => discovery(Reply::ok(resource_list(state, group, version)?)),
        ["api", version, rest @ ..] => {
            let t = target(state, "", version, rest)?;
            objects::serve(state, req, t)
        }
        ["apis", group, version, rest @ ..] => {
            let t = target(state, group, version, rest)?;
            objects::serve(state, req, t)
        }
        _ => Err(ApiError::no_such_path()),
    }
}

/// Resolves an object path below `/api/v1` or `/apis/{group}/{version}`.
fn target(state: &State, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        // `namespaces/{name}[/status]` is the Namespace itself.
        ["namespaces", _] | ["namespaces", _, "status" | "finalize"] if group.is_empty() => {
            (None, rest)
        }
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(*sub)),
        _ => return Err(ApiError::no_such_path()),
    };
    let rt = state
        .resolve(group, version, plural)
        .ok_or_else(ApiError::no_such_path)?;
    if namespace.is_some() && !rt.namespaced {
        return Err(ApiError::no_such_path());
    }
    if namespace.is_none() && rt.namespaced && name.is_some() {
        return Err(ApiError::no_such_path());
    }
    let status = match sub {
        None => false,
        Some("status") if rt.status => true,
        Some(_) => return Err(ApiError::no_such_path()),
    };
    Ok(Target {
        rt,
        namespace,
        name,
        status,
    })
}

// === Discovery ===

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "36",
        "emulationMajor": "1",
        "emulationMinor": "36",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "35",
        "gitVersion": "v1.36.0-flotilla-simulated",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "none (simulated)",
        "compiler": "rustc",
        "platform": "simulated",
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

fn group_version(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    json!({
        "name": group,
        "versions": versions.iter().map(|v| group_version(group, v)).collect::<Vec<_>>(),
        "preferredVersion": group_version(group, &versions[0]),
    })
}

fn group_list(state: &State) -> Value {
    let groups: Vec<Value> = state
        .groups()
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn api_group(state: &State, group: &str) -> Result<Value, ApiError> {
    let groups = state.groups();
    let (g, vs) = groups
        .iter()
        .find(|(g, _)| g == group)
        .ok_or_else(ApiError::no_such_path)?;
    let mut v = group_entry(g, vs);
    v["kind"] = "APIGroup".into();
    v["apiVersion"] = "v1".into();
    Ok(v)
}

fn resource_list(state: &State, group: &str, version: &str) -> Result<Value, ApiError> {
    let list = state
        .resources_in(group, version)
        .ok_or_else(ApiError::no_such_path)?;
    let mut resources = Vec::new();
    for rt in &list {
        resources.push(json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": VERBS,
        }));
        if rt.status {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    Ok(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": list[0].api_version(),
        "resources": resources,
    }))
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2`) of `/api` (core) or `/apis`.
fn aggregated(state: &State, core: bool) -> Value {
    let groups: Vec<(String, Vec<String>)> = if core {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        state.groups()
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = state
                        .resources_in(group, version)
                        .unwrap_or_default()
                        .iter()
                        .map(|rt| {
                            let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
                            let subresources: Vec<Value> = if rt.status {
                                vec![json!({"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS})]
                            } else {
                                Vec::new()
                            };
                            json!({
                                "resource": rt.plural,
                                "responseKind": kind,
                                "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": rt.singular,
                                "verbs": VERBS,
                                "subresources": subresources,
                            })
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}
