//! Lifecycle of clusters and sessions with a real hub and real agents over real mutual TLS:
//! join, hub restart, agent restart, certificate renewal, removal.

use flotilla_agent::AgentError;
use flotilla_proto::clock::unix_ms;
use flotilla_proto::v1::{ListTokensRequest, RemoveClusterRequest};
use flotilla_tests::*;

#[tokio::test]
async fn join_connects_and_hub_lists_the_cluster() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let token = hub.add_cluster("eu-1", &[("region", "eu-west-1")]).await;
    assert!(token.starts_with("flotilla-join:"));
    assert_eq!(hub.cluster("eu-1").await.state, "pending");

    let mut agent = TestAgent::start(&dir.path().join("a"), Some(token));
    let st = agent.connected().await;
    assert_eq!(st.cluster_id, "eu-1");

    let c = hub.wait_state("eu-1", "connected").await;
    assert_eq!(
        c.labels.get("region").map(String::as_str),
        Some("eu-west-1")
    );
    assert_eq!(c.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(c.identity, "spiffe://flotilla.local/cluster/eu-1");
    assert!(c.cert_expires_unix_ms > unix_ms(std::time::SystemTime::now()));
    assert!(c.last_seen_unix_ms > 0);

    // Heartbeats flow and are answered.
    wait_status(&mut agent.status, "a heartbeat ack", |s| {
        s.heartbeats_acked > 0
    })
    .await;
    agent.stop().await.unwrap();
    hub.wait_state("eu-1", "disconnected").await;
}

#[tokio::test]
async fn hub_restart_agents_reconnect_and_no_record_is_lost() {
    let dir = test_dir();
    let mut hub = TestHub::start_in(dir.path()).await;
    let mut agents = Vec::new();
    for (name, region) in [("eu-1", "eu"), ("us-1", "us")] {
        let token = hub.add_cluster(name, &[("region", region)]).await;
        let mut a = TestAgent::start(&dir.path().join(name), Some(token));
        a.connected().await;
        agents.push(a);
    }
    let spare = hub.add_cluster("later", &[]).await;
    let before = hub.clusters().await;

    hub.restart().await;

    for a in &mut agents {
        wait_status(&mut a.status, "reconnect after hub restart", |s| {
            s.connected && s.sessions_opened >= 2
        })
        .await;
    }
    hub.wait_state("eu-1", "connected").await;
    hub.wait_state("us-1", "connected").await;
    let after = hub.clusters().await;
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.created_unix_ms, b.created_unix_ms);
    }
    // The token minted before the restart still works.
    let mut late = TestAgent::start(&dir.path().join("later"), Some(spare));
    late.connected().await;
    let tokens = hub
        .admin()
        .await
        .list_tokens(ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 3);
    assert!(tokens.iter().all(|t| t.state == "used"));
}

#[tokio::test]
async fn agent_restart_reconnects_from_its_state_dir_without_a_token() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let (a, first) = hub.join_status(dir.path(), "edge-1").await;
    a.stop().await.unwrap();
    let state = dir.path().join("edge-1");

    let mut again = TestAgent::start(&state, None);
    let second = again.connected().await;
    assert_eq!(second.cluster_id, "edge-1");
    assert_eq!(
        second.cert_serial, first.cert_serial,
        "no re-join: same certificate"
    );
    hub.wait_state("edge-1", "connected").await;

    // Without state and without a token the agent says what is missing.
    let err = TestAgent::refused(&dir.path().join("empty"), None).await;
    assert!(matches!(err, AgentError::NotJoined(_)), "{err}");
}

#[tokio::test]
async fn renewal_with_a_short_lifetime_keeps_the_session() {
    let dir = test_dir();
    let hub = TestHub::start_short_lived(dir.path()).await;
    let (mut a, first) = hub.join_status(dir.path(), "short").await;
    let state = dir.path().join("short");

    // Two renewals: the second one proves the first renewed certificate was usable.
    let renewed = wait_status(&mut a.status, "two renewals", |s| s.renewals >= 2).await;
    assert_ne!(renewed.cert_serial, first.cert_serial);
    assert_eq!(
        renewed.session_id, first.session_id,
        "same session throughout"
    );
    assert_eq!(renewed.sessions_opened, 1, "the session was never dropped");
    assert!(renewed.connected);

    // The renewed certificate is persisted and a restarted agent connects with it.
    let (_, chain, _) = agent_credentials(&state);
    let certs = flotilla_proto::tls::certs_from_pem(&chain, "chain").unwrap();
    let leaf = flotilla_proto::identity::PeerCert::from_der(&certs[0], "flotilla.local").unwrap();
    assert_ne!(leaf.serial, first.cert_serial);
    a.stop().await.unwrap();
    let mut b = TestAgent::start(&state, None);
    b.connected().await;
}

