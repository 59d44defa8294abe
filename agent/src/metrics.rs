//! Prometheus metrics of the agent, served at `/metrics` on the agent's small HTTP port
//! (`--metrics-listen`, see [`crate::http`]).
//!
//! The reconciler feeds apply durations, drift and the objects by health; the agent's run loop
//! feeds the session state and reconnects. Values derived from time or from the agent's status
//! (seconds since the last successful reconcile, the session state, certificate expiry) are
//! computed when scraped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use flotilla_proto::state::{ObjectHealth, Phase};
use flotilla_proto::v1::ObjectCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::AgentStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// A gauge holding a float.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The object healths summed in `objects{health}`.
pub const HEALTHS: [ObjectHealth; 4] = [
    ObjectHealth::Current,
    ObjectHealth::InProgress,
    ObjectHealth::Failed,
    ObjectHealth::Unknown,
];
/// The app phases counted in `apps{phase}`.
pub const PHASES: [Phase; 3] = [Phase::Applying, Phase::Applied, Phase::Failed];
/// The values of `session_state{state}`.
pub const SESSION_STATES: [&str; 3] = ["connected", "connecting", "offline"];

/// All agent metrics.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// How long one app's apply of its bundle took (inventory, every object, prune).
    pub apply_duration: Histogram,
    /// Applies that ran to the end, by result: `ok` (every object accepted) or `failed`.
    pub applies: Family<ResultLabel, Counter>,
    objects: Family<HealthLabel, Gauge>,
    apps: Family<PhaseLabel, Gauge>,
    /// Objects found drifted from their bundle by drift checks (each time found).
    pub drifted_objects: Counter,
    /// Drifted objects that self-heal re-applied.
    pub healed_objects: Counter,
    last_reconcile_success: FloatGauge,
    seconds_since_last_reconcile: FloatGauge,
    session_state: Family<StateLabel, Gauge>,
    /// Sessions that ended and were dialled again (including failed dials).
    pub session_reconnects: Counter,
    certificate_expiry: FloatGauge,
    /// Unix seconds (f64 bits) of the last reconcile pass that left every app applied; 0: never.
    last_success_bits: AtomicU64,
    /// Whether the agent is dialling or in a session right now.
    attempting: AtomicBool,
    status: OnceLock<watch::Receiver<AgentStatus>>,
    started: Instant,
    /// Spans handed to the session for the hub, and spans dropped because the relay was full.
    spans_relayed: Counter,
    spans_dropped: Counter,
    relay: OnceLock<flotilla_proto::telemetry::SpanRelay>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla_agent");
        // 5 ms … ~164 s, doubling.
        let apply_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        let applies = Family::<ResultLabel, Counter>::default();
        let objects = Family::<HealthLabel, Gauge>::default();
        let apps = Family::<PhaseLabel, Gauge>::default();
        let drifted_objects = Counter::default();
        let healed_objects = Counter::default();
        let last_reconcile_success = FloatGauge::default();
        let seconds_since_last_reconcile = FloatGauge::default();
        let session_state = Family::<StateLabel, Gauge>::default();
        let session_reconnects = Counter::default();
        let certificate_expiry = FloatGauge::default();
        let spans_relayed = Counter::default();
        let spans_dropped = Counter::default();
        registry.register(
            "spans_relayed",
            "Finished spans sent to the hub over the session (relay mode)",
            spans_relayed.clone(),
        );
        registry.register(
            "spans_dropped",
            "Finished spans dropped because the relay queue to the hub was full",
            spans_dropped.clone(),
        );
        registry.register_with_unit(
            "apply_duration",
            "Duration of one app's apply of its bundle (inventory, objects, prune)",
            Unit::Seconds,
            apply_duration.clone(),
        );
        registry.register(
            "applies",
            "Applies that ran to the end, by result (ok, failed)",
            applies.clone(),
        );
        registry.register(
            "objects",
            "Objects of the desired apps by health (current, in_progress, failed, unknown)",
            objects.clone(),
        );
        registry.register(
            "apps",
            "Desired apps by phase (applying, applied, failed)",
            apps.clone(),
        );
        registry.register(
            "drifted_objects",
            "Objects found drifted from their bundle by drift checks",
            drifted_objects.clone(),
        );
        registry.register(
            "healed_objects",
            "Drifted objects re-applied by self-heal",
            healed_objects.clone(),
        );
        registry.register(
            "last_reconcile_success_timestamp_seconds",
            "Unix time of the last reconcile pass that left every desired app applied (0: never)",
            last_reconcile_success.clone(),
        );
        registry.register(
            "seconds_since_last_reconcile",
            "Seconds since the last reconcile pass that left every desired app applied (since start when none did)",
            seconds_since_last_reconcile.clone(),
        );
        registry.register(
            "session_state",
            "1 for the current state of the session to the hub (connected, connecting, offline)",
            session_state.clone(),
        );
        registry.register(
            "session_reconnects",
            "Sessions to the hub that ended and were dialled again",
            session_reconnects.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time when the agent's client certificate expires (0: no certificate yet)",
            certificate_expiry.clone(),
        );
        Self {
            registry,
            apply_duration,
            applies,
            objects,
            apps,
            drifted_objects,
            healed_objects,
            last_reconcile_success,
            seconds_since_last_reconcile,
            session_state,
            session_reconnects,
            certificate_expiry,
            last_success_bits: AtomicU64::new(0f64.to_bits()),
            attempting: AtomicBool::new(false),
            status: OnceLock::new(),
            started: Instant::now(),
            spans_relayed,
            spans_dropped,
            relay: OnceLock::new(),
        }
    }

    /// Lets scrapes read the span relay's counters.
    pub fn attach_relay(&self, relay: flotilla_proto::telemetry::SpanRelay) {
        let _ = self.relay.set(relay);
    }

    /// Lets scrapes read the agent's status (session state, certificate expiry). The first
    /// receiver attached stays.
    pub fn attach_status(&self, status: watch::Receiver<AgentStatus>) {
        let _ = self.status.set(status);
    }

    /// Records that the agent is dialling or in a session (`true`) or waiting to redial.
    pub fn set_attempting(&self, attempting: bool) {
        self.attempting.store(attempting, Ordering::Relaxed);
    }

    /// One finished apply of one app.
    pub fn observe_apply(&self, seconds: f64, ok: bool) {
        self.apply_duration.observe(seconds);
        self.applies
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// The reconciler's view after a pass: each desired app's phase and object counts.
    /// `desired_known`: a desired state has been taken (before that nothing counts as a
    /// successful reconcile).
    pub fn observe_pass(
        &self,
        desired_known: bool,
        apps: impl IntoIterator<Item = (Phase, ObjectCounts)>,
    ) {
        let mut health = [0i64; 4];
        let mut phases = [0i64; 3];
        let mut all_applied = true;
        for (phase, c) in apps {
            health[0] += i64::from(c.current);
            health[1] += i64::from(c.in_progress);
            health[2] += i64::from(c.failed);
            health[3] += i64::from(c.unknown);
            if let Some(i) = PHASES.iter().position(|p| *p == phase) {
                phases[i] += 1;
            }
            all_applied &= phase == Phase::Applied;
        }
        for (name, n) in HEALTHS.iter().zip(health) {
            self.objects
                .get_or_create(&HealthLabel {
                    health: name.as_str().into(),
                })
                .set(n);
        }
        for (name, n) in PHASES.iter().zip(phases) {
            self.apps
                .get_or_create(&PhaseLabel {
                    phase: name.as_str().into(),
                })
                .set(n);
        }
        if desired_known && all_applied {
            let now = unix_secs(SystemTime::now());
            self.last_success_bits
                .store(now.to_bits(), Ordering::Relaxed);
            self.last_reconcile_success.set(now);
        }
    }

    /// Unix seconds of the last successful reconcile pass (0: never).
    pub fn last_reconcile_success(&self) -> f64 {
        f64::from_bits(self.last_success_bits.load(Ordering::Relaxed))
    }

    /// The session state now: `connected`, `connecting` or `offline`.
    pub fn session_state(&self) -> &'static str {
        let connected = self.status.get().is_some_and(|s| s.borrow().connected);
        if connected {
            "connected"
        } else if self.attempting.load(Ordering::Relaxed) {
            "connecting"
        } else {
            "offline"
        }
    }

    /// Sets what is computed at scrape time.
    fn refresh(&self) {
        let last = self.last_reconcile_success();
        let since = if last > 0.0 {
            (unix_secs(SystemTime::now()) - last).max(0.0)
        } else {
            self.started.elapsed().as_secs_f64()
        };
        self.seconds_since_last_reconcile.set(since);
        let state = self.session_state();
        for s in SESSION_STATES {
            self.session_state
                .get_or_create(&StateLabel { state: s.into() })
                .set(i64::from(s == state));
        }
        let expiry_ms = self
            .status
            .get()
            .map(|s| s.borrow().cert_not_after_ms)
            .unwrap_or(0);
        self.certificate_expiry.set(expiry_ms as f64 / 1000.0);
        if let Some(r) = self.relay.get() {
            sync_counter(&self.spans_relayed, r.taken_total());
            sync_counter(&self.spans_dropped, r.dropped_total());
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        self.refresh();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Brings a counter up to `total`, a count kept elsewhere.
fn sync_counter(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// A shared handle on the agent's metrics.
pub type SharedMetrics = Arc<AgentMetrics>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn counts(current: u32, in_progress: u32, failed: u32) -> ObjectCounts {
        ObjectCounts {
            total: current + in_progress + failed,
            current,
            in_progress,
            failed,
            unknown: 0,
        }
    }

    #[test]
    fn passes_sum_objects_and_time_successes() {
        let m = AgentMetrics::new();
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "flotilla_agent_last_reconcile_success_timestamp_seconds"
            ),
            Some(0.0),
            "{text}"
        );
        // Before any desired state, nothing counts as a success.
        m.observe_pass(false, []);
        assert_eq!(m.last_reconcile_success(), 0.0);
        m.observe_pass(
            true,
            [
                (Phase::Applied, counts(3, 1, 0)),
                (Phase::Applying, counts(0, 0, 2)),
            ],
        );
        assert_eq!(m.last_reconcile_success(), 0.0, "one app is still applying");
        let text = m.encode();
        for (health, n) in [("current", 3.0), ("in_progress", 1.0), ("failed", 2.0)] {
            assert_eq!(
                sample(
                    &text,
                    &format!("flotilla_agent_objects{{health=\"{health}\"}}")
                ),
                Some(n),
                "{text}"
            );
        }
        assert_eq!(
            sample(&text, "flotilla_agent_apps{phase=\"applying\"}"),
            Some(1.0)
        );
        m.observe_pass(
            true,
            [
                (Phase::Applied, counts(3, 0, 0)),
                (Phase::Applied, counts(2, 0, 0)),
            ],
        );
        assert!(m.last_reconcile_success() > 0.0);
        let text = m.encode();
        assert!(
            sample(&text, "flotilla_agent_seconds_since_last_reconcile").unwrap() < 3600.0,
            "{text}"
        );
        assert_eq!(
            sample(&text, "flotilla_agent_objects{health=\"current\"}"),
            Some(5.0)
        );
    }

    #[test]
    fn session_state_follows_the_status_and_the_run_loop() {
        let m = AgentMetrics::new();
        let (tx, rx) = watch::channel(AgentStatus::default());
        m.attach_status(rx);
        let state = |m: &AgentMetrics, s: &str| {
            sample(
                &m.encode(),
                &format!("flotilla_agent_session_state{{state=\"{s}\"}}"),
            )
        };
        assert_eq!(state(&m, "offline"), Some(1.0));
        assert_eq!(state(&m, "connected"), Some(0.0));
        m.set_attempting(true);
        assert_eq!(state(&m, "connecting"), Some(1.0));
        assert_eq!(state(&m, "offline"), Some(0.0));
        tx.send_modify(|s| {
            s.connected = true;
            s.cert_not_after_ms = 2_000_000;
        });
        assert_eq!(state(&m, "connected"), Some(1.0));
        assert_eq!(state(&m, "connecting"), Some(0.0));
        assert_eq!(
            sample(
                &m.encode(),
                "flotilla_agent_certificate_expiry_timestamp_seconds"
            ),
            Some(2000.0)
        );
        m.observe_apply(0.25, true);
        m.observe_apply(0.5, false);
        let text = m.encode();
        assert_eq!(
            sample(&text, "flotilla_agent_apply_duration_seconds_count"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "flotilla_agent_applies_total{result=\"failed\"}"),
            Some(1.0)
        );
    }
}
