//! The agent's calls to its cluster's API: resource mapping through discovery (cached, refreshed
//! on a miss), server-side apply as field manager `flotilla-agent`, dry-run apply, get and
//! delete. Every call goes through `kube::Client`, whichever backend sits behind it.

use std::collections::HashMap;
use std::sync::Arc;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;

use super::objects::ObjKey;

/// The field manager of every apply the agent makes.
pub const FIELD_MANAGER: &str = "flotilla-agent";

/// Why one object could not be applied, read or deleted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjError {
    /// The cluster serves no such kind (not in discovery, even after a refresh).
    #[error("unknown kind {kind} in {api_version}: the cluster does not serve it")]
    UnknownKind { api_version: String, kind: String },
    /// Another field manager owns fields this apply sets, and force is off.
    #[error("{0} (set `force: true` on the app to take these fields over)")]
    Conflict(String),
    /// The API server refused the request (a 500 may come without a reason).
    #[error("{}({code}): {message}", if reason.is_empty() { String::new() } else { format!("{reason} ") })]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    /// The API server could not be reached.
    #[error("cluster API: {0}")]
    Transport(#[source] Arc<kube::Error>),
    /// The API server answered what is not a Kubernetes object.
    #[error("cluster API: {0}")]
    Garbage(#[source] Arc<serde_json::Error>),
}

impl ObjError {
    fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.is_conflict() && s.message.contains("Apply failed") => {
                ObjError::Conflict(s.message.clone())
            }
            kube::Error::Api(s) => ObjError::Api {
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            other => ObjError::Transport(Arc::new(other)),
        }
    }

    /// A short CamelCase reason for status reports.
    pub fn reason(&self) -> &'static str {
        match self {
            ObjError::UnknownKind { .. } => "UnknownKind",
            ObjError::Conflict(_) => "ApplyConflict",
            ObjError::Api { .. } => "ApplyFailed",
            ObjError::Transport(_) | ObjError::Garbage(_) => "ClusterUnreachable",
        }
    }
}

/// A resolved kind: how to address it and whether it lives in a namespace.
#[derive(Debug, Clone)]
struct Mapping {
    resource: ApiResource,
    namespaced: bool,
}

/// The cluster API, with the discovery cache.
pub struct Kube {
    client: kube::Client,
    mappings: HashMap<(String, String), Mapping>,
}

