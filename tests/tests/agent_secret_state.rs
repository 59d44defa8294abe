//! An agent that keeps its identity in a Kubernetes Secret instead of a state dir, against a real
//! hub over real mutual TLS; the Secret lives in a simulated (in-memory) cluster that the test
//! shares with the agent so it can inspect it and restart from it.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::k8s_openapi::ByteString;
use flotilla_agent::k8s_openapi::api::core::v1::Secret;
use flotilla_agent::kube::{self, Api};
use flotilla_agent::{AgentConfig, AgentError, ClusterBackend, StateLocation, cluster};
use flotilla_tests::*;

const NS: &str = "flotilla";
const NAME: &str = "agent-state";

fn secret_location() -> StateLocation {
    StateLocation::Secret {
        namespace: NS.into(),
        name: NAME.into(),
    }
}

/// An agent whose state is the Secret `NS/NAME` in the cluster behind `client`.
fn start_agent(client: &kube::Client, token: Option<String>) -> TestAgent {
    let mut cfg = AgentConfig::with_state(secret_location());
    cfg.join_token = token;
    cfg.cluster = ClusterBackend::Simulated;
    cfg.kube_client = Some(client.clone());
    cfg.backoff_base = Duration::from_millis(50);
    TestAgent::start_with(cfg)
}

/// A fresh simulated cluster in which the namespace `NS` exists.
async fn simulated_cluster() -> kube::Client {
    let sim = cluster::SimConfig {
        namespaces: vec![NS.into()],
        ..cluster::SimConfig::default()
    };
    cluster::connect(ClusterBackend::Simulated, None, &sim)
        .await
        .expect("simulated cluster starts")
}

async fn secret_data(client: &kube::Client) -> BTreeMap<String, ByteString> {
    Api::<Secret>::namespaced(client.clone(), NS)
        .get(NAME)
        .await
        .expect("the state Secret exists")
        .data
        .expect("the state Secret has data")
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> String {
    String::from_utf8(data[key].0.clone()).expect("UTF-8")
}

fn leaf_serial(identity_pem: &str) -> String {
    let certs = flotilla_proto::tls::certs_from_pem(identity_pem, "chain").unwrap();
    flotilla_proto::identity::PeerCert::from_der(&certs[0], "flotilla.local")
        .unwrap()
        .serial
}

/// Only the hub's data dir is in the test dir: the agent wrote no state files.
fn assert_no_agent_files(dir: &std::path::Path) {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["hub"], "only the hub writes to the test dir");
}

#[tokio::test]
async fn agent_joins_into_a_secret_and_restarts_from_it_without_a_token() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(TestHub::config(dir.path())).await;
    let token = hub.add_cluster("sec-1", &[]).await;
    let client = simulated_cluster().await;

    let mut a = start_agent(&client, Some(token));
    let st = a.connected().await;
    assert_eq!(st.cluster_id, "sec-1");
    hub.wait_state("sec-1", "connected").await;

    // The three items are keys of one Opaque Secret, the private key among them.
    let secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get(NAME)
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let data = secret.data.unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["agent.yaml", "ca.crt", "identity.pem"]);
    let identity = text(&data, "identity.pem");
    assert!(identity.contains("-----BEGIN CERTIFICATE-----"));
    assert!(identity.contains("PRIVATE KEY-----"));
    assert_eq!(leaf_serial(&identity), st.cert_serial);
    assert!(text(&data, "agent.yaml").contains("cluster_id: sec-1"));
    assert!(text(&data, "ca.crt").contains("-----BEGIN CERTIFICATE-----"));
    assert_no_agent_files(dir.path());

    a.stop().await.unwrap();
    hub.wait_state("sec-1", "disconnected").await;

    // Same cluster, same Secret, no token: it connects with the stored identity.
    let mut b = start_agent(&client, None);
    let st2 = b.connected().await;
    assert_eq!(st2.cluster_id, "sec-1");
    assert_eq!(st2.cert_serial, st.cert_serial, "no re-join");
    hub.wait_state("sec-1", "connected").await;
    assert_eq!(secret_data(&client).await, data, "the Secret is unchanged");
    b.stop().await.unwrap();

    // A fresh simulated cluster is empty: its state is gone with it.
    let c = start_agent(&simulated_cluster().await, None);
    let err = c.ended().await.unwrap_err();
    assert!(matches!(err, AgentError::NotJoined(_)), "{err}");
    assert!(
        err.to_string().contains("Secret flotilla/agent-state"),
        "{err}"
    );
    assert_no_agent_files(dir.path());
}

#[tokio::test]
async fn renewal_replaces_only_the_identity_in_the_secret() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TestHub::config(dir.path());
    cfg.cert_lifetime = Duration::from_secs(3);
    let hub = TestHub::start(cfg).await;
    let token = hub.add_cluster("sec-short", &[]).await;
    let client = simulated_cluster().await;

    let mut a = start_agent(&client, Some(token));
    let first = a.connected().await;
    let before = secret_data(&client).await;
    let renewed = wait_status(&mut a.status, "two renewals", |s| s.renewals >= 2).await;
    assert_eq!(renewed.sessions_opened, 1, "the session was never dropped");

    let after = secret_data(&client).await;
    assert_eq!(after["agent.yaml"], before["agent.yaml"]);
    assert_eq!(after["ca.crt"], before["ca.crt"]);
    let serial = leaf_serial(&text(&after, "identity.pem"));
    assert_ne!(serial, first.cert_serial);
    a.stop().await.unwrap();

    // The renewed identity from the Secret is good for a restart.
    let mut b = start_agent(&client, None);
    b.connected().await;
    b.stop().await.unwrap();
    assert_no_agent_files(dir.path());
}
