//! The live agent sessions of this hub, by cluster: what the rest of the hub can see of one (its
//! agent, when it was last heard from) and ask of it (disconnect, re-send the desired state).
//! In memory only; the gRPC session service (`api::session`) registers and drives them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::render::ClusterId;

/// A request to a live session from elsewhere in the hub.
#[derive(Debug, Clone)]
pub enum Control {
    Disconnect { reason: String, message: String },
}

/// What the rest of the hub can see of, and do to, one live session.
#[derive(Debug)]
pub struct SessionShared {
    pub id: u64,
    pub cluster: String,
    /// The cluster's fleet-wide id (`None`: not in the registry's cache when it connected).
    pub cluster_id: Option<ClusterId>,
    pub agent_version: String,
    /// When the session opened (unix ms).
    pub opened_ms: u64,
    /// The agent's cluster backend as it says in Hello: "kube" or "simulated".
    pub cluster_backend: String,
    pub(crate) last_seen_ms: AtomicU64,
    pub(crate) notify: Notify,
    pending: Mutex<Option<Control>>,
    /// Set when the cluster's desired state changed; the session re-reads and sends it.
    pub(crate) desired_dirty: AtomicBool,
    /// The generation last announced to the agent with `DesiredStateReady` (0: none).
    announced: AtomicU64,
    /// The generation of the desired state last handed to the agent by `FetchDesiredState`
    /// (0: none); newer than the one announced when the state changed in between.
    handed: AtomicU64,
}

impl SessionShared {
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn send(&self, c: Control) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        self.notify.notify_one();
    }

    pub(crate) fn mark_desired(&self) {
        self.desired_dirty.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(crate) fn announce(&self, generation: u64) {
        self.announced.store(generation, Ordering::Release);
    }

    pub(crate) fn announced(&self) -> u64 {
        self.announced.load(Ordering::Acquire)
    }

    pub(crate) fn hand(&self, generation: u64) {
        self.handed.store(generation, Ordering::Release);
    }

    pub(crate) fn handed(&self) -> u64 {
        self.handed.load(Ordering::Acquire)
    }

    pub(crate) fn take(&self) -> Option<Control> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The live sessions of this hub, by cluster.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Arc<SessionShared>>>,
    next_id: AtomicU64,
}

/// The live sessions at one moment, by cluster id (see [`Sessions::by_id`]).
pub type LiveById = HashMap<ClusterId, Arc<SessionShared>>;

impl Sessions {
    pub fn get(&self, cluster: &str) -> Option<Arc<SessionShared>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live sessions now, by cluster id: one lock for a whole rollout pass instead of one
    /// per cluster it looks at.
    pub fn by_id(&self) -> LiveById {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|s| Some((s.cluster_id?, s.clone())))
            .collect()
    }

    /// Asks a cluster's live session (if any) to disconnect.
    pub fn disconnect(&self, cluster: &str, reason: &str, message: &str) -> bool {
        match self.get(cluster) {
            Some(s) => {
                s.send(Control::Disconnect {
                    reason: reason.into(),
                    message: message.into(),
                });
                true
            }
            None => false,
        }
    }

    /// Tells a cluster's live session (if any) that its desired state changed.
    pub fn desired_changed(&self, cluster: &str) {
        if let Some(s) = self.get(cluster) {
            s.mark_desired();
        }
    }

    /// Tells every live session that its desired state may have changed (each re-reads it and
    /// sends it only if it did).
    pub fn desired_changed_all(&self) {
        for s in self.all() {
            s.mark_desired();
        }
    }

    /// Every live session now.
    fn all(&self) -> Vec<Arc<SessionShared>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Asks every live session to disconnect (hub shutdown).
    pub fn disconnect_all(&self, reason: &str, message: &str) {
        for s in self.all() {
            s.send(Control::Disconnect {
                reason: reason.into(),
                message: message.into(),
            });
        }
    }

    pub(crate) fn register(
        &self,
        cluster: &str,
        cluster_id: Option<ClusterId>,
        agent: Option<&flotilla_proto::v1::AgentInfo>,
        now_ms: u64,
    ) -> Arc<SessionShared> {
        let shared = Arc::new(SessionShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            cluster: cluster.to_string(),
            cluster_id,
            agent_version: agent.map(|a| a.version.clone()).unwrap_or_default(),
            opened_ms: now_ms,
            cluster_backend: agent.map(|a| a.cluster_backend.clone()).unwrap_or_default(),
            last_seen_ms: AtomicU64::new(now_ms),
            notify: Notify::new(),
            pending: Mutex::new(None),
            desired_dirty: AtomicBool::new(false),
            announced: AtomicU64::new(0),
            handed: AtomicU64::new(0),
        });
        let old = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_string(), shared.clone());
        if let Some(old) = old {
            old.send(Control::Disconnect {
                reason: "replaced".into(),
                message: "a newer session for this cluster was opened".into(),
            });
        }
        shared
    }

    pub(crate) fn unregister(&self, cluster: &str, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(cluster).is_some_and(|s| s.id == id) {
            live.remove(cluster);
        }
    }
}
