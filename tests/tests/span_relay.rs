//! The hub's side of the span relay: agents are told whether to send spans, a garbage span
//! batch is refused and counted without ending the session, and the spans an agent reports it
//! dropped are counted.

use flotilla_proto::telemetry::SpanForwarder;
use flotilla_proto::v1::agent_message::Msg;
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::{AgentMessage, Heartbeat, Hello, SpanBatch};
use flotilla_tests::*;

/// A hub, one cluster joined by a real agent (then stopped), and that cluster's credentials.
async fn hub_with_cluster(
    dir: &std::path::Path,
    spans: Option<SpanForwarder>,
) -> (TestHub, (String, String, String)) {
    let mut config = TestHub::config(dir);
    config.span_forwarder = spans;
    let hub = TestHub::start(config).await;
    let credentials = hub.enroll(dir, "relay-1").await;
    (hub, credentials)
}

fn hello() -> Hello {
    Hello {
        cluster_id: "relay-1".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_hub_without_traces_asks_for_no_spans() {
    let dir = test_dir();
    let (hub, (ca, chain, key)) = hub_with_cluster(dir.path(), None).await;
    let (first, _tx, _rx) = open_session(&hub.addr(), &ca, &chain, &key, hello())
        .await
        .unwrap();
    let Some(HubMsg::Welcome(w)) = first.msg else {
        panic!("expected Welcome, got {first:?}");
    };
    assert!(!w.spans_wanted);
}

#[tokio::test]
async fn a_garbage_span_batch_is_refused_and_the_session_goes_on() {
    let dir = test_dir();
    // A collector nobody listens on: the forwarder connects lazily and drops what fails.
    let fwd = SpanForwarder::start("http://127.0.0.1:9").unwrap();
    let (hub, (ca, chain, key)) = hub_with_cluster(dir.path(), Some(fwd)).await;
    let (first, tx, mut rx) = open_session(&hub.addr(), &ca, &chain, &key, hello())
        .await
        .unwrap();
    let Some(HubMsg::Welcome(w)) = first.msg else {
        panic!("expected Welcome, got {first:?}");
    };
    assert!(w.spans_wanted, "a hub exporting traces asks for spans");

    let send = |m: Msg| {
        let tx = tx.clone();
        async move { tx.send(AgentMessage { msg: Some(m) }).await.unwrap() }
    };
    send(Msg::Spans(SpanBatch {
        otlp: b"\xff\xff\xff not OTLP".to_vec(),
        dropped: 3,
    }))
    .await;
    send(Msg::Heartbeat(Heartbeat {
        seq: 7,
        sent_unix_ms: 0,
    }))
    .await;
    // The session answers the heartbeat sent after the bad batch: it is still up.
    loop {
        let m = rx.message().await.unwrap().expect("session still open");
        if let Some(HubMsg::HeartbeatAck(a)) = m.msg {
            assert_eq!(a.seq, 7);
            break;
        }
    }
    let text = hub.running().metrics.encode();
    assert_contains(&text, "flotilla_hub_rejected_messages_total 1");
    assert_contains(&text, "flotilla_hub_agent_dropped_spans_total 3");
}
