//! Prometheus metrics of the hub, served on the HTTP side port at `/metrics`.
//!
//! Most series are updated where things happen (sessions, joins, handshakes, status reports,
//! store calls, rollout stage transitions). The per-app and per-cluster gauges
//! (`app_clusters`, `clusters`) are computed at scrape time from the hub's in-memory state
//! ([`FleetSnapshot::collect`]), so status reports cost nothing extra.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use flotilla_proto::state::{AppState, Phase};

use crate::desired::DesiredStates;
use crate::error::HubError;
use crate::rollout::Rollouts;
use crate::rollout::plan::{Rollout, StageState};
use crate::session::Sessions;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FractionLabel {
    pub fraction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppClustersLabels {
    pub app: String,
    pub region: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClustersLabels {
    pub region: String,
    pub state: String,
}

/// A histogram family whose histograms share one bucket layout.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Store calls: 50 µs … ~0.8 s (doubling), then +Inf.
fn store_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

/// Rollout durations: one second to a day.
fn rollout_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
        14400.0, 43200.0, 86400.0,
    ])
}

/// The thresholds of `rollout_healthy_fraction_seconds`, lowest first.
pub const HEALTHY_FRACTIONS: [(f64, &str); 3] = [(0.5, "0.5"), (0.95, "0.95"), (1.0, "1")];

/// The region label of a cluster: its `region` label, empty when it has none.
pub const REGION_LABEL: &str = "region";

