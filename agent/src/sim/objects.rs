//! The object handlers of the simulated API server: get, list, create, replace and the four
//! patch types (server-side apply among them), with the real server's checks (namespace exists,
//! type matches the URL, the schema of built-in kinds (`schema`), name rules, preconditions) and
//! `dryRun`. Deletes are in `delete`.

use serde_json::{Value, json};

use super::api::{ApiError, Reply, Req};
use super::delete;
use super::fields::{self, Managers, Scope, Writer};
use super::patch;
use super::resources::{self, ResourceType};
use super::schema::{self, FieldValidation, PatchKind};
use super::selector::Selector;
use super::store::{self, ObjectKey, State, Write};

/// Field manager of an update that names none.
const DEFAULT_MANAGER: &str = "unknown";

/// What an object path addresses.
pub(crate) struct Target {
    pub rt: ResourceType,
    /// `None` for cluster-scoped resources, and for lists across all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The `/status` subresource.
    pub status: bool,
}

impl Target {
    pub fn key(&self, name: &str) -> ObjectKey {
        (self.namespace.clone().unwrap_or_default(), name.to_string())
    }

    /// Which fields a write through this path may change.
    fn scope(&self) -> Scope {
        if self.status {
            Scope::Status
        } else if self.rt.status {
            Scope::NoStatus
        } else {
            Scope::All
        }
    }
}

/// The write options of the query string.
struct Options {
    dry_run: bool,
    force: bool,
    manager: Option<String>,
    validation: FieldValidation,
}

impl Options {
    fn from(req: &Req<'_>) -> Result<Self, ApiError> {
        Ok(Self {
            dry_run: dry_run(req.param("dryRun").as_deref())?,
            force: req.param("force").as_deref() == Some("true"),
            manager: req.param("fieldManager").filter(|m| !m.is_empty()),
            validation: FieldValidation::parse(req.param("fieldValidation").as_deref())?,
        })
    }

    fn manager(&self) -> &str {
        self.manager.as_deref().unwrap_or(DEFAULT_MANAGER)
    }
}

pub(crate) fn dry_run(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

pub(crate) fn serve(state: &mut State, req: &Req<'_>, t: Target) -> Result<Reply, ApiError> {
    use http::Method;
    let name = t.name.clone();
    match (req.method, name) {
        (&Method::GET, Some(name)) => get(state, req, &t, &name),
        (&Method::GET, None) if req.param("watch").is_some_and(|w| w == "true" || w == "1") => {
            Err(ApiError::watch_unsupported())
        }
        (&Method::GET, None) => list(state, req, &t),
        (&Method::POST, None) if !t.status => create(state, req, &t),
        (&Method::PUT, Some(name)) => replace(state, req, &t, &name),
        (&Method::PATCH, Some(name)) => patch(state, req, &t, &name),
        (&Method::DELETE, Some(name)) if !t.status => delete::delete(state, req, &t, &name),
        (&Method::DELETE, None) if !t.status => delete::delete_collection(state, req, &t),
        (m, _) => Err(ApiError::method_not_allowed(m)),
    }
}

// === Reads ===

/// The label and field selectors of a request.
pub(crate) fn selectors(req: &Req<'_>) -> Result<(Selector, Selector), ApiError> {
    let parse = |key: &str| match req.param(key) {
        Some(s) => Selector::parse(&s).map_err(ApiError::bad_request),
        None => Ok(Selector::default()),
    };
    Ok((parse("labelSelector")?, parse("fieldSelector")?))
}

fn metadata_only(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
    })
}

fn get(state: &State, req: &Req<'_>, t: &Target, name: &str) -> Result<Reply, ApiError> {
    let stored = state
        .get(&t.rt, &t.key(name))
        .ok_or_else(|| ApiError::not_found(&t.rt, name))?;
    let object = store::render(&t.rt, stored);
    Ok(Reply::ok(if req.wants_metadata_only() {
        metadata_only(&object)
    } else {
        object
    }))
}

