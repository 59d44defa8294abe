//! Reconcile: turns the bundles the agent holds into its cluster's state and says how that
//! state is doing.
//!
//! One task owns the cluster side. It starts from the last desired state saved on disk, so it
//! keeps reconciling — and self-healing — while the hub is unreachable. Per app, in dependency
//! order: wait until the apps it depends on are healthy; record the union of old and new objects
//! in the app's in-cluster inventory; server-side apply the objects (CRDs first, waiting until
//! they are Established, then Namespaces, other cluster-scoped objects, namespaced ones); when
//! every object applied, prune what left the bundle and write the new inventory. Health is
//! polled until the app settles; drift is checked periodically by dry-run apply. Statuses go to
//! the [`status::StatusBoard`], which the session drains to the hub. With `createNamespace` the
//! app's namespace is created first (`namespace`); Helm hooks run before and after the apply
//! (`hooks`).
//!
//! This module is the loop and its I/O; an app's status follows purely from its run record
//! (`app`).

mod app;
pub mod drift;
pub mod health;
pub mod hooks;
pub mod inventory;
pub mod kubeapi;
mod namespace;
pub mod objects;
pub mod status;
#[cfg(all(test, feature = "simulated"))]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_proto::state::{ObjectHealth, Phase};
use flotilla_proto::telemetry::traces;
use flotilla_proto::v1::{AppDesired, DesiredState};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

use crate::AgentStatus;
use crate::bundles::BundleStore;
use crate::metrics::AgentMetrics;
use app::AppRun;
pub use app::MAX_WORST;
use health::{Assessment, assess};
use hooks::{HookCtx, HookRun, Progress, Stage};
use inventory::{Inventories, Inventory};
use kubeapi::{Kube, ObjError};
use objects::{ObjKey, parse_bundle, prune_disabled};
use status::StatusBoard;

/// How the reconciler behaves.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Namespace of the agent, where app inventories are kept.
    pub namespace: String,
    /// How often live objects are compared with the bundle (±10% jitter).
    pub drift_interval: Duration,
    /// How often an app that has not settled is re-assessed.
    pub health_poll: Duration,
    /// Health timeout for apps whose options set none.
    pub default_health_timeout: Duration,
    /// How long an applied CRD may take to become Established before its resources fail.
    pub crd_timeout: Duration,
    /// "simulated" or "kube", for logs and messages.
    pub backend: &'static str,
    /// This cluster's name, for span attributes.
    pub cluster_id: String,
    /// Record reconcile and drift spans (when traces are exported).
    pub trace: bool,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            namespace: "flotilla-system".into(),
            drift_interval: Duration::from_secs(60),
            health_poll: Duration::from_secs(1),
            default_health_timeout: Duration::from_secs(600),
            crd_timeout: Duration::from_secs(60),
            backend: "kube",
            cluster_id: String::new(),
            trace: false,
        }
    }
}

/// `flotilla.agent.reconcile` (child of the hub's `flotilla.deliver`, through the trace context
/// in the desired state) and its `flotilla.agent.health_wait`, open until the app settles.
struct AppTrace {
    root: tracing::Span,
    wait: Option<tracing::Span>,
}

impl AppTrace {
    fn start(cluster: &str, d: &AppDesired) -> Option<Self> {
        if d.trace_context.is_empty() || !traces::enabled() {
            return None;
        }
        let root = tracing::info_span!(
            parent: None,
            "flotilla.agent.reconcile",
            cluster.id = %cluster,
            app = %d.app,
            revision = %d.revision,
        );
        traces::set_remote_parent(&root, &d.trace_context);
        Some(Self { root, wait: None })
    }
}

// The spans of a run are ended here, beside the loop, so that `app` stays free of side effects.
impl AppRun {
    /// Ends the reconcile span once the app settled: healthy, or failed.
    fn end_trace_if_settled(&mut self) {
        let Some(t) = &self.trace else {
            return;
        };
        let failed = self.phase() == Phase::Failed;
        if !(self.healthy() || failed) {
            return;
        }
        let span = t.wait.as_ref().unwrap_or(&t.root);
        if failed {
            let why = self.message("");
            span.in_scope(
                || tracing::warn!(app = %self.desired.app, reason = %why, "reconcile failed"),
            );
            traces::error(&t.root, why);
        } else {
            span.in_scope(|| tracing::info!(app = %self.desired.app, "healthy"));
        }
        self.trace = None;
    }
}

