//! Git sources and the path from a commit to every cluster's desired state: each source is
//! fetched (polling, or at once when triggered), its `flotilla.yaml` is loaded at the fetched
//! commit, every app is rendered for every cluster it targets, bundles go into the
//! content-addressed cache, and each cluster's desired state is updated. A bad commit (invalid
//! config, an app that fails to render, an unreachable remote) is recorded as the source's or
//! app's error and leaves the last good revision desired.
//!
//! Records live at `/sources/<name>` (spec and status). Credentials stay in a file on the hub
//! (`secret_file`); only its path is stored.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::clock::{SharedClock, unix_ms};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use crate::engine::rollout::groups::Groups;
use crate::engine::rollout::plan::{Cause, Render};
use crate::engine::rollout::{AppOffer, Retirement, Rollouts};
use crate::git::{Auth, GitRef, Mirror, SourceSpec};
use crate::render::{
    AppManifests, BundleCache, ClusterInfo, CountOrPercent, DirKind, Limits, OnFailure,
    PipelineConfig, RenderEnv, Tools, load_config, targeted_clusters,
};
use crate::state::desired::AppEntry;
use crate::state::error::HubError;
use crate::state::registry::Registry;
use crate::state::table::Table;
use crate::store::{SharedStore, WatchEvent};

pub const SOURCES: &str = "/sources/";
/// Default polling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long `source sync` through a replica that does not lead waits for the leader's sync.
const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// A source as persisted: what to track, and how the last sync went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub name: String,
    pub url: String,
    /// `--ref` as given (branch, tag, commit or `refs/…`), or `HEAD`: the remote's default
    /// branch, resolved again at every fetch (what an omitted `--ref` tracks).
    pub reference: String,
    pub path: String,
    pub interval_ms: u64,
    /// Path of the hub-side file with https credentials; never its content.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Path of the hub-side file holding the webhook secret (HMAC key or GitLab token).
    #[serde(default)]
    pub webhook_secret_file: Option<String>,
    pub created_ms: u64,
    #[serde(default)]
    pub status: SourceStatus,
    /// Syncs asked of the leading replica through another one (webhook, `source sync`): every
    /// replica that sees it go up syncs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sync_requests: u64,
    /// Whether Kustomize and Helm renders of this source may reach the network (remote
    /// bases); off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub render_network: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The commit last fetched.
    pub commit: Option<String>,
    /// The remote ref that fetch resolved the reference to (`refs/heads/main`; for `HEAD`,
    /// the branch it pointed to then). A failed fetch keeps it, with the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ref: Option<String>,
    pub last_fetch_ms: u64,
    /// Why the last sync did not take the fetched commit (`None` when healthy).
    pub error: Option<String>,
    /// Per app: the commit desired now and the last render error (which clusters it targets is
    /// in its rollout record, not repeated here: at 10,000 clusters that list would be most of
    /// the record).
    pub apps: BTreeMap<String, AppState>,
    /// The record's `sync_requests` when this sync started: a request up to it is answered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests_served: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppState {
    /// The commit whose rendering is desired (the last good one).
    pub commit: Option<String>,
    pub error: Option<String>,
    /// A removal of the app from some of its clusters that waits for approval, is under way or
    /// halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<String>,
    /// How the app rendered at the last sync: `manifests`, `kustomize` or `helm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renderer: Option<String>,
}

/// What `Sources::add` takes.
#[derive(Debug, Clone)]
pub struct NewSource {
    pub name: String,
    pub url: String,
    /// Branch, tag, commit, `refs/…` or `HEAD`; empty means `HEAD` (the remote's default
    /// branch).
    pub reference: String,
    pub path: String,
    pub interval: Duration,
    pub secret_file: Option<String>,
    pub webhook_secret_file: Option<String>,
    /// Let Kustomize and Helm renders reach the network.
    pub render_network: bool,
}

/// The sources of one hub, with their sync loops.
#[derive(Debug, Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