fn list(state: &State, req: &Req<'_>, t: &Target) -> Result<Reply, ApiError> {
    let (labels, fields) = selectors(req)?;
    let meta_only = req.wants_metadata_only();
    let items: Vec<Value> = state
        .list(&t.rt, t.namespace.as_deref())
        .filter(|(_, s)| labels.matches_labels(&s.object) && fields.matches_fields(&s.object))
        .map(|(_, s)| {
            let object = store::render(&t.rt, s);
            if meta_only {
                metadata_only(&object)
            } else {
                object
            }
        })
        .collect();
    let (api_version, kind) = if meta_only {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (t.rt.api_version(), format!("{}List", t.rt.kind))
    };
    Ok(Reply::ok(json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": state.resource_version()},
        "items": items,
    })))
}

// === Writes ===

/// A request body: JSON, or YAML (apply bodies, and lenient for the others).
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice::<Value>(body))
        .map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON or YAML: {e}"))
        })
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    match parse_body(body)? {
        v @ Value::Object(_) => Ok(v),
        _ => Err(ApiError::bad_request("the request body must be an object")),
    }
}

/// The body's apiVersion and kind must be the URL's; missing ones are filled in unless
/// `required` (apply).
fn check_type(rt: &ResourceType, obj: &mut Value, required: bool) -> Result<(), ApiError> {
    let expected = [("apiVersion", rt.api_version()), ("kind", rt.kind.clone())];
    for (field, want) in expected {
        match obj.get(field).and_then(Value::as_str) {
            Some(got) if got == want => {}
            Some(got) => {
                let what = if field == "kind" {
                    "kind"
                } else {
                    "API version"
                };
                return Err(ApiError::bad_request(format!(
                    "the {what} in the data ({got}) does not match the expected {what} ({want})"
                )));
            }
            None if required => {
                return Err(ApiError::bad_request(format!("{field} must be set")));
            }
            None => {
                obj[field] = want.into();
            }
        }
    }
    Ok(())
}

/// The body's namespace must be the URL's (filled in when missing); cluster-scoped objects
/// have none.
fn check_namespace(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let meta = store::metadata_mut(obj);
    match &t.namespace {
        Some(ns) => match meta.get("namespace").and_then(Value::as_str) {
            Some(got) if !got.is_empty() && got != ns => Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            _ => {
                meta.insert("namespace".into(), ns.clone().into());
                Ok(())
            }
        },
        None if t.rt.namespaced => Err(ApiError::no_such_path()),
        None => {
            meta.remove("namespace");
            Ok(())
        }
    }
}

/// The body's name must be the URL's (filled in when missing).
fn check_name(obj: &mut Value, name: &str) -> Result<(), ApiError> {
    let meta = store::metadata_mut(obj);
    match meta.get("name").and_then(Value::as_str) {
        Some(got) if !got.is_empty() && got != name => Err(ApiError::bad_request(format!(
            "the name of the object ({got}) does not match the name on the URL ({name})"
        ))),
        _ => {
            meta.insert("name".into(), name.into());
            Ok(())
        }
    }
}

fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    resources::validate_name(rt, name)
        .map_err(|why| ApiError::invalid(rt, name, "metadata.name", name, &why))
}

