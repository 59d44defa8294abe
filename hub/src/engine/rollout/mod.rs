//! Promotion of revisions across the fleet. Every app's record (`/rollouts/<app>`, see
//! [`plan::AppRollout`]) is the single source of which revision each cluster should run: source
//! syncs offer renderings, the engine advances rollouts from the clusters' reports and the clock,
//! operators approve, pause, resume, roll back and pin. A cluster's desired state is derived from
//! the records in memory ([`Rollouts::desired_of`]) and nothing else is stored per cluster, so a
//! step is one write (a pass saves every app that moved in one transaction) and a restart — even
//! `kill -9` at any point — resumes exactly where the store says.

pub mod groups;
pub mod observe;
pub mod plan;
pub mod removal;
pub mod reports;
pub mod stages;
#[cfg(test)]
mod tests;
mod trace;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::clock::{SharedClock, unix_ms};
use flotilla_proto::revision::short;
use flotilla_proto::v1;
use futures::FutureExt;
use tokio::sync::{Mutex, Notify, watch};
use tracing::Instrument;

use crate::render::{ClusterId, ClusterInfo, ClusterSet, CountOrPercent, PipelineConfig};
use crate::state::audit::{Audit, AuditEntry};
use crate::state::desired::{AppEntry, DesiredRecord, DesiredStates, StatusRecord};
use crate::state::error::HubError;
use crate::state::registry::Registry;
use crate::state::sessions::{LiveById, Sessions};
use crate::state::table::Table;
use crate::store::lead::Lead;
use crate::store::{CasOp, SharedStore, WatchEvent};
use crate::telemetry::metrics::Metrics;
use plan::{AppRollout, ClusterView, Inputs, Render};
use reports::Reports;

pub const ROLLOUTS: &str = "/rollouts/";
/// How often the engine wakes when nothing else wakes it (apps whose soak, health timeout or
/// grace period ended are looked at then).
const TICK: Duration = Duration::from_millis(500);
/// The least time between the start of two passes the engine runs by itself: reports that come
/// meanwhile are looked at together, so that a fleet reporting at once does not have every
/// in-flight app's batch walked once per report.
const PASS_SPACING: Duration = Duration::from_millis(25);
/// Most bytes of records one save writes in one transaction.
const SAVE_BYTES: usize = 1 << 20;

/// Splits records of `sizes` bytes, in order, into consecutive chunks of at most `max_ops`
/// records and at most `max_bytes` bytes (a record larger than `max_bytes` alone in its chunk).
fn save_chunks(sizes: &[usize], max_ops: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < sizes.len()
            && end - start < max_ops
            && (end == start || bytes + sizes[end] <= max_bytes)
        {
            bytes += sizes[end];
            end += 1;
        }
        chunks.push(start..end);
        start = end;
    }
    chunks
}
/// The longest pause after a failed pass before the next one.
const FAILED_PASS_BACKOFF: Duration = Duration::from_secs(5);
/// How often an offer or an operator action is tried again when the record changed under it
/// (another replica wrote it).
const ATTEMPTS: usize = 3;

/// A new rendering of one app, as a source sync produced it.
#[derive(Clone)]
pub struct AppOffer {
    pub app: String,
    pub render: Render,
    pub pipeline_name: Option<String>,
    pub pipeline: PipelineConfig,
    /// The app's `maxRemoval` (else its pipeline's, else 10%).
    pub max_removal: CountOrPercent,
}

/// An app left its source, for [`Rollouts::retire`].
pub struct Retirement<'a> {
    /// The source that defined it; another source's app is not touched.
    pub source: &'a str,
    pub cause: plan::Cause<'a>,
    pub clusters: &'a [ClusterInfo],
}

/// The rollout engine and the operator actions on it.
#[derive(Clone)]
pub struct Rollouts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts").finish_non_exhaustive()
    }
}

struct Inner {
    table: Table<AppRollout>,
    /// Whether this replica does the work that must happen once (passes, offers, a retirement
    /// a sync decided), and the fenced store that work writes through.
    lead: Lead,
    desired: DesiredStates,
    registry: Registry,
    sessions: Arc<Sessions>,
    clock: SharedClock,
    audit: Audit,
    /// A disconnected cluster counts as failed after this long.
    grace: Duration,
    wake: Notify,
    /// Serializes every change of rollout records in this process.
    lock: Mutex<()>,
    /// Every record with its store revision, loaded on first use; written through on save
    /// (all changes go through this engine), so a pass never re-reads and re-parses the store.
    records: std::sync::Mutex<Option<Records>>,
    /// What the agents last reported, per app and cluster.
    reports: Reports,
    /// Which apps the next pass looks at.
    pending: std::sync::Mutex<Pending>,
    /// Spans of the rollouts in flight (empty unless traces are exported).
    traces: trace::Traces,
    metrics: Arc<Metrics>,
    /// When this engine started (unix ms), for the in-memory rollout metrics.
    started_ms: u64,
    /// How often the records were read from the store (more than once: after a conflict).
    reloads: std::sync::atomic::AtomicU64,
    /// Told (source, bundle digests) of a new rendering another replica offered.
    on_offered_elsewhere: std::sync::OnceLock<OfferedElsewhere>,
}

/// What a replica does when another one offered a new rendering of a source's app: render the
/// bundles its own sessions will fetch, if it has not yet.
pub type OfferedElsewhere = Box<dyn Fn(&str, &[&str]) + Send + Sync>;

type Records = BTreeMap<String, (Arc<AppRollout>, u64)>;

/// What the next pass looks at: apps a report, an action or an offer changed, and per app in
/// flight when time alone moves it on next (a soak ends, a health timeout or a grace period
/// expires).
#[derive(Default)]
struct Pending {
    /// Every app in flight (a cluster connected or disconnected, the engine started).
    all: bool,
    apps: HashSet<String>,
    due: HashMap<String, u64>,
}

