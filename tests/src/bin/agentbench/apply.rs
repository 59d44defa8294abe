//! Time to apply N objects on the simulated backend, in-process: the agent's own `Reconciler`
//! driving a fresh `SimCluster` (ready delay zero) through `kube::Client`, fed a `DesiredState`
//! whose bundles are already in the bundle store (as after the session fetched them). Measured
//! from sending the desired state to every app reported `applied` (every object accepted), and
//! to every app `healthy`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_agent::AgentStatus;
use flotilla_agent::bundles::BundleStore;
use flotilla_agent::cluster::SimConfig;
use flotilla_agent::reconcile::status::StatusBoard;
use flotilla_agent::reconcile::{ReconcileConfig, Reconciler};
use flotilla_agent::sim::SimCluster;
use flotilla_proto::state::{Health, Phase};
use flotilla_proto::v1::{AppDesired, AppOptions, AppStatus, DesiredState};
use flotilla_tests::bench::prog;
use flotilla_tests::bench::stats::{ms, percentile};
use serde::Serialize;
use tokio::sync::watch;

use crate::objects::{AppShape, app_objects};

/// How often the reconciler re-assesses an app that is not healthy yet.
const HEALTH_POLL: Duration = Duration::from_millis(50);

/// One apply scenario: `apps` apps of `shape` each.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub apps: usize,
    pub shape: AppShape,
}

impl Scenario {
    /// One app of 1,000 objects, and 50 apps of 20.
    pub fn defaults() -> Vec<Scenario> {
        vec![
            Scenario {
                name: "1 app × 1,000 objects".into(),
                apps: 1,
                shape: AppShape::of_total(1000),
            },
            Scenario {
                name: "50 apps × 20 objects".into(),
                apps: 50,
                shape: AppShape::SMALL,
            },
        ]
    }

    pub fn objects(&self) -> usize {
        self.apps * self.shape.objects()
    }
}

/// Min and median of a set of runs, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MinMedian {
    pub min_ms: f64,
    pub median_ms: f64,
}

impl MinMedian {
    fn of(mut v: Vec<Duration>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        Self {
            min_ms: ms(v[0]),
            median_ms: ms(percentile(&v, 50.0)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub objects: usize,
    pub runs: usize,
    /// Desired state sent → every app `applied`.
    pub applied: MinMedian,
    /// Desired state sent → every app `applied` and `healthy`.
    pub healthy: MinMedian,
    /// Objects per second to `applied`, from the median.
    pub applied_objects_per_sec: f64,
    /// Objects per second to `healthy`, from the median.
    pub healthy_objects_per_sec: f64,
}

/// Runs every scenario `runs` times.
pub async fn run(
    scenarios: &[Scenario],
    runs: usize,
    timeout: Duration,
) -> Result<Vec<ScenarioResult>> {
    let mut out = Vec::with_capacity(scenarios.len());
    for s in scenarios {
        let mut applied = Vec::with_capacity(runs);
        let mut healthy = Vec::with_capacity(runs);
        for r in 1..=runs {
            let (a, h) = one_run(s, timeout)
                .await
                .with_context(|| format!("apply scenario {:?}, run {r}", s.name))?;
            println!(
                "{}: apply {}: run {r}/{runs}: applied {:.0} ms, healthy {:.0} ms",
                prog(),
                s.name,
                ms(a),
                ms(h)
            );
            applied.push(a);
            healthy.push(h);
        }
        let applied = MinMedian::of(applied);
        let healthy = MinMedian::of(healthy);
        let per_sec = |m: f64| {
            if m > 0.0 {
                s.objects() as f64 / (m / 1000.0)
            } else {
                0.0
            }
        };
        out.push(ScenarioResult {
            scenario: s.clone(),
            objects: s.objects(),
            runs,
            applied,
            healthy,
            applied_objects_per_sec: per_sec(applied.median_ms),
            healthy_objects_per_sec: per_sec(healthy.median_ms),
        });
    }
    Ok(out)
}

fn all(s: &AgentStatus, apps: usize, ok: impl Fn(&AppStatus) -> bool) -> bool {
    s.reconciled_generation == 1 && s.apps.len() == apps && s.apps.iter().all(ok)
}

/// One run on a fresh simulated cluster and bundle store: (→ all applied, → all healthy).
async fn one_run(s: &Scenario, timeout: Duration) -> Result<(Duration, Duration)> {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-agentbench-apply-")
        .tempdir()
        .context("creating the bundle directory")?;
    let sim = SimCluster::new(SimConfig {
        ready_delay: Duration::ZERO,
        ..Default::default()
    });
    let bundles = BundleStore::new(dir.path());
    let mut apps = Vec::with_capacity(s.apps);
    for i in 0..s.apps {
        let name = format!("app-{i}");
        let canonical = serde_json::to_vec(&app_objects(&name, s.shape, true))?;
        apps.push(AppDesired {
            app: name,
            revision: "r1".into(),
            bundle_digest: bundles.put(&canonical)?,
            bundle_size: canonical.len() as u64,
            trace_context: String::new(),
            depends_on: vec![],
            options: Some(AppOptions::default()),
        });
    }
    let desired_state = DesiredState {
        generation: 1,
        apps,
    };

    let (desired, desired_rx) = watch::channel(None);
    let (status_tx, mut status) = watch::channel(AgentStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let cfg = ReconcileConfig {
        health_poll: HEALTH_POLL,
        backend: "simulated",
        ..Default::default()
    };
    let reconciler = Reconciler::new(
        sim.client(),
        cfg,
        bundles,
        StatusBoard::default(),
        status_tx,
    );
    let task = tokio::spawn(reconciler.run(desired_rx, stop_rx));
    // The reconciler publishes once it has started with nothing to do; start the clock after.
    tokio::time::timeout(Duration::from_secs(10), status.changed())
        .await
        .map_err(|_| anyhow!("the reconciler did not start within 10 s"))??;

    let t0 = Instant::now();
    let deadline = t0 + timeout;
    desired.send_replace(Some(desired_state));
    let mut applied_at = None;
    let outcome = loop {
        {
            let st = status.borrow_and_update();
            if applied_at.is_none() && all(&st, s.apps, |a| a.phase() == Phase::Applied) {
                applied_at = Some(t0.elapsed());
            }
            if all(&st, s.apps, |a| {
                a.phase() == Phase::Applied && a.health() == Health::Healthy
            }) {
                break Ok(t0.elapsed());
            }
            if let Some(f) = st.apps.iter().find(|a| a.phase() == Phase::Failed) {
                break Err(anyhow!("app {} failed: {}", f.app, f.message));
            }
        }
        match tokio::time::timeout_at(deadline.into(), status.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break Err(anyhow!("the reconciler ended")),
            Err(_) => {
                let st = status.borrow();
                let not: Vec<String> = st
                    .apps
                    .iter()
                    .filter(|a| a.health() != Health::Healthy)
                    .take(3)
                    .map(|a| format!("{} {} {}: {}", a.app, a.phase, a.health, a.message))
                    .collect();
                break Err(anyhow!(
                    "not every app healthy within {timeout:?} ({} of {} reported); e.g. {}",
                    st.apps.len(),
                    s.apps,
                    not.join("; ")
                ));
            }
        }
    };
    let _ = stop.send(true);
    task.await.context("the reconcile task panicked")?;
    let healthy = outcome?;
    let applied = applied_at.unwrap_or(healthy);
    if sim.objects().len() < s.objects() {
        bail!(
            "the simulated cluster holds {} objects, fewer than the {} applied",
            sim.objects().len(),
            s.objects()
        );
    }
    Ok((applied, healthy))
}
