//! OpenTelemetry traces for hub and agent: the tracer provider (OTLP/gRPC export, configured by
//! the standard `OTEL_*` variables), the agent's span relay over its session, the hub's
//! forwarder of relayed spans, and W3C trace-context helpers.
//!
//! Nothing here runs unless tracing is configured: without an endpoint (hub) or a relay the
//! hub asked for (agent), no provider is built and [`enabled`] is false, so callers skip
//! building per-cluster spans altogether.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Link, SpanContext, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult,
    SdkTracerProvider, ShouldSample, SpanData, SpanExporter,
};
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The largest encoded `ExportTraceServiceRequest` an agent puts in one `SpanBatch`.
pub const RELAY_BATCH_BYTES: usize = 256 * 1024;
/// How many bytes of finished spans an agent keeps while its session cannot take them.
pub const RELAY_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// How many relayed resource-span groups the hub queues for its collector before dropping.
const FORWARD_QUEUE: usize = 4096;

/// The OTLP/gRPC default, as the OpenTelemetry specification sets it.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True when this process records spans for export, directly or through its relay. Callers
/// that would build many spans (one per cluster) check this first.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
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
pub fn build_provider(cfg: &TraceConfig) -> Result<SdkTracerProvider, String> {
    let builder = SdkTracerProvider::builder().with_resource(resource(cfg));
    let provider = match &cfg.export {
        Export::Direct(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            let rt = tokio::runtime::Handle::try_current()
                .map_err(|_| "the OTLP exporter needs a Tokio runtime".to_string())?;
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
            .with_simple_exporter(RelayExporter {
                relay: relay.clone(),
                resource: ResourceAttributesWithSchema::default(),
            })
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

/// The agent's spans are recorded only when its hub exports them; then the parent's decision
/// (carried in the trace context) is followed, and root spans are sampled.
#[derive(Debug, Clone)]
struct RelaySampler(SpanRelay);

impl ShouldSample for RelaySampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let sampler = if self.0.wanted() {
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        } else {
            Sampler::AlwaysOff
        };
        sampler.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// Hands finished spans to the [`SpanRelay`] as encoded OTLP requests.
#[derive(Debug)]
struct RelayExporter {
    relay: SpanRelay,
    resource: ResourceAttributesWithSchema,
}

impl SpanExporter for RelayExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        if self.relay.wanted() {
            self.relay
                .push(group_spans_by_resource_and_scope(batch, &self.resource));
        }
        std::future::ready(Ok(()))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = ResourceAttributesWithSchema::from(resource);
    }
}

/// The agent's queue of finished spans waiting for its session: bounded in bytes; spans that
/// do not fit are dropped and counted.
#[derive(Debug, Clone, Default)]
pub struct SpanRelay {
    inner: Arc<RelayInner>,
}

#[derive(Debug, Default)]
struct RelayInner {
    queue: Mutex<RelayQueue>,
    notify: Notify,
    wanted: AtomicBool,
    dropped: AtomicU64,
    dropped_total: AtomicU64,
    taken_total: AtomicU64,
}

#[derive(Debug, Default)]
struct RelayQueue {
    /// Encoded requests with the number of spans in each.
    batches: VecDeque<(Vec<u8>, usize)>,
    bytes: usize,
}

impl SpanRelay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set from the hub's `Welcome`: whether the hub exports spans.
    pub fn set_wanted(&self, on: bool) {
        self.inner.wanted.store(on, Ordering::Relaxed);
    }

    pub fn wanted(&self) -> bool {
        self.inner.wanted.load(Ordering::Relaxed)
    }

    /// Spans dropped since the last call (sent to the hub with the next batch).
    pub fn take_dropped(&self) -> u64 {
        self.inner.dropped.swap(0, Ordering::Relaxed)
    }

    /// Spans dropped since the agent started.
    pub fn dropped_total(&self) -> u64 {
        self.inner.dropped_total.load(Ordering::Relaxed)
    }

    /// Spans handed to the session since the agent started.
    pub fn taken_total(&self) -> u64 {
        self.inner.taken_total.load(Ordering::Relaxed)
    }

    fn drop_spans(&self, n: usize) {
        self.inner.dropped.fetch_add(n as u64, Ordering::Relaxed);
        self.inner
            .dropped_total
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Queues `groups` as requests of at most [`RELAY_BATCH_BYTES`] each.
    pub fn push(&self, groups: Vec<ResourceSpans>) {
        for request in chunk(groups, RELAY_BATCH_BYTES, &mut |n| self.drop_spans(n)) {
            let spans = count_spans(&request.resource_spans);
            let bytes = request.encode_to_vec();
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.bytes + bytes.len() > RELAY_QUEUE_BYTES {
                drop(q);
                self.drop_spans(spans);
                continue;
            }
            q.bytes += bytes.len();
            q.batches.push_back((bytes, spans));
            drop(q);
            self.inner.notify.notify_one();
        }
    }

    /// The oldest queued spans as one encoded `ExportTraceServiceRequest` of at most
    /// [`RELAY_BATCH_BYTES`]. Queued requests are merged by concatenating their encodings
    /// (protobuf appends the repeated `resource_spans` of concatenated messages).
    pub fn pop(&self) -> Option<Vec<u8>> {
        let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        let (mut out, mut spans) = q.batches.pop_front()?;
        while let Some((next, _)) = q.batches.front() {
            if out.len() + next.len() > RELAY_BATCH_BYTES {
                break;
            }
            let (next, n) = q.batches.pop_front().expect("front exists");
            out.extend_from_slice(&next);
            spans += n;
        }
        q.bytes -= out.len();
        self.inner
            .taken_total
            .fetch_add(spans as u64, Ordering::Relaxed);
        Some(out)
    }

    /// Waits until spans are queued.
    pub async fn ready(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if !self
                .inner
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .batches
                .is_empty()
            {
                return;
            }
            notified.await;
        }
    }
}