/// Sorts apps so that every app comes after the apps it depends on (name order otherwise).
fn dependency_order(apps: &BTreeMap<String, AppRun>) -> Vec<String> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::with_capacity(apps.len());
    while order.len() < apps.len() {
        let before = order.len();
        for (name, run) in apps {
            if !placed.contains(name)
                && run
                    .desired
                    .depends_on
                    .iter()
                    .all(|d| placed.contains(d) || !apps.contains_key(d))
            {
                placed.insert(name.clone());
                order.push(name.clone());
            }
        }
        if order.len() == before {
            // A cycle (the hub refuses those): place the rest by name.
            order.extend(apps.keys().filter(|n| !placed.contains(*n)).cloned());
            break;
        }
    }
    order
}

/// The reconcile task.
pub struct Reconciler {
    kube: Kube,
    inventories: Inventories,
    cfg: ReconcileConfig,
    bundles: BundleStore,
    board: StatusBoard,
    agent_status: watch::Sender<AgentStatus>,
    apps: BTreeMap<String, AppRun>,
    generation: u64,
    /// Whether inventories of apps that are not desired were looked for since start.
    orphans_checked: bool,
    next_drift: Instant,
    metrics: std::sync::Arc<AgentMetrics>,
}

impl Reconciler {
    pub fn new(
        client: kube::Client,
        cfg: ReconcileConfig,
        bundles: BundleStore,
        board: StatusBoard,
        agent_status: watch::Sender<AgentStatus>,
    ) -> Self {
        let inventories = Inventories::new(client.clone(), &cfg.namespace);
        let next_drift = Instant::now() + jittered(cfg.drift_interval);
        Self {
            kube: Kube::new(client),
            inventories,
            cfg,
            bundles,
            board,
            agent_status,
            apps: BTreeMap::new(),
            generation: 0,
            orphans_checked: false,
            next_drift,
            metrics: Default::default(),
        }
    }

    /// Reports into `metrics` (by default into a private set nobody reads).
    pub fn with_metrics(mut self, metrics: std::sync::Arc<AgentMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reconciles whatever `desired` holds (nothing until it holds a state) until `shutdown`.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Option<DesiredState>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tracing::info!(backend = self.cfg.backend, namespace = %self.cfg.namespace, "reconciler started");
        let mut desired_open = true;
        // `changed()` marks the value seen, so remember that it fired.
        let mut fresh = true;
        loop {
            if std::mem::take(&mut fresh) {
                let d = desired.borrow_and_update().clone();
                if let Some(d) = d {
                    self.set_desired(d).await;
                }
            }
            self.step().await;
            if Instant::now() >= self.next_drift {
                self.check_drift().await;
                self.next_drift = Instant::now() + jittered(self.cfg.drift_interval);
                self.step().await;
            }
            self.publish();
            let wake = if self.apps.values().all(AppRun::settled) {
                self.next_drift
            } else {
                (Instant::now() + self.cfg.health_poll).min(self.next_drift)
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                r = desired.changed(), if desired_open => match r {
                    Ok(()) => fresh = true,
                    Err(_) => desired_open = false,
                },
                _ = sleep_until(wake) => {}
            }
        }
    }

