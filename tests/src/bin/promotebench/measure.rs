//! One measured rollout: trigger it (AddSource or SyncSource, t0 right before the call), follow
//! the sessions until every in-scope session holds the new revision of every app, then read the
//! rollouts over the Admin API until each one has `succeeded`. The rollout's own timestamps
//! (`started_unix_ms`, each stage's started/finished, `finished_unix_ms`) give the durations, so
//! how often they are polled does not change the figures. The hub's log adds when the last
//! desired state of each stage was written. With several hub replicas (`--replicas`) the hub's
//! CPU and memory are the replicas' summed, the log read is the leading replica's (the one whose
//! engine moves the rollouts), the store's size is etcd's database, and the etcd members' CPU is
//! given beside the hub's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow, bail};
use flotilla_proto::state::RolloutState;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::{AddSourceRequest, GetRolloutRequest, Rollout, SyncSourceRequest};
use flotilla_tests::bench::client::Fleet;
use flotilla_tests::bench::hub::{HubProcess, sample_pid, strip_ansi};
use flotilla_tests::bench::prog;
use flotilla_tests::bench::replicas::{HubSet, Replicas};
use flotilla_tests::bench::stats::ms;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::agent::{Counters, Counts, Event};

/// How often a progress line (and a failure check) is printed while sessions take a revision.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Pause between sweeps over the rollouts not yet seen succeeded.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Rollout states that end a rollout without success.
const ENDED: [RolloutState; 4] = [
    RolloutState::Failed,
    RolloutState::RolledBack,
    RolloutState::Superseded,
    RolloutState::Paused,
];

/// What starts a measured rollout.
pub enum Trigger {
    AddSource(AddSourceRequest),
    Sync(String),
}

/// One stage, over every app of the round; times in ms from t0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    pub name: String,
    pub clusters: usize,
    /// The first app's stage started.
    pub started_ms: f64,
    /// The last desired-state write for a cluster of the stage (hub log), if found.
    pub written_ms: Option<f64>,
    /// The last session of the stage holds the new revision of every app.
    pub held_ms: Option<f64>,
    /// The last app's stage finished.
    pub finished_ms: f64,
    /// Median over apps of the stage's own duration (finished − started).
    pub median_duration_ms: f64,
}

/// One measured rollout round; times in ms from t0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundTimes {
    pub label: String,
    pub commit: String,
    pub apps: usize,
    pub sessions: usize,
    /// How long the AddSource / SyncSource call took to answer.
    pub trigger_ms: f64,
    /// The first batch went out (the first stage started): the first app's and the last app's.
    pub started_ms: f64,
    pub last_started_ms: f64,
    /// Every in-scope session holds every app's new revision (the sessions' clocks).
    pub all_hold_ms: f64,
    /// Rollouts succeeded: the first app, the median one and the last one.
    pub first_done_ms: f64,
    pub median_done_ms: f64,
    pub done_ms: f64,
    pub stages: Vec<StageTimes>,
    /// "desired state changed" lines in the hub log during the round.
    pub desired_writes: usize,
    /// What the sessions did during the round: desired states taken, reports, fetches.
    pub sessions_did: Counts,
    /// CPU seconds used during the round by the hub and by this program.
    pub hub_cpu_secs: f64,
    pub bench_cpu_secs: f64,
    pub hub_rss_kib: u64,
    /// Size of the hub's store file at the end of the round (with replicas: etcd's database).
    pub store_bytes: u64,
    /// With replicas: CPU seconds the etcd members used during the round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cpu_secs: Option<f64>,
}

