//! The agent's span relay: a sampler that records nothing unless the hub wants spans, an
//! exporter that encodes finished spans as OTLP requests, and [`SpanRelay`], the bounded queue
//! those requests wait in until the session sends them to the hub.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SamplingResult, ShouldSample, SpanData, SpanExporter};
use prost::Message;
use tokio::sync::Notify;

/// The largest encoded `ExportTraceServiceRequest` an agent puts in one `SpanBatch`.
pub const RELAY_BATCH_BYTES: usize = 256 * 1024;
/// How many bytes of finished spans an agent keeps while its session cannot take them.
pub const RELAY_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The agent's spans are recorded only when its hub exports them; then the parent's decision
/// (carried in the trace context) is followed, and root spans are sampled.
#[derive(Debug, Clone)]
pub(super) struct RelaySampler(pub(super) SpanRelay);

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
pub(super) struct RelayExporter {
    relay: SpanRelay,
    resource: ResourceAttributesWithSchema,
}

impl RelayExporter {
    /// An exporter into `relay`; the provider gives it its resource through `set_resource`.
    pub(super) fn new(relay: SpanRelay) -> Self {
        Self {
            relay,
            resource: ResourceAttributesWithSchema::default(),
        }
    }
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

/// How many spans `groups` hold.
pub(super) fn count_spans(groups: &[ResourceSpans]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::traces::fixtures::{group, span};

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
}