fn count_spans(groups: &[ResourceSpans]) -> usize {
    groups
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// Splits resource-span groups into requests whose encoding stays under `limit`; a single
/// span larger than that is dropped (`dropped` is told how many).
fn chunk(
    groups: Vec<ResourceSpans>,
    limit: usize,
    dropped: &mut dyn FnMut(usize),
) -> Vec<ExportTraceServiceRequest> {
    let mut out = Vec::new();
    for rs in groups {
        for ss in rs.scope_spans {
            let head = ResourceSpans {
                resource: rs.resource.clone(),
                scope_spans: vec![ScopeSpans {
                    scope: ss.scope.clone(),
                    spans: Vec::new(),
                    schema_url: ss.schema_url.clone(),
                }],
                schema_url: rs.schema_url.clone(),
            };
            let overhead = head.encoded_len() + 16;
            let mut current = head.clone();
            let mut size = overhead;
            for span in ss.spans {
                let len = span.encoded_len() + 8;
                if overhead + len > limit {
                    dropped(1);
                    continue;
                }
                if size + len > limit {
                    out.push(ExportTraceServiceRequest {
                        resource_spans: vec![std::mem::replace(&mut current, head.clone())],
                    });
                    size = overhead;
                }
                current.scope_spans[0].spans.push(span);
                size += len;
            }
            if !current.scope_spans[0].spans.is_empty() {
                out.push(ExportTraceServiceRequest {
                    resource_spans: vec![current],
                });
            }
        }
    }
    out
}

/// Decodes an agent's `SpanBatch` and stamps `cluster.id` (the session's authenticated
/// identity, whatever the agent claimed) on every resource.
pub fn decode_relayed(
    otlp: &[u8],
    cluster_id: &str,
) -> Result<(Vec<ResourceSpans>, usize), String> {
    if otlp.len() > RELAY_BATCH_BYTES {
        return Err(format!(
            "span batch of {} bytes is over the {} byte limit",
            otlp.len(),
            RELAY_BATCH_BYTES
        ));
    }
    let mut req = ExportTraceServiceRequest::decode(otlp)
        .map_err(|e| format!("span batch is not an OTLP ExportTraceServiceRequest: {e}"))?;
    for rs in &mut req.resource_spans {
        let res = rs.resource.get_or_insert_with(ProtoResource::default);
        res.attributes.retain(|kv| kv.key != "cluster.id");
        res.attributes.push(ProtoKeyValue {
            key: "cluster.id".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(cluster_id.to_string())),
            }),
            ..Default::default()
        });
    }
    let n = count_spans(&req.resource_spans);
    Ok((req.resource_spans, n))
}

