//! Commit-to-delivery latency: a real `flotilla-hub` child process, N enrolled clusters and N
//! lightweight session clients that behave like agents on `DesiredState` (fetch every bundle
//! with `FetchBundle` on the session's connection, check the sha256 of its gunzipped content
//! against the digest, then `Ack` and a `StatusReport` "applied"). Each client records the
//! instant it holds a bundle; the coordinator commits to a git repository and measures, per
//! session, commit (or webhook) to "holds the new bundle".
//!
//! * Webhook rounds: commit, t0, `POST /hooks/git/<source>` signed like GitHub, wait until
//!   every connected session holds the new revision's bundle.
//! * Polling rounds: the source re-added with a short interval; a random pause (so commits land
//!   at a random phase of the polling cycle), commit, t0, wait likewise.
//!
//! The rounds run against [`Hubs`]: one hub in every role ([`run`]), or hub replicas on etcd
//! (`crate::ha`), where the sessions are held by one follower and the source and the webhooks go
//! to the other follower, so that a change crosses replicas twice (webhook replica → leader →
//! session replica); the leader's log then shows when each hop happened.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_hub::api::webhook::github_signature;
use flotilla_proto::clock::unix_ms;
use flotilla_proto::state::Phase;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::agent_message::Msg as AgentMsg;
use flotilla_proto::v1::{
    Ack, AddSourceRequest, AgentMessage, AppStatus, GetSourceRequest, RemoveSourceRequest,
    StatusReport,
};
use flotilla_tests::bench::bundle::fetch_verified;
use flotilla_tests::bench::client::{DesiredCall, DesiredHandler, DesiredOutcome, Fleet};
use flotilla_tests::bench::fleet::{check_ended_early, enroll};
use flotilla_tests::bench::hub::{
    HubProcess, ProcSample, http_post, metric, metrics, strip_ansi, wait_for_gauge,
};
use flotilla_tests::bench::stats::{Latency, ms};
use flotilla_tests::bench::{admin_client, prog};
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::repo::{DELIVERY_APP, DeliveryRepo};

/// How long the hub may take to count every opened session.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(60);
/// One bundle fetch may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The webhook-triggered source's polling interval: far longer than the run, so only the
/// webhook makes it fetch.
const HOOK_SOURCE_INTERVAL_SECS: u64 = 24 * 3600;
const HOOK_SOURCE: &str = "fleet-webhook";
const POLL_SOURCE: &str = "fleet-poll";
const HOOK_SECRET: &str = "deliverybench-webhook-secret";

/// What the delivery phase needs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub sessions: usize,
    pub sources: usize,
    pub concurrency: usize,
    pub rounds: u32,
    pub poll_rounds: u32,
    pub poll_interval: Duration,
    pub round_timeout: Duration,
    pub per_cluster_bundles: bool,
    pub hub_bin: PathBuf,
    pub hub_heartbeat_interval: String,
}

/// Latencies of one kind of round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rounds {
    pub rounds: usize,
    /// Per session and round: t0 → that session holds the new bundle.
    pub per_session: Latency,
    /// Per round: t0 → the last session holds it ("every session holds it").
    pub all_sessions: Latency,
    /// Per round: t0 → the first session holds it (source fetch + render + first delivery).
    pub first_session: Latency,
    /// Per round, from the log of the hub holding the sessions: t0 → its first and its last
    /// "desired state changed" line (one hub: it wrote the rollout record; replicas: the
    /// session replica took the leader's record from the store and woke its sessions).
    pub hub_first_write: Latency,
    pub hub_last_write: Latency,
    /// Replicas only, from the leading replica's log: t0 → it saw the sync request passed on
    /// through the store (webhook rounds), and t0 → its first "desired state changed" line (it
    /// wrote the rollout record).
    pub leader_asked: Latency,
    pub leader_write: Latency,
    pub rounds_detail: Vec<RoundDetail>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundDetail {
    pub commit: String,
    pub digests: usize,
    pub sessions: usize,
    pub first_ms: f64,
    pub p50_ms: f64,
    pub last_ms: f64,
    /// Webhook rounds: how long the POST took to answer 202.
    pub webhook_ms: Option<f64>,
    /// From the hub's log: t0 → its first and last "desired state changed" line of the round,
    /// and how many there were (one per app whose rollout record moved).
    pub hub_first_write_ms: Option<f64>,
    pub hub_last_write_ms: Option<f64>,
    pub hub_writes: usize,
    /// Replicas only, from the leading replica's log: t0 → "sync asked through another replica"
    /// (webhook rounds) and t0 → its first "desired state changed" line of the round.
    pub leader_asked_ms: Option<f64>,
    pub leader_write_ms: Option<f64>,
}

