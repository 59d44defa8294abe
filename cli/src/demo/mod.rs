//! `flotilla demo`: a hub (the real `flotilla-hub` binary, on a temporary data dir) and six
//! agents (real `flotilla-agent` binaries) on simulated clusters in three regions — real join
//! tokens, real mutual TLS. The demo drives and watches the fleet only through the Admin API, as
//! any operator would. The example fleet of `deploy/examples/fleet` is committed to a git
//! repository made on the spot and added as a source; its first release is promoted live through
//! the pipeline (canary, then region by region), then a bad release fails in the canary stage and
//! is rolled back on its own. Prints the outcome and the CLI commands to try; `--keep` leaves the
//! hub and agents running until Ctrl-C.

pub mod fleet;
mod procs;
mod report;
mod view;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_proto::credential::AdminCredential;
use flotilla_proto::revision::short;
use flotilla_proto::state::{AppState, RolloutState};
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::{
    AddClusterRequest, AddSourceRequest, ClusterApp, GetClusterRequest, GetRolloutRequest,
    ListAppsRequest, ListClustersRequest, Rollout, SyncSourceRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use self::fleet::{APP, CLUSTERS, Commit, FleetRepo, PIPELINE};
use self::procs::Processes;
use self::report::{DemoOut, RolloutOut};
use self::view::{Snapshot, View};
use super::client::{CliError, admin_client};
use super::output::{self, ClusterOut, Format};

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
    let mut demo = Demo {
        procs: Processes::new(tmp.path().join("logs"))?,
        dir: tmp.path().to_path_buf(),
        live,
        timeout: args.timeout,
    };
    let played = tokio::select! {
        r = demo.play(&args.listen, fmt, args.keep) => r,
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
        Err(e) => match demo.procs.exited() {
            // Say why a process died rather than only what that broke (unless the error is
            // already that: the waits fail with it as soon as a process exits).
            Some(died) if !e.0.contains(&died.0) => Err(CliError(format!("{e} ({died})"))),
            _ => Err(e),
        },
        other => other,
    };
    // The temporary directory goes when `tmp` drops, after everything using it stopped.
    demo.procs.stop().await;
    result
}

/// The running demo: the hub and its agents.
struct Demo {
    procs: Processes,
    dir: PathBuf,
    live: bool,
    timeout: Duration,
}

impl Demo {
    async fn play(&mut self, listen: &str, fmt: Format, keep: bool) -> Result<String, CliError> {
        let data_dir = self.dir.join("hub");
        let cred_path = self
            .procs
            .start_hub(&data_dir, listen, Instant::now() + self.timeout)
            .await?;
        let cred = AdminCredential::load(&cred_path).map_err(|e| CliError(e.to_string()))?;
        let mut admin = self.connect(&cred).await?;
        eprintln!(
            "demo: hub on {} (data dir {}); {} agents join, each driving a SIMULATED cluster",
            cred.hub,
            data_dir.display(),
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
        sync(&mut admin, &good).await?;
        let promoted = self
            .follow(&mut admin, &good, RolloutState::Succeeded)
            .await?;

        let bad = repo
            .commit_bad_release()
            .map_err(|e| CliError(format!("demo fleet repository: {e}")))?;
        eprintln!("\ndemo: commit {} {:?}", short(&bad.id), bad.subject);
        sync(&mut admin, &bad).await?;
        let failed = self
            .follow(&mut admin, &bad, RolloutState::RolledBack)
            .await?;
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
            hub: cred.hub.clone(),
            admin_config: keep.then(|| cred_path.display().to_string()),
            fleet_repo: keep.then(|| repo.dir().display().to_string()),
            clusters: clusters.iter().map(ClusterOut::from).collect(),
            app: APP.into(),
            pipeline: PIPELINE.into(),
            rollouts: vec![
                RolloutOut::of(&promoted, &good.subject),
                RolloutOut::of(&failed, &bad.subject),
            ],
            last_good: output::non_empty(&failed.last_good_revision),
            apps: apps.iter().map(output::AppOut::from).collect(),
        };
        Ok(report::render(&out, fmt, keep))
    }