/// A handle on the sources that does not keep them (nor what they hold, the store among it)
/// alive: for callbacks of parts the sources themselves hold, such as the rollout engine.
#[derive(Debug, Clone)]
pub struct WeakSources(std::sync::Weak<Inner>);

impl WeakSources {
    /// [`Sources::trigger`], while the sources exist.
    pub fn trigger(&self, name: &str) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| Sources { inner }.trigger(name))
    }
}

#[derive(Debug)]
struct Inner {
    table: Table<SourceRecord>,
    registry: Registry,
    rollouts: Rollouts,
    bundles: Arc<BundleCache>,
    data_dir: PathBuf,
    limits: Limits,
    /// The rendering tools (kubectl kustomize, helm) and their cache.
    tools: Arc<Tools>,
    clock: SharedClock,
    tracker: TaskTracker,
    shutdown: watch::Receiver<bool>,
    /// Per source: wakes its loop (webhook, `source sync`) and serialises its syncs.
    loops: Mutex<HashMap<String, Arc<LoopHandle>>>,
    /// Sources this replica is removing: [`Sources::follow`] does not start them again.
    removing: Mutex<std::collections::HashSet<String>>,
}

#[derive(Debug, Default)]
struct LoopHandle {
    wake: Notify,
    sync: tokio::sync::Mutex<()>,
    stop: Notify,
    /// The newest `sync_requests` of the record seen here.
    requests_seen: std::sync::atomic::AtomicU64,
}

impl SourceRecord {
    fn spec(&self) -> Result<SourceSpec, HubError> {
        let reference = GitRef::parse(&self.reference)?;
        let auth = match &self.secret_file {
            Some(p) => Some(Auth::from_secret_file(std::path::Path::new(p))?),
            None => None,
        };
        Ok(SourceSpec {
            name: self.name.clone(),
            url: self.url.clone(),
            reference,
            path: self.path.clone(),
            auth,
        })
    }
}