/// Where the hub under test keeps its state.
pub enum Backend<'a> {
    /// One hub on its embedded redb store.
    Redb(&'a HubProcess),
    /// Replicas sharing an etcd.
    Etcd(&'a Replicas),
}

impl<'a> Backend<'a> {
    /// The hub whose engine moves the rollouts (whose log says when desired states were
    /// written): the one hub, or the leading replica (the first replica when none says so).
    pub async fn engine_hub(&self) -> &'a HubProcess {
        match self {
            Self::Redb(hub) => hub,
            Self::Etcd(r) => {
                let lead = r
                    .leaders()
                    .await
                    .into_iter()
                    .find(|(_, l)| *l == Some(true))
                    .map_or(0, |(i, _)| i);
                &r.hubs[lead]
            }
        }
    }

    /// The size of the store: redb's file, or etcd's database (a member's).
    pub async fn store_bytes(&self) -> u64 {
        match self {
            Self::Redb(hub) => {
                std::fs::metadata(hub.data_dir.join("store.redb")).map_or(0, |m| m.len())
            }
            Self::Etcd(r) => r.db_size().await.0.unwrap_or(0),
        }
    }

    /// The etcd members' CPU seconds so far.
    pub fn etcd_cpu(&self) -> Option<f64> {
        match self {
            Self::Redb(_) => None,
            Self::Etcd(r) => Some(r.etcd_sample().cpu_secs),
        }
    }
}

/// The coordinator's side of the scenarios: the hub, its Admin API, the sessions' events.
pub struct Ctx<'a> {
    /// The hubs (one, or the replicas) whose CPU and memory are summed.
    pub hubs: HubSet<'a>,
    pub backend: &'a Backend<'a>,
    /// The Admin API the triggers and rollout reads go to (with replicas: one of them).
    pub admin: AdminClient<Channel>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub counters: Arc<Counters>,
    pub fleet: &'a Fleet,
    /// Longest wait for one round.
    pub timeout: Duration,
    /// Bundle fetches or verifications that failed, with the first few messages.
    pub failures: usize,
    pub failure_examples: Vec<String>,
}

/// Which sessions hold which app's target revision.
struct Tracker<'a> {
    targets: &'a HashMap<String, String>,
    scope: &'a HashSet<String>,
    /// Per session, how many apps it holds at their target revision.
    counts: HashMap<String, usize>,
    /// Per session, when it held the last of them.
    done: HashMap<String, SystemTime>,
    /// (session, app) pairs at the target revision.
    pairs: usize,
}

impl Tracker<'_> {
    fn take(&mut self, cluster: String, apps: Vec<(String, String)>, at: SystemTime) {
        if !self.scope.contains(&cluster) || self.done.contains_key(&cluster) {
            return;
        }
        let n = apps
            .iter()
            .filter(|(app, rev)| self.targets.get(app) == Some(rev))
            .count();
        self.pairs += n;
        let count = self.counts.entry(cluster.clone()).or_default();
        *count += n;
        if *count >= self.targets.len() {
            self.done.insert(cluster, at);
        }
    }
}

fn since_ms(t0: SystemTime, t: SystemTime) -> f64 {
    ms(t.duration_since(t0).unwrap_or_default())
}

fn unix_to_ms_since(t0: SystemTime, unix_ms: u64) -> f64 {
    since_ms(t0, SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms))
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

