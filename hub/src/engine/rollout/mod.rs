//! Promotion of revisions across the fleet. Every app's record (`/rollouts/<app>`, see
//! [`plan::AppRollout`]) is the single source of which revision each cluster should run: source
//! syncs offer renderings, the engine advances rollouts from the clusters' reports and the clock,
//! operators approve, pause, resume, roll back and pin. Each step is persisted before its effect
//! (the desired state it implies) is written, and desired state is always recomputed from the
//! record, so a restart — even `kill -9` between the two writes — resumes exactly where it was.

pub mod observe;
pub mod plan;
pub mod removal;
pub mod stages;
#[cfg(test)]
mod tests;
mod trace;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::clock::{SharedClock, unix_ms};
use flotilla_proto::revision::short;
use flotilla_proto::state::AppState;
use tokio::sync::{Mutex, Notify, watch};
use tracing::Instrument;

use crate::render::{ClusterInfo, CountOrPercent, PipelineConfig};
use crate::state::audit::{Audit, AuditEntry};
use crate::state::desired::{AppEntry, DesiredStates};
use crate::state::error::HubError;
use crate::state::registry::Registry;
use crate::state::sessions::Sessions;
use crate::state::table::Table;
use crate::store::SharedStore;
use crate::telemetry::metrics::Metrics;
use plan::{AppRollout, ClusterView, Inputs, Render};

pub const ROLLOUTS: &str = "/rollouts/";
/// How often in-flight rollouts are re-examined when nothing wakes the engine.
const TICK: Duration = Duration::from_millis(500);

/// A new rendering of one app, as a source sync produced it.
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
    /// Spans of the rollouts in flight (empty unless traces are exported).
    traces: trace::Traces,
    metrics: Arc<Metrics>,
    /// When this engine started (unix ms), for the in-memory rollout metrics.
    started_ms: u64,
}

type Records = BTreeMap<String, (Arc<AppRollout>, u64)>;