impl RoundDetail {
    /// Who holds the round's commit and when, for its progress line.
    fn summary(&self) -> String {
        format!(
            "{} sessions hold {} — first {:.0} ms, p50 {:.0} ms, last {:.0} ms",
            self.sessions,
            &self.commit[..12],
            self.first_ms,
            self.p50_ms,
            self.last_ms
        )
    }

    /// The hub log's desired-state writes of the round, for its progress line (empty when the
    /// log showed none).
    fn writes_note(&self) -> String {
        let mut note = String::new();
        if let Some(asked) = self.leader_asked_ms {
            note.push_str(&format!("; leader saw the request at {asked:.0} ms"));
        }
        if let Some(wrote) = self.leader_write_ms {
            note.push_str(&format!("; leader wrote the rollout at {wrote:.0} ms"));
        }
        if let (Some(first), Some(last)) = (self.hub_first_write_ms, self.hub_last_write_ms) {
            note.push_str(&format!(
                "; session hub's log: {} desired-state changes from {first:.0} to {last:.0} ms",
                self.hub_writes
            ));
        }
        note
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryReport {
    pub sessions_requested: usize,
    pub per_cluster_bundles: bool,
    pub enrolled: usize,
    pub enroll_failed: usize,
    pub enroll_per_sec: f64,
    pub sessions_opened: usize,
    pub open_failed: usize,
    pub handshakes_per_sec: f64,
    /// `flotilla_hub_sessions_connected` of the hub holding the sessions once every session
    /// was open.
    pub sessions_held: usize,
    /// The same gauge of every hub (replicas in order) at that moment.
    pub sessions_by_hub: Vec<usize>,
    /// The same gauge at the end.
    pub sessions_held_end: usize,
    pub sessions_ended_early: usize,
    pub ended_examples: Vec<String>,
    /// Bundle fetches or verifications that failed.
    pub delivery_failures: usize,
    pub failure_examples: Vec<String>,
    /// Uncompressed size of the round bundle.
    pub bundle_bytes: u64,
    /// AddSource → every session holds the first bundle.
    pub initial_ms: f64,
    pub webhook: Rounds,
    pub poll_interval_secs: u64,
    /// Poll source added → every session holds its bundle.
    pub poll_initial_ms: f64,
    pub poll: Rounds,
    /// Of the hub holding the sessions.
    pub hub_baseline: ProcSample,
    pub hub_held: ProcSample,
    pub hub_end: ProcSample,
    /// `flotilla_hub_webhooks_total{result="ok"}` of the hub the webhooks went to, at the end.
    pub hub_webhooks_ok: Option<f64>,
}

/// The hubs the delivery phase talks to: one hub in every role, or (replicas on etcd) one
/// follower holding the sessions and another taking the source and the webhooks, with the
/// leader's log for the hops in between.
#[derive(Clone, Copy)]
pub struct Hubs<'a> {
    /// Enrolls the clusters and holds every session; its log's "desired state changed" lines
    /// are when it woke them.
    pub sessions: &'a HubProcess,
    /// Takes AddSource, RemoveSource and the signed webhooks.
    pub hooks: &'a HubProcess,
    /// The leading replica, when there are replicas.
    pub leader: Option<&'a HubProcess>,
    /// Every hub (the replicas in order; one hub: itself), for the sessions gauge of each.
    pub all: &'a [HubProcess],
}

impl<'a> Hubs<'a> {
    /// One hub in every role.
    pub fn one(hub: &'a HubProcess) -> Self {
        Self {
            sessions: hub,
            hooks: hub,
            leader: None,
            all: std::slice::from_ref(hub),
        }
    }
}

/// What a session reports to the coordinator about one desired state.
#[derive(Debug)]
enum Event {
    /// Every bundle of the desired state is fetched and verified.
    Held {
        cluster: String,
        /// (app, revision, digest).
        apps: Vec<(String, String, String)>,
        bundle_bytes: u64,
        at: Instant,
    },
    Failed {
        cluster: String,
        message: String,
    },
}

/// The session clients' handler: fetch, verify, report to the coordinator, answer the hub.
fn handler(events: mpsc::UnboundedSender<Event>) -> DesiredHandler {
    Arc::new(move |call: DesiredCall| {
        let events = events.clone();
        Box::pin(take_desired(call, events))
    })
}

async fn take_desired(call: DesiredCall, events: mpsc::UnboundedSender<Event>) -> DesiredOutcome {
    let DesiredCall {
        cluster,
        mut client,
        desired,
        cached,
    } = call;
    let mut statuses = Vec::with_capacity(desired.apps.len());
    let mut holds: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    let mut bundle_bytes = 0u64;
    for a in &desired.apps {
        let got = if cached.contains(&a.bundle_digest) || holds.contains(&a.bundle_digest) {
            Ok(a.bundle_size)
        } else {
            match tokio::time::timeout(FETCH_TIMEOUT, fetch_verified(&mut client, &a.bundle_digest))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no bundle within {FETCH_TIMEOUT:?}")),
            }
        };
        let (phase, message) = match got {
            Ok(size) => {
                bundle_bytes += size;
                holds.push(a.bundle_digest.clone());
                (
                    Phase::Applied,
                    "bundle fetched and verified (deliverybench)".to_string(),
                )
            }
            Err(e) => {
                failures.push(format!("{} {}: {e}", a.app, a.bundle_digest));
                (Phase::Failed, e)
            }
        };
        statuses.push(AppStatus {
            app: a.app.clone(),
            revision: a.revision.clone(),
            bundle_digest: a.bundle_digest.clone(),
            phase: phase.into(),
            message,
            observed_unix_ms: unix_ms(SystemTime::now()),
            ..Default::default()
        });
    }
    let at = Instant::now();
    let complete = failures.is_empty();
    let mut messages = Vec::with_capacity(2);
    if complete {
        let _ = events.send(Event::Held {
            cluster,
            apps: desired
                .apps
                .iter()
                .map(|a| (a.app.clone(), a.revision.clone(), a.bundle_digest.clone()))
                .collect(),
            bundle_bytes,
            at,
        });
        messages.push(AgentMessage {
            msg: Some(AgentMsg::Ack(Ack {
                generation: desired.generation,
            })),
        });
    } else {
        let _ = events.send(Event::Failed {
            cluster,
            message: failures.join("; "),
        });
    }
    messages.push(AgentMessage {
        msg: Some(AgentMsg::Status(StatusReport {
            generation: desired.generation,
            replace: false,
            apps: statuses,
            seq: 0,
        })),
    });
    DesiredOutcome {
        messages,
        holds,
        complete,
    }
}