impl Ctx<'_> {
    /// Takes the events that arrived so far (late reports of a previous round).
    pub fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            if let Event::Failed { .. } = e {
                self.failed(e);
            }
        }
    }

    fn failed(&mut self, e: Event) {
        if let Event::Failed { cluster, message } = e {
            self.failures += 1;
            if self.failure_examples.len() < 5 {
                self.failure_examples.push(format!("{cluster}: {message}"));
            }
        }
    }

    /// How many of `apps`' rollouts of `revision` are in each state (for a failure message).
    async fn tally(&mut self, apps: &[String], revision: &str) -> String {
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for app in apps {
            let state = match self.get_rollout(app).await {
                Ok(Some(r)) if r.revision == revision => r.state().to_string(),
                Ok(_) => "not started".to_string(),
                Err(e) => format!("unreadable ({e})"),
            };
            *states.entry(state).or_default() += 1;
        }
        states
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The app's rollout; `None` while the hub does not know the app yet (its source is still
    /// rendering).
    async fn get_rollout(&mut self, app: &str) -> Result<Option<Rollout>> {
        match self
            .admin
            .get_rollout(GetRolloutRequest { app: app.into() })
            .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(anyhow!("GetRollout {app}: {:?}: {}", s.code(), s.message())),
        }
    }

    /// Waits until `expected` sessions sent an event (took a desired state) since the last
    /// [`Ctx::drain`], e.g. after a source was removed; returns how many did.
    pub async fn settle(&mut self, expected: usize) -> Result<usize> {
        let deadline = Instant::now() + self.timeout;
        let mut seen = HashSet::new();
        while seen.len() < expected && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), self.events.recv()).await {
                Ok(Some(Event::Held { cluster, .. })) => {
                    seen.insert(cluster);
                }
                Ok(Some(e)) => self.failed(e),
                Ok(None) => bail!("every session task ended"),
                Err(_) => {}
            }
        }
        Ok(seen.len())
    }

    /// Triggers a rollout of `revision` for `apps` on the sessions of `scope` and measures it.
    pub async fn round(
        &mut self,
        label: &str,
        trigger: Trigger,
        apps: &[String],
        revision: &str,
        scope: &HashSet<String>,
    ) -> Result<RoundTimes> {
        self.drain();
        let targets: HashMap<String, String> = apps
            .iter()
            .map(|a| (a.clone(), revision.to_string()))
            .collect();
        let mut tracker = Tracker {
            targets: &targets,
            scope,
            counts: HashMap::new(),
            done: HashMap::new(),
            pairs: 0,
        };
        let engine_hub = self.backend.engine_hub().await;
        let log_from = std::fs::metadata(&engine_hub.log_path).map_or(0, |m| m.len());
        let hub_before = self.hubs.sample()?;
        let etcd_before = self.backend.etcd_cpu();
        let bench_before = sample_pid(std::process::id(), "benchmark")?;
        let counts_before = self.counters.snapshot();
        let deadline = Instant::now() + self.timeout;

        // --- t0: the trigger -------------------------------------------------------------------
        let t0 = SystemTime::now();
        let started = Instant::now();
        let what = match &trigger {
            Trigger::AddSource(r) => format!("AddSource {}", r.name),
            Trigger::Sync(name) => format!("SyncSource {name}"),
        };
        let answered = match trigger {
            Trigger::AddSource(r) => self.admin.add_source(r).await.map(|_| ()),
            Trigger::Sync(name) => self
                .admin
                .sync_source(SyncSourceRequest { name })
                .await
                .map(|_| ()),
        };
        answered.map_err(|s| anyhow!("{what}: {:?}: {}", s.code(), s.message()))?;
        let trigger_ms = ms(started.elapsed());

        // --- every session holds it ------------------------------------------------------------
        let expected = scope.len();
        let mut last_progress = Instant::now();
        // Progress lines look at one rollout each, in turn.
        let mut probe = 0usize;
        while tracker.done.len() < expected {
            let now = Instant::now();
            if now >= deadline {
                let rollouts = self.tally(apps, revision).await;
                bail!(
                    "{label}: only {} of {expected} sessions held revision {} of every app within \
                     {:?} ({:.1}% of session × app; {} sessions ended early; {} bundle failures, \
                     first: {:?}); rollouts of {}: {rollouts}",
                    tracker.done.len(),
                    short(revision),
                    self.timeout,
                    100.0 * tracker.pairs as f64 / (expected * apps.len()) as f64,
                    self.fleet.ended_count.load(Ordering::SeqCst),
                    self.failures,
                    self.failure_examples.first(),
                    apps.len()
                );
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let app = &apps[probe % apps.len()];
                probe += 1;
                let state = match self.get_rollout(app).await? {
                    Some(r) => {
                        check_not_ended(&r, revision)?;
                        describe(&r, revision)
                    }
                    None => "not known to the hub yet".to_string(),
                };
                let of_apps = if apps.len() > 1 {
                    format!(
                        " ({:.1}% of session × app)",
                        100.0 * tracker.pairs as f64 / (expected * apps.len()) as f64
                    )
                } else {
                    String::new()
                };
                println!(
                    "{}:   {label}: {}/{expected} sessions hold it{of_apps} after {:.1} s; {app}: {}",
                    prog(),
                    tracker.done.len(),
                    started.elapsed().as_secs_f64(),
                    state
                );
            }
            let slice = (deadline - now).min(Duration::from_millis(200));
            match tokio::time::timeout(slice, self.events.recv()).await {
                Ok(Some(Event::Held { cluster, apps, at })) => tracker.take(cluster, apps, at),
                Ok(Some(e)) => self.failed(e),
                Ok(None) => bail!("every session task ended"),
                Err(_) => {}
            }
        }
        let all_held = tracker
            .done
            .values()
            .copied()
            .max()
            .unwrap_or(SystemTime::now());

        // --- every rollout succeeded -----------------------------------------------------------
        let mut finished: BTreeMap<String, Rollout> = BTreeMap::new();
        while finished.len() < apps.len() {
            for app in apps {
                if finished.contains_key(app) {
                    continue;
                }
                let Some(r) = self.get_rollout(app).await? else {
                    continue;
                };
                check_not_ended(&r, revision)?;
                if r.revision == revision && r.state() == RolloutState::Succeeded {
                    finished.insert(app.clone(), r);
                }
            }
            if finished.len() == apps.len() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{label}: every session holds revision {} but only {} of {} rollouts \
                     succeeded within {:?}",
                    short(revision),
                    finished.len(),
                    apps.len(),
                    self.timeout
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        let hub_after = self.hubs.sample()?;
        let etcd_after = self.backend.etcd_cpu();
        let bench_after = sample_pid(std::process::id(), "benchmark")?;

        // --- the figures -----------------------------------------------------------------------
        // Every app of the round has the same stages: the first rollout's say which is which.
        let first_stages = finished
            .values()
            .next()
            .map_or(&[][..], |r| r.stages.as_slice());
        let stage_of: HashMap<&str, usize> = first_stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.clusters.iter().map(move |c| (c.as_str(), i)))
            .collect();
        let stage_index: HashMap<&str, usize> = first_stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let writes = log_writes(&engine_hub.log_path, log_from, t0, &stage_of, &stage_index);
        let mut done: Vec<f64> = finished
            .values()
            .map(|r| unix_to_ms_since(t0, r.finished_unix_ms))
            .collect();
        let mut stages = stage_times(t0, &finished);
        for (i, s) in stages.iter_mut().enumerate() {
            s.written_ms = writes.last.get(&i).map(|t| since_ms(t0, *t));
            s.held_ms = tracker
                .done
                .iter()
                .filter(|(c, _)| stage_of.get(c.as_str()) == Some(&i))
                .map(|(_, t)| since_ms(t0, *t))
                .reduce(f64::max);
        }
        // Each app's first batch; the rollout's own start is when the source sync began offering
        // (the same for every app of a sync), not when the app's offer took effect.
        let mut starts: Vec<f64> = finished
            .values()
            .filter_map(|r| r.stages.first())
            .map(|s| unix_to_ms_since(t0, s.started_unix_ms))
            .collect();
        starts.sort_by(f64::total_cmp);
        Ok(RoundTimes {
            label: label.to_string(),
            commit: revision.to_string(),
            apps: apps.len(),
            sessions: tracker.done.len(),
            trigger_ms,
            started_ms: starts.first().copied().unwrap_or_default(),
            last_started_ms: starts.last().copied().unwrap_or_default(),
            all_hold_ms: since_ms(t0, all_held),
            first_done_ms: done.iter().copied().reduce(f64::min).unwrap_or_default(),
            median_done_ms: median(&mut done),
            done_ms: done.iter().copied().reduce(f64::max).unwrap_or_default(),
            stages,
            desired_writes: writes.clusters,
            sessions_did: self.counters.snapshot().since(counts_before),
            hub_cpu_secs: hub_after.cpu_secs - hub_before.cpu_secs,
            bench_cpu_secs: bench_after.cpu_secs - bench_before.cpu_secs,
            hub_rss_kib: hub_after.rss_kib,
            store_bytes: self.backend.store_bytes().await,
            etcd_cpu_secs: etcd_after.zip(etcd_before).map(|(a, b)| a - b),
        })
    }
}

