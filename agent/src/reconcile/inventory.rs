//! The inventory of an app: the objects the agent applied for it, kept in the cluster as a
//! ConfigMap `flotilla-app-<app>` in the agent's namespace. Pruning deletes only objects listed
//! here, so it stays safe across agent restarts and the loss of the agent's local state. It also
//! lists the namespaces Flotilla created for the app (`createNamespace`) and what its Helm hooks
//! did (`hooks`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use super::hooks::HookRecord;
use super::kubeapi::FIELD_MANAGER;
use super::objects::ObjKey;

/// Label on every inventory ConfigMap, with the app's name as value.
pub const APP_LABEL: &str = "flotilla.io/app";
const KIND_LABEL: &str = "flotilla.io/inventory";

/// One app's inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub revision: String,
    pub digest: String,
    pub objects: BTreeSet<ObjKey>,
    /// Namespaces Flotilla created (`createNamespace`) that this app uses.
    pub namespaces: BTreeSet<String>,
    /// What the app's Helm hooks did.
    pub hooks: HookRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory ConfigMap {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("inventory ConfigMap {namespace}/{name} is unreadable: {message}")]
    Corrupt {
        namespace: String,
        name: String,
        message: String,
    },
}

/// Reads and writes inventories in one namespace.
#[derive(Clone)]
pub struct Inventories {
    api: Api<ConfigMap>,
    namespace: String,
}

pub fn configmap_name(app: &str) -> String {
    format!("flotilla-app-{app}")
}

impl Inventories {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn err(&self, app: &str, e: kube::Error) -> InventoryError {
        InventoryError::Kube {
            namespace: self.namespace.clone(),
            name: configmap_name(app),
            source: Box::new(e),
        }
    }

    /// The app's inventory; empty when it has none.
    pub async fn load(&self, app: &str) -> Result<Inventory, InventoryError> {
        let name = configmap_name(app);
        let Some(cm) = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| self.err(app, e))?
        else {
            return Ok(Inventory::default());
        };
        let data = cm.data.unwrap_or_default();
        let get = |k: &str| data.get(k).cloned().unwrap_or_default();
        let corrupt = |key: &str, e: serde_json::Error| InventoryError::Corrupt {
            namespace: self.namespace.clone(),
            name: name.clone(),
            message: format!("{key}: {e}"),
        };
        let objects: BTreeSet<ObjKey> = match data.get("objects") {
            Some(text) => serde_json::from_str(text).map_err(|e| corrupt("objects", e))?,
            None => BTreeSet::new(),
        };
        let namespaces: BTreeSet<String> = match data.get("namespaces") {
            Some(text) => serde_json::from_str(text).map_err(|e| corrupt("namespaces", e))?,
            None => BTreeSet::new(),
        };
        let hooks: HookRecord = match data.get("hooks") {
            Some(text) => serde_json::from_str(text).map_err(|e| corrupt("hooks", e))?,
            None => HookRecord::default(),
        };
        Ok(Inventory {
            revision: get("revision"),
            digest: get("digest"),
            objects,
            namespaces,
            hooks,
        })
    }

    /// Writes the app's inventory (server-side apply; the agent owns these ConfigMaps).
    pub async fn save(&self, app: &str, inv: &Inventory) -> Result<(), InventoryError> {
        let name = configmap_name(app);
        let objects = serde_json::to_string(&inv.objects).expect("keys serialize");
        let mut cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": FIELD_MANAGER,
                    APP_LABEL: app,
                    KIND_LABEL: "app",
                },
            },
            "data": {
                "app": app,
                "revision": inv.revision,
                "digest": inv.digest,
                "objects": objects,
            },
        });
        // Only when there is something to say, so inventories without them stay as they were.
        if !inv.namespaces.is_empty() {
            cm["data"]["namespaces"] = serde_json::to_string(&inv.namespaces)
                .expect("names serialize")
                .into();
        }
        if inv.hooks != HookRecord::default() {
            cm["data"]["hooks"] = serde_json::to_string(&inv.hooks)
                .expect("a hook record serializes")
                .into();
        }
        self.api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|e| self.err(app, e))?;
        Ok(())
    }

    pub async fn remove(&self, app: &str) -> Result<(), InventoryError> {
        match self
            .api
            .delete(&configmap_name(app), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(self.err(app, e)),
        }
    }

    /// Every app that has an inventory here, by name.
    pub async fn apps(&self) -> Result<BTreeSet<String>, InventoryError> {
        let list = self
            .api
            .list(&ListParams::default().labels(&format!("{KIND_LABEL}=app")))
            .await
            .map_err(|e| self.err("*", e))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|cm| cm.metadata.labels?.get(APP_LABEL).cloned())
            .collect())
    }
}
