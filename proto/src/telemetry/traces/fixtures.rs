//! Test fixtures: OTLP spans with an attribute of a chosen size, and resource-span groups of
//! them, for the relay and forwarder tests.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub(super) fn span(name: &str, attr_bytes: usize) -> Span {
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

pub(super) fn group(spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(ProtoResource::default()),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}