/// One app's change in a pass, saved with the others in one transaction.
struct Step {
    before: Arc<AppRollout>,
    after: AppRollout,
    revision: u64,
    touched: ClusterSet,
}

impl Rollouts {
    /// The engine of a hub whose store and part among replicas is `lead`.
    pub fn new(
        lead: Lead,
        desired: DesiredStates,
        registry: Registry,
        sessions: Arc<Sessions>,
        clock: SharedClock,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let store = lead.shared().clone();
        let mut audit = Audit::new(store.clone(), clock.clone());
        if let Some(name) = lead.replica() {
            audit = audit.with_replica(name);
        }
        let started_ms = unix_ms(clock.now());
        let observed = desired.clone();
        let this = Self {
            inner: Arc::new(Inner {
                table: Table::new(store, ROLLOUTS),
                lead,
                desired,
                registry,
                sessions,
                clock,
                audit,
                grace,
                wake: Notify::new(),
                lock: Mutex::new(()),
                records: std::sync::Mutex::new(None),
                reports: Reports::default(),
                pending: std::sync::Mutex::new(Pending {
                    all: true,
                    ..Default::default()
                }),
                traces: trace::Traces::default(),
                metrics,
                started_ms,
                reloads: Default::default(),
                on_offered_elsewhere: std::sync::OnceLock::new(),
            }),
        };
        // Told of every status report once it is durable, in the order they were recorded,
        // whatever became of the session that sent it.
        let engine = Arc::downgrade(&this.inner);
        observed.on_durable(Box::new(move |cluster, report, rec| {
            if let Some(inner) = engine.upgrade() {
                Rollouts { inner }.reported(cluster, report, rec);
            }
        }));
        this
    }

    /// Has `f` called with the source and bundle digests of each new rendering another replica
    /// offered (followed from the store). Set once.
    pub fn on_offered_elsewhere(&self, f: OfferedElsewhere) {
        let _ = self.inner.on_offered_elsewhere.set(f);
    }

