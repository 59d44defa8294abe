//! The cluster registry: cluster records, join tokens and revoked certificate serials, kept in the
//! store as JSON. Every change is persisted (compare-and-swap) before it is acknowledged.
//!
//! Keys: `/clusters/<name>`, `/tokens/<id>`, `/revoked/<serial>`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use flotilla_proto::clock::{SharedClock, rfc3339, unix_ms};
use flotilla_proto::identity::{Identity, validate_name};
use flotilla_proto::token::{hash_secret, split_secret};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::render::{ClusterId, ClusterInfo};
use crate::state::error::{HubError, SharedError};
use crate::state::table::{CAS_RETRIES, Table, Versioned};
use crate::store::{CasOp, KeyValue, Revision, SharedStore, WatchEvent};

const CLUSTERS: &str = "/clusters/";
/// The last cluster id assigned (ids are never reused, so a name added again is a new cluster
/// to every rollout record).
const LAST_CLUSTER_ID: &str = "/meta/last-cluster-id";
const TOKENS: &str = "/tokens/";
const REVOKED: &str = "/revoked/";
/// How far behind a session's open the stored last-seen time of its cluster may be: an open
/// within this of the stored time (with the same agent version) is not written.
pub const SEEN_GRANULARITY_MS: u64 = 60_000;

/// A cluster as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    /// Fleet-wide id, how rollout records refer to the cluster (0: not assigned yet, in a
    /// record written before ids existed; assigned when the registry opens).
    #[serde(default)]
    pub id: ClusterId,
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
    /// Set once the cluster has been removed; the record stays so that `list` shows it revoked.
    #[serde(default)]
    pub revoked: bool,
    /// Last time a session was opened or closed (heartbeats are tracked in memory).
    #[serde(default)]
    pub last_seen_ms: u64,
    #[serde(default)]
    pub agent_version: String,
    /// Serials of certificates issued to this cluster that have not expired, with their expiry.
    #[serde(default)]
    pub certs: Vec<IssuedCert>,
    /// With several hub replicas: the replica that opened the cluster's newest session, and
    /// when (unix ms); a replica holding an older one closes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_replica: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub session_opened_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What [`Registry::follow`] reports of other replicas' writes.
