//! `flotilla demo`: an in-process hub on a temporary data dir and six agents on simulated
//! clusters in three regions (real join tokens, real mutual TLS). The example fleet of
//! `deploy/examples/fleet` is committed to a git repository made on the spot and added as a
//! source; its first release is promoted live through the pipeline (canary, then region by
//! region), then a bad release fails in the canary stage and is rolled back on its own. Prints
//! the outcome and the CLI commands to try; `--keep` leaves the hub running until Ctrl-C.

mod fleet;
mod report;
mod view;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use flotilla_agent::{Agent, AgentConfig, AgentError, AgentStatus, ClusterBackend};
use flotilla_proto::clock::unix_ms;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::{
    AddClusterRequest, AddSourceRequest, ListAppsRequest, ListClustersRequest, SyncSourceRequest,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use self::fleet::{APP, CLUSTERS, Commit, FleetRepo, PIPELINE};
use self::report::{DemoOut, RolloutOut};
use self::view::{Snapshot, View};
use super::client::{CliError, admin_client};
use super::output::{self, ClusterOut, Format};
use crate::credential::AdminCredential;
use crate::desired::AppReport;
use crate::rollout::plan::{AppRollout, RolloutState, short};
use crate::server::{HubConfig, RunningHub, start};
use flotilla_proto::state::AppState;

/// The source the demo adds.
const SOURCE: &str = "demo-fleet";
/// How often the hub polls the fleet repository (so that commits made with `--keep` roll out).
const SOURCE_INTERVAL_SECONDS: u64 = 10;
/// How often the agents re-assess an app that is still becoming healthy.
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// How often the progress view is refreshed (a pace, not a synchronisation).
const REFRESH: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long each step may take (the agents joining, the promotion, the rollback) before the
    /// demo gives up with an error.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Keep the hub and the agents running after the demo, until Ctrl-C, to try the CLI on them.
    #[arg(long)]
    pub keep: bool,
    /// Address the hub listens on (port 0: a free port, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Print progress as plain lines, also on a terminal (it is plain whenever stdout or stderr
    /// is not a terminal).
    #[arg(long)]
    pub plain: bool,
}

pub async fn run(args: &DemoArgs, fmt: Format) -> Result<String, CliError> {
    let live = !args.plain && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let tmp = tempfile::tempdir().map_err(|e| CliError(format!("temp dir: {e}")))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CliError(format!("cannot listen on {}: {e}", args.listen)))?;
    let hub = start(HubConfig::new(tmp.path().join("hub")), listener, None)
        .await
        .map_err(|e| CliError(format!("hub: {e}")))?;
    let (stop_tx, _) = watch::channel(false);
    let mut demo = Demo {
        hub,
        dir: tmp.path().to_path_buf(),
        live,
        timeout: args.timeout,
        stop_tx,
        agents: Vec::new(),
        statuses: Vec::new(),
    };
    let played = tokio::select! {
        r = demo.play(fmt, args.keep) => r,
        _ = tokio::signal::ctrl_c() => Err(CliError("interrupted".into())),
    };
    let result = match played {
        Ok(out) if args.keep => {
            print!("{out}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("demo: stopping the agents and the hub");
            Ok(String::new())
        }
        other => other,
    };
    // The temporary directory goes when `tmp` drops, after everything using it stopped.
    demo.stop().await;
    result
}

