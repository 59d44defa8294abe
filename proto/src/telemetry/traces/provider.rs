//! The tracer provider: where spans go ([`Export`]: OTLP/gRPC to a collector, or the agent's
//! relay), the collector endpoint and batch settings from the standard `OTEL_*` variables, the
//! process resource, and the flag [`enabled`] that says whether any of it was built.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};

use super::relay::{RelayExporter, RelaySampler, SpanRelay};
use super::{TraceError, env_nonempty};

/// The OTLP/gRPC default, as the OpenTelemetry specification sets it.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True when this process records spans for export, directly or through its relay. Callers
/// that would build many spans (one per cluster) check this first.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The collector endpoint: the `--otlp-endpoint` flag when given, else
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`; none when nothing
/// is set or the environment says `OTEL_TRACES_EXPORTER=none`.
pub fn endpoint(flag: Option<&str>) -> Option<String> {
    if let Some(f) = flag.map(str::trim).filter(|f| !f.is_empty()) {
        return Some(f.to_string());
    }
    if env_nonempty("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none") {
        return None;
    }
    env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// How a process exports its spans.
#[derive(Debug, Clone)]
pub enum Export {
    /// OTLP/gRPC to a collector at this endpoint.
    Direct(String),
    /// Over the agent's session, through the hub (agent only).
    Relay(SpanRelay),
}

/// What [`build_provider`] needs.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub default_service: &'static str,
    pub export: Export,
}

fn resource(cfg: &TraceConfig) -> Resource {
    let named = env_nonempty("OTEL_SERVICE_NAME").is_some()
        || env_nonempty("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let mut b = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        b = b.with_service_name(cfg.default_service);
    }
    b.build()
}

/// Builds the tracer provider. Must be called inside a Tokio runtime (the OTLP channel and
/// exports run on it).
pub fn build_provider(cfg: &TraceConfig) -> Result<SdkTracerProvider, TraceError> {
    let builder = SdkTracerProvider::builder().with_resource(resource(cfg));
    let provider = match &cfg.export {
        Export::Direct(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| TraceError::Exporter {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let rt = tokio::runtime::Handle::try_current().map_err(TraceError::NoRuntime)?;
            // The sampler comes from OTEL_TRACES_SAMPLER (default parentbased_always_on).
            let processor = BatchSpanProcessor::builder(OnRuntime {
                inner: Arc::new(exporter),
                rt,
            })
            .with_batch_config(batch_config())
            .build();
            builder.with_span_processor(processor).build()
        }
        Export::Relay(relay) => builder
            .with_sampler(RelaySampler(relay.clone()))
            // Exporting to the relay is a non-blocking push into its queue, so spans go there as
            // they end: no batch thread or second queue in the agent.
            .with_simple_exporter(RelayExporter::new(relay.clone()))
            .build(),
    };
    ENABLED.store(true, Ordering::Relaxed);
    Ok(provider)
}

/// The batch settings: the `OTEL_BSP_*` variables, with a larger queue and batches unless they
/// are set — a stage of thousands of clusters ends thousands of delivery spans within a second,
/// which the specification's default queue of 2,048 spans drops.
fn batch_config() -> BatchConfig {
    let mut b = BatchConfigBuilder::default();
    if env_nonempty("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        b = b.with_max_queue_size(DEFAULT_QUEUE_SPANS);
    }
    if env_nonempty("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        b = b.with_max_export_batch_size(DEFAULT_EXPORT_BATCH_SPANS);
    }
    b.build()
}

/// Spans the hub (or a directly exporting agent) buffers for export, unless
/// `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
pub const DEFAULT_QUEUE_SPANS: usize = 65_536;
/// Spans per export call, unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` says otherwise.
pub const DEFAULT_EXPORT_BATCH_SPANS: usize = 2_048;

/// Runs an exporter's calls on a Tokio runtime: the SDK's batch processor exports from its own
/// thread, where the tonic channel has no reactor.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    rt: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self.rt.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
