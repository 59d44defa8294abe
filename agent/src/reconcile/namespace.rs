//! `createNamespace`: the app's namespace, created before the app is applied and deleted when
//! the app is removed — only when Flotilla created it, no other app still uses it, and it holds
//! nothing Flotilla did not apply.
//!
//! A namespace the agent creates carries the label [`CREATED_LABEL`]; only such a namespace is
//! recorded in an app's inventory, so one that existed before is never recorded and never
//! deleted. A second app naming the same namespace finds it labelled and records it too; the
//! namespace goes with the last app that records it.

use std::collections::BTreeSet;

use flotilla_proto::v1::AppOptions;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{Discovery, Scope, verbs};
use serde_json::{Value, json};

use super::inventory::{Inventories, Inventory};
use super::kubeapi::{FIELD_MANAGER, Kube, ObjError};
use super::objects::{Obj, ObjKey, prune_disabled};

/// Label on every namespace the agent created for `createNamespace`.
pub const CREATED_LABEL: &str = "flotilla.io/created-namespace";

/// At most this many foreign objects are named in a message.
const NAMED: usize = 3;

fn key(ns: &str) -> ObjKey {
    ObjKey {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: String::new(),
        name: ns.into(),
    }
}

fn created_by_flotilla(live: &Value) -> bool {
    live.pointer("/metadata/labels")
        .and_then(|l| l.get(CREATED_LABEL))
        .and_then(Value::as_str)
        == Some("true")
}

/// Creates the app's namespace when `createNamespace` is set and it does not exist (recorded
/// in `inv` first, so a crash leaves it listed), or records a namespace another app created;
/// saves `inv` when it changed. A namespace that the bundle itself holds is left to the bundle.
pub async fn ensure(
    kube: &mut Kube,
    inventories: &Inventories,
    app: &str,
    opts: &AppOptions,
    objs: &[Obj],
    inv: &mut Inventory,
) -> Result<(), String> {
    if !opts.create_namespace {
        return Ok(());
    }
    let ns = opts.namespace.as_str();
    if ns.is_empty() {
        return Err("createNamespace is set but the app names no namespace".into());
    }
    let key = key(ns);
    if objs.iter().any(|o| o.key == key) {
        return Ok(());
    }
    let live = kube
        .get(&key)
        .await
        .map_err(|e| format!("cannot read namespace {ns}: {e}"))?;
    let create = match &live {
        Some(live) if !created_by_flotilla(live) => return Ok(()),
        Some(_) => false,
        None => true,
    };
    if inv.namespaces.insert(ns.to_string()) {
        inventories
            .save(app, inv)
            .await
            .map_err(|e| format!("cannot write the app's inventory: {e}"))?;
    }
    if create {
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": {
                    "app.kubernetes.io/managed-by": FIELD_MANAGER,
                    CREATED_LABEL: "true",
                },
            },
        });
        kube.apply(&key, &obj, true, false)
            .await
            .map_err(|e| format!("cannot create namespace {ns} (createNamespace): {e}"))?;
        tracing::info!(app, namespace = ns, "namespace created (createNamespace)");
    }
    Ok(())
}

/// Adds a hint to the API server's `namespaces "x" not found` when `createNamespace` is off.
pub fn hint(e: ObjError, opts: &AppOptions) -> ObjError {
    match e {
        ObjError::Api {
            code: 404,
            reason,
            message,
        } if !opts.create_namespace
            && message.starts_with("namespaces \"")
            && message.ends_with("\" not found") =>
        {
            ObjError::Api {
                code: 404,
                reason,
                message: format!(
                    "{message} (set `createNamespace: true` on the app to have Flotilla create it)"
                ),
            }
        }
        other => other,
    }
}

/// Objects that come with every namespace or go with their owner: never a reason to keep it.
fn incidental(obj: &DynamicObject, kind: &str, inv: &Inventory) -> bool {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    kind == "Event"
        || (kind == "ServiceAccount" && name == "default")
        || (kind == "ConfigMap" && name == "kube-root-ca.crt")
        || obj
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| !o.is_empty())
        // A Service's Endpoints go with the Service.
        || (kind == "Endpoints"
            && inv
                .objects
                .iter()
                .any(|k| k.kind == "Service" && k.api_version == "v1" && k.name == name))
}