/// The running demo: the hub and its agents.
struct Demo {
    hub: RunningHub,
    dir: PathBuf,
    live: bool,
    timeout: Duration,
    stop_tx: watch::Sender<bool>,
    agents: Vec<JoinHandle<Result<(), AgentError>>>,
    statuses: Vec<(&'static str, watch::Receiver<AgentStatus>)>,
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

impl Demo {
    async fn play(&mut self, fmt: Format, keep: bool) -> Result<String, CliError> {
        let cred = AdminCredential::load(&self.hub.admin_credential_path())
            .map_err(|e| CliError(e.to_string()))?;
        let mut admin = admin_client(&cred).await?;
        eprintln!(
            "demo: hub on {} (data dir {}); {} agents join, each driving a SIMULATED cluster",
            self.hub.hub_address,
            self.hub.data_dir.display(),
            CLUSTERS.len()
        );
        self.join_fleet(&mut admin).await?;

        let (repo, good) = FleetRepo::create(&self.dir.join("fleet"))
            .map_err(|e| CliError(format!("demo fleet repository: {e}")))?;
        admin
            .add_source(AddSourceRequest {
                name: SOURCE.into(),
                url: repo.dir().display().to_string(),
                r#ref: "main".into(),
                interval_seconds: SOURCE_INTERVAL_SECONDS,
                ..Default::default()
            })
            .await?;
        eprintln!(
            "\ndemo: deploy/examples/fleet committed to {}, tracked as source {SOURCE}",
            repo.dir().display()
        );
        eprintln!(
            "demo: commit {} {:?}: app {APP} through pipeline {PIPELINE}",
            short(&good.id),
            good.subject
        );
        if self.live {
            eprintln!("{}", view::LEGEND);
        }
        self.sync(&mut admin, &good).await?;
        let first = self.follow(&good, false).await?;
        let promoted = first.rollout.clone().expect("followed");
        if promoted.state != RolloutState::Succeeded {
            return Err(CliError(format!(
                "the promotion of {} ended {}: {}",
                short(&good.id),
                promoted.state.as_str(),
                promoted.message
            )));
        }

        let bad = repo
            .commit_bad_release()
            .map_err(|e| CliError(format!("demo fleet repository: {e}")))?;
        eprintln!("\ndemo: commit {} {:?}", short(&bad.id), bad.subject);
        self.sync(&mut admin, &bad).await?;
        let second = self.follow(&bad, true).await?;
        let failed = second.rollout.clone().expect("followed");
        if failed.state != RolloutState::RolledBack {
            return Err(CliError(format!(
                "the bad release {} was not rolled back: it ended {} {}",
                short(&bad.id),
                failed.state.as_str(),
                failed.message
            )));
        }
        eprintln!(
            "\ndemo: {} failed in the canary stage and was rolled back automatically;\ndemo: the later stages never started, and every cluster runs {} again",
            short(&bad.id),
            short(&good.id)
        );

        let clusters = admin
            .list_clusters(ListClustersRequest::default())
            .await?
            .into_inner()
            .clusters;
        let apps = admin.list_apps(ListAppsRequest {}).await?.into_inner().apps;
        let out = DemoOut {
            hub: self.hub.hub_address.clone(),
            admin_config: keep.then(|| self.hub.admin_credential_path().display().to_string()),
            fleet_repo: keep.then(|| repo.dir().display().to_string()),
            clusters: clusters.iter().map(ClusterOut::from).collect(),
            app: APP.into(),
            pipeline: PIPELINE.into(),
            rollouts: vec![
                RolloutOut::of(&promoted, &good.subject),
                RolloutOut::of(&failed, &bad.subject),
            ],
            last_good: second.last_good.clone(),
            apps: apps.iter().map(output::AppOut::from).collect(),
        };
        Ok(report::render(&out, fmt, keep))
    }

    /// Adds the demo clusters, starts an agent for each with its join token, and waits until
    /// every one is connected.
    async fn join_fleet(&mut self, admin: &mut AdminClient<Channel>) -> Result<(), CliError> {
        for (name, region, ring) in CLUSTERS {
            let labels = BTreeMap::from([
                ("env".to_string(), "demo".to_string()),
                ("region".to_string(), region.to_string()),
                ("ring".to_string(), ring.to_string()),
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
            let mut cfg = AgentConfig::new(self.dir.join("agents").join(name));
            cfg.join_token = Some(added.token);
            cfg.cluster = ClusterBackend::Simulated;
            cfg.health_poll = HEALTH_POLL;
            let (agent, status) = Agent::new(cfg);
            self.statuses.push((name, status));
            let stop = self.stop_tx.subscribe();
            self.agents
                .push(tokio::spawn(async move { agent.run(stop).await }));
        }
        let deadline = Instant::now() + self.timeout;
        for ((name, status), (_, region, ring)) in self.statuses.iter_mut().zip(CLUSTERS) {
            let connected = matches!(
                tokio::time::timeout_at(deadline, status.wait_for(|s| s.connected)).await,
                Ok(Ok(_))
            );
            if !connected {
                let last = status.borrow().last_error.clone().unwrap_or_default();
                return Err(CliError(format!(
                    "agent {name} did not connect within {}: {last}",
                    humantime::format_duration(self.timeout)
                )));
            }
            eprintln!("demo: {name:<15} joined and connected  region={region:<14} ring={ring}");
        }
        Ok(())
    }

    /// Has the hub fetch and render the source now; fails when the commit was not taken.
    async fn sync(
        &self,
        admin: &mut AdminClient<Channel>,
        commit: &Commit,
    ) -> Result<(), CliError> {
        let src = admin
            .sync_source(SyncSourceRequest {
                name: SOURCE.into(),
            })
            .await?
            .into_inner();
        if !src.error.is_empty() {
            return Err(CliError(format!("source {SOURCE}: {}", src.error)));
        }
        let app = admin
            .list_apps(ListAppsRequest {})
            .await?
            .into_inner()
            .apps
            .into_iter()
            .find(|a| a.name == APP);
        match app {
            Some(a) if !a.error.is_empty() => Err(CliError(format!(
                "app {APP} at {}: {}",
                short(&commit.id),
                a.error
            ))),
            Some(_) => Ok(()),
            None => Err(CliError(format!(
                "source {SOURCE} at {} has no app {APP}",
                short(&commit.id)
            ))),
        }
    }

    /// What each demo cluster last reported about the app.
    async fn reports(&self) -> Result<BTreeMap<String, AppReport>, CliError> {
        let mut out = BTreeMap::new();
        for (name, _, _) in CLUSTERS {
            let status = self
                .hub
                .desired
                .status(name)
                .await
                .map_err(|e| CliError(e.to_string()))?;
            if let Some(a) = status.apps.into_iter().find(|a| a.app == APP) {
                out.insert(name.to_string(), a);
            }
        }
        Ok(out)
    }

    /// Shows the rollout of `commit` until it ends (and, when it was rolled back and `restored`
    /// is set, until every cluster runs the last good revision again, healthy); returns the
    /// app's record then. Fails when that takes longer than the timeout.
    async fn follow(&self, commit: &Commit, restored: bool) -> Result<AppRollout, CliError> {
        let deadline = Instant::now() + self.timeout;
        let mut view = View::new(self.live);
        loop {
            let rec = self
                .hub
                .rollouts
                .get(APP)
                .await
                .map_err(|e| CliError(e.to_string()))?;
            let reports = self.reports().await?;
            let snap = Snapshot::of(&rec, &reports, now_ms()).filter(|s| s.revision == commit.id);
            if let Some(s) = &snap {
                view.update(s);
                let back = || {
                    let good = rec.last_good.as_deref().unwrap_or_default();
                    CLUSTERS
                        .iter()
                        .all(|(c, _, _)| reports.get(*c).is_some_and(|a| a.healthy_at(good)))
                };
                let done = !s.state.in_flight()
                    && (s.state != RolloutState::RolledBack || !restored || back());
                if done {
                    view.finish();
                    return Ok(rec);
                }
            }
            if Instant::now() >= deadline {
                view.finish();
                let at = snap
                    .map(|s| s.describe())
                    .unwrap_or_else(|| "it never started".into());
                return Err(CliError(format!(
                    "the rollout of {APP} {} did not finish within {} (see --timeout): {at}",
                    short(&commit.id),
                    humantime::format_duration(self.timeout)
                )));
            }
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// Stops the agents, then the hub.
    async fn stop(self) {
        let _ = self.stop_tx.send(true);
        for a in self.agents {
            let _ = a.await;
        }
        self.hub.shutdown().await;
    }
}