impl Sources {
    /// The sources of a hub; `limits` bound what rendering reads and produces.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: SharedStore,
        registry: Registry,
        rollouts: Rollouts,
        bundles: Arc<BundleCache>,
        data_dir: PathBuf,
        clock: SharedClock,
        tracker: TaskTracker,
        shutdown: watch::Receiver<bool>,
        limits: Limits,
        tools: Arc<Tools>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                table: Table::new(store, SOURCES),
                registry,
                rollouts,
                bundles,
                data_dir,
                limits,
                tools,
                clock,
                tracker,
                shutdown,
                loops: Mutex::new(HashMap::new()),
                removing: Mutex::default(),
            }),
        }
    }

    pub async fn get(&self, name: &str) -> Result<SourceRecord, HubError> {
        match self.inner.table.get(name).await? {
            Some(v) => Ok(v.value),
            None => Err(HubError::UnknownSource(name.to_string())),
        }
    }

    /// The rendering tools of this hub.
    pub fn tools(&self) -> &Arc<Tools> {
        &self.inner.tools
    }

    pub async fn list(&self) -> Result<Vec<SourceRecord>, HubError> {
        self.inner.table.values().await
    }

    /// Adds a source (validated first: name, URL, ref, path, secret file) and starts its loop.
    pub async fn add(&self, new: NewSource) -> Result<SourceRecord, HubError> {
        let NewSource {
            name,
            url,
            reference,
            path,
            interval,
            secret_file,
            webhook_secret_file,
            render_network,
        } = new;
        let (name, url, reference) = (name.as_str(), url.as_str(), reference.as_str());
        let path = crate::git::normalize_path(&path)?;
        let rec = SourceRecord {
            name: name.to_string(),
            url: url.to_string(),
            reference: if reference.is_empty() {
                "HEAD".into()
            } else {
                reference.to_string()
            },
            path,
            interval_ms: interval.max(Duration::from_secs(1)).as_millis() as u64,
            secret_file,
            webhook_secret_file,
            created_ms: unix_ms(self.inner.clock.now()),
            sync_requests: 0,
            render_network,
            status: SourceStatus::default(),
        };
        crate::git::validate_name(name)?;
        rec.spec()?.validate()?;
        if self.inner.table.swap(name, None, &rec).await?.is_none() {
            return Err(HubError::SourceExists(name.to_string()));
        }
        self.start(name);
        Ok(rec)
    }

    /// What removing a source would take away: per app it owns, the clusters that run it.
    pub async fn removal_plan(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<String>>, HubError> {
        let rec = self.get(name).await?;
        let mut plan = BTreeMap::new();
        for app in rec.status.apps.keys() {
            if let Ok(r) = self.inner.rollouts.get(app).await
                && r.source == name
            {
                let running = r
                    .known_clusters()
                    .iter()
                    .filter(|c| r.desired_for(*c).is_some_and(|e| !e.options.orphan))
                    .map(|c| self.inner.rollouts.name_of(c))
                    .collect();
                plan.insert(app.clone(), running);
            }
        }
        Ok(plan)
    }

    /// Removes a source: stops its loop and forgets it; every app it defined leaves its
    /// clusters through a staged removal (approved by `who`, who confirmed it), deleting the
    /// apps' objects unless `keep_resources`.
    pub async fn remove(
        &self,
        name: &str,
        keep_resources: bool,
        who: &str,
    ) -> Result<SourceRecord, HubError> {
        let rec = self.get(name).await?;
        self.removing().insert(name.to_string());
        self.stop(name);
        let outcome = self.retire_all(name, &rec, keep_resources, who).await;
        self.removing().remove(name);
        outcome?;
        let _ = std::fs::remove_dir_all(Mirror::dir_for(&self.inner.data_dir, name));
        Ok(rec)
    }

    fn removing(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.inner
            .removing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Retires every app of source `name` and deletes its record.
    async fn retire_all(
        &self,
        name: &str,
        rec: &SourceRecord,
        keep_resources: bool,
        who: &str,
    ) -> Result<(), HubError> {
        let clusters = self.cluster_infos().await?;
        let reason = format!("source {name} was removed");
        for app in rec.status.apps.keys() {
            let why = Retirement {
                source: name,
                cause: Cause {
                    revision: "",
                    reason: &reason,
                    keep_resources,
                    approved_by: Some(who),
                },
                clusters: &clusters,
            };
            self.inner.rollouts.retire(app, why).await?;
        }
        self.inner.table.delete(name).await?;
        Ok(())
    }

    /// Every cluster that is not revoked, with its labels.
    async fn cluster_infos(&self) -> Result<Vec<ClusterInfo>, HubError> {
        Ok(self.inner.registry.cluster_infos())
    }

    /// Starts the loops of every stored source (hub start).
    pub async fn start_all(&self) -> Result<(), HubError> {
        for s in self.list().await? {
            self.start(&s.name);
        }
        Ok(())
    }

    pub fn downgrade(&self) -> WeakSources {
        WeakSources(Arc::downgrade(&self.inner))
    }

    /// Asks for a sync of `name` now (webhook): its loop here wakes, and on a replica that
    /// does not lead, the request is written to the source's record so that the leader (and
    /// every other replica) syncs too. Unknown names are ignored.
    pub fn request(&self, name: &str) -> bool {
        if !self.trigger(name) {
            return false;
        }
        if !self.inner.rollouts.leads() {
            let this = self.clone();
            let name = name.to_string();
            self.inner.tracker.spawn(async move {
                if let Err(e) = this.write_request(&name).await {
                    tracing::warn!(source = %name, error = %e, "could not pass the sync request on to the leading replica");
                }
            });
        }
        true
    }

    /// Changes the record of source `name` with `f` (read-modify-write); the record after.
    async fn update(
        &self,
        name: &str,
        mut f: impl FnMut(&mut SourceRecord),
    ) -> Result<SourceRecord, HubError> {
        let missing = || HubError::UnknownSource(name.to_string());
        let (rec, ()) = self
            .inner
            .table
            .update(name, missing, |rec| {
                f(rec);
                Ok(())
            })
            .await?;
        Ok(rec)
    }

    /// Counts a sync request in the record of `name`; the count it reached.
    async fn write_request(&self, name: &str) -> Result<u64, HubError> {
        let count = self
            .update(name, |rec| rec.sync_requests += 1)
            .await?
            .sync_requests;
        // Asked here, synced here already: the watch's echo of it wakes nothing again.
        if let Some(h) = self.handle(name) {
            h.requests_seen
                .fetch_max(count, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(count)
    }

    /// Wakes a source's loop here. Unknown names are ignored.
    pub fn trigger(&self, name: &str) -> bool {
        match self.handle(name) {
            Some(h) => {
                h.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// Wakes every source's loop: the set of clusters or their labels changed, so targets and
    /// renderings may have too.
    pub fn trigger_all(&self) {
        for h in self
            .inner
            .loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            h.wake.notify_one();
        }
    }

    /// Syncs a source now and returns its record afterwards. On a replica that does not lead,
    /// this replica renders the commit for its own sessions and the leading replica is asked
    /// to sync (it alone decides what the rendering starts): the answer comes once its sync
    /// has saved the source's status, or after [`REQUEST_WAIT`] with the record as it is then.
    pub async fn sync_now(&self, name: &str) -> Result<SourceRecord, HubError> {
        self.get(name).await?;
        let h = self.handle(name).unwrap_or_else(|| self.start(name));
        if self.inner.rollouts.leads() {
            let _guard = h.sync.lock().await;
            self.sync_once(name).await?;
            return self.get(name).await;
        }
        let asked = self.write_request(name).await?;
        {
            let _guard = h.sync.lock().await;
            self.sync_once(name).await?;
        }
        let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
        loop {
            let rec = self.get(name).await?;
            if rec.status.requests_served >= asked || tokio::time::Instant::now() >= deadline {
                return Ok(rec);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn handle(&self, name: &str) -> Option<Arc<LoopHandle>> {
        self.inner
            .loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Starts the loop of source `name`, unless it runs already.
    fn start(&self, name: &str) -> Arc<LoopHandle> {
        let h = {
            let mut loops = self.inner.loops.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = loops.get(name) {
                return running.clone();
            }
            let h = Arc::new(LoopHandle::default());
            loops.insert(name.to_string(), h.clone());
            h
        };
        let this = self.clone();
        let name = name.to_string();
        let handle = h.clone();
        self.inner.tracker.spawn(async move {
            let mut shutdown = this.inner.shutdown.clone();
            loop {
                let interval = match this.get(&name).await {
                    Ok(r) => Duration::from_millis(r.interval_ms),
                    Err(_) => return,
                };
                {
                    let _guard = handle.sync.lock().await;
                    if let Err(e) = this.sync_once(&name).await {
                        tracing::warn!(source = %name, error = %e, "sync failed");
                    }
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = handle.stop.notified() => return,
                    _ = handle.wake.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        h
    }

    /// Stops the loop of source `name`, if it runs; true if it did.
    fn stop(&self, name: &str) -> bool {
        let h = self
            .inner
            .loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        h.map(|h| h.stop.notify_one()).is_some()
    }

    /// Follows what other hub replicas sharing the store do to `/sources/`, until `shutdown`:
    /// a source added through another replica gets its loop here too (so this replica renders
    /// the bundles its sessions fetch), and one removed there stops here. A failed watch lists
    /// the sources again. Run only with a shared store.
    pub async fn follow(self, shutdown: watch::Receiver<bool>) {
        let store = self.inner.table.store().clone();
        let on_list = |items: Vec<crate::store::KeyValue>, _| {
            let names: std::collections::HashSet<String> = items
                .iter()
                .map(|kv| kv.key[SOURCES.len()..].to_string())
                .collect();
            for name in &names {
                if !self.removing().contains(name) {
                    self.start(name);
                }
            }
            let running: Vec<String> = self
                .inner
                .loops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            for name in running.iter().filter(|n| !names.contains(*n)) {
                self.stop(name);
            }
        };
        let on_event = |ev: WatchEvent| match ev {
            WatchEvent::Put(kv) => {
                let name = &kv.key[SOURCES.len()..];
                // Only a source's creation starts a loop: its status saves do not bring back
                // one stopped here.
                let created = kv.create_revision == kv.mod_revision;
                if created && self.handle(name).is_none() && !self.removing().contains(name) {
                    tracing::info!(source = %name, "source added on another replica; polling it here too");
                    self.start(name);
                }
                // A sync asked through another replica: sync here too.
                let requests = self
                    .inner
                    .table
                    .decode(&kv)
                    .map_or(0, |v| v.value.sync_requests);
                if let Some(h) = self.handle(name)
                    && h.requests_seen
                        .fetch_max(requests, std::sync::atomic::Ordering::Relaxed)
                        < requests
                {
                    tracing::info!(source = %name, "sync asked through another replica");
                    h.wake.notify_one();
                }
            }
            WatchEvent::Delete { key, .. } => {
                let name = &key[SOURCES.len()..];
                if self.stop(name) {
                    tracing::info!(source = %name, "source removed on another replica; stopped polling it here");
                }
            }
        };
        crate::store::follow::follow(
            &*store,
            SOURCES,
            "the sources",
            None,
            shutdown,
            on_list,
            on_event,
        )
        .await;
    }

    /// Saves the status of a source (compare-and-swap on the record); only the leading replica
    /// does (the others' syncs render, and decide nothing).
    async fn save_status(&self, name: &str, status: SourceStatus) -> Result<(), HubError> {
        if !self.inner.rollouts.leads() {
            return Ok(());
        }
        match self.update(name, |rec| rec.status = status.clone()).await {
            Ok(_) | Err(HubError::UnknownSource(_)) => Ok(()), // removed meanwhile
            Err(e) => Err(e),
        }
    }

    /// One sync: fetch, load, render, update desired state — traced as `flotilla.sync` with
    /// `flotilla.fetch`, `flotilla.render` and one `flotilla.offer` per app below it.
    async fn sync_once(&self, name: &str) -> Result<(), HubError> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "flotilla.sync",
            source = %name,
            revision = tracing::field::Empty,
            changed = tracing::field::Empty
        );
        self.sync_traced(name).instrument(span).await
    }

    async fn sync_traced(&self, name: &str) -> Result<(), HubError> {
        let rec = self.get(name).await?;
        // Every replica fetches and renders (each serves bundles from its own cache); only the
        // leading one offers, retires and records how the sync went.
        let leads = self.inner.rollouts.leads();
        let mut status = rec.status.clone();
        status.requests_served = rec.sync_requests;
        status.last_fetch_ms = unix_ms(self.inner.clock.now());
        let spec = match rec.spec() {
            Ok(s) => s,
            Err(e) => {
                status.error = Some(e.to_string());
                return self.save_status(name, status).await;
            }
        };
        let data_dir = self.inner.data_dir.clone();
        let fetch_span = tracing::info_span!("flotilla.fetch", source = %name);
        let fetched = blocking_in("sync", fetch_span, move || {
            let mirror = Mirror::open_or_init(&data_dir, &spec)?;
            let outcome = mirror.fetch(&spec)?;
            let tree = mirror.tree(&outcome.commit, &spec.path)?;
            Ok::<_, crate::git::GitError>((outcome, tree))
        })
        .await?;
        let (outcome, tree) = match fetched {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "fetch failed; keeping the last good revision");
                status.error = Some(e.to_string());
                return self.save_status(name, status).await;
            }
        };
        let commit = outcome.commit.clone();
        tracing::Span::current()
            .record("revision", commit.as_str())
            .record(
                "changed",
                rec.status.commit.as_deref() != Some(commit.as_str()),
            );
        status.commit = Some(commit.clone());
        if rec.status.resolved_ref.is_some() && rec.status.resolved_ref != outcome.resolved_ref {
            tracing::info!(source = %name, reference = %rec.reference, from = ?rec.status.resolved_ref, to = ?outcome.resolved_ref, "the reference resolves to another remote ref now (the default branch moved)");
        }
        status.resolved_ref = outcome.resolved_ref.clone();
        if outcome.rewritten {
            tracing::warn!(source = %name, %commit, previous = ?outcome.previous, "history was rewritten upstream");
        }

        let clusters = self.cluster_infos().await?;
        let limits = self.inner.limits;
        let env = RenderEnv {
            tools: self.inner.tools.clone(),
            network: rec.render_network,
        };
        let bundles = self.inner.bundles.clone();
        let infos = clusters.clone();
        let render_span = tracing::info_span!("flotilla.render", source = %name, revision = %commit, clusters = clusters.len());
        let rendered = blocking_in("render", render_span, move || {
            render_all(&tree, &clusters, &limits, &env, &bundles)
        })
        .await?;
        let (per_app, config_error) = match rendered {
            Ok(x) => (x, None),
            Err(e) => (BTreeMap::new(), Some(e)),
        };
        if let Some(e) = config_error {
            tracing::warn!(source = %name, %commit, error = %e, "invalid configuration; keeping the last good revision");
            status.error = Some(e);
            return self.save_status(name, status).await;
        }
        if !leads {
            tracing::debug!(source = %name, %commit, "rendered for the sessions here; the leading replica offers it");
            return Ok(());
        }

        // Per app: offer the new rendering to the rollout engine, or keep the last good one on
        // a render error.
        let mut offers = Vec::new();
        let mut apps = BTreeMap::new();
        for (app, result) in per_app {
            let mut st = status.apps.get(&app).cloned().unwrap_or_default();
            match result {
                Ok(r) => {
                    st.error = None;
                    st.renderer = Some(r.renderer.as_str().to_owned());
                    offers.push(AppOffer {
                        app: app.clone(),
                        render: Render::of_groups(&commit, r.entries),
                        pipeline_name: r.pipeline_name,
                        pipeline: r.pipeline,
                        max_removal: r.max_removal,
                    });
                }
                Err(e) => {
                    tracing::warn!(source = %name, %app, %commit, error = %e, "render failed; keeping the last good revision");
                    st.error = Some(e);
                }
            }
            apps.insert(app, st);
        }
        let gone: Vec<(String, AppState)> = status
            .apps
            .iter()
            .filter(|(a, _)| !apps.contains_key(*a))
            .map(|(a, st)| (a.clone(), st.clone()))
            .collect();
        for (app, mut st) in gone {
            let why = Retirement {
                source: name,
                cause: Cause {
                    revision: &commit,
                    reason: "the app is no longer in flotilla.yaml",
                    keep_resources: false,
                    approved_by: None,
                },
                clusters: &infos,
            };
            self.inner.rollouts.retire(&app, why).await?;
            // Listed until every cluster has let go of it.
            if let Some(rm) = self.inner.rollouts.removal_of(&app, name).await? {
                st.removal = Some(rm.note(&app));
                st.error = None;
                apps.insert(app, st);
            }
        }
        for (app, result) in self.inner.rollouts.offer(name, offers, &infos).await {
            let st = apps.get_mut(&app).expect("offered apps are listed");
            match result {
                Ok(()) => st.commit = Some(commit.clone()),
                Err(e) => {
                    tracing::warn!(source = %name, %app, %commit, error = %e, "revision not promoted; keeping the last good revision");
                    if self
                        .inner
                        .rollouts
                        .owner(&app)
                        .await?
                        .is_some_and(|o| o != name)
                    {
                        // Another source's app: nothing of it is this source's.
                        st.commit = None;
                    }
                    st.error = Some(e);
                }
            }
            st.removal = self.inner.rollouts.removal_note(&app, name).await?;
        }
        status.apps = apps;
        status.error = None;
        self.save_status(name, status).await
    }
}

/// Runs the blocking `f` on the blocking pool inside `span`; a task that panicked is a
/// [`HubError::Task`] naming `what`.
async fn blocking_in<T: Send + 'static>(
    what: &'static str,
    span: tracing::Span,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|source| HubError::Task { what, source })
}

/// An app rendered for its targeted clusters, with the pipeline that promotes it.
struct Rendered {
    /// How the app's own directory renders.
    renderer: DirKind,
    entries: Groups,
    pipeline_name: Option<String>,
    pipeline: PipelineConfig,
    max_removal: CountOrPercent,
}

type AppResult = Result<Rendered, String>;

/// Loads the config and renders every app for every targeted cluster; identical renderings
/// share one bundle. `Err` only for a config that cannot be loaded at all.
fn render_all(
    tree: &crate::git::CommitTree,
    clusters: &[ClusterInfo],
    limits: &Limits,
    env: &RenderEnv,
    bundles: &BundleCache,
) -> Result<BTreeMap<String, AppResult>, String> {
    let config = load_config(tree, "", limits).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (app, app_config) in &config.apps {
        let max_removal = app_config.effective_max_removal(&config);
        let options = crate::state::desired::AppOptions {
            orphan: false,
            disable_prune: !app_config.prune,
            disable_self_heal: !app_config.self_heal,
            force_conflicts: app_config.force,
            health_timeout_ms: app_config.effective_health_timeout(&config).as_millis() as u64,
            create_namespace: app_config.create_namespace,
            namespace: app_config.namespace.clone().unwrap_or_default(),
        };
        let result = (|| {
            let manifests = AppManifests::load_with(tree, &config, app, limits, env.clone())
                .map_err(|e| e.to_string())?;
            // Clusters whose rendering depends on the same things share it: rendered and
            // stored once per distinct key, not once per cluster, and kept as one entry per
            // distinct bundle with its clusters (10,000 clusters alike: one entry).
            let mut entries = Groups::default();
            let mut group_of: HashMap<crate::render::RenderKey, usize> = HashMap::new();
            for cluster in targeted_clusters(&config, app, clusters) {
                let key = manifests.render_key(cluster);
                if let Some(&i) = key.as_ref().and_then(|k| group_of.get(k)) {
                    entries.add_to(i, cluster.id);
                    continue;
                }
                let r = manifests
                    .render(cluster)
                    .map_err(|e| format!("cluster {}: {e}", cluster.name))?;
                let b = bundles.put(&r.canonical).map_err(|e| e.to_string())?;
                let entry = AppEntry {
                    app: app.clone(),
                    revision: String::new(),
                    bundle_digest: b.digest,
                    bundle_size: b.size,
                    trace_context: String::new(),
                    depends_on: app_config.depends_on.clone(),
                    options: options.clone(),
                };
                let i = entries.add(cluster.id, entry);
                if let Some(k) = key {
                    group_of.insert(k, i);
                }
            }
            let (pipeline_name, pipeline) = match &app_config.pipeline {
                Some(name) => (Some(name.clone()), config.pipelines[name].clone()),
                // No pipeline: one implicit stage with every cluster at once, halt on failure.
                None => (
                    None,
                    PipelineConfig {
                        stages: Vec::new(),
                        health_timeout: app_config.effective_health_timeout(&config),
                        on_failure: OnFailure::Halt,
                        failure_threshold: CountOrPercent::Count(1),
                        max_removal: None,
                    },
                ),
            };
            Ok(Rendered {
                renderer: manifests.kind(),
                entries,
                pipeline_name,
                pipeline,
                max_removal,
            })
        })();
        out.insert(app.clone(), result);
    }
    Ok(out)
}
