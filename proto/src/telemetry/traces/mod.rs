//! OpenTelemetry traces for hub and agent: the tracer provider (OTLP/gRPC export, configured by
//! the standard `OTEL_*` variables; `provider`), the agent's span relay over its session
//! (`relay`), the hub's forwarder of relayed spans (`forward`), and W3C trace-context helpers
//! (`context`).
//!
//! Nothing here runs unless tracing is configured: without an endpoint (hub) or a relay the
//! hub asked for (agent), no provider is built and [`enabled`] is false, so callers skip
//! building per-cluster spans altogether.

mod context;
#[cfg(test)]
mod fixtures;
mod forward;
mod provider;
mod relay;

pub use context::{attribute, error, parent_from, set_remote_parent, span_context, traceparent};
pub use forward::{SpanForwarder, decode_relayed};
pub use provider::{
    DEFAULT_ENDPOINT, DEFAULT_EXPORT_BATCH_SPANS, DEFAULT_QUEUE_SPANS, Export, TraceConfig,
    build_provider, enabled, endpoint,
};
pub use relay::{RELAY_BATCH_BYTES, RELAY_QUEUE_BYTES, SpanRelay};

/// Why traces cannot be exported as configured (a start-up configuration error).
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("the OTLP exporter needs a Tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("OTLP endpoint {endpoint}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}