/// One wait's outcome: per session, t0 → holds.
struct Wait {
    per_session: HashMap<String, Duration>,
    digests: BTreeSet<String>,
    bundle_bytes: u64,
}

/// The coordinator's side: session events, the fleet, and failure bookkeeping.
struct Coordinator<'a> {
    events: mpsc::UnboundedReceiver<Event>,
    fleet: &'a Fleet,
    admin: AdminClient<Channel>,
    timeout: Duration,
    failures: usize,
    failure_examples: Vec<String>,
}

impl Coordinator<'_> {
    /// Waits until every connected session holds `app` at `revision` in a desired state it
    /// took after `since`; latencies are measured from `t0`. Bounded by the round timeout.
    async fn all_hold(
        &mut self,
        source: &str,
        revision: &str,
        since: Instant,
        t0: Instant,
    ) -> Result<Wait> {
        let deadline = Instant::now() + self.timeout;
        let mut w = Wait {
            per_session: HashMap::new(),
            digests: BTreeSet::new(),
            bundle_bytes: 0,
        };
        loop {
            let alive = self.fleet.alive.load(Ordering::SeqCst);
            if w.per_session.len() >= alive {
                return Ok(w);
            }
            let now = Instant::now();
            if now >= deadline {
                let src = self
                    .admin
                    .get_source(GetSourceRequest {
                        name: source.to_string(),
                    })
                    .await
                    .map(|s| {
                        let s = s.into_inner();
                        format!(
                            "the hub's source {source} is at commit {:?}, error {:?}",
                            s.commit, s.error
                        )
                    })
                    .unwrap_or_else(|s| format!("GetSource {source}: {}", s.message()));
                bail!(
                    "only {} of {alive} connected sessions held revision {revision} within {:?} \
                     ({} delivery failures; first: {:?}); {src}",
                    w.per_session.len(),
                    self.timeout,
                    self.failures,
                    self.failure_examples.first()
                );
            }
            // A bounded wait, so that sessions ending meanwhile are noticed.
            let slice = (deadline - now).min(Duration::from_millis(200));
            match tokio::time::timeout(slice, self.events.recv()).await {
                Ok(Some(Event::Held {
                    cluster,
                    apps,
                    bundle_bytes,
                    at,
                })) => {
                    if at < since {
                        continue;
                    }
                    if let Some((_, _, digest)) = apps
                        .iter()
                        .find(|(app, rev, _)| app == DELIVERY_APP && rev == revision)
                    {
                        w.digests.insert(digest.clone());
                        w.bundle_bytes = w.bundle_bytes.max(bundle_bytes);
                        w.per_session
                            .entry(cluster)
                            .or_insert_with(|| at.saturating_duration_since(t0));
                    }
                }
                Ok(Some(Event::Failed { cluster, message })) => {
                    self.failures += 1;
                    if self.failure_examples.len() < 5 {
                        self.failure_examples.push(format!("{cluster}: {message}"));
                    }
                }
                Ok(None) => bail!("every session client has ended"),
                Err(_) => {}
            }
        }
    }
}

