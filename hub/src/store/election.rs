//! Which hub replica leads, among replicas sharing one etcd: each replica registers itself
//! under [`REPLICAS`] with a lease of its own and campaigns for [`LEADER_KEY`] with that lease;
//! the replica whose key it is leads until its lease goes. The work that must happen once in
//! the fleet is the leader's; its writes go through [`EtcdStore::fenced_by`] the leader key, so
//! a replica that has lost the lead cannot write even before it knows.
//!
//! * The lease is kept alive every third of its time. A replica that has not renewed it within
//!   two thirds of its time steps down (etcd deletes its keys one third later at the earliest),
//!   so two replicas never both believe they lead; then it starts over with a new lease.
//! * A follower watches the leader key and campaigns as soon as it is deleted: the lead moves
//!   within the lease time after its holder dies (`kill -9`), at once when it stops cleanly
//!   (its lease is revoked).
//! * The role is published on a `watch` channel: [`Role::Leader`] carries the term (the leader
//!   key's create revision, what the fence compares).

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::etcd::EtcdStore;
use super::{Revision, Store, StoreError, WatchEvent};

/// The key the leader holds with its lease; its value is the leader's [`ReplicaInfo`].
pub const LEADER_KEY: &str = "/election/leader";
/// Each live replica's [`ReplicaInfo`], under its name, held with its lease.
pub const REPLICAS: &str = "/election/replicas/";
/// Default lease time: the lead moves this long (at most) after its holder dies.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);

/// A replica as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Unique among the replicas (the pod name, say).
    pub name: String,
    /// `host:port` agents may dial on it.
    pub endpoint: String,
    /// When it started (unix ms).
    pub started_ms: u64,
    pub version: String,
    /// The lease its keys are held with now (set by the election; tells this replica's key
    /// held with its current lease from one held with a lease it lost).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// This replica's part in the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not in the election now: starting, or its lease was lost and a new one is on its way.
    Candidate,
    /// Leads; `term` is the create revision of the leader key it holds.
    Leader { term: Revision },
    /// Another replica leads.
    Follower { leader: String },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

/// Runs this replica's part in the election until `shutdown` turns true (then revokes its
/// lease, so that another replica leads at once). The role goes to `role`.
pub async fn run(
    store: EtcdStore,
    me: ReplicaInfo,
    lease_time: Duration,
    role: watch::Sender<Role>,
    mut shutdown: watch::Receiver<bool>,
) {
    let lease_time = lease_time.max(Duration::from_secs(2));
    let mut backoff = Duration::from_millis(100);
    loop {
        role.send_replace(Role::Candidate);
        if *shutdown.borrow() {
            return;
        }
        let lease = match store.grant_lease(lease_time).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take part in the leader election: no lease; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(lease_time);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let outcome = hold(&store, &me, lease, lease_time, &role, &mut shutdown).await;
        match outcome {
            Held::Shutdown => {
                role.send_replace(Role::Candidate);
                if let Err(e) = store.revoke_lease(lease).await {
                    tracing::warn!(error = %e, "could not hand over the lead at shutdown; it moves when the lease expires");
                }
                return;
            }
            Held::Lost(why) => {
                tracing::warn!(replica = %me.name, reason = %why, "lost the election lease; starting over");
            }
        }
    }
}

enum Held {
    Shutdown,
    Lost(String),
}

