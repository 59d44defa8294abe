//! Prometheus metrics of the hub, served on the HTTP side port at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

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
        Self {
            registry,
            sessions_connected,
            tls_handshakes,
            joins,
            heartbeats,
            renewals,
            rejected_messages,
            webhooks,
        }
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