/// Adds the source `name` tracking `main` of `url`, polled every `interval_seconds`, with the
/// webhook secret in `webhook_secret_file` (empty: no webhook).
async fn add_source(
    admin: &mut AdminClient<Channel>,
    name: &str,
    url: &str,
    interval_seconds: u64,
    webhook_secret_file: &str,
) -> Result<()> {
    admin
        .add_source(AddSourceRequest {
            name: name.into(),
            url: url.into(),
            r#ref: "main".into(),
            path: String::new(),
            interval_seconds,
            secret_file: String::new(),
            webhook_secret_file: webhook_secret_file.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("AddSource {name}: {:?}: {}", s.code(), s.message()))?;
    Ok(())
}

/// Summarises rounds from their per-session samples.
fn summarise(rounds: Vec<(RoundDetail, Vec<Duration>)>) -> Rounds {
    let mut all = Vec::new();
    let mut last = Vec::new();
    let mut first = Vec::new();
    let mut first_writes = Vec::new();
    let mut writes = Vec::new();
    let mut asked = Vec::new();
    let mut leader_writes = Vec::new();
    let mut detail = Vec::new();
    let push = |to: &mut Vec<Duration>, v: Option<f64>| {
        if let Some(v) = v {
            to.push(Duration::from_secs_f64(v / 1000.0));
        }
    };
    for (d, samples) in rounds {
        last.push(samples.iter().copied().max().unwrap_or_default());
        first.push(samples.iter().copied().min().unwrap_or_default());
        push(&mut first_writes, d.hub_first_write_ms);
        push(&mut writes, d.hub_last_write_ms);
        push(&mut asked, d.leader_asked_ms);
        push(&mut leader_writes, d.leader_write_ms);
        all.extend(samples);
        detail.push(d);
    }
    Rounds {
        rounds: detail.len(),
        per_session: Latency::of(&mut all),
        all_sessions: Latency::of(&mut last),
        first_session: Latency::of(&mut first),
        hub_first_write: Latency::of(&mut first_writes),
        hub_last_write: Latency::of(&mut writes),
        leader_asked: Latency::of(&mut asked),
        leader_write: Latency::of(&mut leader_writes),
        rounds_detail: detail,
    }
}

/// The round's "desired state changed" lines in the hub's log (one per app whose rollout
/// record moved), as (first, last, count) relative to `t0` (wall clock), in ms. A diagnostic:
/// `None` when the log has no such lines in the window.
fn hub_desired_writes(
    hub: &HubProcess,
    t0: SystemTime,
    end: SystemTime,
) -> Option<(f64, f64, usize)> {
    log_marks(hub, "desired state changed", t0, end)
}

/// The lines of `hub`'s log containing `needle` and stamped between `t0` and `end` (wall
/// clock), as (first, last, count) relative to `t0`, in ms; `None` when there are none.
fn log_marks(
    hub: &HubProcess,
    needle: &str,
    t0: SystemTime,
    end: SystemTime,
) -> Option<(f64, f64, usize)> {
    let text = std::fs::read_to_string(&hub.log_path).ok()?;
    let mut found: Option<(SystemTime, SystemTime, usize)> = None;
    for line in text.lines().filter(|l| l.contains(needle)) {
        let line = strip_ansi(line);
        let Some(stamp) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(at) = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z')) else {
            continue;
        };
        if at < t0 || at > end {
            continue;
        }
        found = Some(match found {
            None => (at, at, 1),
            Some((a, b, n)) => (a.min(at), b.max(at), n + 1),
        });
    }
    let since = |t: SystemTime| ms(t.duration_since(t0).unwrap_or_default());
    found.map(|(a, b, n)| (since(a), since(b), n))
}

