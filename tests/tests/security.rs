//! Security semantics of registration and sessions, each against a real hub over real TLS:
//! tokens, rate limiting, CA pinning, certificate checks, identity from the certificate only,
//! and bad input ending one session while the hub keeps serving.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_agent::AgentError;
use flotilla_agent::identity::new_key_and_csr;
use flotilla_hub::pki::Ca;
use flotilla_proto::clock::ManualClock;
use flotilla_proto::identity::{Identity, PeerCert};
use flotilla_proto::tls::{TlsDialer, certs_from_pem, mtls_client_config};
use flotilla_proto::token::JoinToken;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::{Hello, ListClustersRequest};
use flotilla_tests::*;
use tonic::Code;

fn csr() -> (String, String) {
    new_key_and_csr("t").unwrap()
}

/// The hub still answers: admin calls work.
async fn assert_serving(hub: &TestHub) {
    hub.clusters().await;
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_single_use_unless_reusable() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let line = hub.add_cluster("once", &[]).await;
    let secret = JoinToken::decode(&line).unwrap().token;

    // Only a hash is stored: the secret appears neither in the record nor in the store file.
    let tokens = hub.running().registry.list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    let (_, raw_secret) = secret.split_once('.').unwrap();
    assert_ne!(tokens[0].secret_sha256, raw_secret);
    assert_eq!(tokens[0].secret_sha256.len(), 64);
    let db = std::fs::read(hub.config.data_dir.join("store.redb")).unwrap();
    assert!(
        !db.windows(raw_secret.len())
            .any(|w| w == raw_secret.as_bytes())
    );

    join_raw(&line, &csr().1).await.expect("first use");
    let second = join_raw(&line, &csr().1).await.unwrap_err();
    assert_status(&second, Code::PermissionDenied, "already used");

    let reusable = hub.add_cluster_with("many", &[], 3600, true).await;
    join_raw(&reusable, &csr().1).await.expect("first use");
    join_raw(&reusable, &csr().1)
        .await
        .expect("second use of a reusable token");

    // A revoked token is refused.
    let revoked = hub.add_cluster("rev", &[]).await;
    let id = JoinToken::decode(&revoked).unwrap().token;
    let id = id.split_once('.').unwrap().0.to_string();
    hub.admin()
        .await
        .revoke_token(flotilla_proto::v1::RevokeTokenRequest { id })
        .await
        .unwrap();
    let e = join_raw(&revoked, &csr().1).await.unwrap_err();
    assert!(e.message().contains("revoked"), "{e:?}");
}

#[tokio::test]
async fn expired_tokens_are_refused_with_the_expiry_time() {
    let dir = test_dir();
    let clock = ManualClock::new(SystemTime::now());
    let mut cfg = TestHub::config(dir.path());
    cfg.clock = Arc::new(clock.clone());
    let hub = TestHub::start(cfg).await;
    let line = hub.add_cluster_with("late", &[], 60, false).await;
    clock.advance(Duration::from_secs(120));
    let e = join_raw(&line, &csr().1).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("join token expired at "), "{e:?}");

    // The agent treats it as final and exits with the hub's reason.
    let err = TestAgent::refused(&dir.path().join("a"), Some(line)).await;
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn failed_joins_are_rate_limited_per_source_address() {
    let dir = test_dir();
    let mut cfg = TestHub::config(dir.path());
    cfg.join_failure_burst = 3;
    let hub = TestHub::start(cfg).await;
    let good = hub.add_cluster("c", &[]).await;
    let mut bad = JoinToken::decode(&good).unwrap();
    bad.token = format!("{}.{}", bad.token.split_once('.').unwrap().0, "wrong");
    let bad = bad.encode();
    for _ in 0..3 {
        let e = join_raw(&bad, &csr().1).await.unwrap_err();
        assert_eq!(e.message(), "unknown join token");
    }
    // Even the right token is refused from this address now.
    let e = join_raw(&good, &csr().1).await.unwrap_err();
    assert_status(
        &e,
        Code::ResourceExhausted,
        "too many failed join attempts from 127.0.0.1",
    );
}