    /// Whether this replica leads: only the leader offers renderings, moves rollouts and
    /// retires what a sync dropped.
    pub fn leads(&self) -> bool {
        self.inner.lead.leads()
    }

    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the engine to look at every rollout in flight now (a cluster connected or
    /// disconnected).
    pub fn kick(&self) {
        self.pending().all = true;
        self.inner.wake.notify_one();
    }

    /// Takes a status report the hub recorded durably for `cluster` (the status ingest calls
    /// it): the apps it names are looked at in the next pass (each in O(1); nothing scans the
    /// fleet per report).
    pub fn reported(&self, cluster: &str, report: &v1::StatusReport, rec: &StatusRecord) {
        let Some(id) = self.inner.registry.id_of(cluster) else {
            return;
        };
        let apps = self.inner.reports.record(id, report, rec);
        let in_flight: Vec<String> = {
            let records = self.records();
            match records.as_ref() {
                Some(m) => apps
                    .into_iter()
                    .filter(|a| m.get(a).is_some_and(|(r, _)| r.in_flight()))
                    .collect(),
                None => apps,
            }
        };
        if !in_flight.is_empty() {
            self.pending().apps.extend(in_flight);
            self.inner.wake.notify_one();
        }
    }

    /// The index of the agents' reports the engine reads.
    pub fn reports(&self) -> &Reports {
        &self.inner.reports
    }

    fn mark(&self, app: &str) {
        self.pending().apps.insert(app.to_string());
        self.inner.wake.notify_one();
    }

    fn now_ms(&self) -> u64 {
        unix_ms(self.inner.clock.now())
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Option<Records>> {
        self.inner.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads every record from the store once, and the agents' stored statuses.
    async fn ensure_loaded(&self) -> Result<(), HubError> {
        if self.records().is_some() {
            return Ok(());
        }
        let mut map = Records::new();
        for v in self.inner.table.list().await? {
            map.insert(v.value.app.clone(), (Arc::new(v.value), v.revision));
        }
        let first = {
            let mut guard = self.records();
            let first = guard.is_none();
            if first {
                *guard = Some(map);
            }
            first
        };
        if first
            && self
                .inner
                .reloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                > 0
        {
            // Read again after a conflict (another replica wrote): any record may have moved,
            // and the change events of what was just read are skipped as already held — every
            // session here looks at its desired state again.
            self.inner.sessions.desired_changed_all();
            return Ok(());
        }
        if first {
            for (cluster, status) in self.inner.desired.all_statuses().await? {
                if let Some(id) = self.inner.registry.id_of(&cluster) {
                    self.inner.reports.load(id, &status);
                }
            }
        }
        Ok(())
    }

    async fn load(&self, app: &str) -> Result<Option<(AppRollout, u64)>, HubError> {
        self.ensure_loaded().await?;
        Ok(self
            .records()
            .as_ref()
            .and_then(|m| m.get(app))
            .map(|(r, rev)| (r.as_ref().clone(), *rev)))
    }

    /// Every app's record.
    pub async fn all(&self) -> Result<Vec<AppRollout>, HubError> {
        self.ensure_loaded().await?;
        Ok(self
            .records()
            .as_ref()
            .map(|m| m.values().map(|(r, _)| r.as_ref().clone()).collect())
            .unwrap_or_default())
    }

    /// Every app's record, shared rather than copied (for scrape-time metrics).
    pub async fn records_shared(&self) -> Result<Vec<Arc<AppRollout>>, HubError> {
        self.ensure_loaded().await?;
        Ok(self
            .records()
            .as_ref()
            .map(|m| m.values().map(|(r, _)| r.clone()).collect())
            .unwrap_or_default())
    }

    pub async fn get(&self, app: &str) -> Result<AppRollout, HubError> {
        self.load(app)
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| HubError::UnknownApp(app.to_string()))
    }

    /// What the cluster named `cluster` should run now: every app's entry for it, derived from
    /// the rollout records (nothing else is stored per cluster). The generation is a digest of
    /// the content, so it moves exactly when what the agent should run changes — across
    /// restarts too.
    pub async fn desired_of(&self, cluster: &str) -> Result<DesiredRecord, HubError> {
        self.ensure_loaded().await?;
        let Some(id) = self.inner.registry.id_of(cluster) else {
            return Ok(DesiredRecord::default());
        };
        let records: Vec<Arc<AppRollout>> = self
            .records()
            .as_ref()
            .map(|m| m.values().map(|(r, _)| r.clone()).collect())
            .unwrap_or_default();
        let mut apps: Vec<AppEntry> = records.iter().filter_map(|r| r.desired_for(id)).collect();
        for e in &mut apps {
            e.trace_context = self.inner.traces.context_for(&e.app, id, &e.revision);
        }
        Ok(DesiredRecord::of(apps))
    }

    /// The first of `digests` not desired for the cluster named `cluster` now (not named by
    /// what its [`Self::desired_of`] would be), if any; looks only at the apps that render
    /// each bundle.
    pub async fn unwanted<'d>(
        &self,
        cluster: &str,
        digests: &[&'d str],
    ) -> Result<Option<&'d str>, HubError> {
        self.ensure_loaded().await?;
        let Some(id) = self.inner.registry.id_of(cluster) else {
            return Ok(digests.first().copied());
        };
        let records = self.records();
        let Some(m) = records.as_ref() else {
            return Ok(digests.first().copied());
        };
        Ok(digests.iter().copied().find(|digest| {
            !m.values().any(|(r, _)| {
                r.mentions_digest(digest)
                    && r.desired_for(id)
                        .is_some_and(|e| e.bundle_digest == *digest)
            })
        }))
    }

    /// What the cluster named `cluster` should run of `app` (from memory).
    pub async fn entry_of(&self, app: &str, cluster: &str) -> Result<Option<AppEntry>, HubError> {
        let Some(id) = self.inner.registry.id_of(cluster) else {
            return Ok(None);
        };
        Ok(self.peek(app, |r| r.desired_for(id)).await?.flatten())
    }

    /// The clusters `source`'s `app` covers, by name: those it targets, or while it leaves
    /// them, those its removal has not reached yet. None when another source owns the app.
    pub async fn clusters_of(&self, app: &str, source: &str) -> Result<Vec<String>, HubError> {
        let set = self
            .peek(app, |r| {
                if r.source != source {
                    ClusterSet::new()
                } else if r.deleted {
                    r.removal
                        .as_ref()
                        .map(|rm| rm.pending())
                        .unwrap_or_default()
                } else {
                    r.targets()
                }
            })
            .await?
            .unwrap_or_default();
        let mut names: Vec<String> = set.iter().map(|c| self.name_of(c)).collect();
        names.sort();
        Ok(names)
    }

    /// The name of cluster `id` for messages and views (`#<id>` for one the hub no longer has).
    pub fn name_of(&self, id: ClusterId) -> String {
        match self.inner.registry.name_of(id) {
            Some(n) => n.to_string(),
            None => format!("#{id}"),
        }
    }

    /// The id of the cluster named `name`, for operator actions.
    fn id_of(&self, name: &str) -> Result<ClusterId, HubError> {
        self.inner
            .registry
            .id_of(name)
            .ok_or_else(|| HubError::UnknownCluster(name.to_string()))
    }

    /// Tells the live sessions of `clusters` that their desired state may have changed.
    fn wake(&self, rec: &AppRollout, clusters: &ClusterSet) {
        if clusters.is_empty() {
            return;
        }
        for id in clusters {
            if let Some(name) = self.inner.registry.name_of(id) {
                self.inner.sessions.desired_changed(&name);
            }
        }
        tracing::info!(app = %rec.app, clusters = clusters.len(), "desired state changed");
    }

    /// Saves the records of `steps` in as few transactions as the store allows (each record a
    /// compare-and-swap at the revision it was read at; each app's record stands alone, so a
    /// split loses nothing) and remembers them.
    async fn save_all(&self, store: &SharedStore, steps: &[Step]) -> Result<(), HubError> {
        let values: Vec<Vec<u8>> = steps.iter().map(|s| Table::encode(&s.after)).collect();
        let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
        let mut values = values.into_iter();
        for range in save_chunks(&sizes, store.max_batch_ops().max(1), SAVE_BYTES) {
            let chunk: Vec<Vec<u8>> = values.by_ref().take(range.len()).collect();
            self.save_chunk(store, &steps[range], chunk).await?;
        }
        Ok(())
    }

    async fn save_chunk(
        &self,
        store: &SharedStore,
        steps: &[Step],
        values: Vec<Vec<u8>>,
    ) -> Result<(), HubError> {
        let ops = steps
            .iter()
            .zip(values)
            .map(|(s, value)| {
                CasOp::put(self.inner.table.key(&s.after.app), Some(s.revision), value)
            })
            .collect();
        match store.compare_and_swap_many(ops).await? {
            Ok(revisions) => {
                if let Some(m) = self.records().as_mut() {
                    for (s, revision) in steps.iter().zip(revisions) {
                        m.insert(s.after.app.clone(), (Arc::new(s.after.clone()), revision));
                    }
                }
                Ok(())
            }
            Err(key) => {
                // Someone else wrote the store: forget what we hold and read it again next time.
                *self.records() = None;
                Err(HubError::Contention(key))
            }
        }
    }

    async fn save(
        &self,
        store: &SharedStore,
        rec: &AppRollout,
        expected: Option<u64>,
    ) -> Result<(), HubError> {
        let op = CasOp::put(self.inner.table.key(&rec.app), expected, Table::encode(rec));
        match store
            .compare_and_swap_many(vec![op])
            .await?
            .ok()
            .and_then(|r| r.first().copied())
        {
            Some(rev) => {
                if let Some(m) = self.records().as_mut() {
                    m.insert(rec.app.clone(), (Arc::new(rec.clone()), rev));
                }
                Ok(())
            }
            None => {
                // Someone else wrote the store: forget what we hold and read it again next time.
                *self.records() = None;
                Err(HubError::Contention(self.inner.table.key(&rec.app)))
            }
        }
    }

    /// Changes one app's record under the lock: `f` edits it and returns the clusters whose
    /// desired entry may have changed; the record is saved (through `store`: the plain one for
    /// an operator's action, the leader's fenced one for the engine's own work), then those
    /// clusters' sessions are told. A record another replica wrote meanwhile is read again and
    /// `f` applied to it again, a few times.
    async fn update<T>(
        &self,
        store: &SharedStore,
        app: &str,
        create: Option<&str>,
        mut f: impl FnMut(&mut AppRollout) -> Result<(ClusterSet, T), HubError>,
    ) -> Result<T, HubError> {
        let _guard = self.inner.lock.lock().await;
        let mut attempts = 0;
        loop {
            match self.update_locked(store, app, create, &mut f).await {
                Err(HubError::Contention(_)) if attempts < ATTEMPTS => attempts += 1,
                other => return other,
            }
        }
    }

    /// One attempt of [`Self::update`] by a caller that holds the engine's lock.
    async fn update_locked<T>(
        &self,
        store: &SharedStore,
        app: &str,
        create: Option<&str>,
        f: impl FnOnce(&mut AppRollout) -> Result<(ClusterSet, T), HubError>,
    ) -> Result<T, HubError> {
        let (mut rec, rev) = match (self.load(app).await?, create) {
            (Some((r, rev)), _) => (r, Some(rev)),
            (None, Some(source)) => (AppRollout::new(app, source), None),
            (None, None) => {
                return Err(HubError::UnknownApp(app.to_string()));
            }
        };
        let before = rec.clone();
        let (touched, out) = f(&mut rec)?;
        if rec != before {
            self.save(store, &rec, rev).await?;
            let names = |c: ClusterId| self.cluster_info(c);
            self.inner
                .traces
                .observe(&rec, &|_| ClusterView::default(), &names);
            observe::observe_rollout(
                &self.inner.metrics,
                before.rollout.as_ref(),
                rec.rollout.as_ref(),
            );
        }
        self.wake(&rec, &touched);
        self.mark(app);
        Ok(out)
    }

    /// Name and labels of a cluster, for span attributes.
    fn cluster_info(&self, id: ClusterId) -> Option<(String, BTreeMap<String, String>)> {
        let name = self.inner.registry.name_of(id)?;
        let labels = self
            .inner
            .registry
            .cluster_shared(&name)
            .map(|c| c.labels.clone())
            .unwrap_or_default();
        Some((name.to_string(), labels))
    }

    /// Takes a source's new renderings: per app `Ok` when taken (a rollout may start), `Err`
    /// with the reason when the rendering cannot be promoted (the app keeps its revision) —
    /// among them an app another source already defines: an app has one owner.
    pub async fn offer(
        &self,
        source: &str,
        offers: Vec<AppOffer>,
        clusters: &[ClusterInfo],
    ) -> BTreeMap<String, Result<(), String>> {
        let now = self.now_ms();
        let mut out = BTreeMap::new();
        // Only the leading replica decides what a rendering starts.
        let store = match self.inner.lead.store() {
            Ok(s) => s,
            Err(e) => {
                let e = HubError::from(e).to_string();
                return offers
                    .into_iter()
                    .map(|o| (o.app, Err(e.clone())))
                    .collect();
            }
        };
        // Every offer of the sync under one hold of the engine's lock: no pass runs between
        // two of them (each app's record is still its own transaction), and the pass below
        // sends every new rollout's first batch.
        let guard = self.inner.lock.lock().await;
        for o in offers {
            let app = o.app.clone();
            let revision = o.render.revision.clone();
            let span = tracing::info_span!("flotilla.offer", app = %app, revision = %revision);
            let mut started;
            // Another hub replica sharing the store may have written the record meanwhile (it
            // renders the same commit): read it again and offer again, a few times.
            let mut attempts = 0;
            let result = loop {
                let o = o.clone();
                started = false;
                let attempt = self
                .update_locked(&store, &app, Some(source), |rec| {
                    match other_owner(rec, source) {
                        // An app its source gave up (removal under way) is taken over.
                        Some(_) if rec.deleted => rec.source = source.to_string(),
                        Some(refusal) => return Ok((ClusterSet::new(), Err(refusal))),
                        None => {}
                    }
                    let offer = rec.offer(
                        o.render,
                        clusters,
                        o.pipeline_name,
                        o.pipeline,
                        o.max_removal,
                        now,
                    );
                    if offer.started {
                        started = true;
                        let r = rec.rollout.as_ref().expect("started");
                        tracing::info!(app = %rec.app, revision = %r.revision, stages = r.stages.len(), "rollout started");
                    }
                    // A new rollout's first batch goes out with the pass below.
                    Ok((offer.touched, Ok(())))
                })
                .instrument(span.clone())
                .await;
                match attempt {
                    Err(HubError::Contention(_)) if attempts < ATTEMPTS => attempts += 1,
                    other => break other.unwrap_or_else(|e| Err(e.to_string())),
                }
            };
            if started {
                self.inner.traces.offered(&app, &revision, &span);
            }
            out.insert(app, result);
        }
        drop(guard);
        self.tick().await;
        out
    }

    /// The app left its source: every cluster loses it through a staged removal (see
    /// [`plan::Removal`]), and its record goes once that is complete. Nothing happens to an
    /// app another source owns. Returns the removal's state, if one is under way.
    /// A retirement an operator approved (a source's removal) is theirs and written by any
    /// replica; one a sync decided (the app left `flotilla.yaml`) is the leader's work.
    pub async fn retire(&self, app: &str, why: Retirement<'_>) -> Result<(), HubError> {
        let now = self.now_ms();
        let store = match why.cause.approved_by {
            Some(_) => self.inner.table.store().clone(),
            None => self.inner.lead.store()?,
        };
        let done = self
            .update(&store, app, None, |rec| {
                if other_owner(rec, why.source).is_some() {
                    return Ok((ClusterSet::new(), false));
                }
                let touched = rec.retire(why.cause, why.clusters, now);
                Ok((touched, rec.finished()))
            })
            .await;
        match done {
            Ok(true) => self.forget(&store, app).await,
            Ok(false) | Err(HubError::UnknownApp(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads one record in place (no copy of its renderings).
    async fn peek<T>(
        &self,
        app: &str,
        f: impl FnOnce(&AppRollout) -> T,
    ) -> Result<Option<T>, HubError> {
        self.ensure_loaded().await?;
        Ok(self
            .records()
            .as_ref()
            .and_then(|m| m.get(app))
            .map(|(r, _)| f(r)))
    }

    /// What the removal of `app` (owned by `source`) waits for or where it is, while it is
    /// not finished; read in place.
    pub async fn removal_note(&self, app: &str, source: &str) -> Result<Option<String>, HubError> {
        Ok(self
            .peek(app, |r| {
                r.removal
                    .as_ref()
                    .filter(|rm| r.source == source && rm.unfinished())
                    .map(|rm| rm.note(app))
            })
            .await?
            .flatten())
    }

    /// The newest removal of `app` when `source` owns it.
    pub async fn removal_of(
        &self,
        app: &str,
        source: &str,
    ) -> Result<Option<plan::Removal>, HubError> {
        Ok(self
            .peek(app, |r| r.removal.clone().filter(|_| r.source == source))
            .await?
            .flatten())
    }

    /// The source that owns `app`, if the hub knows the app.
    pub async fn owner(&self, app: &str) -> Result<Option<String>, HubError> {
        self.peek(app, |r| r.source.clone()).await
    }

    /// Deletes the record of an app that left its source once every cluster let go of it.
    async fn forget(&self, store: &SharedStore, app: &str) -> Result<(), HubError> {
        let _guard = self.inner.lock.lock().await;
        let Some((rec, rev)) = self.load(app).await? else {
            return Ok(());
        };
        if !rec.finished() {
            return Ok(());
        }
        let clusters = rec.known_clusters();
        if !store
            .compare_and_delete(&self.inner.table.key(app), rev)
            .await?
        {
            // Written meanwhile (another replica): read again next time.
            *self.records() = None;
            return Ok(());
        }
        if let Some(m) = self.records().as_mut() {
            m.remove(app);
        }
        self.wake(&rec, &clusters);
        tracing::info!(app, "app removed from every cluster; record deleted");
        Ok(())
    }

    /// What `cluster` reports about `app` now: its last report, whether it is connected, when
    /// it was last heard from. `live`: the sessions at the start of the pass, by cluster id.
    fn view(&self, app: &str, cluster: ClusterId, live: &LiveById, now_ms: u64) -> ClusterView {
        let mut v = ClusterView::default();
        let session = match live.get(&cluster) {
            Some(s) => Some(s.clone()),
            // Not connected when the pass began (or without an id then): by name, now.
            None => {
                let Some(name) = self.inner.registry.name_of(cluster) else {
                    return v;
                };
                let session = self.inner.sessions.get(&name);
                if session.is_none() {
                    // Held by another replica (or last there)?
                    match self.inner.registry.session_elsewhere(&name, now_ms) {
                        Some((connected, seen)) => {
                            v.connected = connected;
                            v.last_seen_ms = seen;
                        }
                        None => {
                            v.last_seen_ms = self
                                .inner
                                .registry
                                .cluster_shared(&name)
                                .map(|c| c.last_seen_ms)
                                .unwrap_or(0);
                        }
                    }
                }
                session
            }
        };
        if let Some(s) = session {
            v.connected = true;
            v.last_seen_ms = s.last_seen_ms();
        }
        if let Some(s) = self.inner.reports.get(app, cluster) {
            v.revision = s.revision.clone();
            v.phase = s.phase;
            v.health = s.health;
            v.message = s.message.clone();
        }
        v
    }

    /// One pass over the rollouts in flight: advance each from the clusters' reports and the
    /// clock, persist, then tell the sessions whose desired state it changed.
    pub async fn tick(&self) -> bool {
        match self.tick_inner().await {
            Ok(()) => true,
            Err(e) => {
                // Look at everything again next time.
                self.pending().all = true;
                tracing::error!(error = %e, "rollout engine pass failed; will retry");
                false
            }
        }
    }

    /// The apps this pass looks at: those marked since the last one and those whose time came.
    fn take_pending(&self, now_ms: u64) -> (bool, HashSet<String>) {
        let mut p = self.pending();
        let all = std::mem::take(&mut p.all);
        let mut apps = std::mem::take(&mut p.apps);
        let due: Vec<String> = p
            .due
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(a, _)| a.clone())
            .collect();
        for a in due {
            p.due.remove(&a);
            apps.insert(a);
        }
        (all, apps)
    }

    async fn tick_inner(&self) -> Result<(), HubError> {
        let _guard = self.inner.lock.lock().await;
        self.ensure_loaded().await?;
        let now_ms = self.now_ms();
        let (all, apps) = self.take_pending(now_ms);
        // Only the leading replica moves rollouts (it looks at everything once it leads).
        let Ok(store) = self.inner.lead.store() else {
            return Ok(());
        };
        let active: Vec<(Arc<AppRollout>, u64)> = self
            .records()
            .as_ref()
            .map(|m| {
                m.values()
                    .filter(|(rec, _)| !rec.paused && rec.in_flight())
                    .filter(|(rec, _)| all || apps.contains(&rec.app))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if active.is_empty() {
            return Ok(());
        }
        let names = |c: ClusterId| self.name_of(c);
        let infos = |c: ClusterId| self.cluster_info(c);
        let live = self.inner.sessions.by_id();
        let grace_ms = self.inner.grace.as_millis() as u64;
        let mut steps = Vec::new();
        let mut audits = Vec::new();
        for (shared, rev) in active {
            let app = shared.app.clone();
            let views = |c: ClusterId| self.view(&app, c, &live, now_ms);
            self.observe_healthy_fraction(&shared, now_ms);
            let before = shared.as_ref();
            // Advance a copy without the renderings; they are put back only if it moved.
            let mut rec = before.without_renders();
            let inp = Inputs {
                now_ms,
                views: &views,
                names: &names,
                grace_ms,
                due: Cell::new(u64::MAX),
            };
            let mut touched = rec.advance(&inp);
            if let Some(at) = rec.next_due(inp.due.get()) {
                self.pending().due.insert(app.clone(), at);
            }
            if !rec.progress_differs(before) {
                continue;
            }
            rec.renders = before.renders.clone();
            let ended = |r: &AppRollout| r.rollout.as_ref().is_some_and(|r| !r.state.in_flight());
            if ended(&rec) && !ended(before) {
                touched.extend_set(&rec.known_clusters());
            }
            log_progress(before, &rec, &names);
            self.inner.traces.observe(&rec, &views, &infos);
            if let Some(entry) = automatic_action(before, &rec) {
                audits.push(entry);
            }
            if rec.in_flight() {
                // It moved: look again in the next pass (its new batch may be done at once).
                self.mark(&app);
            }
            steps.push(Step {
                before: shared.clone(),
                after: rec,
                revision: rev,
                touched,
            });
        }
        // The engine's own decisions are audited before they take effect.
        for entry in audits {
            self.inner.audit.record_through(&store, entry).await?;
        }
        self.save_all(&store, &steps).await?;
        let mut finished = Vec::new();
        for s in &steps {
            observe::observe_rollout(
                &self.inner.metrics,
                s.before.rollout.as_ref(),
                s.after.rollout.as_ref(),
            );
            self.wake(&s.after, &s.touched);
            if s.after.finished() {
                finished.push(s.after.app.clone());
            }
        }
        drop(_guard);
        for app in finished {
            self.forget(&store, &app).await?;
        }
        Ok(())
    }

    /// Feeds `rollout_healthy_fraction_seconds`: the share of the rollout's clusters that run
    /// its revision applied and healthy.
    fn observe_healthy_fraction(&self, rec: &AppRollout, now_ms: u64) {
        let Some(r) = &rec.rollout else {
            return;
        };
        let (mut healthy, mut total) = (0, 0);
        self.inner.reports.with_app(&rec.app, |seen| {
            for s in &r.stages {
                total += s.clusters.len();
                for c in s.updated.all().iter() {
                    if seen(c).is_some_and(|v| {
                        &*v.revision == r.revision.as_str()
                            && v.phase == flotilla_proto::state::Phase::Applied
                            && v.health == flotilla_proto::state::Health::Healthy
                    }) {
                        healthy += 1;
                    }
                }
            }
        });
        observe::observe_healthy_fraction(
            &self.inner.metrics,
            &rec.app,
            r,
            healthy,
            total,
            now_ms,
            self.inner.started_ms,
        );
    }

    /// At start: loads every record and deletes those of apps that every cluster let go of
    /// before a crash. (Desired state is derived from the records, so nothing else can be
    /// left half-written.)
    pub async fn resync(&self) -> Result<(), HubError> {
        let store = self.inner.lead.store()?;
        let finished: Vec<String> = self
            .all()
            .await?
            .into_iter()
            .filter(AppRollout::finished)
            .map(|r| r.app)
            .collect();
        for app in finished {
            self.forget(&store, &app).await?;
        }
        Ok(())
    }

    /// Follows what other hub replicas sharing the store write to `/rollouts/`, until
    /// `shutdown`: a record written elsewhere replaces the one held here (never by an older
    /// revision), the live sessions here whose desired state it changed are told, and the app
    /// is looked at in the next pass. When the watch fails the records are read again and every
    /// session here is told. Run only with a shared store (a single hub writes every record
    /// itself).
    pub async fn follow(self, mut shutdown: watch::Receiver<bool>) {
        // The first load also indexes the stored statuses: let it happen as it always does.
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = self.ensure_loaded().await {
            tracing::warn!(error = %e, "loading the rollout records failed; retrying");
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        let store = self.inner.table.store().clone();
        crate::store::follow::follow(
            &*store,
            ROLLOUTS,
            "the rollout records",
            None,
            shutdown,
            |items, _| self.replace_all(items),
            |ev| self.followed(ev),
        )
        .await;
    }

    /// Holds `items` (a fresh list) as the records, and tells every live session here.
    fn replace_all(&self, items: Vec<crate::store::KeyValue>) {
        let mut map = Records::new();
        for kv in &items {
            match self.inner.table.decode(kv) {
                Ok(v) => {
                    map.insert(v.value.app.clone(), (Arc::new(v.value), v.revision));
                }
                Err(e) => tracing::error!(error = %e, "a rollout record does not decode; skipped"),
            }
        }
        *self.records() = Some(map);
        // Anything may have changed since the records were read last.
        self.inner.sessions.desired_changed_all();
        self.kick();
    }

    /// One change another replica (or this one) made to a rollout record.
    fn followed(&self, ev: WatchEvent) {
        let (app, revision) = match &ev {
            WatchEvent::Put(kv) => (kv.key[ROLLOUTS.len()..].to_string(), kv.mod_revision),
            WatchEvent::Delete { key, mod_revision } => {
                (key[ROLLOUTS.len()..].to_string(), *mod_revision)
            }
        };
        // This replica's own writes are held already, at their revision: nothing to decode.
        let before = {
            let records = self.records();
            let Some(m) = records.as_ref() else {
                // Dropped after a conflict, read again on next use: what changed is not known
                // here, so every session here looks at its desired state again.
                drop(records);
                self.inner.sessions.desired_changed_all();
                self.kick();
                return;
            };
            match m.get(&app) {
                Some((_, held)) if *held >= revision => return,
                other => other.map(|(r, _)| r.clone()),
            }
        };
        let (after, touched) = match ev {
            WatchEvent::Put(kv) => match self.inner.table.decode(&kv) {
                Ok(v) => {
                    let touched = v.value.changed_from(before.as_deref());
                    (Some((Arc::new(v.value), v.revision)), touched)
                }
                Err(e) => {
                    tracing::error!(error = %e, app, "a rollout record another replica wrote does not decode; keeping the last good one");
                    return;
                }
            },
            WatchEvent::Delete { .. } => {
                let touched = before
                    .as_ref()
                    .map(|b| b.known_clusters())
                    .unwrap_or_default();
                (None, touched)
            }
        };
        if let (Some((rec, _)), Some(tell)) = (&after, self.inner.on_offered_elsewhere.get()) {
            let newest = rec.renders.last();
            let was = before.as_ref().and_then(|b| b.renders.last());
            if let Some(render) = newest.filter(|n| was.is_none_or(|w| w.revision != n.revision)) {
                let digests: Vec<&str> = render
                    .entries
                    .groups()
                    .iter()
                    .map(|g| g.entry.bundle_digest.as_str())
                    .collect();
                tell(&rec.source, &digests);
            }
        }
        let shown = after.as_ref().map(|(r, _)| r.clone()).or(before);
        {
            let mut records = self.records();
            let Some(m) = records.as_mut() else { return };
            if m.get(&app).is_some_and(|(_, held)| *held >= revision) {
                return;
            }
            match after {
                Some(entry) => m.insert(app.clone(), entry),
                None => m.remove(&app),
            };
        }
        if let Some(rec) = shown {
            self.wake(&rec, &touched);
        }
        self.mark(&app);
    }

    /// Runs the engine until `shutdown`: a pass on every kick and every [`TICK`], at most one
    /// per [`PASS_SPACING`].
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut role = self.inner.lead.role();
        let mut leads = false;
        let mut failed = Duration::ZERO;
        loop {
            let started = tokio::time::Instant::now();
            let now_leads = role.borrow_and_update().is_leader();
            if now_leads && !leads {
                // Taking the lead (or starting alone): finish what a crash left, and look at
                // every rollout in flight, whoever moved it last.
                if let Err(e) = self.resync().await {
                    tracing::error!(error = %e, "cannot load the rollout records");
                }
                self.kick();
            }
            leads = now_leads;
            // A pass that panics (a bug) must not stop every rollout of the fleet for good:
            // it counts as a failed pass, and the records are read again from the store.
            let passed = match std::panic::AssertUnwindSafe(self.tick())
                .catch_unwind()
                .await
            {
                Ok(passed) => passed,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "a rollout pass panicked (a bug); reloading the rollout records and trying again");
                    if let Err(e) = self.resync().await {
                        tracing::error!(error = %e, "cannot load the rollout records");
                    }
                    false
                }
            };
            if passed {
                failed = Duration::ZERO;
            } else {
                // A pass that fails (the store refuses or cannot be reached) is not retried
                // at once: a pause that doubles up to FAILED_PASS_BACKOFF.
                failed = (failed * 2)
                    .max(Duration::from_millis(100))
                    .min(FAILED_PASS_BACKOFF);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(failed) => {}
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.inner.wake.notified() => {}
                _ = role.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(started + PASS_SPACING) => {}
            }
        }
    }

    // === Operator actions, each audited before it takes effect ===

    async fn audited(&self, entry: AuditEntry) -> Result<(), HubError> {
        self.inner.audit.record(entry).await.map(|_| ())
    }

    /// An operator action on `app`: records `entry` in the audit log, then lets `act` change
    /// the rollout; `act` returns the clusters whose desired state it changed.
    async fn audited_update(
        &self,
        app: &str,
        entry: AuditEntry,
        act: impl Fn(&mut AppRollout) -> Result<ClusterSet, HubError>,
    ) -> Result<(), HubError> {
        self.audited(entry).await?;
        let store = self.inner.table.store().clone();
        self.update(&store, app, None, |rec| Ok((act(rec)?, ())))
            .await
    }

    /// An operator action that sends nothing to a cluster itself (an approval, a pause): as
    /// [`Self::audited_update`], then the rollouts advance at once; the app's rollout afterwards.
    async fn audited_then_advance(
        &self,
        app: &str,
        entry: AuditEntry,
        act: impl Fn(&mut AppRollout) -> Result<(), HubError>,
    ) -> Result<AppRollout, HubError> {
        self.audited_update(app, entry, |rec| {
            act(rec)?;
            Ok(ClusterSet::new())
        })
        .await?;
        self.tick().await;
        self.get(app).await
    }

    pub async fn approve(&self, app: &str, stage: &str, who: &str) -> Result<AppRollout, HubError> {
        let rec = self.get(app).await?;
        let mut probe = rec.clone();
        let what = probe.approve(stage, who)?;
        let entry = AuditEntry {
            stage: stage.into(),
            revision: rec.rollout.map(|r| r.revision).unwrap_or_default(),
            detail: what,
            ..AuditEntry::new(who, "rollout.approve", app)
        };
        self.audited_then_advance(app, entry, |rec| {
            rec.approve(stage, who)?;
            Ok(())
        })
        .await
    }

    pub async fn set_paused(
        &self,
        app: &str,
        paused: bool,
        who: &str,
    ) -> Result<AppRollout, HubError> {
        let rec = self.get(app).await?;
        let action = if paused {
            "rollout.pause"
        } else {
            "rollout.resume"
        };
        let entry = AuditEntry {
            revision: rec.rollout.map(|r| r.revision).unwrap_or_default(),
            ..AuditEntry::new(who, action, app)
        };
        self.audited_then_advance(app, entry, |rec| {
            rec.paused = paused;
            Ok(())
        })
        .await
    }

    pub async fn rollback(
        &self,
        app: &str,
        to: Option<&str>,
        who: &str,
    ) -> Result<AppRollout, HubError> {
        let now = self.now_ms();
        let mut probe = self.get(app).await?;
        probe.rollback(to, now)?;
        let entry = AuditEntry {
            revision: probe.last_good.clone().unwrap_or_default(),
            ..AuditEntry::new(who, "rollout.rollback", app)
        };
        self.audited_update(app, entry, |rec| Ok(rec.rollback(to, now)?))
            .await?;
        self.get(app).await
    }

    pub async fn pin(
        &self,
        cluster: &str,
        app: &str,
        revision: &str,
        who: &str,
    ) -> Result<String, HubError> {
        let id = self.id_of(cluster)?;
        let mut probe = self.get(app).await?;
        let rev = probe.pin(id, cluster, revision)?;
        let entry = AuditEntry {
            cluster: cluster.into(),
            revision: rev.clone(),
            ..AuditEntry::new(who, "cluster.pin", app)
        };
        self.audited_update(app, entry, |rec| {
            rec.pin(id, cluster, revision)?;
            Ok(std::iter::once(id).collect())
        })
        .await?;
        Ok(rev)
    }

    pub async fn unpin(&self, cluster: &str, app: &str, who: &str) -> Result<(), HubError> {
        let id = self.id_of(cluster)?;
        let rec = self.get(app).await?;
        let Some(rev) = rec.pins.get(&id).cloned() else {
            return Err(HubError::Invalid(format!(
                "cluster {cluster} is not pinned for app {app}"
            )));
        };
        let entry = AuditEntry {
            cluster: cluster.into(),
            revision: rev,
            ..AuditEntry::new(who, "cluster.unpin", app)
        };
        self.audited_update(app, entry, |rec| {
            rec.pins.remove(&id);
            Ok(std::iter::once(id).collect())
        })
        .await
    }
}

/// The refusal for `source` when another source owns the app of `rec`.
fn other_owner(rec: &AppRollout, source: &str) -> Option<String> {
    (!rec.source.is_empty() && rec.source != source).then(|| {
        format!(
            "app {} is already defined by source {}: an app has one owner, so this definition is ignored (rename the app or remove it from one source)",
            rec.app, rec.source
        )
    })
}

/// The audit entry of a decision the engine took by itself in this pass: a failed stage
/// halting or rolling back a revision, or halting a removal.
fn automatic_action(before: &AppRollout, rec: &AppRollout) -> Option<AuditEntry> {
    let failed_stage = |stages: &[plan::StageRun]| {
        stages
            .iter()
            .find(|s| s.state == plan::StageState::Failed)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    };
    let was = |r: Option<plan::RolloutState>| r.is_some_and(|s| s.in_flight());
    if let Some(r) = &rec.rollout
        && was(before.rollout.as_ref().map(|b| b.state))
        && matches!(
            r.state,
            plan::RolloutState::RolledBack | plan::RolloutState::Failed
        )
    {
        let action = if r.state == plan::RolloutState::RolledBack {
            "rollout.rollback"
        } else {
            "rollout.halt"
        };
        return Some(AuditEntry {
            stage: failed_stage(&r.stages),
            revision: r.revision.clone(),
            detail: r.message.clone(),
            ..AuditEntry::new(AUTOMATIC, action, &rec.app)
        });
    }
    let rm = rec.removal.as_ref()?;
    (was(before.removal.as_ref().map(|b| b.state)) && rm.state == plan::RolloutState::Failed).then(
        || AuditEntry {
            stage: failed_stage(&rm.stages),
            revision: rm.revision.clone(),
            detail: rm.message.clone(),
            ..AuditEntry::new(AUTOMATIC, "removal.halt", &rec.app)
        },
    )
}

/// Who the audit log names for the engine's own decisions.
pub const AUTOMATIC: &str = "flotilla-hub (automatic)";

fn log_progress(before: &AppRollout, after: &AppRollout, names: &dyn Fn(ClusterId) -> String) {
    let (Some(b), Some(a)) = (&before.rollout, &after.rollout) else {
        return;
    };
    for (sb, sa) in b.stages.iter().zip(&a.stages) {
        if sb.state != sa.state {
            tracing::info!(app = %after.app, revision = %short(&a.revision), stage = %sa.name, from = sb.state.as_str(), to = sa.state.as_str(), "stage");
        }
        if sb.batch != sa.batch && !sa.batch.is_empty() {
            // Named up to a few; a batch of thousands is logged by its size.
            let shown: Vec<String> = sa.batch.iter().take(5).map(names).collect();
            tracing::info!(app = %after.app, revision = %short(&a.revision), stage = %sa.name, clusters = sa.batch.len(), batch = ?shown, "batch sent");
        }
    }
    if b.state != a.state {
        tracing::info!(app = %after.app, revision = %short(&a.revision), state = a.state.as_str(), message = %a.message, "rollout");
    }
}
