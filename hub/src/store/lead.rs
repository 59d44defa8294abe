//! Who does the work that must happen once in the fleet (advancing rollouts, offering what a
//! source rendered, expiring a disconnected cluster's grace), and the store that work writes
//! through. A hub alone on its store always leads and writes to it as it is. Replicas sharing an
//! etcd store lead by election ([`super::election`]): while one leads, its owned writes go
//! through the store fenced by the leader key it holds ([`EtcdStore::fenced_by`]), so a replica
//! that lost the lead cannot write even before it knows; while it does not, it has no such
//! store at all.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::election::{LEADER_KEY, Role};
use super::etcd::EtcdStore;
use super::{Revision, SharedStore, StoreError};

/// What [`StoreError::Fenced`] names as the ownership of the leader's writes.
const WHAT: &str = "the lead of the hub replicas";

/// This replica's lead, cheap to clone.
#[derive(Clone)]
pub struct Lead {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lead")
            .field("role", &*self.inner.role.borrow())
            .finish_non_exhaustive()
    }
}

type Wrap = Box<dyn Fn(SharedStore) -> SharedStore + Send + Sync>;

struct Inner {
    /// The store as every replica writes it (an operator's action, a session's report).
    shared: SharedStore,
    /// This replica's name among several sharing the store.
    name: Option<String>,
    role: watch::Receiver<Role>,
    /// Kept so that a lone hub's role never reads as closed.
    _alone: Option<watch::Sender<Role>>,
    kind: Kind,
    /// The fenced store of the term this replica leads in, made once per term.
    fenced: Mutex<Option<(Revision, SharedStore)>>,
}

enum Kind {
    /// The only hub on its store.
    Alone,
    /// One of several replicas on an etcd store; `wrap` decorates a fenced store as the plain
    /// one is (timing).
    Elected { etcd: Box<EtcdStore>, wrap: Wrap },
}

impl Lead {
    /// A hub alone on `store`: it always leads and writes without a fence.
    pub fn alone(store: SharedStore) -> Lead {
        let (tx, role) = watch::channel(Role::Leader { term: 0 });
        Lead {
            inner: Arc::new(Inner {
                shared: store,
                name: None,
                role,
                _alone: Some(tx),
                kind: Kind::Alone,
                fenced: Mutex::new(None),
            }),
        }
    }

    /// Replica `name`, whose lead is `role` (from [`super::election::run`]) on `etcd`, which
    /// `store` is (decorated); `wrap` decorates a fenced store alike.
    pub fn elected(
        store: SharedStore,
        etcd: EtcdStore,
        name: &str,
        role: watch::Receiver<Role>,
        wrap: impl Fn(SharedStore) -> SharedStore + Send + Sync + 'static,
    ) -> Lead {
        Lead {
            inner: Arc::new(Inner {
                shared: store,
                name: Some(name.to_string()),
                role,
                _alone: None,
                kind: Kind::Elected {
                    etcd: Box::new(etcd),
                    wrap: Box::new(wrap),
                },
                fenced: Mutex::new(None),
            }),
        }
    }

    /// The store as every replica writes it (not fenced).
    pub fn shared(&self) -> &SharedStore {
        &self.inner.shared
    }

    /// This replica's name among several sharing the store; `None` for a hub alone.
    pub fn replica(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// Whether this replica leads now.
    pub fn leads(&self) -> bool {
        self.inner.role.borrow().is_leader()
    }

    /// The role, to wait for a change of it.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.inner.role.clone()
    }

    /// The store the leader's work writes through while this replica leads: every write of it
    /// holds only while the lead it was taken in does. Not leading: [`StoreError::NotLeading`]
    /// saying who does.
    pub fn store(&self) -> Result<SharedStore, StoreError> {
        let role = self.inner.role.borrow().clone();
        let term = match role {
            Role::Leader { term } => term,
            Role::Follower { leader } => {
                return Err(StoreError::NotLeading {
                    leader: format!("replica {leader} leads"),
                });
            }
            Role::Candidate => {
                return Err(StoreError::NotLeading {
                    leader: "no replica leads now (an election is under way)".into(),
                });
            }
        };
        match &self.inner.kind {
            Kind::Alone => Ok(self.inner.shared.clone()),
            Kind::Elected { etcd, wrap } => {
                let mut fenced = self.inner.fenced.lock().unwrap_or_else(|e| e.into_inner());
                match fenced.as_ref() {
                    Some((t, store)) if *t == term => Ok(store.clone()),
                    _ => {
                        let store = wrap(Arc::new(etcd.fenced_by(LEADER_KEY, term, WHAT)));
                        *fenced = Some((term, store.clone()));
                        Ok(store)
                    }
                }
            }
        }
    }
}