#[tokio::test]
async fn agent_refuses_a_hub_whose_ca_does_not_match_the_token() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let mut t = JoinToken::decode(&hub.add_cluster("x", &[]).await).unwrap();
    t.ca = format!("sha256:{}", "00".repeat(32));
    let err = TestAgent::refused(&dir.path().join("a"), Some(t.encode())).await;
    assert!(matches!(err, AgentError::Join(_)));
    assert!(
        err.to_string().contains("CA fingerprint does not match"),
        "{err}"
    );
    // The token was never sent, so it is still usable.
    assert_eq!(
        hub.running().registry.list_tokens().await.unwrap()[0].uses,
        0
    );
}

#[tokio::test]
async fn unknown_and_malformed_tokens_are_refused() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let mut t = JoinToken::decode(&hub.add_cluster("x", &[]).await).unwrap();
    t.token = "nope.nope".into();
    let e = join_raw(&t.encode(), &csr().1).await.unwrap_err();
    assert_eq!(e.message(), "unknown join token");
    let err = TestAgent::refused(&dir.path().join("a"), Some("flotilla-join:%%%".into())).await;
    assert!(matches!(err, AgentError::BadToken(_)), "{err}");
}

#[tokio::test]
async fn certificates_from_another_ca_expired_or_revoked_are_refused() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let cred = flotilla_proto::credential::AdminCredential::load(&hub.credential_path()).unwrap();
    let now = SystemTime::now();

    // Another CA, same trust domain and names: the handshake fails.
    let other = Ca::load_or_create(
        &dir.path().join("other-ca"),
        "flotilla.local",
        None,
        Arc::new(flotilla_proto::clock::SystemClock),
    )
    .unwrap();
    let (forged, key) = other
        .issue_with_key(
            &Identity::Admin("admin".into()),
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .unwrap();
    let cfg = mtls_client_config(&cred.ca, &forged.chain_pem, &key).unwrap();
    let r = match TlsDialer::new(cfg).channel(&hub.addr()).await {
        Ok(ch) => AdminClient::new(ch)
            .list_clusters(ListClustersRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| flotilla_proto::tls::error_chain(&s)),
        Err(e) => Err(flotilla_proto::tls::error_chain(&e)),
    };
    let e = r.unwrap_err();
    // Same issuer name, wrong key: the signature check fails (DecryptError alert); a different
    // issuer name gives UnknownCA. Either way the handshake is refused.
    assert!(
        ["UnknownCA", "BadCertificate", "DecryptError"]
            .iter()
            .any(|a| e.contains(a)),
        "{e}"
    );

    // An expired certificate from the right CA: refused too.
    hub.add_cluster("exp", &[]).await;
    let (chain, key) = hub.issue_expired(&Identity::Cluster("exp".into()));
    let e = open_session(&hub.addr(), &cred.ca, &chain, &key, Hello::default())
        .await
        .unwrap_err();
    assert!(e.contains("CertificateExpired"), "{e}");
    assert_serving(&hub).await;
}

