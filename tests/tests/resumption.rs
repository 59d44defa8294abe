//! TLS session resumption at the hub, over real TLS: a cluster reconnecting with the
//! configuration it connected with resumes from the hub's ticket and is still the same cluster
//! (identity from the certificate the ticket carries); a revoked cluster's resumed connection is
//! refused, and its next attempt is a full handshake refused with `CertificateRevoked`.

use flotilla_hub::telemetry::metrics::ReasonLabel;
use flotilla_proto::tls::{TlsDialer, mtls_client_config};
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::{Hello, RemoveClusterRequest};
use flotilla_tests::*;

/// A dialer for cluster `name`'s credentials (enrolled through a real agent under `dir`); it
/// keeps the hub's tickets across its connections, as an agent's does.
async fn dialer(hub: &TestHub, dir: &std::path::Path, name: &str) -> TlsDialer {
    let (ca, chain, key) = hub.enroll(dir, name).await;
    TlsDialer::new(mtls_client_config(&ca, &chain, &key).unwrap())
}

fn resumed(hub: &TestHub) -> u64 {
    hub.running().metrics.tls_resumed_handshakes.get()
}

/// Waits until the hub holds no session for `cluster`.
async fn session_gone(hub: &TestHub, cluster: &str) {
    eventually(&format!("the hub dropped {cluster}'s session"), || async {
        hub.running().sessions.get(cluster).is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_resumed_session_is_the_same_cluster() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let dialer = dialer(&hub, dir.path(), "eu").await;
    let addr = hub.addr();

    // The first connection is a full handshake; the Welcome brings the ticket along.
    let (first, tx, rx) = open_session_with(&dialer, &addr, Hello::default())
        .await
        .unwrap();
    assert!(matches!(first.msg, Some(HubMsg::Welcome(_))), "{first:?}");
    let before = resumed(&hub);
    drop((tx, rx));
    session_gone(&hub, "eu").await;

    // The reconnect resumes, and the hub reads the same identity from it.
    let (again, _tx, _rx) = open_session_with(&dialer, &addr, Hello::default())
        .await
        .unwrap();
    assert!(matches!(again.msg, Some(HubMsg::Welcome(_))), "{again:?}");
    assert_eq!(resumed(&hub), before + 1, "the reconnect resumed");
    assert!(hub.running().sessions.get("eu").is_some());

    // A resumed connection cannot claim another cluster either: the identity is the
    // certificate's (each connection brings a new ticket, so this one resumes too).
    hub.add_cluster("us", &[]).await;
    let e = open_session_with(
        &dialer,
        &addr,
        Hello {
            cluster_id: "us".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");
    // (The status is quoted in the error text, so its own quotes are escaped.)
    assert!(
        e.contains(r#"the certificate is for cluster \"eu\""#),
        "{e}"
    );
    assert_eq!(resumed(&hub), before + 2);
}

#[tokio::test]
async fn a_revoked_cluster_cannot_resume() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let dialer = dialer(&hub, dir.path(), "gone").await;
    let addr = hub.addr();
    let (first, tx, rx) = open_session_with(&dialer, &addr, Hello::default())
        .await
        .unwrap();
    assert!(matches!(first.msg, Some(HubMsg::Welcome(_))), "{first:?}");
    drop((tx, rx));
    session_gone(&hub, "gone").await;

    hub.admin()
        .await
        .remove_cluster(RemoveClusterRequest {
            name: "gone".into(),
        })
        .await
        .unwrap();
    let refused_revoked = || {
        hub.running()
            .metrics
            .tls_handshake_failures
            .get_or_create(&ReasonLabel {
                reason: "revoked".into(),
            })
            .get()
    };
    let resumed_before = resumed(&hub);

    // With its ticket the client resumes, and the hub refuses the connection at once.
    assert!(
        open_session_with(&dialer, &addr, Hello::default())
            .await
            .is_err()
    );
    assert_eq!(refused_revoked(), 1, "the resumed connection was refused");
    assert_eq!(
        resumed(&hub),
        resumed_before,
        "nothing resumed was admitted"
    );
    assert!(hub.running().sessions.get("gone").is_none());

    // Its tickets are retired with that refusal: the next attempt is a full handshake, which
    // tells the client why (an agent stops on this).
    let e = open_session_with(&dialer, &addr, Hello::default())
        .await
        .unwrap_err();
    assert!(e.contains("CertificateRevoked"), "{e}");
    assert_eq!(refused_revoked(), 2);
    assert!(hub.running().sessions.get("gone").is_none());
}