pub fn short(rev: &str) -> &str {
    &rev[..rev.len().min(12)]
}

/// Fails when the rollout of `revision` ended without success (or another revision replaced it).
fn check_not_ended(r: &Rollout, revision: &str) -> Result<()> {
    if r.revision == revision && ENDED.contains(&r.state()) {
        bail!(
            "the rollout of {} for {} is {}: {}",
            short(revision),
            r.app,
            r.state,
            r.message
        );
    }
    Ok(())
}

/// A one-line summary of where a rollout stands.
fn describe(r: &Rollout, revision: &str) -> String {
    if r.revision != revision {
        return format!(
            "not started yet (rollout of {} is {})",
            short(&r.revision),
            r.state
        );
    }
    let stages: Vec<String> = r
        .stages
        .iter()
        .map(|s| {
            format!(
                "{} {} {}/{}",
                s.name,
                s.state,
                s.updated.len(),
                s.clusters.len()
            )
        })
        .collect();
    format!("{}; {}", r.state, stages.join(", "))
}

/// Per stage over every app's finished rollout.
fn stage_times(t0: SystemTime, finished: &BTreeMap<String, Rollout>) -> Vec<StageTimes> {
    let Some(first) = finished.values().next() else {
        return Vec::new();
    };
    (0..first.stages.len())
        .map(|i| {
            let runs: Vec<_> = finished.values().filter_map(|r| r.stages.get(i)).collect();
            let mut durations: Vec<f64> = runs
                .iter()
                .map(|s| s.finished_unix_ms.saturating_sub(s.started_unix_ms) as f64)
                .collect();
            StageTimes {
                name: first.stages[i].name.clone(),
                clusters: first.stages[i].clusters.len(),
                started_ms: runs
                    .iter()
                    .map(|s| unix_to_ms_since(t0, s.started_unix_ms))
                    .reduce(f64::min)
                    .unwrap_or_default(),
                finished_ms: runs
                    .iter()
                    .map(|s| unix_to_ms_since(t0, s.finished_unix_ms))
                    .reduce(f64::max)
                    .unwrap_or_default(),
                median_duration_ms: median(&mut durations),
                ..Default::default()
            }
        })
        .collect()
}

