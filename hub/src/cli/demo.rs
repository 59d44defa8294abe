//! `flotilla demo`: an in-process hub on a temporary data dir plus three agents on simulated
//! clusters in two regions. They join with real tokens, hold real mutual-TLS sessions, and the
//! command prints the fleet as `cluster list` shows it, then stops everything and exits 0.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::{Agent, AgentConfig, ClusterBackend};
use flotilla_proto::v1::{
    AddClusterRequest, AddSourceRequest, ListAppsRequest, ListClustersRequest, SyncSourceRequest,
};
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
    // A git repository with one app: the two EU clusters render the same bundle, the US one its own.
    let mut apps_out = None;
    match make_fleet_repo(&tmp.path().join("fleet-repo")) {
        Ok((repo, commit)) => {
            admin
                .add_source(AddSourceRequest {
                    name: "demo-fleet".into(),
                    url: repo.display().to_string(),
                    r#ref: "main".into(),
                    interval_seconds: 3600,
                    ..Default::default()
                })
                .await?;
            let src = admin
                .sync_source(SyncSourceRequest {
                    name: "demo-fleet".into(),
                })
                .await?
                .into_inner();
            if !src.error.is_empty() {
                return Err(err(format!("demo source: {}", src.error)));
            }
            eprintln!(
                "demo: source demo-fleet at {} rendered; agents fetching bundles",
                &commit[..12]
            );
            for (name, status) in &mut statuses {
                let held =
                    tokio::time::timeout_at(deadline, status.wait_for(|s| !s.bundles.is_empty()))
                        .await;
                if !matches!(held, Ok(Ok(_))) {
                    return Err(err(format!("agent {name} did not receive its bundle")));
                }
            }
            let apps = admin.list_apps(ListAppsRequest {}).await?.into_inner().apps;
            // Wait until every agent applied the app and it is healthy.
            let mut apps = apps;
            while tokio::time::Instant::now() < deadline
                && !apps.iter().all(|a| {
                    a.clusters
                        .iter()
                        .all(|c| !c.applied_revision.is_empty() && c.health == "healthy")
                })
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                apps = admin.list_apps(ListAppsRequest {}).await?.into_inner().apps;
            }
            apps_out = Some(apps);
        }
        Err(e) => eprintln!("demo: skipping the git part ({e})"),
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
    if let Some(apps) = apps_out {
        let rows: Vec<_> = apps.iter().map(output::AppOut::from).collect();
        match fmt {
            Format::Table => {
                out.push_str("\nApps (applied by each agent to its simulated cluster with server-side apply):\n");
                out.push_str(&output::apps_table(&rows));
            }
            f => out.push_str(&output::structured(f, &rows)),
        }
    }
    Ok(out)
}

const DEMO_CONFIG: &str = "apps:
  web:
    path: apps/web
    namespace: web
    targets: {matchLabels: {env: demo}}
    vars: {replicas: 2}
    overlays:
      - when: {matchLabels: {region: us-east-1}}
        vars: {replicas: 3}
";

const DEMO_MANIFEST: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {region: \"${cluster.labels.region}\"}
spec:
  replicas: ${replicas}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - {name: web, image: \"nginx:1.27\"}
";

/// Makes a small fleet repository with the git CLI; returns its path and commit.
fn make_fleet_repo(dir: &std::path::Path) -> Result<(std::path::PathBuf, String), String> {
    std::fs::create_dir_all(dir.join("apps/web")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("flotilla.yaml"), DEMO_CONFIG).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("apps/web/deployment.yaml"), DEMO_MANIFEST)
        .map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("apps/web/namespace.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
    )
    .map_err(|e| e.to_string())?;
    let git = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=flotilla demo",
                "-c",
                "user.email=demo@flotilla.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .output()
            .map_err(|e| format!("git is not available: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "demo fleet"])?;
    Ok((dir.to_path_buf(), git(&["rev-parse", "HEAD"])?))
}
