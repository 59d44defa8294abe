//! An OTLP/gRPC trace receiver: the collector's trace service from `opentelemetry-proto`, handing
//! every span it is sent to a callback ([`serve`]); for the benchmarks, one that counts the spans
//! by name and keeps nothing else ([`SpanSink`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What a receiver does with each span: it gets the attributes of the span's resource too.
type OnSpan = Arc<dyn Fn(&[KeyValue], Span) + Send + Sync>;

#[derive(Clone)]
struct Service {
    on_span: OnSpan,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            let resource = rs.resource.unwrap_or_default().attributes;
            for ss in rs.scope_spans {
                for span in ss.spans {
                    (self.on_span)(&resource, span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the trace service on a free loopback port until the runtime stops, handing every span
/// it is sent to `on_span`; returns the address.
pub async fn serve(
    on_span: impl Fn(&[KeyValue], Span) + Send + Sync + 'static,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the OTLP receiver")?;
    let addr = listener.local_addr()?;
    let svc = Service {
        on_span: Arc::new(on_span),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

/// A running receiver that counts spans by name; it stops with the runtime.
#[derive(Debug, Clone)]
pub struct SpanSink {
    pub addr: SocketAddr,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl SpanSink {
    /// Listens on a free loopback port.
    pub async fn start() -> Result<Self> {
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let counted = counts.clone();
        let addr = serve(move |_, span| {
            let mut counts = counted.lock().unwrap_or_else(|e| e.into_inner());
            *counts.entry(span.name).or_default() += 1;
        })
        .await?;
        Ok(Self { addr, counts })
    }

    /// The endpoint to give an exporter.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received so far, by name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