/// The hub's desired-state writes of a round, from its log.
#[derive(Debug, Default)]
struct Writes {
    /// Cluster desired states written (one new generation each).
    clusters: usize,
    /// Per stage index: the last write for one of its clusters.
    last: HashMap<usize, SystemTime>,
}

/// One line of the hub's log that matters here.
#[derive(Debug, PartialEq)]
enum LogLine {
    /// `batch sent`: `app`'s stage `stage` got its next batch.
    Batch { app: String, stage: String },
    /// `desired state changed` for one cluster (at debug level: `cluster.id=`).
    Cluster { at: SystemTime, cluster: String },
    /// `desired state changed` for `clusters` clusters of `app` (one line per app and step).
    App {
        at: SystemTime,
        app: String,
        clusters: usize,
    },
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|f| f.strip_prefix(name))
}

fn parse_line(line: &str) -> Option<LogLine> {
    let at = || {
        let stamp = line.split_whitespace().next()?;
        humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z')).ok()
    };
    if line.contains(" batch sent ") {
        return Some(LogLine::Batch {
            app: field(line, "app=")?.to_string(),
            stage: field(line, "stage=")?.to_string(),
        });
    }
    if !line.contains("desired state changed") {
        return None;
    }
    if let Some(cluster) = field(line, "cluster.id=") {
        return Some(LogLine::Cluster {
            at: at()?,
            cluster: cluster.to_string(),
        });
    }
    Some(LogLine::App {
        at: at()?,
        app: field(line, "app=")?.to_string(),
        clusters: field(line, "clusters=")?.parse().ok()?,
    })
}