/// A round's figures once every session holds `commit` (`w`), with the hub log's desired-state
/// writes since `t0_wall`; fails when the commit left the bundle digests as they were
/// (`previous`, which becomes the round's).
fn round_detail(
    hubs: Hubs<'_>,
    commit: &str,
    w: &Wait,
    webhook_ms: Option<f64>,
    t0_wall: SystemTime,
    previous: &mut BTreeSet<String>,
) -> Result<(RoundDetail, Vec<Duration>)> {
    let end = SystemTime::now();
    let writes = hub_desired_writes(hubs.sessions, t0_wall, end);
    let leader_asked = hubs.leader.and_then(|l| {
        log_marks(l, "sync asked through another replica", t0_wall, end).map(|m| m.0)
    });
    let leader_write = hubs
        .leader
        .and_then(|l| hub_desired_writes(l, t0_wall, end).map(|m| m.0));
    if !w.digests.is_disjoint(previous) {
        bail!("the new commit {commit} did not change the bundle digest");
    }
    previous.clone_from(&w.digests);
    let mut samples: Vec<Duration> = w.per_session.values().copied().collect();
    let l = Latency::of(&mut samples);
    let d = RoundDetail {
        commit: commit.to_string(),
        digests: w.digests.len(),
        sessions: samples.len(),
        first_ms: samples.first().map_or(0.0, |d| ms(*d)),
        p50_ms: l.p50_ms,
        last_ms: l.max_ms,
        webhook_ms,
        hub_first_write_ms: writes.map(|w| w.0),
        hub_last_write_ms: writes.map(|w| w.1),
        hub_writes: writes.map_or(0, |w| w.2),
        leader_asked_ms: leader_asked,
        leader_write_ms: leader_write,
    };
    Ok((d, samples))
}

/// Runs the whole delivery phase against a hub child started here; the hub is stopped before
/// returning. Partial results are left in `rep` when it fails.
pub async fn run(opts: &Options, dir: &Path, rep: &mut DeliveryReport) -> Result<()> {
    std::fs::create_dir_all(dir.join("hub"))
        .with_context(|| format!("creating {}", dir.join("hub").display()))?;
    let hub = HubProcess::start(
        &opts.hub_bin,
        &dir.join("hub"),
        &opts.hub_heartbeat_interval,
    )
    .await?;
    hub.announce();
    let outcome = hub.supervise(phases(opts, dir, Hubs::one(&hub), rep)).await;
    hub.shutdown().await;
    outcome
}

