//! Deletes in the simulated API server: one object (cascading to a Namespace's objects and a
//! CRD's custom resources) or a selected collection, with preconditions and `dryRun`.

use serde_json::{Value, json};

use super::api::{ApiError, Reply, Req};
use super::objects::{Target, dry_run, parse_body, selectors};
use super::resources::ResourceType;
use super::store::{self, ObjectKey, State};

/// Names the real server never lets go.
const UNDELETABLE_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// What a delete asks for, from the DeleteOptions body and the query.
struct DeleteOptions {
    dry_run: bool,
    foreground: bool,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    fn from(req: &Req<'_>) -> Result<Self, ApiError> {
        let body = if req.body.is_empty() {
            Value::Null
        } else {
            parse_body(req.body)?
        };
        let body_dry_run = body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
        let policy = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| req.param("propagationPolicy"));
        let precondition = |k: &str| {
            body.pointer(&format!("/preconditions/{k}"))
                .and_then(Value::as_str)
                .map(String::from)
        };
        Ok(Self {
            dry_run: body_dry_run || dry_run(req.param("dryRun").as_deref())?,
            foreground: policy.as_deref() == Some("Foreground"),
            uid: precondition("uid"),
            resource_version: precondition("resourceVersion"),
        })
    }
}

pub(crate) fn delete(
    state: &mut State,
    req: &Req<'_>,
    t: &Target,
    name: &str,
) -> Result<Reply, ApiError> {
    let opts = DeleteOptions::from(req)?;
    let live = state
        .get(&t.rt, &t.key(name))
        .ok_or_else(|| ApiError::not_found(&t.rt, name))?;
    let meta = |k: &str| {
        live.object
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (uid, rv) = (meta("uid"), meta("resourceVersion"));
    if let Some(want) = opts.uid.as_deref().filter(|u| *u != uid) {
        return Err(ApiError::conflict(
            &t.rt,
            name,
            &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    if let Some(want) = opts.resource_version.as_deref().filter(|r| *r != rv) {
        return Err(ApiError::conflict(
            &t.rt,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in meta: {rv}"
            ),
        ));
    }
    if t.rt.is("", "Namespace") && UNDELETABLE_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(
            &t.rt,
            name,
            "this namespace may not be deleted",
        ));
    }
    let object = if opts.dry_run {
        store::render(&t.rt, live)
    } else {
        state
            .delete(&t.rt, &t.key(name))
            .ok_or_else(|| ApiError::internal("the object vanished while being deleted"))?
    };
    Ok(Reply::ok(delete_answer(
        &t.rt,
        name,
        object,
        opts.foreground,
    )))
}

/// A foreground delete answers with the object as it goes; any other with a `Status`.
fn delete_answer(rt: &ResourceType, name: &str, mut object: Value, foreground: bool) -> Value {
    if foreground {
        let meta = store::metadata_mut(&mut object);
        meta.insert("deletionTimestamp".into(), store::now().into());
        meta.insert("deletionGracePeriodSeconds".into(), 0.into());
        meta.insert("finalizers".into(), json!(["foregroundDeletion"]));
        return object;
    }
    let uid = object.pointer("/metadata/uid").cloned().unwrap_or_default();
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": uid},
    })
}

pub(crate) fn delete_collection(
    state: &mut State,
    req: &Req<'_>,
    t: &Target,
) -> Result<Reply, ApiError> {
    let opts = DeleteOptions::from(req)?;
    let (labels, fields) = selectors(req)?;
    let keys: Vec<ObjectKey> = state
        .list(&t.rt, t.namespace.as_deref())
        .filter(|(_, s)| labels.matches_labels(&s.object) && fields.matches_fields(&s.object))
        .filter(|(k, _)| {
            !(t.rt.is("", "Namespace") && UNDELETABLE_NAMESPACES.contains(&k.1.as_str()))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for key in keys {
        let object = if opts.dry_run {
            state.get(&t.rt, &key).map(|s| store::render(&t.rt, s))
        } else {
            state.delete(&t.rt, &key)
        };
        items.extend(object);
    }
    Ok(Reply::ok(json!({
        "kind": format!("{}List", t.rt.kind),
        "apiVersion": t.rt.api_version(),
        "metadata": {"resourceVersion": state.resource_version()},
        "items": items,
    })))
}
