//! `flotilla demo`: an in-process hub on a temporary data dir plus three agents on simulated
//! clusters in two regions. They join with real tokens, hold real mutual-TLS sessions, and the
//! command prints the fleet as `cluster list` shows it, then stops everything and exits 0.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::{Agent, AgentConfig, ClusterBackend};
use flotilla_proto::v1::{AddClusterRequest, ListClustersRequest};
use tokio::sync::watch;

use super::client::{CliError, admin_client};
use super::output::{self, ClusterOut, Format};
use crate::credential::AdminCredential;
use crate::server::{HubConfig, start};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to wait for every agent to connect.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The demo fleet: (name, region, ring).
const FLEET: [(&str, &str, &str); 3] = [
    ("eu-west-1a", "eu-west-1", "canary"),
    ("eu-west-1b", "eu-west-1", "main"),
    ("us-east-1a", "us-east-1", "main"),
];

pub async fn run(args: &DemoArgs, fmt: Format) -> Result<String, CliError> {
    let err = |m: String| CliError(m);
    let tmp = tempfile::tempdir().map_err(|e| err(format!("temp dir: {e}")))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err(format!("bind: {e}")))?;
    let hub = start(HubConfig::new(tmp.path().join("hub")), listener, None)
        .await
        .map_err(|e| err(format!("hub: {e}")))?;
    eprintln!(
        "demo: hub on {} (data dir {}), adding {} clusters — each agent drives a SIMULATED cluster",
        hub.addr,
        hub.data_dir.display(),
        FLEET.len()
    );
    let cred =
        AdminCredential::load(&hub.admin_credential_path()).map_err(|e| err(e.to_string()))?;
    let mut admin = admin_client(&cred).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = Vec::new();
    let mut statuses = Vec::new();
    for (name, region, ring) in FLEET {
        let labels = BTreeMap::from([
            ("region".to_string(), region.to_string()),
            ("ring".to_string(), ring.to_string()),
            ("env".to_string(), "demo".to_string()),
        ]);
        let added = admin
            .add_cluster(AddClusterRequest {
                name: name.into(),
                labels: labels.into_iter().collect(),
                ttl_seconds: 600,
                reusable: false,
            })
            .await?
            .into_inner();
        let mut cfg = AgentConfig::new(tmp.path().join("agents").join(name));
        cfg.join_token = Some(added.token);
        cfg.cluster = ClusterBackend::Simulated;
        let (agent, status) = Agent::new(cfg);
        statuses.push((name, status));
        let rx = stop_rx.clone();
        agents.push(tokio::spawn(async move { agent.run(rx).await }));
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    for (name, status) in &mut statuses {
        let connected = matches!(
            tokio::time::timeout_at(deadline, status.wait_for(|s| s.connected)).await,
            Ok(Ok(_))
        );
        if !connected {
            let last = status.borrow().last_error.clone().unwrap_or_default();
            let _ = stop_tx.send(true);
            hub.shutdown().await;
            return Err(err(format!(
                "agent {name} did not connect within {:?}: {last}",
                args.timeout
            )));
        }
        eprintln!("demo: {name} joined and connected (simulated cluster)");
    }
    let clusters = admin
        .list_clusters(ListClustersRequest {})
        .await?
        .into_inner()
        .clusters;
    let rows: Vec<ClusterOut> = clusters.iter().map(ClusterOut::from).collect();
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    hub.shutdown().await;
    let mut out = String::new();
    if fmt == Format::Table {
        out.push_str("Fleet (3 agents on simulated clusters, 2 regions):\n");
    }
    out.push_str(&output::clusters(fmt, &rows));
    Ok(out)
}
