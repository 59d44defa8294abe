//! What each lightweight session does with a new `DesiredState`, like an agent whose applies
//! succeed at once: fetch every bundle it does not hold yet, all in one `FetchBundles` call (unless
//! `--no-fetch`), check the sha256 of its gunzipped content against the digest, `Ack` the
//! generation, and report every app whose revision or digest changed — and only those, as the
//! real agent does — as `applied` and `healthy` (`replace: false`). Apps that left the desired
//! state are reported `removed`. The rollout engine gates each batch on exactly these reports.
//!
//! Every change taken is also sent to the coordinator as an [`Event`] with the instant it was
//! held, so that it can tell when every session holds a revision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flotilla_proto::clock::unix_ms;
use flotilla_proto::state::{Health, Phase};
use flotilla_proto::v1::agent_message::Msg as AgentMsg;
use flotilla_proto::v1::{Ack, AgentMessage, AppStatus, StatusReport};
use flotilla_tests::bench::bundle::{fetch_many_verified, fetch_verified};
use flotilla_tests::bench::client::{DesiredCall, DesiredHandler, DesiredOutcome};
use tokio::sync::mpsc;

/// One bundle fetch may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What a session tells the coordinator.
#[derive(Debug)]
pub enum Event {
    /// The session took a desired state: these apps changed, as (app, revision), and are held
    /// (fetched and verified) since `at`.
    Held {
        cluster: String,
        apps: Vec<(String, String)>,
        at: SystemTime,
    },
    /// Some bundle could not be fetched or verified; the apps were reported `failed`.
    Failed { cluster: String, message: String },
}

/// What every session did so far, summed.
#[derive(Debug, Default)]
pub struct Counters {
    /// Desired states taken (each one new generation sent by the hub).
    pub desired: AtomicU64,
    /// Status reports sent.
    pub reports: AtomicU64,
    /// Bundle fetch calls (`FetchBundle`, or `FetchBundles` for several bundles).
    pub fetches: AtomicU64,
}

/// A snapshot of [`Counters`], or the difference of two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub desired: u64,
    pub reports: u64,
    pub fetches: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        Counts {
            desired: self.desired.load(Ordering::Relaxed),
            reports: self.reports.load(Ordering::Relaxed),
            fetches: self.fetches.load(Ordering::Relaxed),
        }
    }
}

impl Counts {
    pub fn since(self, before: Counts) -> Counts {
        Counts {
            desired: self.desired - before.desired,
            reports: self.reports - before.reports,
            fetches: self.fetches - before.fetches,
        }
    }
}

/// What one session last reported, per app: fingerprints of the revision and of the digest.
type Reported = BTreeMap<String, (u64, u64)>;

/// State shared by every session's handler calls.
struct Shared {
    events: mpsc::UnboundedSender<Event>,
    fetch: bool,
    counters: Arc<Counters>,
    /// Per cluster (a session's calls never overlap, so a cluster's entry has one user).
    sessions: Mutex<HashMap<String, Reported>>,
}

/// The handler given to every session; it counts what it does in `counters`.
pub fn handler(
    events: mpsc::UnboundedSender<Event>,
    fetch: bool,
    counters: Arc<Counters>,
) -> DesiredHandler {
    let shared = Arc::new(Shared {
        events,
        fetch,
        counters,
        sessions: Mutex::new(HashMap::new()),
    });
    Arc::new(move |call: DesiredCall| Box::pin(take_desired(call, shared.clone())))
}