/// The delivery phase against running hubs, with its repository and secret under `dir`:
/// enroll and open every session through `hubs.sessions`, add the source and post the webhooks
/// through `hubs.hooks`, run the rounds. Partial results are left in `rep` when it fails.
pub async fn phases(
    opts: &Options,
    dir: &Path,
    hubs: Hubs<'_>,
    rep: &mut DeliveryReport,
) -> Result<()> {
    let hub = hubs.sessions;
    let n = opts.sessions;
    rep.sessions_requested = n;
    rep.per_cluster_bundles = opts.per_cluster_bundles;
    rep.poll_interval_secs = opts.poll_interval.as_secs();
    rep.hub_baseline = hub.sample()?;
    let admin = admin_client(hub).await?;
    let hook_admin = if std::ptr::eq(hubs.hooks, hub) {
        admin.clone()
    } else {
        admin_client(hubs.hooks).await?
    };

    // --- The repository and the webhook secret -------------------------------------------
    let (repo, c0) = DeliveryRepo::create(&dir.join("fleet-repo"), opts.per_cluster_bundles)?;
    let secret_path = dir.join("webhook-secret");
    std::fs::write(&secret_path, format!("{HOOK_SECRET}\n"))
        .with_context(|| format!("writing {}", secret_path.display()))?;

    // --- Enroll and open every session ---------------------------------------------------
    let enr = enroll(&admin, n, opts.sources, opts.concurrency).await?;
    rep.enrolled = enr.enrolled.len();
    rep.enroll_failed = enr.failed;
    rep.enroll_per_sec = enr.per_sec();
    enr.check(n)?;
    let fleet = Arc::new(Fleet::default());
    let (tx, events) = mpsc::unbounded_channel();
    println!(
        "{}: opening {} sessions from {} loopback sources",
        prog(),
        enr.enrolled.len(),
        opts.sources
    );
    let opened = enr.open_all(&hub.addr, &fleet, Some(handler(tx))).await;
    drop(enr);
    rep.sessions_opened = opened.sessions.len();
    rep.open_failed = opened.failed;
    rep.handshakes_per_sec = opened.per_sec();
    opened.check(rep.enroll_failed, n)?;
    let sessions = opened.sessions;
    rep.sessions_held = wait_for_gauge(hub, sessions.len(), GAUGE_TIMEOUT).await?;
    for h in hubs.all {
        let text = metrics(h).await?;
        let v = metric(&text, "flotilla_hub_sessions_connected").unwrap_or(0.0);
        rep.sessions_by_hub.push(v.max(0.0) as usize);
    }
    rep.hub_held = hub.sample()?;
    println!(
        "{}: hub holds {} sessions; RSS {:.1} MiB",
        prog(),
        rep.sessions_held,
        rep.hub_held.rss_kib as f64 / 1024.0
    );

    let mut co = Coordinator {
        events,
        fleet: &fleet,
        admin: hook_admin,
        timeout: opts.round_timeout,
        failures: 0,
        failure_examples: Vec::new(),
    };
    let result = delivery_rounds(opts, hubs, &repo, &c0, &secret_path, &mut co, rep).await;
    rep.delivery_failures = co.failures;
    rep.failure_examples = co.failure_examples.clone();
    (rep.sessions_ended_early, rep.ended_examples) = fleet.ended_early();
    if let Ok(text) = metrics(hub).await {
        rep.sessions_held_end =
            metric(&text, "flotilla_hub_sessions_connected").unwrap_or(0.0) as usize;
    }
    if let Ok(text) = metrics(hubs.hooks).await {
        rep.hub_webhooks_ok = metric(&text, "flotilla_hub_webhooks_total{result=\"ok\"}");
    }
    if let Ok(s) = hub.sample() {
        rep.hub_end = s;
    }
    result?;

    // --- Close every session ----------------------------------------------------------------
    flotilla_tests::bench::fleet::close_all(sessions).await;
    check_ended_early(
        rep.sessions_ended_early,
        rep.open_failed + rep.enroll_failed,
        n,
        &rep.ended_examples,
    )
}

