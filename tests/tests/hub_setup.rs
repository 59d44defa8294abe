//! Hub set-up: an operator-provided CA, the HTTP side port (health, readiness, metrics), and the
//! data dir reused across restarts.

use flotilla_proto::tls::{certs_from_pem, fingerprint};
use flotilla_proto::token::JoinToken;
use flotilla_tests::*;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    flotilla_tests::bench::hub::http_get(addr, path)
        .await
        .unwrap()
}

#[tokio::test]
async fn operator_provided_ca_is_used_for_everything() {
    let dir = test_dir();
    // An operator CA made outside Flotilla.
    let (ca_pem, cert_path, key_path) = operator_ca(dir.path());
    let mut cfg = TestHub::config(dir.path());
    cfg.ca_files = Some((cert_path.clone(), key_path));
    let hub = TestHub::start(cfg).await;
    let want = fingerprint(&certs_from_pem(&ca_pem, "ca").unwrap()[0]);
    assert_eq!(hub.running().ca.fingerprint(), want);

    let token = hub.add_cluster("op", &[]).await;
    assert_eq!(JoinToken::decode(&token).unwrap().ca, want);
    let state = dir.path().join("op");
    let mut agent = TestAgent::start(&state, Some(token));
    agent.connected().await;
    let (ca_pem, _, _) = agent_credentials(&state);
    assert_eq!(
        fingerprint(&certs_from_pem(&ca_pem, "ca").unwrap()[0]),
        want
    );
    // The operator's key is not copied into the data dir.
    assert!(!hub.config.data_dir.join("ca.key").exists());
}

#[tokio::test]
async fn http_side_port_serves_health_readiness_and_metrics() {
    let dir = test_dir();
    let (hub, http_addr) = TestHub::start_with_http(TestHub::config(dir.path())).await;

    assert_eq!(http_get(http_addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(http_addr, "/readyz").await.0, 200);

    let _agent = hub.join(dir.path(), "m").await;
    let body = eventually("the session gauge to count the agent", || async {
        let (code, body) = http_get(http_addr, "/metrics").await;
        assert_eq!(code, 200);
        body.contains("flotilla_hub_sessions_connected 1")
            .then_some(body)
    })
    .await;
    assert!(
        body.contains("flotilla_hub_joins_total{result=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("flotilla_hub_tls_handshakes_total{result=\"ok\"}"),
        "{body}"
    );
    assert_eq!(http_get(http_addr, "/nope").await.0, 404);
}