impl Kube {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            mappings: HashMap::new(),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Maps `key`'s kind to its resource: from the cache, else by asking discovery (so a CRD
    /// applied a moment ago is found).
    async fn mapping(&mut self, key: &ObjKey) -> Result<Mapping, ObjError> {
        let id = (key.api_version.clone(), key.kind.clone());
        if let Some(m) = self.mappings.get(&id) {
            return Ok(m.clone());
        }
        let (group, version) = key.group_version();
        let gvk = GroupVersionKind::gvk(group, version, &key.kind);
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, caps)) => {
                let m = Mapping {
                    resource,
                    namespaced: caps.scope == Scope::Namespaced,
                };
                self.mappings.insert(id, m.clone());
                Ok(m)
            }
            Err(kube::Error::Discovery(_)) => Err(self.unknown(key)),
            Err(kube::Error::Api(s)) if s.is_not_found() => Err(self.unknown(key)),
            Err(e) => Err(ObjError::from_kube(e)),
        }
    }

    fn unknown(&self, key: &ObjKey) -> ObjError {
        ObjError::UnknownKind {
            api_version: key.api_version.clone(),
            kind: key.kind.clone(),
        }
    }

    /// Forgets what discovery said about `key`'s kind (e.g. after its CRD was deleted).
    pub fn forget(&mut self, key: &ObjKey) {
        self.mappings
            .remove(&(key.api_version.clone(), key.kind.clone()));
    }

    async fn api(&mut self, key: &ObjKey) -> Result<Api<DynamicObject>, ObjError> {
        let m = self.mapping(key).await?;
        Ok(if m.namespaced {
            let ns = if key.namespace.is_empty() {
                self.client.default_namespace().to_string()
            } else {
                key.namespace.clone()
            };
            Api::namespaced_with(self.client.clone(), &ns, &m.resource)
        } else {
            Api::all_with(self.client.clone(), &m.resource)
        })
    }

    /// Server-side apply of `obj` (dry run: what the object would become; nothing changes).
    pub async fn apply(
        &mut self,
        key: &ObjKey,
        obj: &Value,
        force: bool,
        dry_run: bool,
    ) -> Result<Value, ObjError> {
        let api = self.api(key).await?;
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = force;
        params.dry_run = dry_run;
        let out = api
            .patch(&key.name, &params, &Patch::Apply(obj))
            .await
            .map_err(ObjError::from_kube)?;
        serde_json::to_value(out).map_err(|e| ObjError::Garbage(Arc::new(e)))
    }

    /// Creates `obj` with POST as field manager `flotilla-agent` (for `metadata.generateName`:
    /// the API server picks the name); returns the object as created.
    pub async fn create(&mut self, key: &ObjKey, obj: &Value) -> Result<Value, ObjError> {
        let api = self.api(key).await?;
        let obj: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(|e| ObjError::Garbage(Arc::new(e)))?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let out = api
            .create(&params, &obj)
            .await
            .map_err(ObjError::from_kube)?;
        serde_json::to_value(out).map_err(|e| ObjError::Garbage(Arc::new(e)))
    }

    /// The live object, `None` when it does not exist.
    pub async fn get(&mut self, key: &ObjKey) -> Result<Option<Value>, ObjError> {
        let api = self.api(key).await?;
        let out = api.get_opt(&key.name).await.map_err(ObjError::from_kube)?;
        out.map(serde_json::to_value)
            .transpose()
            .map_err(|e| ObjError::Garbage(Arc::new(e)))
    }

    /// Deletes the object with background propagation; `Ok(false)` when it was already gone.
    pub async fn delete(&mut self, key: &ObjKey) -> Result<bool, ObjError> {
        let api = match self.api(key).await {
            Ok(api) => api,
            // Its kind is gone (e.g. the CRD went first): so is the object.
            Err(ObjError::UnknownKind { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
            Err(e) => Err(ObjError::from_kube(e)),
        }
    }
}

/// The exact requests the agent's calls make, recorded by the simulated API server behind the
/// same `kube::Client` a real cluster would be reached through.
#[cfg(all(test, feature = "simulated"))]
mod tests {
    use super::*;
    use crate::sim::{RecordedRequest, SimCluster, SimConfig};
    use serde_json::json;

    fn sim() -> (SimCluster, Kube) {
        let sim = SimCluster::new(SimConfig {
            record_requests: 1000,
            ..SimConfig::default()
        });
        let kube = Kube::new(sim.client());
        (sim, kube)
    }

    fn cm(name: &str) -> (ObjKey, Value) {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": name, "namespace": "default"}, "data": {"a": "1"}});
        (ObjKey::of(&v).unwrap(), v)
    }

    fn last(sim: &SimCluster) -> RecordedRequest {
        sim.requests().pop().expect("a request")
    }

    #[tokio::test]
    async fn apply_is_server_side_apply_as_flotilla_agent() {
        let (sim, mut kube) = sim();
        let (key, obj) = cm("a");
        kube.apply(&key, &obj, false, false).await.unwrap();
        let r = last(&sim);
        assert_eq!(r.method, "PATCH");
        assert_eq!(r.path, "/api/v1/namespaces/default/configmaps/a");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(r.param("fieldManager").as_deref(), Some("flotilla-agent"));
        assert_eq!(r.param("force"), None);
        assert_eq!(r.param("dryRun"), None);
        let sent: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(sent, obj, "the bundle's object is sent as is");

        kube.apply(&key, &obj, true, false).await.unwrap();
        assert_eq!(last(&sim).param("force").as_deref(), Some("true"));

        kube.apply(&key, &obj, true, true).await.unwrap();
        let r = last(&sim);
        assert_eq!(r.param("dryRun").as_deref(), Some("All"));
        assert_eq!(r.param("force").as_deref(), Some("true"));
    }

    #[tokio::test]
    async fn delete_propagates_in_the_background_and_get_is_a_plain_read() {
        let (sim, mut kube) = sim();
        let (key, obj) = cm("b");
        kube.apply(&key, &obj, false, false).await.unwrap();
        assert!(kube.get(&key).await.unwrap().is_some());
        let r = last(&sim);
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/api/v1/namespaces/default/configmaps/b")
        );
        assert!(kube.delete(&key).await.unwrap());
        let r = last(&sim);
        assert_eq!(r.method, "DELETE");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["propagationPolicy"], "Background");
        assert!(!kube.delete(&key).await.unwrap(), "already gone");
        assert!(kube.get(&key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn discovery_is_cached_and_refreshed_on_a_miss() {
        let (sim, mut kube) = sim();
        let deploy = |name: &str| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "namespace": "default"}, "spec": {"replicas": 1}})
        };
        for name in ["x", "y"] {
            let d = deploy(name);
            kube.apply(&ObjKey::of(&d).unwrap(), &d, false, false)
                .await
                .unwrap();
        }
        let discovery = sim
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/apis/apps/v1")
            .count();
        assert_eq!(discovery, 1, "the second apply used the cache");

        let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                            "metadata": {"name": "w", "namespace": "default"}});
        let wkey = ObjKey::of(&widget).unwrap();
        let err = kube.apply(&wkey, &widget, false, false).await.unwrap_err();
        assert!(matches!(err, ObjError::UnknownKind { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "unknown kind Widget in example.com/v1: the cluster does not serve it"
        );
    }
}