/// The checks the real server makes of some kinds' content (CRDs: what serving them needs).
fn validate_object(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    if !rt.is(resources::CRD_GROUP, "CustomResourceDefinition") {
        return Ok(());
    }
    let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    for (pointer, field) in [
        ("/spec/group", "spec.group"),
        ("/spec/names/plural", "spec.names.plural"),
        ("/spec/names/kind", "spec.names.kind"),
    ] {
        if text(pointer).is_empty() {
            return Err(ApiError::invalid(rt, name, field, "", "Required value"));
        }
    }
    let (plural, group) = (text("/spec/names/plural"), text("/spec/group"));
    if name != format!("{plural}.{group}") {
        return Err(ApiError::invalid(
            rt,
            name,
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let storage = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map_or(0, |vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .count()
        });
    if storage != 1 {
        return Err(ApiError::invalid(
            rt,
            name,
            "spec.versions",
            "",
            "must have exactly one version marked as storage version",
        ));
    }
    Ok(())
}

fn check_namespace_exists(state: &State, t: &Target) -> Result<(), ApiError> {
    match &t.namespace {
        Some(ns) if !state.namespace_exists(ns) => Err(ApiError::namespace_not_found(ns)),
        _ => Ok(()),
    }
}

fn resource_version(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
}

/// A resourceVersion in the body is a precondition: it must be the live one.
fn check_resource_version(
    t: &Target,
    name: &str,
    body: &Value,
    live: &Value,
) -> Result<(), ApiError> {
    match resource_version(body) {
        Some(rv) if Some(rv) != resource_version(live) => Err(ApiError::conflict(
            &t.rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )),
        _ => Ok(()),
    }
}

/// Applies the status-subresource rule to the object a write produced: a main write keeps the
/// live `.status`; a status write changes nothing but `.status`.
fn status_policy(t: &Target, live: Option<&Value>, new: Value) -> Value {
    let live_status = live.and_then(|l| l.get("status")).cloned();
    if t.status {
        let mut out = live.cloned().unwrap_or(Value::Null);
        match new.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        out
    } else if t.rt.status {
        let mut out = new;
        if let Some(m) = out.as_object_mut() {
            match live_status {
                Some(s) => m.insert("status".into(), s),
                None => m.remove("status"),
            };
        }
        out
    } else {
        new
    }
}

/// Stores `object` as `name` (or only works out what would be stored, on a dry run) and
/// answers with it: 201 when that created the object, 200 when it replaced one.
fn commit(
    state: &mut State,
    t: &Target,
    name: &str,
    object: Value,
    managers: Managers,
    dry_run: bool,
) -> Reply {
    let (object, created) = state.commit(Write {
        rt: &t.rt,
        key: t.key(name),
        object,
        managers,
        dry_run,
    });
    Reply {
        code: if created { 201 } else { 200 },
        body: object,
        warnings: Vec::new(),
    }
}

fn create(state: &mut State, req: &Req<'_>, t: &Target) -> Result<Reply, ApiError> {
    let opts = Options::from(req)?;
    let mut obj = parse_object(req.body)?;
    check_type(&t.rt, &mut obj, false)?;
    let warnings = schema::check_body(&t.rt, &mut obj, opts.validation)?;
    check_namespace(t, &mut obj)?;
    let meta = store::metadata_mut(&mut obj);
    let name = match meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) => format!("{prefix}{}", random_suffix()),
            None => {
                return Err(ApiError::invalid(
                    &t.rt,
                    "",
                    "metadata.name",
                    "",
                    "name or generateName is required",
                ));
            }
        },
    };
    meta.insert("name".into(), name.clone().into());
    validate_name(&t.rt, &name)?;
    check_namespace_exists(state, t)?;
    if state.get(&t.rt, &t.key(&name)).is_some() {
        return Err(ApiError::already_exists(&t.rt, &name));
    }
    let obj = status_policy(t, None, obj);
    validate_object(&t.rt, &name, &obj)?;
    let now = store::now();
    let who = writer(&opts, &t.rt, &now);
    let mut managers = Managers::default();
    managers.record_update(None, &obj, &who, t.scope());
    Ok(commit(state, t, &name, obj, managers, opts.dry_run).with_warnings(warnings))
}

fn writer<'a>(opts: &'a Options, rt: &ResourceType, now: &'a str) -> Writer<'a> {
    Writer {
        manager: opts.manager(),
        api_version: rt.api_version(),
        time: now,
    }
}

fn replace(state: &mut State, req: &Req<'_>, t: &Target, name: &str) -> Result<Reply, ApiError> {
    let opts = Options::from(req)?;
    let mut obj = parse_object(req.body)?;
    check_type(&t.rt, &mut obj, false)?;
    let warnings = schema::check_body(&t.rt, &mut obj, opts.validation)?;
    check_namespace(t, &mut obj)?;
    check_name(&mut obj, name)?;
    let live = state
        .get(&t.rt, &t.key(name))
        .ok_or_else(|| ApiError::not_found(&t.rt, name))?
        .clone();
    check_resource_version(t, name, &obj, &live.object)?;
    Ok(update(state, t, name, &opts, live, obj)?.with_warnings(warnings))
}

/// The common end of replace and the non-apply patches: status rule, ownership, commit.
fn update(
    state: &mut State,
    t: &Target,
    name: &str,
    opts: &Options,
    live: store::Stored,
    new: Value,
) -> Result<Reply, ApiError> {
    let new = status_policy(t, Some(&live.object), new);
    validate_object(&t.rt, name, &new)?;
    let now = store::now();
    let who = writer(opts, &t.rt, &now);
    let mut managers = live.managers.clone();
    managers.record_update(Some(&live.object), &new, &who, t.scope());
    Ok(commit(state, t, name, new, managers, opts.dry_run))
}

