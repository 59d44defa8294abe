//! Prometheus metrics of the hub, served on the HTTP side port at `/metrics`.
//!
//! Most series are updated where things happen (sessions, joins, handshakes, status reports,
//! store calls, rollout stage transitions). The per-app and per-cluster gauges
//! (`app_clusters`, `clusters`) are set at scrape time from a [`FleetSnapshot`] of the hub's
//! in-memory state (`engine::fleet`), so status reports cost nothing extra. What a change of a
//! rollout record means for the rollout series is the engine's (`engine::rollout::observe`).

use std::collections::{BTreeMap, HashMap};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Which replica a hub process is, and on which store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
    pub store: String,
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
    /// 1 while this replica leads the replicas sharing its store (always, on redb).
    pub leader: Gauge,
    /// Always 1, labelled with this replica's name and store (set once at start).
    pub replica: Family<ReplicaLabels, Gauge>,
    /// Replicas registered on the shared store, as this one follows them (1 on redb).
    pub replicas: Gauge,
    /// Times this replica took the lead.
    pub leader_terms: Counter,
    /// Status reports this replica learned from the other replicas' journals.
    pub followed_status_reports: Counter,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    /// Handshakes that resumed a session from a ticket and were admitted (a subset of
    /// `tls_handshakes{result="ok"}`).
    pub tls_resumed_handshakes: Counter,
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
    /// Writes per all-or-nothing store batch (`compare_and_swap_many`): how much each durable
    /// transaction carries, e.g. status records per group commit.
    pub store_batch_writes: Histogram,
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
    pub(crate) healthy_crossed: std::sync::Mutex<HashMap<String, (String, u64, usize)>>,
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
        let leader = Gauge::default();
        let replica = Family::<ReplicaLabels, Gauge>::default();
        let replicas = Gauge::default();
        let leader_terms = Counter::default();
        let followed_status_reports = Counter::default();
        let tls_handshakes = Family::<ResultLabel, Counter>::default();
        let tls_resumed_handshakes = Counter::default();
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
        let store_batch_writes = Histogram::new(exponential_buckets(1.0, 2.0, 14));
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
            "leader",
            "1 while this replica leads the hub replicas sharing its store (always 1 on redb)",
            leader.clone(),
        );
        registry.register(
            "replica",
            "1, labelled with this hub replica's name and store (redb or etcd)",
            replica.clone(),
        );
        registry.register(
            "replicas",
            "Hub replicas registered on the shared store, as this replica sees them (1 on redb)",
            replicas.clone(),
        );
        registry.register(
            "leader_terms",
            "Times this replica took the lead of the hub replicas",
            leader_terms.clone(),
        );
        registry.register(
            "followed_status_reports",
            "Status reports this replica learned from other replicas' journals",
            followed_status_reports.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the gRPC port, by result",
            tls_handshakes.clone(),
        );
        registry.register(
            "tls_resumed_handshakes",
            "TLS handshakes on the gRPC port that resumed a session from a ticket (also counted as ok)",
            tls_resumed_handshakes.clone(),
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
        registry.register(
            "store_batch_writes",
            "Writes per all-or-nothing store batch (one durable transaction)",
            store_batch_writes.clone(),
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
            leader,
            replica,
            replicas,
            leader_terms,
            followed_status_reports,
            tls_handshakes,
            tls_resumed_handshakes,
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
            store_batch_writes,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    fn tls(e: rustls::Error) -> Error {
        Error::new(ErrorKind::InvalidData, e)
    }

    /// A handshake that failed on the peer's certificate.
    fn bad_cert(e: rustls::CertificateError) -> Error {
        tls(rustls::Error::InvalidCertificate(e))
    }

    #[test]
    fn handshake_failures_have_stable_reasons() {
        use rustls::CertificateError as C;
        let cases = [
            (bad_cert(C::UnknownIssuer), "unknown_ca"),
            (bad_cert(C::Expired), "expired"),
            (bad_cert(C::NotValidYet), "not_yet_valid"),
            (bad_cert(C::Revoked), "revoked"),
            (bad_cert(C::BadSignature), "bad_certificate"),
            (bad_cert(C::BadEncoding), "bad_certificate"),
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

    /// The value of one sample line `name{labels} value` of an exposition.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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