/// Registers, campaigns and keeps `lease` alive until it is lost or shutdown.
async fn hold(
    store: &EtcdStore,
    me: &ReplicaInfo,
    lease: i64,
    lease_time: Duration,
    role: &watch::Sender<Role>,
    shutdown: &mut watch::Receiver<bool>,
) -> Held {
    let info = serde_json::to_vec(&ReplicaInfo {
        lease,
        ..me.clone()
    })
    .expect("replica info serializes");
    if let Err(e) = store
        .put_leased(&format!("{REPLICAS}{}", me.name), info.clone(), lease)
        .await
    {
        return Held::Lost(format!("registering: {e}"));
    }
    let renew_every = lease_time / 3;
    // Without a renewal for this long, the lease may expire before we hear of it: step down.
    let trust_for = lease_time * 2 / 3;
    let mut renewed = tokio::time::Instant::now();
    let mut next_renewal = renewed + renew_every;
    loop {
        // Campaign: take the leader key, or learn who holds it.
        let leader_rev = match store.create_leased(LEADER_KEY, info.clone(), lease).await {
            Ok(Ok(term)) => {
                tracing::info!(replica = %me.name, term, "leading the hub replicas");
                role.send_replace(Role::Leader { term });
                term
            }
            // Held with this very lease: taken by a campaign whose answer was lost (a call
            // sent again after etcd's leader changed), or campaigning again after the watch
            // broke. Still this replica's lead.
            Ok(Err(Some(holder))) if holder.value == info => {
                let term = holder.create_revision;
                tracing::info!(replica = %me.name, term, "leading the hub replicas");
                role.send_replace(Role::Leader { term });
                holder.mod_revision
            }
            Ok(Err(Some(holder))) => {
                let leader = serde_json::from_slice::<ReplicaInfo>(&holder.value)
                    .map_or_else(|_| "(unreadable)".to_string(), |r| r.name);
                if leader == me.name {
                    // Taken with a lease this replica lost: it goes when that lease expires.
                    tracing::info!(replica = %me.name, "the leader key is still held with this replica's previous lease");
                }
                role.send_replace(Role::Follower { leader });
                holder.mod_revision
            }
            Ok(Err(None)) => continue,
            Err(e) => {
                if renewed.elapsed() >= trust_for {
                    return Held::Lost(format!("campaigning: {e}"));
                }
                tracing::warn!(error = %e, "campaigning for the lead failed; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return Held::Shutdown,
                    () = tokio::time::sleep(renew_every / 4) => {}
                }
                continue;
            }
        };
        // Watch the leader key from the revision it was read at: a delete means campaign again.
        let mut watch = match store.watch(LEADER_KEY, leader_rev + 1).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "watching the leader key failed; campaigning again after the next renewal");
                None
            }
        };
        loop {
            let renewal = tokio::time::sleep_until(next_renewal);
            let event = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return Held::Shutdown,
                () = renewal => {
                    // A renewal that takes until the lease may be gone counts as lost, so that
                    // this replica stops leading before etcd can let another one lead.
                    let started = tokio::time::Instant::now();
                    match tokio::time::timeout_at(renewed + trust_for, store.keep_alive(lease)).await {
                        Ok(Ok(true)) => renewed = started,
                        Ok(Ok(false)) => {
                            return Held::Lost("the lease expired".into());
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "renewing the election lease failed"),
                        Err(_) => {}
                    }
                    if renewed.elapsed() >= trust_for {
                        return Held::Lost(format!("not renewed for {:?}", renewed.elapsed()));
                    }
                    next_renewal = tokio::time::Instant::now() + renew_every.min(trust_for.saturating_sub(renewed.elapsed()));
                    if watch.is_none() {
                        break;
                    }
                }
                ev = event => match ev {
                    Some(Ok(WatchEvent::Delete { .. })) => {
                        // Whoever led (this replica too) no longer does: no one leads until
                        // the next campaign says who.
                        role.send_replace(Role::Candidate);
                        break;
                    }
                    Some(Ok(WatchEvent::Put(_))) => {}
                    Some(Err(StoreError::Compacted { .. })) | Some(Err(_)) | None => break,
                }
            }
        }
    }
}

/// The replicas registered now (each under a live lease), by name.
pub async fn replicas(store: &EtcdStore) -> Result<Vec<ReplicaInfo>, StoreError> {
    let (items, _) = store.list(REPLICAS).await?;
    Ok(items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// The replica that leads now, if any.
pub async fn leader(store: &EtcdStore) -> Result<Option<ReplicaInfo>, StoreError> {
    Ok(store
        .get(LEADER_KEY)
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// The names of the replicas registered now, kept current by [`follow_replicas`], and when each
/// one that went was last seen registered.
#[derive(Debug, Default)]
pub struct LiveReplicas {
    names: std::sync::RwLock<LiveSet>,
    /// Told of every change of the set.
    pub changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct LiveSet {
    live: std::collections::HashSet<String>,
    /// Replicas whose registration went while this one followed them: when (unix ms).
    gone_ms: std::collections::HashMap<String, u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LiveReplicas {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, LiveSet> {
        self.names.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, LiveSet> {
        self.names.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.read().live.contains(name)
    }

    /// The names of the replicas registered now.
    pub fn names(&self) -> std::collections::HashSet<String> {
        self.read().live.clone()
    }

    /// How many replicas are registered.
    pub fn len(&self) -> usize {
        self.read().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().live.is_empty()
    }

    /// When `name`'s registration went (unix ms), if this replica saw it go.
    pub fn gone_ms(&self, name: &str) -> Option<u64> {
        self.read().gone_ms.get(name).copied()
    }

    fn set(&self, names: std::collections::HashSet<String>) {
        {
            let mut set = self.write();
            let now = now_ms();
            let gone: Vec<String> = set.live.difference(&names).cloned().collect();
            for name in gone {
                set.gone_ms.insert(name, now);
            }
            set.live = names;
        }
        self.changed.notify_one();
    }

    fn update(&self, name: &str, live: bool) {
        {
            let mut set = self.write();
            if live {
                set.live.insert(name.to_string());
                set.gone_ms.remove(name);
            } else if set.live.remove(name) {
                set.gone_ms.insert(name.to_string(), now_ms());
            }
        }
        self.changed.notify_one();
    }
}

/// Keeps `live` to the replicas registered under [`REPLICAS`] (a watch; listed again when it
/// fails) until `shutdown`.
pub async fn follow_replicas(
    store: EtcdStore,
    live: std::sync::Arc<LiveReplicas>,
    shutdown: watch::Receiver<bool>,
) {
    let on_list = |items: Vec<super::KeyValue>, _| {
        live.set(
            items
                .iter()
                .map(|kv| kv.key[REPLICAS.len()..].to_string())
                .collect(),
        );
    };
    let on_event = |ev: WatchEvent| match ev {
        WatchEvent::Put(kv) => live.update(&kv.key[REPLICAS.len()..], true),
        WatchEvent::Delete { key, .. } => live.update(&key[REPLICAS.len()..], false),
    };
    super::follow::follow(
        &store,
        REPLICAS,
        "the replicas' registrations",
        None,
        shutdown,
        on_list,
        on_event,
    )
    .await;
}