fn patch(state: &mut State, req: &Req<'_>, t: &Target, name: &str) -> Result<Reply, ApiError> {
    let opts = Options::from(req)?;
    let media = req
        .content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim());
    match media {
        Some("application/apply-patch+yaml") => return apply(state, req, t, name, &opts),
        Some(
            "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json-patch+json",
        ) => {}
        _ => return Err(ApiError::unsupported_media_type(req.content_type)),
    }
    let patch = parse_body(req.body)?;
    let live = state
        .get(&t.rt, &t.key(name))
        .ok_or_else(|| ApiError::not_found(&t.rt, name))?
        .clone();
    let mut base = store::render(&t.rt, &live);
    store::metadata_mut(&mut base).remove("managedFields");
    let kind = match media {
        Some("application/json-patch+json") => PatchKind::Json,
        Some("application/strategic-merge-patch+json") => PatchKind::Strategic,
        _ => PatchKind::Merge,
    };
    let mut new = if kind == PatchKind::Json {
        patch::json_patch(&base, &patch).map_err(|e| {
            ApiError::invalid(
                &t.rt,
                name,
                "patch",
                "",
                &format!("the JSON patch cannot be applied: {e}"),
            )
        })?
    } else {
        let mut doc = base;
        patch::merge_patch(&mut doc, &patch);
        doc
    };
    let warnings = schema::check_patched(&t.rt, kind, &patch, &mut new, opts.validation)?;
    check_type(&t.rt, &mut new, true)?;
    check_name(&mut new, name)?;
    check_namespace(t, &mut new)?;
    check_resource_version(t, name, &new, &live.object)?;
    Ok(update(state, t, name, &opts, live, new)?.with_warnings(warnings))
}

fn apply(
    state: &mut State,
    req: &Req<'_>,
    t: &Target,
    name: &str,
    opts: &Options,
) -> Result<Reply, ApiError> {
    if opts.manager.is_none() {
        return Err(ApiError::bad_request(
            "fieldManager is required for apply requests",
        ));
    }
    let mut config = parse_object(req.body)?;
    check_type(&t.rt, &mut config, true)?;
    check_name(&mut config, name)?;
    check_namespace(t, &mut config)?;
    fields::strip_nulls(&mut config);
    // An apply configuration is typed against the schema whatever `fieldValidation` says.
    schema::check_apply(&t.rt, &config)?;
    let live = state.get(&t.rt, &t.key(name)).cloned();
    if let Some(live) = &live {
        check_resource_version(t, name, &config, &live.object)?;
    }
    // Keep only what this path may set (and the identity fields).
    match t.scope() {
        Scope::Status => {
            let keep = ["apiVersion", "kind", "metadata", "status"];
            if let Some(m) = config.as_object_mut() {
                m.retain(|k, _| keep.contains(&k.as_str()));
            }
            let meta = store::metadata_mut(&mut config);
            meta.retain(|k, _| k == "name" || k == "namespace");
        }
        Scope::NoStatus => {
            if let Some(m) = config.as_object_mut() {
                m.remove("status");
            }
        }
        Scope::All => {}
    }
    for k in [
        "managedFields",
        "resourceVersion",
        "uid",
        "generation",
        "creationTimestamp",
    ] {
        store::metadata_mut(&mut config).remove(k);
    }
    let (live_object, managers) = match &live {
        Some(l) => (l.object.clone(), l.managers.clone()),
        None if t.status => return Err(ApiError::not_found(&t.rt, name)),
        None => {
            validate_name(&t.rt, name)?;
            check_namespace_exists(state, t)?;
            (Value::Null, Managers::default())
        }
    };
    let now = store::now();
    let who = writer(opts, &t.rt, &now);
    let (new, managers) = fields::apply(
        &live_object,
        &managers,
        &config,
        &who,
        t.scope(),
        opts.force,
    )
    .map_err(|conflicts| {
        let causes = conflicts
            .iter()
            .map(|c| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {}", c.manager),
                    "field": c.path,
                })
            })
            .collect();
        ApiError::apply_conflict(fields::conflict_message(&conflicts), causes)
    })?;
    schema::check_applied(&t.rt, &config, &new)?;
    let new = status_policy(t, live.as_ref().map(|l| &l.object), new);
    validate_object(&t.rt, name, &new)?;
    Ok(commit(state, t, name, new, managers, opts.dry_run))
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}