/// The hub's sender of relayed agent spans to its collector: a bounded queue drained by one
/// task that batches and exports over OTLP/gRPC. Full queue → spans dropped and counted.
#[derive(Debug, Clone)]
pub struct SpanForwarder {
    tx: mpsc::Sender<Vec<ResourceSpans>>,
    dropped: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
}

impl SpanForwarder {
    /// Starts the forwarding task on the current runtime. Headers come from
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` / `OTEL_EXPORTER_OTLP_HEADERS`, an https endpoint's CA
    /// from `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub fn start(endpoint: &str) -> Result<Self, String> {
        let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("OTLP endpoint {endpoint}: {e}"))?
            .timeout(Duration::from_secs(10));
        if endpoint.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(path) = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_CERTIFICATE"))
            {
                let pem = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| format!("OTLP endpoint {endpoint}: {e}"))?;
        }
        let headers = parse_headers(
            &env_nonempty("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_HEADERS"))
                .unwrap_or_default(),
        );
        let client = TraceServiceClient::new(ep.connect_lazy());
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        let me = Self {
            tx,
            dropped: Arc::default(),
            forwarded: Arc::default(),
        };
        tokio::spawn(forward(
            client,
            rx,
            headers,
            me.forwarded.clone(),
            me.dropped.clone(),
        ));
        Ok(me)
    }

    /// Queues spans for export; false (and counted as dropped) when the queue is full.
    pub fn forward(&self, groups: Vec<ResourceSpans>, spans: usize) -> bool {
        match self.tx.try_send(groups) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(spans as u64, Ordering::Relaxed);
                false
            }
        }
    }

    /// Relayed spans dropped: the queue to the collector was full, or the collector refused
    /// them or could not be reached.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Relayed spans the collector accepted.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            (!k.is_empty()).then_some((k, v))
        })
        .collect()
}

async fn forward(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<Vec<ResourceSpans>>,
    headers: Vec<(String, String)>,
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    let mut warned_at: Option<std::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut groups = first;
        while groups.len() < 512 {
            match rx.try_recv() {
                Ok(more) => groups.extend(more),
                Err(_) => break,
            }
        }
        let n = count_spans(&groups);
        let mut req = tonic::Request::new(ExportTraceServiceRequest {
            resource_spans: groups,
        });
        for (k, v) in &headers {
            if let (Ok(k), Ok(v)) = (
                k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                v.parse(),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        match client.export(req).await {
            Ok(_) => {
                forwarded.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                dropped.fetch_add(n as u64, Ordering::Relaxed);
                if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, spans = n, "cannot export relayed agent spans; dropping them");
                    warned_at = Some(std::time::Instant::now());
                }
            }
        }
    }
}

// === W3C trace context ===