/// Reads the desired-state writes logged at or after `t0`, from byte `from` of the log on. A
/// per-app line is put in the stage of that app's last batch before it.
fn log_writes(
    path: &std::path::Path,
    from: u64,
    t0: SystemTime,
    stage_of: &HashMap<&str, usize>,
    stage_index: &HashMap<&str, usize>,
) -> Writes {
    let mut w = Writes::default();
    let Ok(mut f) = File::open(path) else {
        return w;
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return w;
    }
    let mut batch_stage: HashMap<String, usize> = HashMap::new();
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        if !line.contains("desired state changed") && !line.contains(" batch sent ") {
            continue;
        }
        let (at, stage) = match parse_line(&strip_ansi(&line)) {
            Some(LogLine::Batch { app, stage }) => {
                if let Some(i) = stage_index.get(stage.as_str()) {
                    batch_stage.insert(app, *i);
                }
                continue;
            }
            Some(LogLine::Cluster { at, cluster }) if at >= t0 => {
                w.clusters += 1;
                (at, stage_of.get(cluster.as_str()).copied())
            }
            Some(LogLine::App { at, app, clusters }) if at >= t0 => {
                w.clusters += clusters;
                (at, batch_stage.get(&app).copied())
            }
            _ => continue,
        };
        if let Some(i) = stage {
            let last = w.last.entry(i).or_insert(at);
            *last = (*last).max(at);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_parsed() {
        let at = humantime::parse_rfc3339("2025-01-02T03:04:05.678901Z").unwrap();
        let cluster = "2025-01-02T03:04:05.678901Z DEBUG flotilla_hub::engine::rollout: desired state changed cluster.id=load-00042 app=promo generation=7";
        assert_eq!(
            parse_line(cluster),
            Some(LogLine::Cluster {
                at,
                cluster: "load-00042".into()
            })
        );
        let app = "2025-01-02T03:04:05.678901Z  INFO flotilla_hub::engine::rollout: desired state changed app=app-007 clusters=660";
        assert_eq!(
            parse_line(app),
            Some(LogLine::App {
                at,
                app: "app-007".into(),
                clusters: 660
            })
        );
        let batch = r#"2025-01-02T03:04:05.678901Z  INFO flotilla_hub::engine::rollout: batch sent app=promo revision=0123456789ab stage=wave1 batch=["load-00001", "load-00002"]"#;
        assert_eq!(
            parse_line(batch),
            Some(LogLine::Batch {
                app: "promo".into(),
                stage: "wave1".into()
            })
        );
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn sessions_are_done_when_they_hold_every_app() {
        let targets: HashMap<String, String> = [
            ("a".to_string(), "c2".to_string()),
            ("b".into(), "c2".into()),
        ]
        .into();
        let scope: HashSet<String> = ["s1".to_string()].into();
        let mut t = Tracker {
            targets: &targets,
            scope: &scope,
            counts: HashMap::new(),
            done: HashMap::new(),
            pairs: 0,
        };
        let now = SystemTime::now();
        t.take("s1".into(), vec![("a".into(), "c1".into())], now);
        t.take("s1".into(), vec![("a".into(), "c2".into())], now);
        t.take(
            "out".into(),
            vec![("a".into(), "c2".into()), ("b".into(), "c2".into())],
            now,
        );
        assert!(t.done.is_empty());
        t.take("s1".into(), vec![("b".into(), "c2".into())], now);
        assert_eq!(t.done.len(), 1);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