    /// Dials the hub's Admin API until it answers (it may still be starting).
    async fn connect(&mut self, cred: &AdminCredential) -> Result<AdminClient<Channel>, CliError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let tried = match admin_client(cred).await {
                Ok(mut admin) => match admin.list_clusters(ListClustersRequest::default()).await {
                    Ok(_) => return Ok(admin),
                    Err(e) => CliError::from(e),
                },
                Err(e) => e,
            };
            if let Some(e) = self.procs.exited() {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(CliError(format!("the hub did not answer in time: {tried}")));
            }
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// Adds the demo clusters, starts an agent for each with its join token, and waits until
    /// the hub reports every one connected.
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
            let state_dir = self.dir.join("agents").join(name);
            self.procs
                .start_agent(name, &added.token, &state_dir, HEALTH_POLL)?;
        }
        let deadline = Instant::now() + self.timeout;
        let mut announced = Vec::new();
        loop {
            let clusters = admin
                .list_clusters(ListClustersRequest::default())
                .await?
                .into_inner()
                .clusters;
            for (name, region, ring) in CLUSTERS {
                let connected = clusters
                    .iter()
                    .any(|c| c.name == name && c.state == "connected");
                if connected && !announced.contains(&name) {
                    announced.push(name);
                    eprintln!(
                        "demo: {name:<15} joined and connected  region={region:<14} ring={ring}"
                    );
                }
            }
            if announced.len() == CLUSTERS.len() {
                return Ok(());
            }
            if let Some(e) = self.procs.exited() {
                return Err(e);
            }
            if Instant::now() >= deadline {
                let waiting: Vec<String> = self
                    .procs
                    .agents
                    .iter()
                    .filter(|a| !announced.contains(&a.name.as_str()))
                    .map(|a| format!("{}: {}", a.name, a.last_line()))
                    .collect();
                return Err(CliError(format!(
                    "agents did not connect within {}: {}",
                    humantime::format_duration(self.timeout),
                    waiting.join("; ")
                )));
            }
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// Shows the rollout of `commit` until it ends (and, when `expected` is rolled back, until
    /// every cluster runs the last good revision again, healthy); returns the rollout then.
    /// Fails when it ended otherwise than `expected` (succeeded for the promotion, rolled back
    /// for the bad release), or when that takes longer than the timeout.
    async fn follow(
        &mut self,
        admin: &mut AdminClient<Channel>,
        commit: &Commit,
        expected: RolloutState,
    ) -> Result<Rollout, CliError> {
        let restored = expected == RolloutState::RolledBack;
        let deadline = Instant::now() + self.timeout;
        let mut view = View::new(self.live);
        loop {
            let rollout = admin
                .get_rollout(GetRolloutRequest { app: APP.into() })
                .await?
                .into_inner();
            let reports = reports(admin).await?;
            let snap = Snapshot::of(&rollout, &reports).filter(|s| s.revision == commit.id);
            if let Some(s) = &snap {
                view.update(s);
                let back = || {
                    CLUSTERS.iter().all(|(c, _, _)| {
                        reports
                            .get(*c)
                            .is_some_and(|a| a.healthy_at(&rollout.last_good_revision))
                    })
                };
                let done = !s.state.in_flight()
                    && (s.state != RolloutState::RolledBack || !restored || back());
                if done {
                    view.finish();
                    return ended_as(rollout, commit, expected);
                }
            }
            if let Some(e) = self.procs.exited() {
                view.finish();
                return Err(e);
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
}

/// `rollout` when it ended `expected`; otherwise what went wrong with the promotion or the bad
/// release.
fn ended_as(
    rollout: Rollout,
    commit: &Commit,
    expected: RolloutState,
) -> Result<Rollout, CliError> {
    if rollout.state() == expected {
        return Ok(rollout);
    }
    let (rev, state, message) = (short(&commit.id), rollout.state(), &rollout.message);
    Err(CliError(match expected {
        RolloutState::RolledBack => {
            format!("the bad release {rev} was not rolled back: it ended {state} {message}")
        }
        _ => format!("the promotion of {rev} ended {state}: {message}"),
    }))
}

/// Has the hub fetch and render the source now; fails when the commit was not taken.
async fn sync(admin: &mut AdminClient<Channel>, commit: &Commit) -> Result<(), CliError> {
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

/// What each demo cluster last reported about the app, as the hub shows it.
async fn reports(
    admin: &mut AdminClient<Channel>,
) -> Result<BTreeMap<String, ClusterApp>, CliError> {
    let mut out = BTreeMap::new();
    for (name, _, _) in CLUSTERS {
        let cluster = admin
            .get_cluster(GetClusterRequest { name: name.into() })
            .await?
            .into_inner();
        if let Some(a) = cluster.apps.into_iter().find(|a| a.name == APP) {
            out.insert(name.to_string(), a);
        }
    }
    Ok(out)
}