/// The W3C `traceparent` of `span`, or "" when it is not recorded for export.
pub fn traceparent(span: &tracing::Span) -> String {
    if !enabled() {
        return String::new();
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// The remote parent a `traceparent` names, if it is valid.
pub fn parent_from(traceparent: &str) -> Option<Context> {
    if traceparent.is_empty() {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the remote span `traceparent` names (no-op when invalid).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = parent_from(traceparent) {
        let _ = span.set_parent(cx);
    }
}

/// The span's OpenTelemetry identity, for links from spans of other traces.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Sets an OpenTelemetry attribute on `span` (for keys only known at run time, such as the
/// cluster's labels).
pub fn attribute(span: &tracing::Span, key: String, value: String) {
    if enabled() {
        span.set_attribute(key, value);
    }
}

/// Marks `span` failed with `message`.
pub fn error(span: &tracing::Span, message: String) {
    if enabled() {
        span.set_status(opentelemetry::trace::Status::error(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(name: &str, attr_bytes: usize) -> Span {
        Span {
            name: name.into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![ProtoKeyValue {
                key: "k".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("x".repeat(attr_bytes))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn group(spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(ProtoResource::default()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn chunks_stay_under_the_limit_and_oversized_spans_are_dropped() {
        let spans = (0..10).map(|i| span(&format!("s{i}"), 3_000)).collect();
        let mut dropped = 0;
        let out = chunk(
            vec![group(spans), group(vec![span("huge", 20_000)])],
            10_000,
            &mut |n| dropped += n,
        );
        assert_eq!(dropped, 1);
        assert!(out.iter().all(|r| r.encoded_len() <= 10_000));
        let total: usize = out.iter().map(|r| count_spans(&r.resource_spans)).sum();
        assert_eq!(total, 10);
        assert!(
            out.len() >= 4,
            "3 spans of 3 KB fit in 10 KB: {}",
            out.len()
        );
    }

    #[test]
    fn relay_is_bounded_and_counts_what_it_drops() {
        let relay = SpanRelay::new();
        // Each request holds ~200 KB; the queue takes 4 MiB.
        for _ in 0..40 {
            relay.push(vec![group(vec![span("s", 200_000)])]);
        }
        let mut kept = 0;
        while let Some(b) = relay.pop() {
            assert!(b.len() <= RELAY_BATCH_BYTES);
            kept += 1;
        }
        assert!(kept < 40 && kept > 0);
        assert_eq!(relay.take_dropped(), 40 - kept as u64);
        assert_eq!(relay.take_dropped(), 0, "taking resets the count");
        assert_eq!(relay.dropped_total(), 40 - kept as u64);
    }

    #[test]
    fn small_batches_are_merged_into_one_message() {
        let relay = SpanRelay::new();
        for i in 0..10 {
            relay.push(vec![group(vec![span(&format!("s{i}"), 100)])]);
        }
        let one = relay.pop().expect("queued");
        assert!(relay.pop().is_none(), "all ten fit in one message");
        let req = ExportTraceServiceRequest::decode(one.as_slice()).unwrap();
        assert_eq!(count_spans(&req.resource_spans), 10);
        assert_eq!(relay.taken_total(), 10);
    }

    #[test]
    fn relayed_spans_carry_the_sessions_cluster_not_the_claimed_one() {
        let mut g = group(vec![span("s", 10)]);
        g.resource.as_mut().unwrap().attributes.push(ProtoKeyValue {
            key: "cluster.id".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("someone-else".into())),
            }),
            ..Default::default()
        });
        let bytes = ExportTraceServiceRequest {
            resource_spans: vec![g],
        }
        .encode_to_vec();
        let (groups, n) = decode_relayed(&bytes, "eu-1").unwrap();
        assert_eq!(n, 1);
        let ids: Vec<_> = groups[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .filter(|kv| kv.key == "cluster.id")
            .map(|kv| kv.value.clone().unwrap().value.unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![any_value::Value::StringValue("eu-1".into())],
            "exactly one cluster.id, the authenticated one"
        );
        assert!(decode_relayed(b"\xff\xff garbage", "eu-1").is_err());
        assert!(decode_relayed(&vec![0u8; RELAY_BATCH_BYTES + 1], "eu-1").is_err());
    }

    #[test]
    fn traceparent_round_trips() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = parent_from(tp).expect("valid");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_remote() && sc.is_sampled());
        assert!(parent_from("").is_none());
        assert!(parent_from("00-zz-yy-01").is_none());
    }
}