/// The objects in `ns` that Flotilla did not apply for the app of `inv` (or that it applied
/// with `flotilla.io/prune: disabled`), by kind and name; discovery tells which kinds to list.
/// A kind the agent cannot list is an error: what it cannot see, it must not delete.
async fn foreign_objects(kube: &Kube, ns: &str, inv: &Inventory) -> Result<Vec<String>, String> {
    let client = kube.client().clone();
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| format!("discovery failed: {e}"))?;
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            // Events never keep a namespace: not even listed (the agent may not be allowed to).
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || ar.kind == "Event"
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("cannot list {} in {ns}: {e}", ar.plural))?;
            for obj in list.items {
                if incidental(&obj, &ar.kind, inv) {
                    continue;
                }
                let name = obj.metadata.name.clone().unwrap_or_default();
                let k = ObjKey {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                    namespace: ns.to_string(),
                    name,
                };
                let ours = inv.objects.contains(&k) || inv.hooks.created.contains(&k);
                let kept = serde_json::to_value(&obj).is_ok_and(|v| prune_disabled(&v));
                if !ours || kept {
                    found.push(format!("{} {}", k.kind, k.name));
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// At the app's removal (after its objects were pruned): deletes the namespaces Flotilla
/// created for it that no other app uses and that hold nothing Flotilla did not apply. Returns
/// the namespaces still held (to stay in the inventory) and, for the status, why.
pub async fn release(
    kube: &mut Kube,
    inventories: &Inventories,
    app: &str,
    inv: &Inventory,
    agent_namespace: &str,
) -> (BTreeSet<String>, Vec<String>) {
    let mut held = BTreeSet::new();
    let mut notes = Vec::new();
    for ns in &inv.namespaces {
        if ns == agent_namespace {
            continue;
        }
        match used_elsewhere(inventories, app, ns).await {
            Ok(Some(other)) => {
                tracing::info!(app, namespace = %ns, other = %other, "namespace left: another app uses it");
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                notes.push(format!("namespace {ns} kept: {e}"));
                held.insert(ns.clone());
                continue;
            }
        }
        let key = key(ns);
        match kube.get(&key).await {
            Ok(Some(live)) if created_by_flotilla(&live) => {}
            // Gone, or not the one Flotilla created: nothing to do, nothing to remember.
            Ok(_) => continue,
            Err(e) => {
                notes.push(format!("namespace {ns} kept: cannot read it: {e}"));
                held.insert(ns.clone());
                continue;
            }
        }
        match foreign_objects(kube, ns, inv).await {
            Ok(foreign) if foreign.is_empty() => {}
            Ok(foreign) => {
                let mut named = foreign
                    .iter()
                    .take(NAMED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if foreign.len() > NAMED {
                    named.push_str(&format!(" and {} more", foreign.len() - NAMED));
                }
                let why = format!(
                    "namespace {ns} kept: it holds {} objects Flotilla did not apply ({named})",
                    foreign.len()
                );
                tracing::warn!(app, namespace = %ns, reason = %why, "namespace not deleted");
                notes.push(why);
                held.insert(ns.clone());
                continue;
            }
            Err(e) => {
                notes.push(format!("namespace {ns} kept: {e}"));
                held.insert(ns.clone());
                continue;
            }
        }
        match kube.delete(&key).await {
            Ok(_) => tracing::info!(app, namespace = %ns, "namespace deleted (createNamespace)"),
            Err(e) => {
                notes.push(format!("namespace {ns} not deleted yet: {e}"));
                held.insert(ns.clone());
            }
        }
    }
    (held, notes)
}

/// Another app whose inventory records `ns`.
async fn used_elsewhere(
    inventories: &Inventories,
    app: &str,
    ns: &str,
) -> Result<Option<String>, String> {
    let apps = inventories
        .apps()
        .await
        .map_err(|e| format!("cannot list app inventories: {e}"))?;
    for other in apps.iter().filter(|a| a.as_str() != app) {
        let inv = inventories
            .load(other)
            .await
            .map_err(|e| format!("cannot read the inventory of app {other}: {e}"))?;
        if inv.namespaces.contains(ns) {
            return Ok(Some(other.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_hints_at_create_namespace_only_when_it_is_off() {
        let e = || ObjError::Api {
            code: 404,
            reason: "NotFound".into(),
            message: "namespaces \"guestbook\" not found".into(),
        };
        let off = AppOptions::default();
        assert_eq!(
            hint(e(), &off).to_string(),
            "NotFound (404): namespaces \"guestbook\" not found (set `createNamespace: true` on \
             the app to have Flotilla create it)"
        );
        let on = AppOptions {
            create_namespace: true,
            ..Default::default()
        };
        assert_eq!(
            hint(e(), &on).to_string(),
            "NotFound (404): namespaces \"guestbook\" not found"
        );
        let other = ObjError::Api {
            code: 404,
            reason: "NotFound".into(),
            message: "configmaps \"x\" not found".into(),
        };
        assert!(!hint(other, &off).to_string().contains("createNamespace"));
    }
}
