//! One trace from a commit to a cluster's apply, received by a real OTLP/gRPC receiver (the
//! collector's trace service from `opentelemetry-proto`) started by the test.
//!
//! The real `flotilla-hub` binary exports its spans there directly. The agent of the canary
//! cluster runs in this test process with the same tracing set-up as the `flotilla-agent`
//! binary in its default (relay) mode: its finished spans travel over its mTLS session and the
//! hub exports them. The test checks that one trace holds the hub's sync, offer, stage and
//! delivery spans and the agent's reconcile spans, that the agent's root is a child of the
//! hub's delivery span across the process boundary, the attributes, and that the next stage
//! starts a trace of its own linked to the first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flotilla_agent::Agent;
use flotilla_proto::telemetry::{Export, SpanRelay, TraceConfig};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;

use flotilla_tests::TestAgent;
use flotilla_tests::bench::otlp;
use flotilla_tests::hub_process::{self as common, Hub, free_port, until, web_revision};

/// A received span with the resource it came under.
#[derive(Debug, Clone)]
struct Got {
    resource: BTreeMap<String, String>,
    span: Span,
}

impl Got {
    fn attr(&self, key: &str) -> Option<String> {
        attrs(&self.span.attributes).remove(key)
    }
    fn trace(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// The names of the span's events.
    fn events(&self) -> Vec<&str> {
        self.span.events.iter().map(|e| e.name.as_str()).collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// What the OTLP/gRPC receiver got: every span it was sent.
#[derive(Default, Clone)]
struct Received {
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Received {
    /// Starts the receiver; returns the endpoint to export to.
    async fn serve(&self) -> String {
        let spans = self.spans.clone();
        let addr = otlp::serve(move |resource, span| {
            spans.lock().unwrap().push(Got {
                resource: attrs(resource),
                span,
            });
        })
        .await
        .unwrap();
        format!("http://{addr}")
    }

    fn find(&self, f: impl Fn(&Got) -> bool) -> Option<Got> {
        self.spans.lock().unwrap().iter().find(|g| f(g)).cloned()
    }

    /// Waits for a span called `name` whose attributes include `attr`.
    async fn wait(&self, name: &'static str, attr: &[(&'static str, &str)]) -> Got {
        let matches = span(name, attr);
        until(&format!("{name} with {attr:?}"), || self.find(&matches)).await
    }
}

/// The value of the series `series` (name with labels, as written) in Prometheus text; 0 if
/// absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// GET over plain HTTP, blocking (the hub's side port).
fn http_get(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Spans called `name` whose attributes include `attr`.
fn span(name: &'static str, attr: &[(&'static str, &str)]) -> impl Fn(&Got) -> bool {
    let attr: Vec<(&'static str, String)> = attr.iter().map(|(k, v)| (*k, v.to_string())).collect();
    move |g: &Got| {
        g.span.name == name
            && attr
                .iter()
                .all(|(k, v)| g.attr(k).as_deref() == Some(v.as_str()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_one_trace_from_the_hub_to_the_agents_apply() {
    // The receiver.
    let received = Received::default();
    let otlp = received.serve().await;

    // This process is the canary's agent: spans relayed over its session.
    let relay = SpanRelay::new();
    let tracing = flotilla_proto::telemetry::init_with_traces(
        "warn",
        false,
        Some(TraceConfig {
            default_service: "flotilla-agent",
            export: Export::Relay(relay.clone()),
        }),
    )
    .unwrap();
    assert!(tracing.active());

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (port, http) = (free_port(), free_port());
    let hub = Hub::start_with(
        &data,
        port,
        http,
        &["--otlp-endpoint", &otlp],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );

    let (repo, r1) = common::fleet_repo(dir.path(), "");

    let mut canary = common::agent_config(&hub, dir.path(), "eu-1", &["ring=canary", "region=eu"]);
    canary.span_relay = Some(relay.clone());
    canary.trace_spans = true;
    canary.drift_interval = std::time::Duration::from_millis(200);
    let canary_kube = canary.kube_client.clone().unwrap();
    // The second agent records no spans: in one process, both would share the canary's relay.
    let prod = common::agent_config(&hub, dir.path(), "us-1", &["ring=prod", "region=us"]);
    let mut agents = Vec::new();
    let mut agent_metrics = Vec::new();
    for cfg in [canary, prod] {
        let agent = Agent::new(cfg);
        agent_metrics.push(agent.0.metrics());
        agents.push(TestAgent::run(agent));
    }
    until("agents connected", || {
        agents
            .iter()
            .all(|a| a.status.borrow().connected)
            .then_some(())
    })
    .await;
    common::add_and_sync(&hub, &repo);
    for a in &agents {
        until("web healthy on r1", || {
            (web_revision(&a.status.borrow()).as_deref() == Some(r1.as_str())).then_some(())
        })
        .await;
    }

    let rev: &str = &r1;
    // The hub's side of the commit's trace.
    let sync = received
        .wait("flotilla.sync", &[("source", "fleet"), ("revision", rev)])
        .await;
    let offer = received
        .wait("flotilla.offer", &[("app", "web"), ("revision", rev)])
        .await;
    let canary_stage = received
        .wait("flotilla.stage", &[("stage", "canary"), ("revision", rev)])
        .await;
    let deliver = received
        .wait(
            "flotilla.deliver",
            &[("cluster.id", "eu-1"), ("revision", rev)],
        )
        .await;
    // The agent's side, relayed through the hub.
    let reconcile = received
        .wait(
            "flotilla.agent.reconcile",
            &[("app", "web"), ("revision", rev)],
        )
        .await;
    let apply = received
        .wait("flotilla.agent.apply", &[("app", "web")])
        .await;
    let health = received
        .wait("flotilla.agent.health_wait", &[("app", "web")])
        .await;

    // One trace, from the sync down to the agent's health wait.
    let trace = sync.trace();
    for g in [&offer, &canary_stage, &deliver, &reconcile, &apply, &health] {
        assert_eq!(g.trace(), trace, "{} is in the commit's trace", g.span.name);
    }
    assert_eq!(sync.attr("revision").as_deref(), Some(rev));
    assert_eq!(offer.parent(), sync.id(), "offer under sync");
    assert_eq!(
        canary_stage.parent(),
        offer.id(),
        "first stage under the offer"
    );
    assert_eq!(
        deliver.parent(),
        canary_stage.id(),
        "delivery under its stage"
    );
    assert_eq!(
        reconcile.parent(),
        deliver.id(),
        "the agent's reconcile is a child of the hub's delivery, across processes"
    );
    assert_eq!(apply.parent(), reconcile.id());
    assert_eq!(health.parent(), reconcile.id());

    // Attributes and resources.
    assert_eq!(deliver.attr("app").as_deref(), Some("web"));
    assert_eq!(deliver.attr("revision").as_deref(), Some(rev));
    assert_eq!(deliver.attr("stage").as_deref(), Some("canary"));
    assert_eq!(deliver.attr("cluster.label.region").as_deref(), Some("eu"));
    assert_eq!(
        deliver.attr("cluster.label.ring").as_deref(),
        Some("canary")
    );
    assert_eq!(
        deliver.resource.get("service.name").map(String::as_str),
        Some("flotilla-hub")
    );
    assert_eq!(reconcile.attr("cluster.id").as_deref(), Some("eu-1"));
    assert_eq!(reconcile.attr("revision").as_deref(), Some(rev));
    for g in [&reconcile, &apply, &health] {
        assert_eq!(
            g.resource.get("service.name").map(String::as_str),
            Some("flotilla-agent"),
            "{} exported under the agent's resource",
            g.span.name
        );
        assert_eq!(
            g.resource.get("cluster.id").map(String::as_str),
            Some("eu-1"),
            "the hub stamps the session's identity"
        );
    }
    // Health transitions are events; the delivery ends when the cluster reports healthy.
    assert!(
        health.events().contains(&"healthy"),
        "health wait events: {:?}",
        health.events()
    );
    assert!(deliver.events().contains(&"healthy"));
    assert_eq!(apply.attr("objects").as_deref(), Some("1"));

    // The next stage: a trace of its own, linked to the canary stage (no trace stays open
    // through a soak or an approval).
    let prod_stage = received
        .wait("flotilla.stage", &[("stage", "prod"), ("revision", rev)])
        .await;
    assert_ne!(prod_stage.trace(), trace);
    assert!(
        prod_stage
            .span
            .links
            .iter()
            .any(|l| hex(&l.span_id) == canary_stage.id() && hex(&l.trace_id) == trace),
        "prod stage links to the canary stage"
    );
    let prod_deliver = received
        .wait(
            "flotilla.deliver",
            &[("cluster.id", "us-1"), ("revision", rev)],
        )
        .await;
    assert_eq!(prod_deliver.parent(), prod_stage.id());
    assert_eq!(
        prod_deliver.attr("cluster.label.region").as_deref(),
        Some("us")
    );

    // Reconnects are span events too (a span of their own, relayed).
    let connect = received
        .wait("flotilla.agent.connect", &[("cluster.id", "eu-1")])
        .await;
    assert!(connect.events().contains(&"connected to hub"));
    assert_eq!(
        connect.resource.get("cluster.id").map(String::as_str),
        Some("eu-1")
    );

    // Drift: the ConfigMap deleted behind the agent's back is healed, in a drift trace.
    use flotilla_agent::k8s_openapi::api::core::v1::ConfigMap;
    use flotilla_agent::kube::api::{Api, DeleteParams};
    Api::<ConfigMap>::namespaced(canary_kube, "default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let drift = received
        .wait(
            "flotilla.agent.drift",
            &[("cluster.id", "eu-1"), ("app", "web")],
        )
        .await;
    assert!(
        drift.events().contains(&"drift healed"),
        "drift events: {:?}",
        drift.events()
    );

    // The relay's counters, on both sides.
    let agent_text = agent_metrics[0].encode();
    assert!(
        sample(&agent_text, "flotilla_agent_spans_relayed_total") > 0.0,
        "{agent_text}"
    );
    assert_eq!(
        sample(&agent_text, "flotilla_agent_spans_dropped_total"),
        0.0
    );
    let hub_text = until("relayed spans counted by the hub", || {
        let text = http_get(&format!("http://127.0.0.1:{http}/metrics"))?;
        (sample(
            &text,
            r#"flotilla_hub_relayed_spans_total{result="exported"}"#,
        ) > 0.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        sample(
            &hub_text,
            r#"flotilla_hub_relayed_spans_total{result="dropped"}"#
        ),
        0.0
    );

    for a in agents {
        let _ = a.stop().await;
    }
    tokio::task::spawn_blocking(move || tracing.shutdown())
        .await
        .unwrap();
}
