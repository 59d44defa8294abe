//! The hub's side of the relay: [`decode_relayed`] reads an agent's `SpanBatch` and stamps the
//! session's `cluster.id` on it, and [`SpanForwarder`] sends those spans on to the collector over
//! OTLP/gRPC from a bounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use tokio::sync::mpsc;

use super::relay::{RELAY_BATCH_BYTES, count_spans};
use super::{TraceError, env_nonempty};

/// How many relayed resource-span groups the hub queues for its collector before dropping.
const FORWARD_QUEUE: usize = 4096;

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
    pub fn start(endpoint: &str) -> Result<Self, TraceError> {
        let bad_endpoint = |source| TraceError::Endpoint {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(bad_endpoint)?
            .timeout(Duration::from_secs(10));
        if endpoint.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(path) = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_CERTIFICATE"))
            {
                let pem = std::fs::read(&path).map_err(|source| TraceError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls).map_err(bad_endpoint)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::traces::fixtures::{group, span};

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
}
