//! W3C trace context: the `traceparent` of a span and the remote parent one names, plus the
//! OpenTelemetry calls on a `tracing` span (links, run-time attributes, error status) that do
//! nothing unless spans are exported.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::enabled;

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