    /// Takes a new desired state: forgets and prunes apps no longer desired, reads the bundles
    /// of new or changed apps.
    async fn set_desired(&mut self, d: DesiredState) {
        self.generation = d.generation;
        // Apps to let go of without deleting anything (a removal that keeps resources).
        let released: BTreeSet<String> = d
            .apps
            .iter()
            .filter(|a| a.options.as_ref().is_some_and(|o| o.orphan))
            .map(|a| a.app.clone())
            .collect();
        let wanted: BTreeSet<&str> = d
            .apps
            .iter()
            .map(|a| a.app.as_str())
            .filter(|a| !released.contains(*a))
            .collect();
        let gone: Vec<String> = self
            .apps
            .keys()
            .filter(|a| !wanted.contains(a.as_str()))
            .cloned()
            .collect();
        for app in gone {
            let run = self.apps.remove(&app).expect("listed");
            let prune = !run.opts().disable_prune && !released.contains(&app);
            self.remove_app(&app, prune).await;
        }
        if !self.orphans_checked {
            match self.inventories.apps().await {
                Ok(found) => {
                    self.orphans_checked = true;
                    for app in found.iter().filter(|a| !wanted.contains(a.as_str())) {
                        tracing::info!(app = %app, "inventory of an app that is no longer desired");
                        self.remove_app(app, !released.contains(app)).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list app inventories; will retry"),
            }
        }
        for a in d.apps.into_iter().filter(|a| !released.contains(&a.app)) {
            if let Some(run) = self.apps.get_mut(&a.app) {
                let mut same = run.desired.clone();
                same.trace_context.clone_from(&a.trace_context);
                if same == a {
                    // At most the trace context changed: nothing to reconcile again.
                    run.desired.trace_context = a.trace_context;
                    continue;
                }
            }
            let parsed = self
                .bundles
                .read(&a.bundle_digest)
                .map_err(|e| e.to_string())
                .and_then(|bytes| parse_bundle(&bytes).map_err(|e| e.to_string()));
            if let Err(e) = &parsed {
                tracing::error!(app = %a.app, digest = %a.bundle_digest, error = %e, "bundle unreadable");
            }
            let (objects, hooks) = match parsed {
                Ok((objects, hooks)) => (Ok(objects), hooks),
                Err(e) => (Err(e), Vec::new()),
            };
            let healed = self.apps.get(&a.app).map(|r| r.healed).unwrap_or(0);
            let mut run = AppRun::new(a.clone(), objects);
            run.hooks = HookRun::new(hooks);
            run.healed = healed;
            if self.cfg.trace {
                run.trace = AppTrace::start(&self.cfg.cluster_id, &a);
            }
            self.apps.insert(a.app.clone(), run);
        }
    }

    /// Deletes an app's objects (when `prune`) and its inventory; tells the hub it is gone.
    async fn remove_app(&mut self, app: &str, prune: bool) {
        let inv = match self.inventories.load(app).await {
            Ok(inv) => inv,
            Err(e) => {
                tracing::warn!(app, error = %e, "cannot read the inventory of a removed app; its objects stay");
                return;
            }
        };
        let mut kept = BTreeSet::new();
        let mut hooks_left = BTreeSet::new();
        let mut namespaces = BTreeSet::new();
        let mut notes = Vec::new();
        if prune {
            kept = self.prune(app, inv.objects.iter().cloned().collect()).await;
            hooks_left = hooks::remove_all(&mut self.kube, app, &inv).await;
            if kept.is_empty() && hooks_left.is_empty() {
                (namespaces, notes) = namespace::release(
                    &mut self.kube,
                    &self.inventories,
                    app,
                    &inv,
                    &self.cfg.namespace,
                )
                .await;
            } else {
                // Deleting the namespace would delete what could not be pruned: later.
                namespaces = inv.namespaces.clone();
            }
        }
        if kept.is_empty() && hooks_left.is_empty() && namespaces.is_empty() {
            if let Err(e) = self.inventories.remove(app).await {
                tracing::warn!(app, error = %e, "cannot delete the inventory");
            }
        } else {
            let mut inv = Inventory {
                objects: kept,
                namespaces,
                ..inv
            };
            inv.hooks.created = hooks_left;
            let _ = self.inventories.save(app, &inv).await;
        }
        tracing::info!(app, pruned = prune, "app removed");
        if notes.is_empty() {
            self.board.remove(self.generation, app);
        } else {
            let message = format!("no longer desired; objects pruned; {}", notes.join("; "));
            self.board.remove_saying(self.generation, app, message);
        }
    }

    /// Deletes `stale` objects in reverse apply order, sparing those that opt out; returns the
    /// ones whose deletion failed (they stay in the inventory for the next attempt).
    async fn prune(&mut self, app: &str, mut stale: Vec<ObjKey>) -> BTreeSet<ObjKey> {
        stale.sort_by(|a, b| (b.phase(), b).cmp(&(a.phase(), a)));
        let mut failed = BTreeSet::new();
        for key in stale {
            match self.kube.get(&key).await {
                Ok(None) => continue,
                Ok(Some(live)) if prune_disabled(&live) => {
                    tracing::info!(app, object = %key, "left in place: flotilla.io/prune: disabled");
                    continue;
                }
                Ok(Some(_)) => {}
                Err(ObjError::UnknownKind { .. }) => continue,
                Err(e) => {
                    tracing::warn!(app, object = %key, error = %e, "prune: cannot read");
                    failed.insert(key);
                    continue;
                }
            }
            match self.kube.delete(&key).await {
                Ok(_) => {
                    tracing::info!(app, object = %key, "pruned");
                    if key.is_crd() {
                        self.kube.forget(&key);
                    }
                }
                Err(e) => {
                    tracing::warn!(app, object = %key, error = %e, "prune failed");
                    failed.insert(key);
                }
            }
        }
        failed
    }

    /// One pass over the apps in dependency order: apply what needs it, assess the rest.
    async fn step(&mut self) {
        for name in dependency_order(&self.apps) {
            let waiting = self.dependency_wait(&name);
            let run = self.apps.get_mut(&name).expect("ordered from the map");
            if run.objects.is_err() || run.hooks.failed.is_some() {
                continue;
            }
            if !run.applied_current() || run.blocked.is_some() {
                run.waiting = waiting;
                if run.waiting.is_none() {
                    self.apply_app(&name).await;
                }
                continue;
            }
            if !run.settled() {
                self.assess(&name).await;
            }
            self.post_hooks(&name).await;
        }
    }

    /// Runs the post-install/post-upgrade hooks of `name` once its objects are healthy.
    async fn post_hooks(&mut self, name: &str) {
        let default_timeout = self.cfg.default_health_timeout;
        let run = self.apps.get_mut(name).expect("present");
        if !run.hooks.post_pending() || !run.objects_healthy() {
            return;
        }
        let mut inv = match self.inventories.load(name).await {
            Ok(inv) => inv,
            Err(e) => {
                run.hooks.wait = Some(format!("cannot read the app's inventory: {e}"));
                return;
            }
        };
        let mut cx = HookCtx {
            kube: &mut self.kube,
            inventories: &self.inventories,
            app: name,
            revision: &run.desired.revision,
            digest: &run.desired.bundle_digest,
            timeout: run.health_timeout(default_timeout),
        };
        run.hooks.advance(&mut cx, &mut inv, Stage::Post).await;
        run.end_trace_if_settled();
    }

    /// Why `name` must wait: a dependency that is not desired here, or not healthy yet.
    fn dependency_wait(&self, name: &str) -> Option<String> {
        let run = self.apps.get(name)?;
        for dep in &run.desired.depends_on {
            match self.apps.get(dep) {
                None => {
                    return Some(format!(
                        "waiting for app {dep}, which is not desired on this cluster"
                    ));
                }
                Some(d) if !d.healthy() => {
                    return Some(format!(
                        "waiting for app {dep} to be healthy (it is {})",
                        d.app_health()
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Applies the desired revision of `name` (see the module doc for the order of things).
    async fn apply_app(&mut self, name: &str) {
        let run = self.apps.get_mut(name).expect("present");
        let objs = run.objs().to_vec();
        let desired = run.desired.clone();
        let opts = run.opts();
        run.notes.clear();
        let started = Instant::now();
        let span = match &run.trace {
            Some(t) => tracing::info_span!(
                parent: &t.root,
                "flotilla.agent.apply",
                app = name,
                objects = objs.len(),
                failed = tracing::field::Empty,
            ),
            None => tracing::Span::none(),
        };
        let mut old = match self.inventories.load(name).await {
            Ok(inv) => inv,
            Err(e) => {
                run.blocked = Some(format!("cannot read the app's inventory: {e}"));
                return;
            }
        };
        if let Err(e) = namespace::ensure(
            &mut self.kube,
            &self.inventories,
            name,
            &opts,
            &objs,
            &mut old,
        )
        .await
        {
            run.blocked = Some(e);
            return;
        }
        run.blocked = None;
        // The pre-install/pre-upgrade hooks, done before anything else of the bundle.
        let mut cx = HookCtx {
            kube: &mut self.kube,
            inventories: &self.inventories,
            app: name,
            revision: &desired.revision,
            digest: &desired.bundle_digest,
            timeout: run.health_timeout(self.cfg.default_health_timeout),
        };
        match run.hooks.advance(&mut cx, &mut old, Stage::Pre).await {
            Progress::Done => {}
            Progress::Waiting(_) | Progress::Failed(_) => {
                run.end_trace_if_settled();
                return;
            }
        }
        let new_keys: BTreeSet<ObjKey> = objs.iter().map(|o| o.key.clone()).collect();
        let pending = Inventory {
            revision: desired.revision.clone(),
            digest: desired.bundle_digest.clone(),
            objects: old.objects.union(&new_keys).cloned().collect(),
            ..old.clone()
        };
        if let Err(e) = self.inventories.save(name, &pending).await {
            let run = self.apps.get_mut(name).expect("present");
            run.blocked = Some(format!("cannot write the app's inventory: {e}"));
            return;
        }
        let mut errors = BTreeMap::new();
        let mut health = BTreeMap::new();
        let mut crds = Vec::new();
        for obj in &objs {
            if obj.key.phase() > 0 && !crds.is_empty() {
                self.wait_established(&mut crds, &mut errors).await;
            }
            match self
                .kube
                .apply(&obj.key, &obj.value(), opts.force_conflicts, false)
                .await
            {
                Ok(live) => {
                    if obj.key.is_crd() {
                        crds.push(obj.key.clone());
                    }
                    health.insert(obj.key.clone(), assess(&live));
                }
                Err(e) => {
                    tracing::warn!(app = name, object = %obj.key, error = %e, "apply failed");
                    errors.insert(obj.key.clone(), namespace::hint(e, &opts));
                }
            }
        }
        let mut notes = Vec::new();
        let mut keep = new_keys.clone();
        let stale: Vec<ObjKey> = old.objects.difference(&new_keys).cloned().collect();
        if !errors.is_empty() {
            // Prune only after a complete apply: a renamed object must exist before its old
            // name goes. Both stay in the inventory until then.
            keep.extend(stale);
        } else if !stale.is_empty() {
            if opts.disable_prune {
                notes.push(format!(
                    "prune disabled: {} objects removed from the bundle left in the cluster",
                    stale.len()
                ));
            } else {
                let failed = self.prune(name, stale).await;
                if !failed.is_empty() {
                    notes.push(format!("{} objects could not be pruned yet", failed.len()));
                }
                keep.extend(failed);
            }
        }
        let done = Inventory {
            objects: keep,
            ..pending
        };
        let saved = self.inventories.save(name, &done).await;
        let run = self.apps.get_mut(name).expect("present");
        if let Err(e) = saved {
            notes.push(format!("inventory not updated: {e}"));
        }
        tracing::info!(
            app = name,
            revision = %desired.revision,
            objects = objs.len(),
            failed = errors.len(),
            took = ?started.elapsed(),
            "applied"
        );
        self.metrics
            .observe_apply(started.elapsed().as_secs_f64(), errors.is_empty());
        run.blocked = None;
        run.applied_digest = Some(desired.bundle_digest.clone());
        run.applied_at = Some(Instant::now());
        run.apply_errors = errors;
        run.health = health;
        run.timed_out = false;
        run.drift.clear();
        run.notes = notes;
        span.record("failed", run.apply_errors.len());
        if !run.apply_errors.is_empty() {
            traces::error(
                &span,
                format!("{} objects not applied", run.apply_errors.len()),
            );
        }
        drop(span);
        if let Some(t) = run.trace.as_mut() {
            t.wait = Some(tracing::info_span!(
                parent: &t.root,
                "flotilla.agent.health_wait",
                app = name,
            ));
        }
        run.end_trace_if_settled();
    }

    /// Waits until the CRDs just applied are Established (or `crd_timeout` passed; those that
    /// are not become apply errors, and so do their custom resources when applied).
    async fn wait_established(
        &mut self,
        crds: &mut Vec<ObjKey>,
        errors: &mut BTreeMap<ObjKey, ObjError>,
    ) {
        let deadline = Instant::now() + self.cfg.crd_timeout;
        loop {
            let mut pending = Vec::new();
            for key in crds.drain(..) {
                match self.kube.get(&key).await {
                    Ok(Some(live)) if assess(&live).health == ObjectHealth::Current => {}
                    _ => pending.push(key),
                }
            }
            if pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for key in pending {
                    errors.insert(
                        key,
                        ObjError::Api {
                            code: 0,
                            reason: "NotEstablished".into(),
                            message: format!(
                                "not Established within {}",
                                humantime::format_duration(self.cfg.crd_timeout)
                            ),
                        },
                    );
                }
                return;
            }
            *crds = pending;
            sleep(self.cfg.health_poll.min(Duration::from_millis(200))).await;
        }
    }

    /// Reads every applied object of `name` and assesses it; marks the app timed out when it
    /// is still not healthy after its health timeout.
    async fn assess(&mut self, name: &str) {
        let run = self.apps.get(name).expect("present");
        let keys: Vec<ObjKey> = run
            .objs()
            .iter()
            .filter(|o| !run.apply_errors.contains_key(&o.key))
            .map(|o| o.key.clone())
            .collect();
        let mut health = BTreeMap::new();
        for key in keys {
            let a = match self.kube.get(&key).await {
                Ok(Some(live)) => assess(&live),
                Ok(None) => Assessment {
                    health: ObjectHealth::Unknown,
                    reason: "NotFound".into(),
                    message: "the object is not in the cluster".into(),
                },
                Err(e) => Assessment {
                    health: ObjectHealth::Unknown,
                    reason: e.reason().into(),
                    message: e.to_string(),
                },
            };
            health.insert(key, a);
        }
        let default_timeout = self.cfg.default_health_timeout;
        let run = self.apps.get_mut(name).expect("present");
        let was = run.app_health();
        run.health = health;
        let timeout = run.health_timeout(default_timeout);
        if run.objects_healthy() {
            run.timed_out = false;
        } else if run.applied_at.is_some_and(|t| t.elapsed() >= timeout) {
            run.timed_out = true;
        }
        let now = run.app_health();
        if was != now {
            let wait = run.trace.as_ref().and_then(|t| t.wait.clone());
            let _in = wait.as_ref().map(|s| s.enter());
            tracing::info!(app = name, from = %was, to = %now, "app health changed");
        }
        run.end_trace_if_settled();
    }

    /// Compares every applied object with the bundle by dry-run apply; re-applies drifted ones
    /// when self-heal is on. Also re-assesses settled apps and retries failed applies.
    async fn check_drift(&mut self) {
        let names: Vec<String> = self.apps.keys().cloned().collect();
        for name in names {
            let run = self.apps.get_mut(&name).expect("listed");
            if !run.applied_current() || run.objects.is_err() {
                continue;
            }
            if !run.apply_errors.is_empty() {
                // Retry the whole apply: the cause may be gone (a CRD installed, a conflict
                // resolved, the API back).
                run.applied_digest = None;
                continue;
            }
            let objs = run.objs().to_vec();
            let heal = !run.opts().disable_self_heal;
            // What self-heal fixed stays reported until the next revision; what is drifted is
            // what this check finds.
            let mut drift: BTreeMap<ObjKey, (Vec<String>, bool)> = run
                .drift
                .iter()
                .filter(|(_, (_, healed))| *healed)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut healed = 0;
            // Created at the first drifted object: a short trace of its own per check.
            let mut drift_span: Option<tracing::Span> = None;
            let revision = run.desired.revision.clone();
            for obj in &objs {
                let paths = match self.kube.get(&obj.key).await {
                    Ok(None) => vec!["(object missing)".to_string()],
                    Ok(Some(live)) => {
                        match self.kube.apply(&obj.key, &obj.value(), true, true).await {
                            Ok(dry) => drift::drifted_paths(&live, &dry),
                            Err(e) => {
                                tracing::warn!(app = %name, object = %obj.key, error = %e, "drift check failed");
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(app = %name, object = %obj.key, error = %e, "drift check failed");
                        continue;
                    }
                };
                if paths.is_empty() {
                    continue;
                }
                self.metrics.drifted_objects.inc();
                let trace = self.cfg.trace;
                let span = drift_span
                    .get_or_insert_with(|| {
                        if !trace {
                            return tracing::Span::none();
                        }
                        tracing::info_span!(
                            parent: None,
                            "flotilla.agent.drift",
                            cluster.id = %self.cfg.cluster_id,
                            app = %name,
                            revision = %revision,
                        )
                    })
                    .clone();
                let mut fixed = false;
                if heal {
                    match self.kube.apply(&obj.key, &obj.value(), true, false).await {
                        Ok(_) => {
                            fixed = true;
                            healed += 1;
                            span.in_scope(|| tracing::info!(app = %name, object = %obj.key, fields = ?paths, "drift healed"));
                        }
                        Err(e) => {
                            span.in_scope(|| tracing::warn!(app = %name, object = %obj.key, error = %e, "self-heal failed"))
                        }
                    }
                } else {
                    span.in_scope(|| tracing::info!(app = %name, object = %obj.key, fields = ?paths, "drift found (self-heal off)"));
                }
                drift.insert(obj.key.clone(), (paths, fixed));
            }
            let run = self.apps.get_mut(&name).expect("listed");
            run.drift = drift;
            run.healed += healed;
            self.metrics.healed_objects.inc_by(healed);
            self.assess(&name).await;
        }
    }

    /// Puts every app's status on the board (it sends only what changed).
    fn publish(&self) {
        for run in self.apps.values() {
            self.board
                .set(self.generation, run.report(self.cfg.backend));
        }
        self.metrics.observe_pass(
            self.generation > 0,
            self.apps.values().map(|r| (r.phase(), r.counts())),
        );
        let apps = self.board.snapshot();
        let generation = self.generation;
        self.agent_status.send_modify(|s| {
            s.reconciled_generation = generation;
            s.apps = apps;
        });
    }
}

/// `d` ± 10%.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.9..1.1))
}