impl Rollouts {
    pub fn new(
        store: SharedStore,
        desired: DesiredStates,
        registry: Registry,
        sessions: Arc<Sessions>,
        clock: SharedClock,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let audit = Audit::new(store.clone(), clock.clone());
        let started_ms = unix_ms(clock.now());
        Self {
            inner: Arc::new(Inner {
                table: Table::new(store, ROLLOUTS),
                desired,
                registry,
                sessions,
                clock,
                audit,
                grace,
                wake: Notify::new(),
                lock: Mutex::new(()),
                records: std::sync::Mutex::new(None),
                traces: trace::Traces::default(),
                metrics,
                started_ms,
            }),
        }
    }

    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }

    /// Asks the engine to look at the rollouts now (a status report, a connect, a disconnect).
    pub fn kick(&self) {
        self.inner.wake.notify_one();
    }

    fn now_ms(&self) -> u64 {
        unix_ms(self.inner.clock.now())
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Option<Records>> {
        self.inner.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads every record from the store once.
    async fn ensure_loaded(&self) -> Result<(), HubError> {
        if self.records().is_some() {
            return Ok(());
        }
        let mut map = Records::new();
        for v in self.inner.table.list().await? {
            map.insert(v.value.app.clone(), (Arc::new(v.value), v.revision));
        }
        let mut guard = self.records();
        if guard.is_none() {
            *guard = Some(map);
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

    async fn save(&self, rec: &AppRollout, expected: Option<u64>) -> Result<(), HubError> {
        match self.inner.table.swap(&rec.app, expected, rec).await? {
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

    /// Writes what `rec` implies for `clusters` into their desired state.
    async fn apply(&self, rec: &AppRollout, clusters: &[String]) -> Result<(), HubError> {
        if clusters.is_empty() {
            return Ok(());
        }
        let changes: Vec<(String, String, Option<AppEntry>)> = clusters
            .iter()
            .map(|c| {
                let mut entry = rec.desired_for(c);
                if let Some(e) = entry.as_mut().filter(|e| e.trace_context.is_empty()) {
                    e.trace_context = self.inner.traces.context_for(&rec.app, c, &e.revision);
                }
                (c.clone(), rec.app.clone(), entry)
            })
            .collect();
        let moved = self.inner.desired.set_entries(&changes).await?;
        for (cluster, generation) in &moved {
            tracing::debug!(cluster.id = %cluster, app = %rec.app, generation, "desired state changed");
        }
        if !moved.is_empty() {
            tracing::info!(app = %rec.app, clusters = moved.len(), "desired state changed");
        }
        Ok(())
    }

    /// Changes one app's record under the lock: `f` edits it and returns the clusters whose
    /// desired entry may have changed; the record is saved, then those entries are written.
    async fn update<T>(
        &self,
        app: &str,
        create: Option<&str>,
        f: impl FnOnce(&mut AppRollout) -> Result<(Vec<String>, T), HubError>,
    ) -> Result<T, HubError> {
        let _guard = self.inner.lock.lock().await;
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
            self.save(&rec, rev).await?;
            self.inner
                .traces
                .observe(&rec, &BTreeMap::new(), &trace::Labels::new());
            observe::observe_rollout(
                &self.inner.metrics,
                before.rollout.as_ref(),
                rec.rollout.as_ref(),
            );
        }
        self.apply(&rec, &touched).await?;
        self.kick();
        Ok(out)
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
        for o in offers {
            let app = o.app.clone();
            let revision = o.render.revision.clone();
            let span = tracing::info_span!("flotilla.offer", app = %app, revision = %revision);
            let mut started = false;
            let result = self
                .update(&app, Some(source), |rec| {
                    match other_owner(rec, source) {
                        // An app its source gave up (removal under way) is taken over.
                        Some(_) if rec.deleted => rec.source = source.to_string(),
                        Some(refusal) => return Ok((Vec::new(), Err(refusal))),
                        None => {}
                    }
                    match rec.offer(
                        o.render,
                        clusters,
                        o.pipeline_name,
                        o.pipeline,
                        o.max_removal,
                        now,
                    ) {
                        Ok(offer) => {
                            if offer.started {
                                started = true;
                                let r = rec.rollout.as_ref().expect("started");
                                tracing::info!(app = %rec.app, revision = %r.revision, stages = r.stages.len(), "rollout started");
                            }
                            // A new rollout's first batch goes out with the pass below.
                            Ok((offer.touched, Ok(())))
                        }
                        Err(e) => Ok((Vec::new(), Err(e))),
                    }
                })
                .instrument(span.clone())
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            if started {
                self.inner.traces.offered(&app, &revision, &span);
            }
            out.insert(app, result);
        }
        self.tick().await;
        out
    }

    /// The app left its source: every cluster loses it through a staged removal (see
    /// [`plan::Removal`]), and its record goes once that is complete. Nothing happens to an
    /// app another source owns. Returns the removal's state, if one is under way.
    pub async fn retire(&self, app: &str, why: Retirement<'_>) -> Result<(), HubError> {
        let now = self.now_ms();
        let done = self
            .update(app, None, |rec| {
                if other_owner(rec, why.source).is_some() {
                    return Ok((Vec::new(), false));
                }
                let touched = rec
                    .retire(why.cause, why.clusters, now)
                    .map_err(HubError::Invalid)?;
                Ok((touched, rec.finished()))
            })
            .await;
        match done {
            Ok(true) => self.forget(app).await,
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
    async fn forget(&self, app: &str) -> Result<(), HubError> {
        let _guard = self.inner.lock.lock().await;
        let Some((rec, rev)) = self.load(app).await? else {
            return Ok(());
        };
        if !rec.finished() {
            return Ok(());
        }
        let changes: Vec<(String, String, Option<AppEntry>)> = rec
            .known_clusters()
            .into_iter()
            .map(|c| (c, app.to_string(), None))
            .collect();
        self.inner.desired.set_entries(&changes).await?;
        self.inner.table.delete_at(app, rev).await?;
        if let Some(m) = self.records().as_mut() {
            m.remove(app);
        }
        tracing::info!(app, "app removed from every cluster; record deleted");
        Ok(())
    }

    /// What each cluster of `clusters` reports about `app`, from statuses read once per pass.
    fn views(
        &self,
        app: &str,
        clusters: &BTreeSet<String>,
        statuses: &BTreeMap<String, Arc<crate::state::desired::StatusRecord>>,
        seen: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, ClusterView> {
        let mut views = BTreeMap::new();
        for c in clusters {
            let live = self.inner.sessions.get(c);
            let mut v = ClusterView {
                connected: live.is_some(),
                last_seen_ms: live
                    .map(|s| s.last_seen_ms())
                    .or_else(|| seen.get(c).copied())
                    .unwrap_or(0),
                ..Default::default()
            };
            if let Some(a) = statuses
                .get(c)
                .and_then(|s| s.apps.iter().find(|a| a.app == app))
            {
                v.revision = a.revision.clone();
                v.phase = a.phase;
                v.health = a.health;
                v.message = a.message.clone();
            }
            views.insert(c.clone(), v);
        }
        views
    }

    /// One pass over the rollouts in flight: advance each from the clusters' reports and the
    /// clock, persist, then write the desired state it implies.
    pub async fn tick(&self) {
        if let Err(e) = self.tick_inner().await {
            tracing::error!(error = %e, "rollout engine pass failed; will retry");
        }
    }

    async fn tick_inner(&self) -> Result<(), HubError> {
        let _guard = self.inner.lock.lock().await;
        self.ensure_loaded().await?;
        let active: Vec<(Arc<AppRollout>, u64)> = self
            .records()
            .as_ref()
            .map(|m| {
                m.values()
                    .filter(|(rec, _)| !rec.paused && rec.in_flight())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if active.is_empty() {
            return Ok(());
        }
        // Each cluster's status is read once per pass, whatever the number of apps.
        let members = |rec: &AppRollout| -> BTreeSet<String> {
            let rollout = rec
                .rollout
                .iter()
                .flat_map(|r| stages::reached_all(&r.stages));
            let removal = rec
                .removal
                .iter()
                .flat_map(|r| stages::reached_all(&r.stages));
            rollout.chain(removal).cloned().collect()
        };
        let mut needed = BTreeSet::new();
        for (rec, _) in &active {
            needed.extend(members(rec));
        }
        let mut statuses = BTreeMap::new();
        for c in &needed {
            statuses.insert(c.clone(), self.inner.desired.status_shared(c).await?);
        }
        let mut labels = trace::Labels::new();
        let mut seen = BTreeMap::new();
        for c in self.inner.registry.list_clusters().await? {
            if flotilla_proto::telemetry::traces::enabled() {
                labels.insert(c.name.clone(), c.labels);
            }
            seen.insert(c.name, c.last_seen_ms);
        }
        let now_ms = self.now_ms();
        let mut finished = Vec::new();
        for (shared, rev) in active {
            let views = self.views(&shared.app, &members(&shared), &statuses, &seen);
            self.observe_healthy_fraction(&shared, &views, now_ms);
            let before = shared.as_ref();
            // Advance a copy without the renderings; they are put back only if it moved.
            let mut rec = before.without_renders();
            let mut touched = rec.advance(&Inputs {
                now_ms,
                views: &views,
                grace_ms: self.inner.grace.as_millis() as u64,
            });
            if !rec.progress_differs(before) {
                continue;
            }
            rec.renders = before.renders.clone();
            let ended = |r: &AppRollout| r.rollout.as_ref().is_some_and(|r| !r.state.in_flight());
            if ended(&rec) && !ended(before) {
                touched.extend(rec.known_clusters());
                touched.sort();
                touched.dedup();
            }
            log_progress(before, &rec);
            self.inner.traces.observe(&rec, &views, &labels);
            if let Some(entry) = automatic_action(before, &rec) {
                self.audited(entry).await?;
            }
            self.save(&rec, Some(rev)).await?;
            observe::observe_rollout(
                &self.inner.metrics,
                before.rollout.as_ref(),
                rec.rollout.as_ref(),
            );
            self.apply(&rec, &touched).await?;
            if rec.finished() {
                finished.push(rec.app.clone());
            }
        }
        drop(_guard);
        for app in finished {
            self.forget(&app).await?;
        }
        Ok(())
    }

    /// Feeds `rollout_healthy_fraction_seconds`: the share of the rollout's clusters that run
    /// its revision applied and healthy.
    fn observe_healthy_fraction(
        &self,
        rec: &AppRollout,
        views: &BTreeMap<String, ClusterView>,
        now_ms: u64,
    ) {
        let Some(r) = &rec.rollout else {
            return;
        };
        let (mut healthy, mut total) = (0, 0);
        for c in r.stages.iter().flat_map(|s| &s.clusters) {
            total += 1;
            if views.get(c).is_some_and(|v| v.healthy_at(&r.revision)) {
                healthy += 1;
            }
        }
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

    /// Rewrites every app's desired state from its record (at start: finishes what a crash
    /// between a record write and its desired-state write left undone).
    /// Also deletes the records of apps that every cluster let go of before a crash.
    pub async fn resync(&self) -> Result<(), HubError> {
        let guard = self.inner.lock.lock().await;
        let mut finished = Vec::new();
        for rec in self.all().await? {
            let clusters: Vec<String> = rec.known_clusters().into_iter().collect();
            self.apply(&rec, &clusters).await?;
            if rec.finished() {
                finished.push(rec.app);
            }
        }
        drop(guard);
        for app in finished {
            self.forget(&app).await?;
        }
        Ok(())
    }

    /// Runs the engine until `shutdown`: a pass on every kick and every [`TICK`].
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.resync().await {
            tracing::error!(error = %e, "cannot resync desired state from rollouts");
        }
        loop {
            self.tick().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
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
        act: impl FnOnce(&mut AppRollout) -> Result<Vec<String>, HubError>,
    ) -> Result<(), HubError> {
        self.audited(entry).await?;
        self.update(app, None, |rec| Ok((act(rec)?, ()))).await
    }

    /// An operator action that sends nothing to a cluster itself (an approval, a pause): as
    /// [`Self::audited_update`], then the rollouts advance at once; the app's rollout afterwards.
    async fn audited_then_advance(
        &self,
        app: &str,
        entry: AuditEntry,
        act: impl FnOnce(&mut AppRollout) -> Result<(), HubError>,
    ) -> Result<AppRollout, HubError> {
        self.audited_update(app, entry, |rec| {
            act(rec)?;
            Ok(Vec::new())
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
        let mut probe = self.get(app).await?;
        let rev = probe.pin(cluster, revision)?;
        let entry = AuditEntry {
            cluster: cluster.into(),
            revision: rev.clone(),
            ..AuditEntry::new(who, "cluster.pin", app)
        };
        self.audited_update(app, entry, |rec| {
            rec.pin(cluster, revision)?;
            Ok(vec![cluster.to_string()])
        })
        .await?;
        Ok(rev)
    }

    pub async fn unpin(&self, cluster: &str, app: &str, who: &str) -> Result<(), HubError> {
        let rec = self.get(app).await?;
        let Some(rev) = rec.pins.get(cluster).cloned() else {
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
            rec.pins.remove(cluster);
            Ok(vec![cluster.to_string()])
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

fn log_progress(before: &AppRollout, after: &AppRollout) {
    let (Some(b), Some(a)) = (&before.rollout, &after.rollout) else {
        return;
    };
    for (sb, sa) in b.stages.iter().zip(&a.stages) {
        if sb.state != sa.state {
            tracing::info!(app = %after.app, revision = %short(&a.revision), stage = %sa.name, from = sb.state.as_str(), to = sa.state.as_str(), "stage");
        }
        if sb.batch != sa.batch && !sa.batch.is_empty() {
            tracing::info!(app = %after.app, revision = %short(&a.revision), stage = %sa.name, batch = ?sa.batch, "batch sent");
        }
    }
    if b.state != a.state {
        tracing::info!(app = %after.app, revision = %short(&a.revision), state = a.state.as_str(), message = %a.message, "rollout");
    }
}