/// All hub metrics.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub sessions_connected: Gauge,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub joins: Family<ResultLabel, Counter>,
    pub heartbeats: Counter,
    pub renewals: Counter,
    pub rejected_messages: Counter,
    pub webhooks: Family<ResultLabel, Counter>,
    /// Failed TLS handshakes by a stable reason ([`handshake_failure_reason`]).
    pub tls_handshake_failures: Family<ReasonLabel, Counter>,
    /// Status reports received from agents, and the app statuses they carried.
    pub status_reports: Counter,
    pub status_report_apps: Counter,
    /// Latency of every call on the store, by operation (see `store::timed`).
    pub store_operation_duration: HistogramFamily<OpLabel>,
    pub store_errors: Family<OpLabel, Counter>,
    /// How long rollout stages took, from the stage's start (after any approval) to its end.
    pub rollout_stage_duration: HistogramFamily<StageLabels>,
    pub rollouts_started: Counter,
    pub rollouts_finished: Family<ResultLabel, Counter>,
    /// Time from a revision's offer until the share of its clusters that run it applied and
    /// healthy first reached each threshold (kept in memory; lost on restart).
    pub rollout_healthy_fraction: HistogramFamily<FractionLabel>,
    /// Set at scrape time from a [`FleetSnapshot`].
    app_clusters: Family<AppClustersLabels, Gauge>,
    clusters: Family<ClustersLabels, Gauge>,
    /// Held from setting the scrape-time gauges until they are encoded, so two concurrent
    /// scrapes never see each other's half-filled families.
    scrape: std::sync::Mutex<()>,
    /// Per app: the rollout followed (revision, offered at) and how many of
    /// [`HEALTHY_FRACTIONS`] it crossed.
    healthy_crossed: std::sync::Mutex<HashMap<String, (String, u64, usize)>>,
    /// Agents' spans relayed to the collector, by result (`exported`, `dropped`), read from
    /// the forwarder at scrape time.
    relayed_spans: Family<ResultLabel, Counter>,
    forwarder: std::sync::OnceLock<flotilla_proto::telemetry::SpanForwarder>,
    /// Spans agents report they dropped (their relay queue was full).
    pub agent_dropped_spans: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla_hub");
        let sessions_connected = Gauge::default();
        let tls_handshakes = Family::<ResultLabel, Counter>::default();
        let joins = Family::<ResultLabel, Counter>::default();
        let heartbeats = Counter::default();
        let renewals = Counter::default();
        let rejected_messages = Counter::default();
        let webhooks = Family::<ResultLabel, Counter>::default();
        let tls_handshake_failures = Family::<ReasonLabel, Counter>::default();
        let status_reports = Counter::default();
        let status_report_apps = Counter::default();
        let store_operation_duration =
            HistogramFamily::<OpLabel>::new_with_constructor(store_histogram as fn() -> Histogram);
        let store_errors = Family::<OpLabel, Counter>::default();
        let rollout_stage_duration = HistogramFamily::<StageLabels>::new_with_constructor(
            rollout_histogram as fn() -> Histogram,
        );
        let rollouts_started = Counter::default();
        let rollouts_finished = Family::<ResultLabel, Counter>::default();
        let rollout_healthy_fraction = HistogramFamily::<FractionLabel>::new_with_constructor(
            rollout_histogram as fn() -> Histogram,
        );
        let app_clusters = Family::<AppClustersLabels, Gauge>::default();
        let clusters = Family::<ClustersLabels, Gauge>::default();
        registry.register(
            "webhooks",
            "Git webhooks received, by result",
            webhooks.clone(),
        );
        registry.register(
            "sessions_connected",
            "Agent sessions currently open on this hub",
            sessions_connected.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the gRPC port, by result",
            tls_handshakes.clone(),
        );
        registry.register("joins", "Registration.Join calls, by result", joins.clone());
        registry.register(
            "heartbeats",
            "Agent heartbeats received",
            heartbeats.clone(),
        );
        registry.register(
            "renewals",
            "Certificates renewed over sessions",
            renewals.clone(),
        );
        registry.register(
            "rejected_messages",
            "Agent messages refused as malformed, oversized or out of place",
            rejected_messages.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes on the gRPC port, by reason",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "status_reports",
            "Status reports received from agents",
            status_reports.clone(),
        );
        registry.register(
            "status_report_apps",
            "App statuses carried by the status reports received",
            status_report_apps.clone(),
        );
        registry.register_with_unit(
            "store_operation_duration",
            "Latency of store calls, by operation",
            Unit::Seconds,
            store_operation_duration.clone(),
        );
        registry.register(
            "store_errors",
            "Store calls that returned an error, by operation",
            store_errors.clone(),
        );
        registry.register_with_unit(
            "rollout_stage_duration",
            "Duration of finished rollout stages, from the stage's start to succeeded or failed",
            Unit::Seconds,
            rollout_stage_duration.clone(),
        );
        registry.register(
            "rollouts_started",
            "Rollouts of new revisions started",
            rollouts_started.clone(),
        );
        registry.register(
            "rollouts_finished",
            "Rollouts that ended, by result (succeeded, failed, rolled_back, superseded)",
            rollouts_finished.clone(),
        );
        registry.register_with_unit(
            "rollout_healthy_fraction",
            "Time from a revision's offer until the given fraction of its clusters first ran it applied and healthy",
            Unit::Seconds,
            rollout_healthy_fraction.clone(),
        );
        registry.register(
            "app_clusters",
            "Clusters per app and region: desired (have a desired entry), applied (report it applied at that revision), healthy (applied and healthy), failed (report it failed at that revision)",
            app_clusters.clone(),
        );
        registry.register(
            "clusters",
            "Registered clusters per region and state (connected, disconnected, pending, revoked)",
            clusters.clone(),
        );
        let relayed_spans = Family::<ResultLabel, Counter>::default();
        let agent_dropped_spans = Counter::default();
        registry.register(
            "relayed_spans",
            "Agents' spans relayed over their sessions to the trace collector, by result (exported, dropped)",
            relayed_spans.clone(),
        );
        registry.register(
            "agent_dropped_spans",
            "Spans agents report they dropped because their relay queue was full",
            agent_dropped_spans.clone(),
        );
        Self {
            registry,
            sessions_connected,
            tls_handshakes,
            joins,
            heartbeats,
            renewals,
            rejected_messages,
            webhooks,
            tls_handshake_failures,
            status_reports,
            status_report_apps,
            store_operation_duration,
            store_errors,
            rollout_stage_duration,
            rollouts_started,
            rollouts_finished,
            rollout_healthy_fraction,
            app_clusters,
            clusters,
            scrape: std::sync::Mutex::new(()),
            healthy_crossed: Default::default(),
            relayed_spans,
            forwarder: Default::default(),
            agent_dropped_spans,
        }
    }

    /// Counts a failed handshake by reason, and in `tls_handshakes` as `result="timeout"`
    /// (reason `timeout`) or `result="failed"` (any other reason).
    pub fn count_handshake_failure(&self, reason: &str) {
        self.count_handshake(if reason == "timeout" {
            "timeout"
        } else {
            "failed"
        });
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts one status report with `apps` app statuses.
    pub fn count_status_report(&self, apps: usize) {
        self.status_reports.inc();
        self.status_report_apps.inc_by(apps as u64);
    }

    /// Observes what one change of an app's rollout record finished: stages that ended
    /// (duration by stage and result), a rollout that ended or was superseded, one that
    /// started. Call after the change is persisted.
    pub fn observe_rollout(&self, before: Option<&Rollout>, after: Option<&Rollout>) {
        let same =
            |b: &Rollout, a: &Rollout| b.revision == a.revision && b.started_ms == a.started_ms;
        match (before, after) {
            (Some(b), Some(a)) if same(b, a) => {
                let done = |s: StageState| matches!(s, StageState::Succeeded | StageState::Failed);
                for (sb, sa) in b.stages.iter().zip(&a.stages) {
                    if done(sb.state) || !done(sa.state) {
                        continue;
                    }
                    if let (Some(start), Some(end)) = (sa.started_ms, sa.finished_ms) {
                        self.rollout_stage_duration
                            .get_or_create(&StageLabels {
                                stage: sa.name.clone(),
                                result: sa.state.as_str().into(),
                            })
                            .observe(end.saturating_sub(start) as f64 / 1000.0);
                    }
                }
                if b.state.in_flight() && !a.state.in_flight() {
                    self.count_rollout_finished(a.state.as_str());
                }
            }
            (b, a) => {
                if b.is_some_and(|b| b.state.in_flight()) {
                    self.count_rollout_finished("superseded");
                }
                if a.is_some_and(|a| a.state.in_flight()) {
                    self.rollouts_started.inc();
                }
            }
        }
    }

    fn count_rollout_finished(&self, result: &str) {
        self.rollouts_finished
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition, with the scrape-time gauges set from `fleet` (left out
    /// when it is `None`, e.g. when the hub's state could not be read).
    pub fn encode_with(&self, fleet: Option<&FleetSnapshot>) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.app_clusters.clear();
        self.clusters.clear();
        if let Some(f) = fleet {
            for ((app, region), c) in &f.app_clusters {
                for (state, n) in [
                    ("desired", c.desired),
                    ("applied", c.applied),
                    ("healthy", c.healthy),
                    ("failed", c.failed),
                ] {
                    self.app_clusters
                        .get_or_create(&AppClustersLabels {
                            app: app.clone(),
                            region: region.clone(),
                            state: state.into(),
                        })
                        .set(n);
                }
            }
            for ((region, state), n) in &f.clusters {
                self.clusters
                    .get_or_create(&ClustersLabels {
                        region: region.clone(),
                        state: (*state).into(),
                    })
                    .set(*n);
            }
        }
        if let Some(f) = self.forwarder.get() {
            for (result, total) in [("exported", f.forwarded()), ("dropped", f.dropped())] {
                let c = self.relayed_spans.get_or_create(&ResultLabel {
                    result: result.into(),
                });
                let now = c.get();
                if total > now {
                    c.inc_by(total - now);
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Lets scrapes read the relayed-span counters.
    pub fn attach_forwarder(&self, f: flotilla_proto::telemetry::SpanForwarder) {
        let _ = self.forwarder.set(f);
    }

    pub fn count_handshake(&self, result: &str) {
        self.tls_handshakes
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn count_join(&self, result: &str) {
        self.joins
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition (without the scrape-time fleet gauges).
    pub fn encode(&self) -> String {
        self.encode_with(None)
    }
}

impl Metrics {
    /// Observes the time from a rollout's offer until the share of its clusters that run its
    /// revision applied and healthy (`healthy` of `total`) first reaches each of
    /// [`HEALTHY_FRACTIONS`]. Crossings are remembered per app in memory only: a rollout that
    /// began before `since_ms` (this process's start) does not observe the thresholds it had
    /// already crossed when first seen, only the later ones.
    pub fn observe_healthy_fraction(
        &self,
        app: &str,
        rollout: &Rollout,
        healthy: usize,
        total: usize,
        now_ms: u64,
        since_ms: u64,
    ) {
        if total == 0 {
            return;
        }
        let reached = HEALTHY_FRACTIONS
            .iter()
            .take_while(|(f, _)| healthy as f64 >= f * total as f64 - 1e-9)
            .count();
        let mut crossed = self
            .healthy_crossed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fresh = crossed.get(app).is_none_or(|(rev, started, _)| {
            *rev != rollout.revision || *started != rollout.started_ms
        });
        if fresh {
            let already = if rollout.started_ms < since_ms {
                reached
            } else {
                0
            };
            crossed.insert(
                app.to_string(),
                (rollout.revision.clone(), rollout.started_ms, already),
            );
        }
        let entry = crossed.get_mut(app).expect("inserted above");
        while entry.2 < reached {
            let (_, label) = HEALTHY_FRACTIONS[entry.2];
            self.rollout_healthy_fraction
                .get_or_create(&FractionLabel {
                    fraction: label.into(),
                })
                .observe(now_ms.saturating_sub(rollout.started_ms) as f64 / 1000.0);
            entry.2 += 1;
        }
    }
}

/// A stable, low-cardinality reason for a failed TLS handshake on the hub's port.
pub fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as R};
    use std::io::ErrorKind as K;
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<R>()) {
        return match r {
            R::InvalidCertificate(c) => match c {
                C::UnknownIssuer => "unknown_ca",
                C::Expired | C::ExpiredContext { .. } => "expired",
                C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
                C::Revoked => "revoked",
                _ => "bad_certificate",
            },
            R::NoCertificatesPresented => "no_certificate",
            // The client refused the hub (e.g. it does not trust the hub's CA).
            R::AlertReceived(_) => "peer_alert",
            _ => "protocol",
        };
    }
    match e.kind() {
        K::UnexpectedEof => "eof",
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
        _ => "other",
    }
}

/// What the hub's state should be read from at scrape time.
#[derive(Clone, Debug)]
pub struct FleetSources {
    pub registry: crate::registry::Registry,
    pub sessions: Arc<Sessions>,
    pub rollouts: Rollouts,
    pub desired: DesiredStates,
}

/// Clusters of one app in one region, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppCounts {
    pub desired: i64,
    pub applied: i64,
    pub healthy: i64,
    pub failed: i64,
}

/// The scrape-time view of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetSnapshot {
    /// (app, region) → clusters by state.
    pub app_clusters: BTreeMap<(String, String), AppCounts>,
    /// (region, cluster state) → registered clusters.
    pub clusters: BTreeMap<(String, &'static str), i64>,
}

impl FleetSources {
    /// Reads the fleet from memory: rollout records (which say each cluster's desired entry),
    /// the status cache (a cluster's status is read from the store once, then kept) and the
    /// cluster list (for regions and states). Linear in apps × clusters, with no work per
    /// status report.
    pub async fn snapshot(&self) -> Result<FleetSnapshot, HubError> {
        let records = self.registry.list_clusters().await?;
        let mut region_of: HashMap<String, String> = HashMap::with_capacity(records.len());
        let mut snap = FleetSnapshot::default();
        for rec in &records {
            let region = rec.labels.get(REGION_LABEL).cloned().unwrap_or_default();
            let state = rec.state(self.sessions.get(&rec.name).is_some());
            *snap.clusters.entry((region.clone(), state)).or_insert(0) += 1;
            region_of.insert(rec.name.clone(), region);
        }
        let mut statuses: HashMap<String, Arc<crate::desired::StatusRecord>> = HashMap::new();
        for rec in self.rollouts.records_shared().await? {
            let Some(newest) = rec.renders.last() else {
                continue;
            };
            let names: std::collections::BTreeSet<&String> =
                newest.entries.keys().chain(rec.pins.keys()).collect();
            let mut per_region: HashMap<&str, AppCounts> = HashMap::new();
            for cluster in names {
                let Some(entry) = rec.desired_for(cluster) else {
                    continue;
                };
                let region = region_of.get(cluster).map(String::as_str).unwrap_or("");
                let counts = per_region.entry(region).or_default();
                counts.desired += 1;
                let status = match statuses.get(cluster) {
                    Some(s) => s.clone(),
                    None => {
                        let s = self.desired.status_shared(cluster).await?;
                        statuses.insert(cluster.clone(), s.clone());
                        s
                    }
                };
                let Ok(i) = status
                    .apps
                    .binary_search_by(|a| a.app.as_str().cmp(&rec.app))
                else {
                    continue;
                };
                let a = &status.apps[i];
                if a.revision != entry.revision || a.bundle_digest != entry.bundle_digest {
                    continue;
                }
                match a.phase {
                    Phase::Applied => {
                        counts.applied += 1;
                        if a.healthy() {
                            counts.healthy += 1;
                        }
                    }
                    Phase::Failed => counts.failed += 1,
                    _ => {}
                }
            }
            for (region, counts) in per_region {
                snap.app_clusters
                    .insert((rec.app.clone(), region.to_string()), counts);
            }
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::plan::RolloutState;
    use std::io::{Error, ErrorKind};

    fn tls(e: rustls::Error) -> Error {
        Error::new(ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_have_stable_reasons() {
        use rustls::CertificateError as C;
        let cases = [
            (
                tls(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
                "unknown_ca",
            ),
            (
                tls(rustls::Error::InvalidCertificate(C::Expired)),
                "expired",
            ),
            (
                tls(rustls::Error::InvalidCertificate(C::NotValidYet)),
                "not_yet_valid",
            ),
            (
                tls(rustls::Error::InvalidCertificate(C::Revoked)),
                "revoked",
            ),
            (
                tls(rustls::Error::InvalidCertificate(C::BadSignature)),
                "bad_certificate",
            ),
            (
                tls(rustls::Error::InvalidCertificate(C::BadEncoding)),
                "bad_certificate",
            ),
            (
                tls(rustls::Error::NoCertificatesPresented),
                "no_certificate",
            ),
            (
                tls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                "peer_alert",
            ),
            (
                tls(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                "protocol",
            ),
            (tls(rustls::Error::DecryptError), "protocol"),
            (
                Error::new(ErrorKind::UnexpectedEof, "tls handshake eof"),
                "eof",
            ),
            (Error::from(ErrorKind::ConnectionReset), "reset"),
            (Error::from(ErrorKind::BrokenPipe), "reset"),
            (Error::other("something else"), "other"),
        ];
        for (e, want) in cases {
            assert_eq!(handshake_failure_reason(&e), want, "{e:?}");
        }
    }

    #[test]
    fn refused_joins_name_their_reason() {
        use crate::ca::CaError;
        let cases = [
            (HubError::UnknownToken, "unknown_token"),
            (HubError::TokenUsed, "token_used"),
            (HubError::Ca(CaError::CsrMalformed("x".into())), "bad_csr"),
            (HubError::ClusterRevoked("c".into()), "cluster_revoked"),
        ];
        let m = Metrics::new();
        for (e, want) in cases {
            assert_eq!(e.metric_label(), want);
            m.count_join(e.metric_label());
        }
        let text = m.encode();
        assert_eq!(
            sample(&text, "flotilla_hub_joins_total{result=\"bad_csr\"}"),
            Some(1.0),
            "{text}"
        );
    }

    /// The value of one sample line `name{labels} value` of an exposition.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn rollout(
        stages: &[(&str, StageState, Option<u64>, Option<u64>)],
        state: RolloutState,
    ) -> Rollout {
        Rollout {
            revision: "r1".into(),
            state,
            stages: stages
                .iter()
                .map(|(name, st, start, end)| crate::rollout::plan::StageRun {
                    name: (*name).into(),
                    state: *st,
                    approval: false,
                    soak_ms: 0,
                    max_parallel: crate::render::CountOrPercent::Percent(100),
                    clusters: vec!["c".into()],
                    updated: Default::default(),
                    batch: vec![],
                    soak_until_ms: None,
                    approved_by: None,
                    started_ms: *start,
                    finished_ms: *end,
                    failures: Default::default(),
                })
                .collect(),
            current: 0,
            started_ms: 1_000,
            finished_ms: None,
            message: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn stage_durations_and_results_are_observed_once() {
        let m = Metrics::new();
        let started = rollout(
            &[
                ("canary", StageState::Pending, None, None),
                ("prod", StageState::Pending, None, None),
            ],
            RolloutState::Progressing,
        );
        m.observe_rollout(None, Some(&started));
        let canary_done = rollout(
            &[
                ("canary", StageState::Succeeded, Some(2_000), Some(4_500)),
                ("prod", StageState::Progressing, Some(4_500), None),
            ],
            RolloutState::Progressing,
        );
        m.observe_rollout(Some(&started), Some(&canary_done));
        // The same record again: nothing new ended.
        m.observe_rollout(Some(&canary_done), Some(&canary_done));
        let all_done = rollout(
            &[
                ("canary", StageState::Succeeded, Some(2_000), Some(4_500)),
                ("prod", StageState::Failed, Some(4_500), Some(10_500)),
            ],
            RolloutState::RolledBack,
        );
        m.observe_rollout(Some(&canary_done), Some(&all_done));
        // A newer revision replacing one in flight supersedes it.
        let mut newer = started.clone();
        newer.revision = "r2".into();
        m.observe_rollout(Some(&canary_done), Some(&newer));
        let text = m.encode();
        let h = "flotilla_hub_rollout_stage_duration_seconds";
        assert_eq!(
            sample(
                &text,
                &format!("{h}_count{{stage=\"canary\",result=\"succeeded\"}}")
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("{h}_sum{{stage=\"canary\",result=\"succeeded\"}}")
            ),
            Some(2.5)
        );
        assert_eq!(
            sample(
                &text,
                &format!("{h}_sum{{stage=\"prod\",result=\"failed\"}}")
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(&text, "flotilla_hub_rollouts_started_total"),
            Some(2.0)
        );
        for (result, n) in [("rolled_back", 1.0), ("superseded", 1.0)] {
            assert_eq!(
                sample(
                    &text,
                    &format!("flotilla_hub_rollouts_finished_total{{result=\"{result}\"}}")
                ),
                Some(n),
                "{text}"
            );
        }
    }

    #[test]
    fn healthy_fractions_are_observed_when_first_crossed() {
        let m = Metrics::new();
        let r = rollout(&[], RolloutState::Progressing); // offered at 1 s
        let count = |m: &Metrics, f: &str| {
            sample(
                &m.encode(),
                &format!("flotilla_hub_rollout_healthy_fraction_seconds_count{{fraction=\"{f}\"}}"),
            )
            .unwrap_or(0.0)
        };
        m.observe_healthy_fraction("web", &r, 0, 4, 2_000, 0);
        m.observe_healthy_fraction("web", &r, 2, 4, 3_000, 0);
        assert_eq!(count(&m, "0.5"), 1.0);
        // Falling back and crossing again is not a new crossing.
        m.observe_healthy_fraction("web", &r, 1, 4, 4_000, 0);
        m.observe_healthy_fraction("web", &r, 2, 4, 5_000, 0);
        assert_eq!(count(&m, "0.5"), 1.0);
        assert_eq!(count(&m, "0.95"), 0.0);
        m.observe_healthy_fraction("web", &r, 4, 4, 11_000, 0);
        assert_eq!((count(&m, "0.95"), count(&m, "1")), (1.0, 1.0));
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "flotilla_hub_rollout_healthy_fraction_seconds_sum{fraction=\"1\"}"
            ),
            Some(10.0)
        );

        // A rollout that began before this process: what it had already crossed is not
        // observed (its time is unknown), later crossings are.
        let m = Metrics::new();
        m.observe_healthy_fraction("web", &r, 3, 4, 20_000, 10_000);
        assert_eq!(count(&m, "0.5"), 0.0);
        m.observe_healthy_fraction("web", &r, 4, 4, 30_000, 10_000);
        assert_eq!((count(&m, "0.95"), count(&m, "1")), (1.0, 1.0));
    }

    #[test]
    fn fleet_gauges_are_replaced_at_each_scrape() {
        let m = Metrics::new();
        let mut snap = FleetSnapshot::default();
        snap.app_clusters.insert(
            ("web".into(), "eu".into()),
            AppCounts {
                desired: 3,
                applied: 2,
                healthy: 1,
                failed: 1,
            },
        );
        snap.clusters.insert(("eu".into(), "connected"), 3);
        let text = m.encode_with(Some(&snap));
        let g = "flotilla_hub_app_clusters";
        for (state, n) in [
            ("desired", 3.0),
            ("applied", 2.0),
            ("healthy", 1.0),
            ("failed", 1.0),
        ] {
            assert_eq!(
                sample(
                    &text,
                    &format!("{g}{{app=\"web\",region=\"eu\",state=\"{state}\"}}")
                ),
                Some(n),
                "{text}"
            );
        }
        assert_eq!(
            sample(
                &text,
                "flotilla_hub_clusters{region=\"eu\",state=\"connected\"}"
            ),
            Some(3.0)
        );
        // An app that is gone leaves no stale series behind.
        let text = m.encode_with(Some(&FleetSnapshot::default()));
        assert!(!text.contains("app=\"web\""), "{text}");
    }
}