async fn delivery_rounds(
    opts: &Options,
    hubs: Hubs<'_>,
    repo: &DeliveryRepo,
    c0: &str,
    secret_path: &Path,
    co: &mut Coordinator<'_>,
    rep: &mut DeliveryReport,
) -> Result<()> {
    let mut admin = co.admin.clone();
    let url = repo.repo.url();

    // --- The webhook source: first sync ---------------------------------------------------
    println!(
        "{}: adding source {HOOK_SOURCE} (webhook; polling every {HOOK_SOURCE_INTERVAL_SECS} s)",
        prog()
    );
    let t0 = Instant::now();
    add_source(
        &mut admin,
        HOOK_SOURCE,
        &url,
        HOOK_SOURCE_INTERVAL_SECS,
        &secret_path.to_string_lossy(),
    )
    .await?;
    let w = co.all_hold(HOOK_SOURCE, c0, t0, t0).await?;
    rep.initial_ms = ms(t0.elapsed());
    rep.bundle_bytes = w.bundle_bytes;
    let mut previous: BTreeSet<String> = w.digests;
    println!(
        "{}: every session ({}) holds the first bundle ({} B, {} distinct digests) {:.0} ms after AddSource",
        prog(),
        w.per_session.len(),
        rep.bundle_bytes,
        previous.len(),
        rep.initial_ms
    );

    // --- Webhook rounds ---------------------------------------------------------------------
    let mut rounds = Vec::new();
    for r in 1..=opts.rounds {
        let commit = repo.commit_round(r)?;
        let body = format!(
            r#"{{"ref":"refs/heads/main","after":"{commit}","repository":{{"full_name":"deliverybench/fleet"}}}}"#
        );
        let sig = github_signature(HOOK_SECRET, body.as_bytes());
        let delivery_id = format!("deliverybench-{r}");
        let t0_wall = SystemTime::now();
        let t0 = Instant::now();
        let (status, answer) = http_post(
            hubs.hooks.http,
            &format!("/hooks/git/{HOOK_SOURCE}"),
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", &delivery_id),
                ("X-Hub-Signature-256", &sig),
            ],
            body.as_bytes(),
        )
        .await?;
        let webhook_ms = ms(t0.elapsed());
        if status != 202 {
            bail!("the webhook was answered {status}: {}", answer.trim());
        }
        let w = co.all_hold(HOOK_SOURCE, &commit, t0, t0).await?;
        let (d, samples) =
            round_detail(hubs, &commit, &w, Some(webhook_ms), t0_wall, &mut previous)
                .with_context(|| format!("round {r}"))?;
        println!(
            "{}: webhook round {r}/{}: {} (POST answered in {webhook_ms:.1} ms{})",
            prog(),
            opts.rounds,
            d.summary(),
            d.writes_note()
        );
        rounds.push((d, samples));
        // Kept up to date, so that a run failing later still reports the rounds it finished.
        rep.webhook = summarise(rounds.clone());
    }

    // --- Polling rounds ---------------------------------------------------------------------
    if opts.poll_rounds == 0 {
        return Ok(());
    }
    println!(
        "{}: replacing source {HOOK_SOURCE} with {POLL_SOURCE} (polling every {} s, no webhook)",
        prog(),
        opts.poll_interval.as_secs()
    );
    admin
        .remove_source(RemoveSourceRequest {
            name: HOOK_SOURCE.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| {
            anyhow!(
                "RemoveSource {HOOK_SOURCE}: {:?}: {}",
                s.code(),
                s.message()
            )
        })?;
    let head = repo.repo.head()?;
    let t0 = Instant::now();
    add_source(
        &mut admin,
        POLL_SOURCE,
        &url,
        opts.poll_interval.as_secs(),
        "",
    )
    .await?;
    co.all_hold(POLL_SOURCE, &head, t0, t0).await?;
    rep.poll_initial_ms = ms(t0.elapsed());
    println!(
        "{}: every session holds {POLL_SOURCE}'s bundle {:.0} ms after AddSource",
        prog(),
        rep.poll_initial_ms
    );
    let mut rounds = Vec::new();
    let interval_ms = opts.poll_interval.as_millis() as u64;
    for r in 1..=opts.poll_rounds {
        // Not synchronisation: a random phase, so that commits land anywhere in the polling
        // cycle instead of at a fixed offset from the last fetch.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..interval_ms))).await;
        let since = Instant::now();
        let commit = repo.commit_round(opts.rounds + r)?;
        let t0_wall = SystemTime::now();
        let t0 = Instant::now();
        let w = co.all_hold(POLL_SOURCE, &commit, since, t0).await?;
        let (d, samples) = round_detail(hubs, &commit, &w, None, t0_wall, &mut previous)
            .with_context(|| format!("poll round {r}"))?;
        println!(
            "{}: poll round {r}/{}: {}{}",
            prog(),
            opts.poll_rounds,
            d.summary(),
            d.writes_note()
        );
        rounds.push((d, samples));
        rep.poll = summarise(rounds.clone());
    }
    Ok(())
}