#[tokio::test]
async fn removed_cluster_is_disconnected_and_refused() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let a = hub.join(dir.path(), "gone").await;
    let state = dir.path().join("gone");

    hub.admin()
        .await
        .remove_cluster(RemoveClusterRequest {
            name: "gone".into(),
        })
        .await
        .unwrap();
    // The live session is told and the agent stops for good.
    let err = a.ended().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Disconnected { reason, .. } if reason == "revoked"),
        "{err}"
    );
    assert_eq!(hub.cluster("gone").await.state, "revoked");

    // A later handshake with the revoked certificate is refused, and the agent says so.
    let err = TestAgent::refused(&state, None).await;
    assert!(err.to_string().contains("CertificateRevoked"), "{err}");
    // So is a raw session attempt with the same certificate.
    let (ca, chain, key) = agent_credentials(&state);
    let r = open_session(&hub.addr(), &ca, &chain, &key, Default::default()).await;
    assert!(r.is_err());
    assert!(hub.running().sessions.get("gone").is_none());
}

#[tokio::test]
async fn an_unreachable_hub_is_retried_until_it_is_back() {
    let dir = test_dir();
    let mut hub = TestHub::start_in(dir.path()).await;
    let token = hub.add_cluster("patient", &[]).await;
    hub.stop().await;

    // The join fails with a transport error: the agent keeps trying instead of exiting.
    let mut a = TestAgent::start(&dir.path().join("p"), Some(token));
    let st = wait_status(&mut a.status, "a recorded join failure", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(
        st.last_error.unwrap().contains("unreachable"),
        "the error names the problem"
    );
    assert!(!a.task.is_finished());

    hub.restart().await;
    a.connected().await;
    hub.wait_state("patient", "connected").await;
}

/// Reads `inbound` until the hub disconnects the session (its `Disconnect`) or the stream ends
/// (`None`, with or without an error status).
async fn disconnect_or_end(
    inbound: &mut tonic::Streaming<flotilla_proto::v1::HubMessage>,
) -> Option<flotilla_proto::v1::Disconnect> {
    use flotilla_proto::v1::hub_message::Msg;
    loop {
        match inbound.message().await {
            Ok(Some(m)) => {
                if let Some(Msg::Disconnect(d)) = m.msg {
                    return Some(d);
                }
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A session that sends nothing for three heartbeat intervals is closed; one that heartbeats,
/// opened before it, is not.
#[tokio::test]
async fn a_silent_session_is_closed_and_a_heartbeating_one_stays() {
    use flotilla_proto::v1::agent_message::Msg;
    use flotilla_proto::v1::{AgentMessage, Heartbeat, hub_message};
    let dir = test_dir();
    let mut config = TestHub::config(dir.path());
    config.heartbeat_interval = std::time::Duration::from_millis(200);
    let hub = TestHub::start(config).await;
    let (ca, chain, key) = hub.enroll(dir.path(), "beating").await;
    let (_, beat_tx, mut beat_in) =
        open_session(&hub.addr(), &ca, &chain, &key, Default::default())
            .await
            .unwrap();
    let pacer = tokio::spawn({
        let tx = beat_tx.clone();
        async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
            for seq in 1.. {
                every.tick().await;
                let hb = Heartbeat {
                    seq,
                    sent_unix_ms: 0,
                };
                let msg = AgentMessage {
                    msg: Some(Msg::Heartbeat(hb)),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        }
    });
    let (ca2, chain2, key2) = hub.enroll(dir.path(), "silent").await;
    let (_, _silent_tx, mut silent_in) =
        open_session(&hub.addr(), &ca2, &chain2, &key2, Default::default())
            .await
            .unwrap();
    // The silent one ends (without a Disconnect: nobody is there to read it).
    let ended = tokio::time::timeout(DEADLINE, disconnect_or_end(&mut silent_in)).await;
    assert!(
        matches!(ended, Ok(None)),
        "the silent session was not closed: {ended:?}"
    );
    // The heartbeating one, older than the silent one, is still served.
    let alive = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match beat_in.message().await {
                Ok(Some(m)) if matches!(m.msg, Some(hub_message::Msg::HeartbeatAck(_))) => {
                    return true;
                }
                Ok(Some(_)) => continue,
                _ => return false,
            }
        }
    })
    .await;
    assert_eq!(alive, Ok(true), "the heartbeating session was closed");
    pacer.abort();
}

/// A session whose client certificate expires without renewal is told why and ended.
#[tokio::test]
async fn a_session_outliving_its_certificate_is_disconnected() {
    use flotilla_proto::v1::Disconnect;
    let dir = test_dir();
    // Certificates live 3 s; liveness (3 × 2 s) outlasts them.
    let hub = TestHub::start_short_lived(dir.path()).await;
    let (ca, chain, key) = hub.enroll(dir.path(), "expiring").await;
    let (_, _tx, mut inbound) = open_session(&hub.addr(), &ca, &chain, &key, Default::default())
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, disconnect_or_end(&mut inbound)).await;
    let Ok(Some(Disconnect { reason, .. })) = got else {
        panic!("expected a Disconnect, got {got:?}");
    };
    assert_eq!(reason, "certificate_expired");
}