#[derive(Debug, Clone, Copy)]
pub enum Followed<'a> {
    /// The cluster's record turned revoked.
    Revoked { cluster: &'a str },
    /// A cluster was added, its labels changed, or it was removed: what each source renders
    /// for may have changed.
    FleetChanged { cluster: &'a str },
    /// Another replica opened a session of the cluster at `opened_ms`.
    SessionElsewhere {
        cluster: &'a str,
        replica: &'a str,
        opened_ms: u64,
    },
    /// Which replica holds the cluster's session changed (opened, moved or closed): whether it
    /// is connected may have too.
    SessionChanged { cluster: &'a str },
}

/// A session's open or close (its open time), for [`Registry::seen`].
#[derive(Debug, Clone, Copy)]
enum Session {
    Opened(u64),
    Closed(u64),
}

/// A pending last-seen write: when, the agent version reported, and the session this replica
/// opened (with several replicas: its open time).
#[derive(Debug, Clone, Default)]
struct SeenWrite {
    at: u64,
    version: Option<String>,
    opened: Option<(String, u64)>,
    /// The session this replica opened at that time closed: the record's session marker goes
    /// if it is still that one.
    closed: Option<(String, u64)>,
}

impl ClusterRecord {
    /// Applies a session marker change: `opened` (replica, time) when newer than the one held,
    /// `closed` (replica, time) when it is still the one held.
    fn mark_session(&mut self, opened: Option<&(String, u64)>, closed: Option<&(String, u64)>) {
        if let Some((replica, at)) = opened
            && *at >= self.session_opened_ms
        {
            self.session_replica.clone_from(replica);
            self.session_opened_ms = *at;
        }
        if let Some((replica, at)) = closed
            && self.session_replica == *replica
            && self.session_opened_ms == *at
        {
            self.session_replica.clear();
            self.session_opened_ms = 0;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub serial: String,
    pub not_after_ms: u64,
}

impl ClusterRecord {
    /// The cluster's state as operators see it: `revoked`, `connected` (it has a live
    /// session: `live`), `disconnected` (it joined once) or `pending` (never joined).
    pub fn state(&self, live: bool) -> &'static str {
        if self.revoked {
            "revoked"
        } else if live {
            "connected"
        } else if self.last_seen_ms > 0 || !self.certs.is_empty() {
            "disconnected"
        } else {
            "pending"
        }
    }

    /// What rendering and rollouts know of the cluster.
    pub fn info(&self) -> ClusterInfo {
        ClusterInfo {
            id: self.id,
            name: self.name.clone(),
            labels: self.labels.clone(),
        }
    }

    /// Expiry of the newest certificate, 0 when none was issued.
    pub fn cert_expires_ms(&self) -> u64 {
        self.certs.iter().map(|c| c.not_after_ms).max().unwrap_or(0)
    }
}

/// A join token as persisted: only a hash of the secret is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub cluster: String,
    pub secret_sha256: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub reusable: bool,
    #[serde(default)]
    pub uses: u32,
    #[serde(default)]
    pub revoked: bool,
}

impl TokenRecord {
    /// `Ok` for an active token, else the error a join with it gets.
    fn usable(&self, now_ms: u64) -> Result<(), HubError> {
        match self.state(now_ms) {
            "active" => Ok(()),
            "revoked" => Err(HubError::TokenRevoked),
            "used" => Err(HubError::TokenUsed),
            _ => Err(HubError::TokenExpired(rfc3339(
                flotilla_proto::clock::from_unix_ms(self.expires_ms),
            ))),
        }
    }

    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.revoked {
            "revoked"
        } else if !self.reusable && self.uses > 0 {
            "used"
        } else if now_ms >= self.expires_ms {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevokedRecord {
    cluster: String,
    not_after_ms: u64,
}

/// Serials of revoked certificates, readable synchronously from the TLS verifier.
#[derive(Debug, Default)]
pub struct RevokedSerials(RwLock<HashSet<String>>);

impl RevokedSerials {
    pub fn contains(&self, serial: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }

    pub(crate) fn insert(&self, serial: String) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(serial);
    }
}

/// What a successful token check yields.
#[derive(Debug, Clone)]
pub struct AcceptedToken {
    pub record: TokenRecord,
    mod_revision: u64,
}

/// The registry over a store.
#[derive(Debug, Clone)]
pub struct Registry {
    clusters: Table<ClusterRecord>,
    tokens: Table<TokenRecord>,
    revocations: Table<RevokedRecord>,
    clock: SharedClock,
    revoked: Arc<RevokedSerials>,
    /// Every cluster record, read once at open, written through on every change this process
    /// makes and kept current with what other hub replicas write by [`Registry::follow`], so
    /// sessions, the TLS path and the rollout engine never read or decode the store for a
    /// cluster.
    cache: Arc<RwLock<ClusterCache>>,
    /// Sessions' opens and closes waiting to be written ([`Registry::touch`]).
    seen: Arc<std::sync::Mutex<Seen>>,
    /// Held while a cluster id is assigned: this process's additions take their turn instead of
    /// racing each other on the id counter (other replicas still meet its compare-and-swap).
    assigning: Arc<tokio::sync::Mutex<()>>,
    /// The store revision [`Registry::open`] read the clusters and revocations at:
    /// [`Registry::follow`] goes on from there.
    loaded_at: Revision,
    /// This replica's name when several share the store ([`Registry::with_replica`]).
    replica: Option<Arc<str>>,
    /// The replicas registered now (several sharing the store).
    live_replicas: Option<Arc<crate::store::election::LiveReplicas>>,
}

/// Last-seen times and agent versions to be written, group-committed: every session open or
/// close queued while one write runs goes into the next, one durable transaction for all.
#[derive(Debug, Default)]
struct Seen {
    /// Cluster → what to write.
    pending: HashMap<String, SeenWrite>,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), Arc<HubError>>>>,
    /// A writer task is running (and will take what is pending).
    writing: bool,
}

#[derive(Debug, Default)]
struct ClusterCache {
    by_name: HashMap<String, Arc<ClusterRecord>>,
    names: HashMap<ClusterId, Arc<str>>,
    revisions: HashMap<String, Revision>,
}

impl ClusterCache {
    /// Caches `rec` as stored at `revision`, unless a later revision of it is cached already
    /// (writes that finish out of order must not bring back an older record).
    fn put(&mut self, rec: ClusterRecord, revision: Revision) {
        let at = self.revisions.entry(rec.name.clone()).or_default();
        if *at > revision {
            return;
        }
        *at = revision;
        self.names.insert(rec.id, Arc::from(rec.name.as_str()));
        self.by_name.insert(rec.name.clone(), Arc::new(rec));
    }

    /// Forgets `name`, deleted at `revision`, unless a later revision of it is cached.
    fn remove(&mut self, name: &str, revision: Revision) {
        if self.revision(name) > revision {
            return;
        }
        self.revisions.remove(name);
        if let Some(rec) = self.by_name.remove(name) {
            self.names.remove(&rec.id);
        }
    }

    /// The store revision of the cached record.
    fn revision(&self, name: &str) -> Revision {
        self.revisions.get(name).copied().unwrap_or_default()
    }
}

/// The writer of [`Registry::touch`]: writes what is pending, one store batch at a time, until
/// nothing is. It lets go of the store before it answers the last batch, so that once every
/// caller has its answer nothing holds the store.
async fn write_seen(
    seen: Arc<std::sync::Mutex<Seen>>,
    clusters: Table<ClusterRecord>,
    cache: Arc<RwLock<ClusterCache>>,
) {
    let lock = || seen.lock().unwrap_or_else(|e| e.into_inner());
    let mut clusters = Some(clusters);
    loop {
        let (pending, waiters) = {
            let mut s = lock();
            (
                std::mem::take(&mut s.pending),
                std::mem::take(&mut s.waiters),
            )
        };
        let table = clusters.as_ref().expect("held until the last batch");
        let outcome = write_seen_batch(table, &cache, pending)
            .await
            .map_err(Arc::new);
        let more = {
            let mut s = lock();
            s.writing = !s.pending.is_empty();
            s.writing
        };
        if !more {
            clusters = None;
        }
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        if clusters.is_none() {
            return;
        }
    }
}

/// Writes the pending last-seen times and versions onto the stored records, in one batch of
/// compare-and-swaps (read again and retried when another write got there first). A cluster
/// that is gone is skipped.
async fn write_seen_batch(
    table: &Table<ClusterRecord>,
    cache: &RwLock<ClusterCache>,
    pending: HashMap<String, SeenWrite>,
) -> Result<(), HubError> {
    // As many records per transaction as the store takes; each stands alone.
    let max = table.store().max_batch_ops().max(1);
    let pending: Vec<_> = pending.into_iter().collect();
    for chunk in pending.chunks(max) {
        write_seen_chunk(table, cache, chunk).await?;
    }
    Ok(())
}

async fn write_seen_chunk(
    table: &Table<ClusterRecord>,
    cache: &RwLock<ClusterCache>,
    pending: &[(String, SeenWrite)],
) -> Result<(), HubError> {
    for attempt in 0..CAS_RETRIES {
        let mut ops = Vec::with_capacity(pending.len());
        let mut written = Vec::with_capacity(pending.len());
        for (name, w) in pending {
            // First from memory (this process writes every record it caches, so the cached
            // revision is normally the stored one); after a conflict, from the store.
            let cached = (attempt == 0)
                .then(|| cached_versioned(cache, name))
                .flatten();
            let current = match cached {
                Some(v) => Some(v),
                None => table.get(name).await?,
            };
            let Some(mut v) = current else {
                continue;
            };
            v.value.last_seen_ms = v.value.last_seen_ms.max(w.at);
            if let Some(version) = &w.version {
                v.value.agent_version.clone_from(version);
            }
            v.value.mark_session(w.opened.as_ref(), w.closed.as_ref());
            ops.push(CasOp::put(
                table.key(name),
                Some(v.revision),
                Table::encode(&v.value),
            ));
            written.push(v.value);
        }
        match table.store().compare_and_swap_many(ops).await? {
            Ok(revisions) => {
                let mut cache = cache.write().unwrap_or_else(|e| e.into_inner());
                for (rec, revision) in written.into_iter().zip(revisions) {
                    cache.put(rec, revision);
                }
                return Ok(());
            }
            Err(_) => continue,
        }
    }
    Err(HubError::Contention(CLUSTERS.to_string()))
}

/// The cached record `name` with the store revision it was cached at, if that is known.
fn cached_versioned(cache: &RwLock<ClusterCache>, name: &str) -> Option<Versioned<ClusterRecord>> {
    let cache = cache.read().unwrap_or_else(|e| e.into_inner());
    let revision = cache.revision(name);
    let rec = cache.by_name.get(name)?;
    (revision > 0).then(|| Versioned {
        value: rec.as_ref().clone(),
        revision,
    })
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Label keys and values: what Kubernetes accepts for label values, kept simple.
pub fn validate_label(k: &str, v: &str) -> Result<(), HubError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_./".contains(c);
    if k.is_empty() || k.len() > 253 || !k.chars().all(ok_char) {
        return Err(HubError::Invalid(format!(
            "label key {k:?} must be 1-253 characters of letters, digits, '-', '_', '.', '/'"
        )));
    }
    if v.len() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(HubError::Invalid(format!(
            "label value {v:?} for {k:?} must be at most 63 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

impl Registry {
    /// Opens the registry: loads the revoked serials and every cluster record.
    /// [`Registry::follow`] keeps them in step with other hub replicas sharing the store.
    pub async fn open(store: SharedStore, clock: SharedClock) -> Result<Self, HubError> {
        let revoked = Arc::new(RevokedSerials::default());
        let (items, revoked_at) = store.list(REVOKED).await?;
        for kv in items {
            revoked.insert(kv.key[REVOKED.len()..].to_string());
        }
        let (items, clusters_at) = store.list(CLUSTERS).await?;
        let registry = Self {
            clusters: Table::new(store.clone(), CLUSTERS),
            tokens: Table::new(store.clone(), TOKENS),
            revocations: Table::new(store, REVOKED),
            clock,
            revoked,
            cache: Default::default(),
            seen: Default::default(),
            assigning: Default::default(),
            loaded_at: revoked_at.min(clusters_at),
            replica: None,
            live_replicas: None,
        };
        let mut records = items
            .iter()
            .map(|kv| registry.clusters.decode(kv))
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| a.value.name.cmp(&b.value.name));
        for v in records {
            let (rec, at) = if v.value.id == 0 {
                registry.assign_id(v.value, Some(v.revision)).await?
            } else {
                (v.value, v.revision)
            };
            registry.cached().put(rec, at);
        }
        Ok(registry)
    }

    /// The registry of replica `name` among several sharing the store: each session open is
    /// written with the replica's name, so that another replica holding an older session of
    /// the cluster closes it ([`Followed::SessionElsewhere`]).
    pub fn with_replica(
        mut self,
        name: &str,
        live: Arc<crate::store::election::LiveReplicas>,
    ) -> Self {
        self.replica = Some(Arc::from(name));
        self.live_replicas = Some(live);
        self
    }

    /// The replica (another one, still registered) that holds a session of `cluster`, as its
    /// record says; `None` on a single hub.
    pub fn connected_elsewhere(&self, cluster: &str) -> Option<String> {
        let live = self.live_replicas.as_ref()?;
        let rec = self.cluster_shared(cluster)?;
        let elsewhere = !rec.session_replica.is_empty()
            && self.replica.as_deref() != Some(rec.session_replica.as_str())
            && live.contains(&rec.session_replica);
        elsewhere.then(|| rec.session_replica.clone())
    }

    /// For the rollout engine, of a cluster with no session on this replica: whether another
    /// replica holds one (`(true, now_ms)`), or when it was last known connected there — the
    /// record's last-seen time, or the moment that replica's registration went if that is
    /// later (its sessions were live until then). `None` when no other replica ever held its
    /// newest session (single hub, or its session closed cleanly).
    pub fn session_elsewhere(&self, cluster: &str, now_ms: u64) -> Option<(bool, u64)> {
        let live = self.live_replicas.as_ref()?;
        let rec = self.cluster_shared(cluster)?;
        if rec.session_replica.is_empty()
            || self.replica.as_deref() == Some(rec.session_replica.as_str())
        {
            return None;
        }
        if live.contains(&rec.session_replica) {
            return Some((true, now_ms));
        }
        let gone = live
            .gone_ms(&rec.session_replica)
            .unwrap_or(rec.session_opened_ms);
        Some((false, rec.last_seen_ms.max(gone)))
    }

    fn cached(&self) -> std::sync::RwLockWriteGuard<'_, ClusterCache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, ClusterCache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `record` (expected at `expected`, `None`: absent) with the next cluster id, in one
    /// transaction with the id counter; the record and its revision.
    /// [`HubError::ClusterExists`] when the record changed.
    async fn assign_id(
        &self,
        mut record: ClusterRecord,
        expected: Option<Revision>,
    ) -> Result<(ClusterRecord, Revision), HubError> {
        let _turn = self.assigning.lock().await;
        let store = self.clusters.store();
        let mut attempt = 0u32;
        for _ in 0..CAS_RETRIES {
            let (last, at) = match store.get(LAST_CLUSTER_ID).await? {
                Some(kv) => (
                    serde_json::from_slice::<ClusterId>(&kv.value).map_err(|e| {
                        HubError::Corrupt {
                            key: LAST_CLUSTER_ID.to_string(),
                            source: e,
                        }
                    })?,
                    Some(kv.mod_revision),
                ),
                None => (0, None),
            };
            record.id = last + 1;
            let ops = vec![
                CasOp::put(
                    LAST_CLUSTER_ID,
                    at,
                    serde_json::to_vec(&record.id).expect("a number serializes"),
                ),
                CasOp::put(
                    self.clusters.key(&record.name),
                    expected,
                    Table::encode(&record),
                ),
            ];
            match store.compare_and_swap_many(ops).await? {
                // The record is the batch's last write.
                Ok(revisions) => return Ok((record, revisions[1])),
                Err(key) if key == LAST_CLUSTER_ID => {
                    // Another replica took the id: wait a little (random, growing) before the
                    // next attempt, so that replicas adding clusters at once spread out.
                    attempt += 1;
                    let spread = 1u64 << attempt.min(6);
                    let wait = rand::random::<u64>() % spread + 1;
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                Err(_) => return Err(HubError::ClusterExists(record.name)),
            }
        }
        Err(HubError::Contention(LAST_CLUSTER_ID.to_string()))
    }

    /// The clusters that can be sent anything (not revoked), as rendering and rollouts see them.
    pub fn cluster_infos(&self) -> Vec<ClusterInfo> {
        let mut out: Vec<ClusterInfo> = self
            .cache_read()
            .by_name
            .values()
            .filter(|c| !c.revoked)
            .map(|c| c.info())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The name of the cluster with `id` (also of a revoked one still on record).
    pub fn name_of(&self, id: ClusterId) -> Option<Arc<str>> {
        self.cache_read().names.get(&id).cloned()
    }

    /// The id of the cluster named `name`, unless it is revoked or unknown.
    pub fn id_of(&self, name: &str) -> Option<ClusterId> {
        self.cache_read()
            .by_name
            .get(name)
            .filter(|c| !c.revoked)
            .map(|c| c.id)
    }

    /// The cluster's record as last written (from memory).
    pub fn cluster_shared(&self, name: &str) -> Option<Arc<ClusterRecord>> {
        self.cache_read().by_name.get(name).cloned()
    }

    /// Follows what other hub replicas sharing the store write to `/clusters/` and
    /// `/revoked/`, from the revision [`Registry::open`] read them at, until `shutdown` fires:
    /// cluster records go into the cache (never behind a revision already cached), revoked
    /// serials into the set the TLS verifier reads, and `on_followed` tells of what the server
    /// acts on ([`Followed`]). When a watch fails (its start compacted away, the store
    /// unreachable) its prefix is listed again and followed from there ([`crate::store::follow`]).
    pub async fn follow(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
        on_followed: impl Fn(Followed<'_>) + Send + Sync,
    ) {
        let store = self.clusters.store().clone();
        let on_event = |ev| self.apply(ev, &on_followed);
        let clusters = crate::store::follow::follow(
            &*store,
            CLUSTERS,
            "the cluster records",
            Some(self.loaded_at),
            shutdown.clone(),
            |items, at| self.resync_clusters(items, at, &on_followed),
            on_event,
        );
        let revoked = crate::store::follow::follow(
            &*store,
            REVOKED,
            "the revoked serials",
            Some(self.loaded_at),
            shutdown,
            |items, _| {
                for kv in items {
                    self.revoked.insert(kv.key[REVOKED.len()..].to_string());
                }
            },
            on_event,
        );
        tokio::join!(clusters, revoked);
    }

    /// Applies one event another replica (or this one) caused.
    fn apply(&self, ev: WatchEvent, on_followed: &impl Fn(Followed<'_>)) {
        match ev {
            WatchEvent::Put(kv) if kv.key.starts_with(REVOKED) => {
                self.revoked.insert(kv.key[REVOKED.len()..].to_string());
            }
            WatchEvent::Put(kv) => match self.clusters.decode(&kv) {
                Ok(v) => self.cache_followed(v.value, v.revision, on_followed),
                Err(e) => {
                    tracing::error!(error = %e, "a cluster record another replica wrote does not decode; keeping the last good one")
                }
            },
            WatchEvent::Delete { key, mod_revision } => {
                if let Some(name) = key.strip_prefix(CLUSTERS) {
                    self.cached().remove(name, mod_revision);
                }
            }
        }
    }

    /// Caches a record read from the store; `on_followed` when it turns revoked by it.
    fn cache_followed(
        &self,
        rec: ClusterRecord,
        revision: Revision,
        on_followed: &impl Fn(Followed<'_>),
    ) {
        let (turned_revoked, elsewhere) = {
            let mut cache = self.cached();
            if cache.revision(&rec.name) >= revision && cache.by_name.contains_key(&rec.name) {
                return;
            }
            let before = cache.by_name.get(&rec.name);
            let was = before.is_some_and(|r| r.revoked);
            let newer_session = rec.session_opened_ms > before.map_or(0, |r| r.session_opened_ms)
                || before.is_none_or(|r| r.session_replica != rec.session_replica);
            let elsewhere = (!rec.session_replica.is_empty()
                && newer_session
                && self.replica.as_deref() != Some(rec.session_replica.as_str()))
            .then(|| (rec.session_replica.clone(), rec.session_opened_ms));
            let turned = rec.revoked && !was;
            let fleet_changed = before.is_none_or(|b| b.labels != rec.labels) || turned;
            let session_changed = before.is_none_or(|b| {
                (&b.session_replica, b.session_opened_ms)
                    != (&rec.session_replica, rec.session_opened_ms)
            });
            let name = rec.name.clone();
            cache.put(rec, revision);
            (
                (turned, fleet_changed, session_changed, name.clone()),
                elsewhere.map(|e| (name, e)),
            )
        };
        let (turned, fleet_changed, session_changed, name) = turned_revoked;
        if turned {
            on_followed(Followed::Revoked { cluster: &name });
        }
        if fleet_changed {
            on_followed(Followed::FleetChanged { cluster: &name });
        }
        if let Some((name, (replica, opened_ms))) = elsewhere {
            on_followed(Followed::SessionElsewhere {
                cluster: &name,
                replica: &replica,
                opened_ms,
            });
        }
        if session_changed {
            on_followed(Followed::SessionChanged { cluster: &name });
        }
    }

    /// Brings the cache up to a fresh list of `/clusters/` read at revision `at`: every record
    /// listed is followed, and a cluster no longer listed is forgotten (unless cached after `at`).
    fn resync_clusters(
        &self,
        items: Vec<KeyValue>,
        at: Revision,
        on_followed: &impl Fn(Followed<'_>),
    ) {
        let mut listed = HashSet::new();
        for kv in &items {
            match self.clusters.decode(kv) {
                Ok(v) => {
                    listed.insert(v.value.name.clone());
                    self.cache_followed(v.value, v.revision, on_followed);
                }
                Err(e) => {
                    tracing::error!(error = %e, "a cluster record does not decode; keeping the last good one")
                }
            }
        }
        let gone: Vec<String> = self
            .cache_read()
            .by_name
            .keys()
            .filter(|n| !listed.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.cached().remove(&name, at);
        }
    }

    pub fn revoked(&self) -> Arc<RevokedSerials> {
        self.revoked.clone()
    }

    /// Read-modify-write of the record of cluster `name` ([`HubError::UnknownCluster`] when
    /// there is none).
    async fn update_cluster(
        &self,
        name: &str,
        f: impl FnMut(&mut ClusterRecord) -> Result<(), HubError>,
    ) -> Result<ClusterRecord, HubError> {
        let mut f = f;
        for _ in 0..CAS_RETRIES {
            let Some(Versioned {
                mut value,
                revision,
            }) = self.clusters.get(name).await?
            else {
                return Err(HubError::UnknownCluster(name.to_string()));
            };
            f(&mut value)?;
            if let Some(at) = self.clusters.swap(name, Some(revision), &value).await? {
                self.cached().put(value.clone(), at);
                return Ok(value);
            }
        }
        Err(HubError::Contention(self.clusters.key(name)))
    }

    fn now_ms(&self) -> u64 {
        unix_ms(self.clock.now())
    }

    /// The cluster's record: from memory, else from the store (another replica may have added
    /// it a moment ago, before this one followed the write).
    pub async fn get_cluster(&self, name: &str) -> Result<ClusterRecord, HubError> {
        if let Some(rec) = self.cluster_shared(name) {
            return Ok(rec.as_ref().clone());
        }
        match self.clusters.get(name).await? {
            Some(v) => {
                self.cached().put(v.value.clone(), v.revision);
                Ok(v.value)
            }
            None => Err(HubError::UnknownCluster(name.to_string())),
        }
    }

    /// Every cluster record (from memory), by name.
    pub async fn list_clusters(&self) -> Result<Vec<ClusterRecord>, HubError> {
        let mut out: Vec<ClusterRecord> = self
            .cache_read()
            .by_name
            .values()
            .map(|c| c.as_ref().clone())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates a cluster (or replaces a revoked one of the same name) and a join token for it.
    /// Returns the record, the token record and the secret `<id>.<secret>` (shown once).
    pub async fn add_cluster(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        ttl: Duration,
        reusable: bool,
    ) -> Result<(ClusterRecord, TokenRecord, String), HubError> {
        validate_name(name)?;
        for (k, v) in &labels {
            validate_label(k, v)?;
        }
        if ttl.is_zero() {
            return Err(HubError::Invalid("token ttl must be positive".into()));
        }
        let now = self.now_ms();
        let record = ClusterRecord {
            name: name.to_string(),
            id: 0,
            labels,
            created_ms: now,
            revoked: false,
            last_seen_ms: 0,
            agent_version: String::new(),
            certs: vec![],
            session_replica: String::new(),
            session_opened_ms: 0,
        };
        let expected = match self.clusters.get(name).await? {
            None => None,
            Some(old) if old.value.revoked => Some(old.revision),
            Some(_) => return Err(HubError::ClusterExists(name.to_string())),
        };
        let (record, at) = self.assign_id(record, expected).await?;
        self.cached().put(record.clone(), at);
        let (token, secret) = self.create_token(name, ttl, reusable).await?;
        Ok((record, token, secret))
    }

    async fn create_token(
        &self,
        cluster: &str,
        ttl: Duration,
        reusable: bool,
    ) -> Result<(TokenRecord, String), HubError> {
        let id = random_hex(6);
        let secret = random_hex(32);
        let now = self.now_ms();
        let rec = TokenRecord {
            id: id.clone(),
            cluster: cluster.to_string(),
            secret_sha256: hash_secret(&secret),
            created_ms: now,
            expires_ms: now.saturating_add(ttl.as_millis() as u64),
            reusable,
            uses: 0,
            revoked: false,
        };
        if self.tokens.swap(&id, None, &rec).await?.is_none() {
            return Err(HubError::Contention(self.tokens.key(&id)));
        }
        Ok((rec, format!("{id}.{secret}")))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, HubError> {
        self.tokens.values().await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord, HubError> {
        let (rec, ()) = self
            .tokens
            .update(
                id,
                || HubError::UnknownTokenId(id.to_string()),
                |t| {
                    t.revoked = true;
                    Ok(())
                },
            )
            .await?;
        Ok(rec)
    }

    /// Checks a presented `<id>.<secret>` without consuming it.
    pub async fn check_token(&self, presented: &str) -> Result<AcceptedToken, HubError> {
        let (id, secret) = split_secret(presented)
            .ok_or_else(|| HubError::MalformedToken("expected <id>.<secret>".into()))?;
        let stored = self.tokens.get(id).await?.ok_or(HubError::UnknownToken)?;
        let rec = stored.value;
        // Both sides are fixed-length SHA-256 hex, so comparing them leaks nothing useful.
        if rec.secret_sha256 != hash_secret(secret) {
            return Err(HubError::UnknownToken);
        }
        rec.usable(self.now_ms())?;
        Ok(AcceptedToken {
            record: rec,
            mod_revision: stored.revision,
        })
    }

    /// Consumes a checked token (compare-and-swap, so two joins cannot both use a single-use
    /// token) and records the certificate issued to its cluster.
    pub async fn complete_join(
        &self,
        token: AcceptedToken,
        serial: &str,
        not_after: SystemTime,
        agent_version: &str,
    ) -> Result<ClusterRecord, HubError> {
        let mut rec = token.record;
        rec.uses += 1;
        if self
            .tokens
            .swap(&rec.id, Some(token.mod_revision), &rec)
            .await?
            .is_none()
        {
            // Someone else changed the token between check and use: re-check to say why.
            return Err(match self.check_token_state(&rec.id).await {
                Ok(()) => HubError::Contention(self.tokens.key(&rec.id)),
                Err(e) => e,
            });
        }
        self.record_cert(&rec.cluster, serial, not_after, Some(agent_version))
            .await
    }

    async fn check_token_state(&self, id: &str) -> Result<(), HubError> {
        let stored = self.tokens.get(id).await?.ok_or(HubError::UnknownToken)?;
        stored.value.usable(self.now_ms())
    }

    /// Adds an issued certificate to the cluster (join and renewal), dropping expired ones.
    pub async fn record_cert(
        &self,
        cluster: &str,
        serial: &str,
        not_after: SystemTime,
        agent_version: Option<&str>,
    ) -> Result<ClusterRecord, HubError> {
        let now = self.now_ms();
        self.update_cluster(cluster, |c| {
            if c.revoked {
                return Err(HubError::ClusterRevoked(cluster.to_string()));
            }
            c.certs.retain(|x| x.not_after_ms > now);
            // Joining or renewing is being seen.
            c.last_seen_ms = c.last_seen_ms.max(now);
            c.certs.push(IssuedCert {
                serial: serial.to_string(),
                not_after_ms: unix_ms(not_after),
            });
            if let Some(v) = agent_version {
                c.agent_version = v.to_string();
            }
            Ok(())
        })
        .await
    }

    /// Records that a session of `cluster` closed: at once in memory, and durably in one write
    /// shared with every other open and close queued meanwhile (a reconnect storm is a few
    /// transactions, not one per session). Returns once written; an error is the batch's.
    pub async fn touch(&self, cluster: &str, agent_version: Option<&str>) -> Result<(), HubError> {
        self.seen(cluster, agent_version, None).await
    }

    /// Records that a session of `cluster`, opened at `opened_ms`, reports `agent_version`:
    /// like [`Self::touch`], except that nothing is written when the stored record already has
    /// this version and was seen less than [`SEEN_GRANULARITY_MS`] ago (the first session after
    /// a join or a quick reconnect): the time is kept in memory, and the session's close writes
    /// it. With several replicas every open is written, naming this replica.
    pub async fn session_opened(
        &self,
        cluster: &str,
        agent_version: &str,
        opened_ms: u64,
    ) -> Result<(), HubError> {
        self.seen(
            cluster,
            Some(agent_version),
            Some(Session::Opened(opened_ms)),
        )
        .await
    }

    /// Records that the session of `cluster` opened at `opened_ms` closed (last seen; with
    /// several replicas, the record no longer names this replica's session).
    pub async fn session_closed(&self, cluster: &str, opened_ms: u64) -> Result<(), HubError> {
        self.seen(cluster, None, Some(Session::Closed(opened_ms)))
            .await
    }

    async fn seen(
        &self,
        cluster: &str,
        agent_version: Option<&str>,
        session: Option<Session>,
    ) -> Result<(), HubError> {
        let now = self.now_ms();
        let version = agent_version.filter(|v| !v.is_empty()).map(str::to_string);
        // With several replicas every open is written, naming this replica: the others close
        // an older session of the cluster when they read it; a close clears it again.
        let marker = |at| self.replica.as_ref().map(|r| (r.to_string(), at));
        let (opened, closed) = match session {
            Some(Session::Opened(at)) => (marker(at), None),
            Some(Session::Closed(at)) => (None, marker(at)),
            None => (None, None),
        };
        let quick_reopen = matches!(session, Some(Session::Opened(_))) && opened.is_none();
        {
            let mut cache = self.cached();
            let Some(rec) = cache.by_name.get(cluster) else {
                return Err(HubError::UnknownCluster(cluster.to_string()));
            };
            let fresh = now.saturating_sub(rec.last_seen_ms) < SEEN_GRANULARITY_MS
                && version.as_ref().is_none_or(|v| *v == rec.agent_version);
            let mut rec = rec.as_ref().clone();
            rec.last_seen_ms = rec.last_seen_ms.max(now);
            if let Some(v) = &version {
                rec.agent_version = v.clone();
            }
            rec.mark_session(opened.as_ref(), closed.as_ref());
            let at = cache.revision(cluster);
            cache.put(rec, at);
            if quick_reopen && fresh {
                return Ok(());
            }
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let start = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let slot = seen.pending.entry(cluster.to_string()).or_default();
            slot.at = slot.at.max(now);
            if version.is_some() {
                slot.version = version;
            }
            if opened.is_some() {
                slot.opened = opened;
                slot.closed = None;
            }
            if closed.is_some() {
                slot.closed = closed;
            }
            seen.waiters.push(done);
            !std::mem::replace(&mut seen.writing, true)
        };
        if start {
            tokio::spawn(write_seen(
                self.seen.clone(),
                self.clusters.clone(),
                self.cache.clone(),
            ));
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(cause)) => Err(HubError::Store(crate::store::StoreError::Backend {
                what: format!("recording that cluster {cluster} was seen"),
                source: Box::new(SharedError(cause)),
            })),
            Err(_) => Err(HubError::Store(crate::store::StoreError::Closed)),
        }
    }

    pub async fn label_cluster(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<ClusterRecord, HubError> {
        for (k, v) in set {
            validate_label(k, v)?;
        }
        self.update_cluster(name, |c| {
            if c.revoked {
                return Err(HubError::ClusterRevoked(name.to_string()));
            }
            for k in remove {
                c.labels.remove(k);
            }
            c.labels
                .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(())
        })
        .await
    }

    /// Revokes a cluster: marks the record, revokes its tokens and every certificate it holds.
    /// The caller closes its live session.
    pub async fn remove_cluster(&self, name: &str) -> Result<ClusterRecord, HubError> {
        let rec = self
            .update_cluster(name, |c| {
                c.revoked = true;
                Ok(())
            })
            .await?;
        for cert in &rec.certs {
            let body = RevokedRecord {
                cluster: name.to_string(),
                not_after_ms: cert.not_after_ms,
            };
            self.revocations.put(&cert.serial, &body).await?;
            self.revoked.insert(cert.serial.clone());
        }
        for t in self.list_tokens().await? {
            if t.cluster == name && !t.revoked {
                self.revoke_token(&t.id).await?;
            }
        }
        Ok(rec)
    }

    /// Whether a cluster certificate may be used now: the cluster exists, is not revoked, and
    /// the serial was not revoked.
    pub async fn authorize_cluster_cert(
        &self,
        cluster: &str,
        serial: &str,
    ) -> Result<Arc<ClusterRecord>, HubError> {
        if self.revoked.contains(serial) {
            return Err(HubError::ClusterRevoked(cluster.to_string()));
        }
        let rec = self
            .cluster_shared(cluster)
            .ok_or_else(|| HubError::UnknownCluster(cluster.to_string()))?;
        if rec.revoked {
            return Err(HubError::ClusterRevoked(cluster.to_string()));
        }
        Ok(rec)
    }

    /// The identity for a cluster name.
    pub fn cluster_identity(name: &str) -> Identity {
        Identity::Cluster(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::GatedStore;
    use flotilla_proto::clock::ManualClock;
    use std::time::Instant;

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
        }
    }

    /// A registry on an open gated store, its clock at 1,000,000 s.
    async fn open_registry(dir: &tempfile::TempDir) -> (Arc<GatedStore>, ManualClock, Registry) {
        let store = GatedStore::closed(dir);
        store.open_gate();
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let registry = Registry::open(store.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        (store, clock, registry)
    }

    #[tokio::test]
    async fn an_open_right_after_a_join_is_kept_in_memory_and_a_close_or_a_new_version_is_written()
    {
        let dir = tempfile::tempdir().unwrap();
        let (store, clock, registry) = open_registry(&dir).await;
        registry
            .add_cluster("eu", BTreeMap::new(), Duration::from_secs(60), false)
            .await
            .unwrap();
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
        registry
            .record_cert("eu", "0a", not_after, Some("v1"))
            .await
            .unwrap();
        let stored = || async { registry.clusters.get("eu").await.unwrap().unwrap().value };
        assert_eq!(
            stored().await.last_seen_ms,
            1_000_000_000,
            "a join is being seen"
        );

        // The first session, seconds after the join, with the version the join recorded.
        clock.advance(Duration::from_secs(5));
        let writes = store.writes().len();
        registry.session_opened("eu", "v1", 1).await.unwrap();
        assert_eq!(store.writes().len(), writes, "nothing new to write");
        assert_eq!(
            registry.cluster_shared("eu").unwrap().last_seen_ms,
            1_000_005_000,
            "the time is kept in memory"
        );
        // Its close is written, with the time of the close.
        clock.advance(Duration::from_secs(5));
        registry.touch("eu", None).await.unwrap();
        assert_eq!(store.writes().len(), writes + 1);
        assert_eq!(stored().await.last_seen_ms, 1_000_010_000);

        // A new agent version is written at once; so is an open a while after the last one.
        registry.session_opened("eu", "v2", 2).await.unwrap();
        assert_eq!(stored().await.agent_version, "v2");
        clock.advance(Duration::from_millis(SEEN_GRANULARITY_MS));
        registry.session_opened("eu", "v2", 2).await.unwrap();
        assert_eq!(stored().await.last_seen_ms, 1_000_070_000);
        assert_eq!(*registry.cluster_shared("eu").unwrap(), stored().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_opens_and_closes_share_one_write_and_never_lose_another_change() {
        let dir = tempfile::tempdir().unwrap();
        let (store, clock, registry) = open_registry(&dir).await;
        let names: Vec<String> = (0..50).map(|i| format!("c-{i:02}")).collect();
        for n in &names {
            registry
                .add_cluster(n, BTreeMap::new(), Duration::from_secs(60), false)
                .await
                .unwrap();
        }
        // Hold the next batch write at the gate.
        store.close_gate();
        let before = store.writes().len();
        clock.advance(Duration::from_secs(5));
        let first = {
            let r = registry.clone();
            tokio::spawn(async move { r.touch("c-00", Some("v1")).await })
        };
        until("the first write to reach the store", || {
            store.writes().len() == before + 1
        })
        .await;
        // Every other session opens meanwhile; one cluster is relabelled too.
        let others: Vec<_> = names[1..]
            .iter()
            .map(|n| {
                let (r, n) = (registry.clone(), n.clone());
                tokio::spawn(async move { r.touch(&n, Some("v2")).await })
            })
            .collect();
        let seen = registry.seen.clone();
        until("every open to be queued", || {
            seen.lock().unwrap().waiters.len() == names.len() - 1
        })
        .await;
        assert!(
            registry
                .cluster_shared("c-07")
                .is_some_and(|c| c.agent_version == "v2"),
            "visible in memory before it is written"
        );
        store.open_gate();
        first.await.unwrap().unwrap();
        for o in others {
            o.await.unwrap().unwrap();
        }
        let batches: Vec<usize> = store.writes()[before..].iter().map(Vec::len).collect();
        assert_eq!(batches, [1, 49], "49 opens in one write");

        // A label change and a close race: neither is lost, in the store or in memory.
        clock.advance(Duration::from_secs(5));
        let mut labels = BTreeMap::new();
        labels.insert("region".to_string(), "eu".to_string());
        let (touched, labelled) = tokio::join!(
            registry.touch("c-03", None),
            registry.label_cluster("c-03", &labels, &[])
        );
        touched.unwrap();
        labelled.unwrap();
        let stored = registry.clusters.get("c-03").await.unwrap().unwrap().value;
        assert_eq!(stored.labels.get("region").map(String::as_str), Some("eu"));
        assert_eq!(stored.last_seen_ms, 1_000_010_000);
        assert_eq!(stored.agent_version, "v2", "a close keeps the version");
        assert_eq!(*registry.cluster_shared("c-03").unwrap(), stored);
        let reopened = Registry::open(store.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        assert_eq!(
            reopened.cluster_shared("c-00").unwrap().last_seen_ms,
            1_000_005_000
        );
        assert!(matches!(
            registry.touch("nope", None).await,
            Err(HubError::UnknownCluster(_))
        ));
    }
}