#[tokio::test]
async fn identity_comes_from_the_certificate_and_roles_are_separate() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let (ca, chain, key) = hub.enroll(dir.path(), "a").await;
    hub.add_cluster("b", &[]).await;

    // Hello naming another cluster: rejected, and b's session stays absent.
    let e = open_session(
        &hub.addr(),
        &ca,
        &chain,
        &key,
        Hello {
            cluster_id: "b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");
    assert!(e.contains("but the certificate is for cluster"), "{e}");
    assert!(hub.running().sessions.get("b").is_none());

    // A cluster certificate cannot call Admin.
    let ch = TlsDialer::new(mtls_client_config(&ca, &chain, &key).unwrap())
        .channel(&hub.addr())
        .await
        .unwrap();
    let s = AdminClient::new(ch)
        .list_clusters(ListClustersRequest::default())
        .await
        .unwrap_err();
    assert_status(&s, Code::PermissionDenied, "admin certificate is required");

    // An admin certificate cannot open a cluster session.
    let cred = flotilla_proto::credential::AdminCredential::load(&hub.credential_path()).unwrap();
    let e = open_session(
        &hub.addr(),
        &cred.ca,
        &cred.cert,
        &cred.key,
        Hello::default(),
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");
    assert!(e.contains("cluster certificate is required"), "{e}");

    // With its own identity the same certificate works.
    let (first, _tx, _rx) = open_session(&hub.addr(), &ca, &chain, &key, Hello::default())
        .await
        .unwrap();
    assert!(matches!(first.msg, Some(HubMsg::Welcome(_))));
}

#[tokio::test]
async fn only_join_is_served_without_a_client_certificate() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let cred = flotilla_proto::credential::AdminCredential::load(&hub.credential_path()).unwrap();
    let anon = flotilla_proto::tls::anonymous_client_config(&cred.ca).unwrap();
    let ch = TlsDialer::new(anon).channel(&hub.addr()).await.unwrap();
    let s = AdminClient::new(ch.clone())
        .list_clusters(ListClustersRequest::default())
        .await
        .unwrap_err();
    assert_status(
        &s,
        Code::Unauthenticated,
        "admin client certificate is required",
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(flotilla_proto::v1::AgentMessage::default())
        .await
        .unwrap();
    let s = flotilla_proto::v1::agent_session_client::AgentSessionClient::new(ch.clone())
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // Join, on the same anonymous connection, is answered (here: refused for its bad token).
    let s = flotilla_proto::v1::registration_client::RegistrationClient::new(ch)
        .join(flotilla_proto::v1::JoinRequest {
            token: "a.b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.message(), "unknown join token");
}

#[tokio::test]
async fn the_hub_assigns_the_identity_whatever_the_csr_asks_for() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let line = hub.add_cluster("real", &[]).await;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin/admin");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://flotilla.local/admin/admin".try_into().unwrap(),
    )];
    let sneaky = params.serialize_request(&key).unwrap().pem().unwrap();
    let resp = join_raw(&line, &sneaky).await.unwrap();
    let certs = certs_from_pem(&resp.cert_chain_pem, "chain").unwrap();
    let peer = PeerCert::from_der(&certs[0], "flotilla.local").unwrap();
    assert_eq!(peer.identity, Identity::Cluster("real".into()));
    assert_eq!(resp.identity, "spiffe://flotilla.local/cluster/real");
}

#[tokio::test]
async fn weak_or_malformed_csrs_are_refused_without_burning_the_token() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let line = hub.add_cluster("c", &[]).await;
    let e = join_raw(
        &line,
        "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().to_lowercase().contains("csr"), "{e:?}");
    let e = join_raw(&line, &"x".repeat(64 * 1024)).await.unwrap_err();
    assert_status(&e, Code::InvalidArgument, "more than the 16384 allowed");
    // The single-use token still works after the refusals.
    join_raw(&line, &csr().1)
        .await
        .expect("token not consumed by bad CSRs");
}

#[tokio::test]
async fn garbage_and_oversized_messages_end_one_session_and_the_hub_keeps_serving() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let agent = hub.join(dir.path(), "g").await;
    let (ca, chain, key) = agent_credentials(&dir.path().join("g"));

    // Garbage: bytes that are not an AgentMessage, sent on the Connect stream.
    let ch = TlsDialer::new(mtls_client_config(&ca, &chain, &key).unwrap())
        .channel(&hub.addr())
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/flotilla.v1.AgentSession/Connect");
    let garbage = futures::stream::iter(vec![Garbage {
        junk: 0xdead_beef_u64,
    }]);
    let r = grpc
        .streaming::<_, _, flotilla_proto::v1::HubMessage, _>(
            tonic::Request::new(garbage),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let err = match r {
        Err(s) => s,
        Ok(resp) => resp.into_inner().message().await.unwrap_err(),
    };
    assert!(
        matches!(err.code(), Code::Internal | Code::InvalidArgument),
        "{err:?}"
    );

    // Oversized: a Hello over the 4 MiB message limit.
    let huge = Hello {
        cluster_id: "g".into(),
        cached_bundles: vec!["x".repeat(1024); 5 * 1024],
        ..Default::default()
    };
    let e = open_session(&hub.addr(), &ca, &chain, &key, huge)
        .await
        .unwrap_err();
    assert!(
        e.starts_with("OutOfRange") || e.starts_with("ResourceExhausted"),
        "{e}"
    );

    // The hub keeps serving: the real agent's session is still up and admin calls work.
    assert_serving(&hub).await;
    assert!(agent.status.borrow().connected);
    assert!(
        hub.running()
            .metrics
            .encode()
            .contains("flotilla_hub_rejected_messages_total 2")
    );
}

/// A message whose field 1 has the wrong wire type for `AgentMessage.hello`.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(fixed64, tag = "1")]
    junk: u64,
}