fn fingerprint(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn status(app: &str, revision: &str, digest: &str, phase: Phase, message: String) -> AppStatus {
    let healthy = phase == Phase::Applied;
    AppStatus {
        app: app.to_string(),
        revision: revision.to_string(),
        bundle_digest: digest.to_string(),
        phase: phase.into(),
        message,
        observed_unix_ms: unix_ms(SystemTime::now()),
        health: if healthy {
            Health::Healthy
        } else {
            Health::Unknown
        }
        .into(),
        ..Default::default()
    }
}

async fn take_desired(call: DesiredCall, shared: Arc<Shared>) -> DesiredOutcome {
    let DesiredCall {
        cluster,
        mut client,
        desired,
        ..
    } = call;
    shared.counters.desired.fetch_add(1, Ordering::Relaxed);
    let before: Reported = shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&cluster)
        .unwrap_or_default();
    // Digests this session holds: those of the apps it runs, plus those fetched now.
    let mut held: HashSet<u64> = before.values().map(|(_, d)| *d).collect();
    let mut after = Reported::new();
    let mut statuses = Vec::new();
    let mut changed = Vec::new();
    let mut failures = Vec::new();
    // Every bundle to fetch in one `FetchBundles` call, as the agent does; one that call did
    // not deliver is fetched on its own below.
    let mut batch = HashMap::new();
    if shared.fetch {
        let missing: Vec<&str> = desired
            .apps
            .iter()
            .filter(|a| {
                let fp = (fingerprint(&a.revision), fingerprint(&a.bundle_digest));
                before.get(&a.app) != Some(&fp) && !held.contains(&fp.1)
            })
            .map(|a| a.bundle_digest.as_str())
            .collect();
        if missing.len() > 1 {
            shared.counters.fetches.fetch_add(1, Ordering::Relaxed);
            if let Ok(r) =
                tokio::time::timeout(FETCH_TIMEOUT, fetch_many_verified(&mut client, &missing))
                    .await
            {
                batch = r;
            }
        }
    }
    for a in &desired.apps {
        let fp = (fingerprint(&a.revision), fingerprint(&a.bundle_digest));
        if before.get(&a.app) == Some(&fp) {
            after.insert(a.app.clone(), fp);
            continue;
        }
        let got = if !shared.fetch || held.contains(&fp.1) {
            Ok(())
        } else if let Some(Ok(_size)) = batch.get(&a.bundle_digest) {
            Ok(())
        } else {
            shared.counters.fetches.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(FETCH_TIMEOUT, fetch_verified(&mut client, &a.bundle_digest))
                .await
            {
                Ok(r) => r.map(|_size| ()),
                Err(_) => Err(format!("no bundle within {FETCH_TIMEOUT:?}")),
            }
        };
        match got {
            Ok(()) => {
                held.insert(fp.1);
                after.insert(a.app.clone(), fp);
                changed.push((a.app.clone(), a.revision.clone()));
                statuses.push(status(
                    &a.app,
                    &a.revision,
                    &a.bundle_digest,
                    Phase::Applied,
                    "applied (promotebench)".into(),
                ));
            }
            Err(e) => {
                failures.push(format!("{} {}: {e}", a.app, a.bundle_digest));
                statuses.push(status(
                    &a.app,
                    &a.revision,
                    &a.bundle_digest,
                    Phase::Failed,
                    e,
                ));
            }
        }
    }
    for app in before.keys() {
        if !desired.apps.iter().any(|a| a.app == *app) {
            statuses.push(status(app, "", "", Phase::Removed, String::new()));
        }
    }
    let at = SystemTime::now();
    shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(cluster.clone(), after);
    let complete = failures.is_empty();
    let mut messages = Vec::with_capacity(2);
    if complete {
        messages.push(AgentMessage {
            msg: Some(AgentMsg::Ack(Ack {
                generation: desired.generation,
            })),
        });
    }
    // In reports of at most MAX_REPORT_BYTES, as the agent sends them.
    for report in StatusReport::split(desired.generation, false, statuses) {
        shared.counters.reports.fetch_add(1, Ordering::Relaxed);
        messages.push(AgentMessage {
            msg: Some(AgentMsg::Status(report)),
        });
    }
    let event = if complete {
        Event::Held {
            cluster,
            apps: changed,
            at,
        }
    } else {
        Event::Failed {
            cluster,
            message: failures.join("; "),
        }
    };
    let _ = shared.events.send(event);
    DesiredOutcome {
        messages,
        // This module keeps track of what is held; the session's own cache stays empty.
        holds: Vec::new(),
        complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_say_healthy_only_when_applied() {
        let s = status("a", "c1", "sha256:x", Phase::Applied, String::new());
        assert_eq!((s.phase(), s.health()), (Phase::Applied, Health::Healthy));
        let f = status("a", "c1", "sha256:x", Phase::Failed, "boom".into());
        assert_eq!(f.health(), Health::Unknown);
    }
}
