//! `flotilla-agent`: parses flags, wires the agent, runs it until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flotilla_agent::{Agent, AgentConfig, ClusterBackend, StateLocation};

const DEFAULT_STATE_DIR: &str = "./flotilla-agent-state";

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-agent",
    version,
    about = "Flotilla agent: dials out to the hub and reconciles its own cluster"
)]
struct Args {
    /// One-line join token from `flotilla cluster add` (first start only).
    #[arg(long, env = "FLOTILLA_JOIN")]
    join: Option<String>,
    /// Directory where the key, certificate and CA are kept [default: ./flotilla-agent-state].
    #[arg(long, env = "FLOTILLA_STATE_DIR", conflicts_with = "state_secret")]
    state_dir: Option<PathBuf>,
    /// Keep the key, certificate and CA in this Kubernetes Secret of the agent's cluster
    /// (NAMESPACE/NAME) instead of a directory.
    #[arg(long, env = "FLOTILLA_STATE_SECRET", value_name = "NAMESPACE/NAME")]
    state_secret: Option<String>,
    /// Cluster backend to drive (`simulated` is an in-memory simulation, not a real cluster).
    #[arg(
        long,
        env = "FLOTILLA_CLUSTER",
        value_enum,
        default_value = "simulated"
    )]
    cluster: ClusterBackend,
    /// Kubeconfig file for `--cluster kube` (default: KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, env = "FLOTILLA_KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Hub address override (`host:port` or `https://host:port`).
    #[arg(long, env = "FLOTILLA_HUB")]
    hub: Option<String>,
    /// Where fetched bundles and the last desired state are kept [default: <state dir>/bundles,
    /// or ./flotilla-agent-cache with --state-secret].
    #[arg(long, env = "FLOTILLA_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The agent's namespace, where app inventories (ConfigMaps) are kept [default: the
    /// POD_NAMESPACE variable, else flotilla-system].
    #[arg(long, env = "FLOTILLA_NAMESPACE")]
    namespace: Option<String>,
    /// How often live objects are compared with the bundles (±10% jitter).
    #[arg(long, env = "FLOTILLA_DRIFT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    drift_interval: Duration,
    /// How often an app that is still progressing is re-assessed.
    #[arg(long, env = "FLOTILLA_HEALTH_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    health_poll: Duration,
    /// With `--cluster simulated`: how long simulated workloads take to become ready.
    #[arg(long, env = "FLOTILLA_SIM_READY_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    sim_ready_delay: Duration,
    /// Log as JSON lines.
    #[arg(long, env = "FLOTILLA_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    flotilla_proto::telemetry::init("info", args.log_json);
    let state = match &args.state_secret {
        Some(v) => match StateLocation::parse_secret(v) {
            Ok(loc) => loc,
            Err(e) => {
                eprintln!("flotilla-agent: --state-secret: {e}");
                return ExitCode::from(64);
            }
        },
        None => StateLocation::Dir(
            args.state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        ),
    };
    let mut config = AgentConfig::with_state(state);
    config.join_token = args.join;
    config.hub_override = args.hub;
    config.cluster = args.cluster;
    config.kubeconfig = args.kubeconfig;
    config.cache_dir = args.cache_dir;
    config.namespace = args
        .namespace
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| flotilla_agent::DEFAULT_NAMESPACE.into());
    if let Err(e) = flotilla_proto::identity::validate_name(&config.namespace) {
        eprintln!("flotilla-agent: --namespace: {e}");
        return ExitCode::from(64);
    }
    if args.drift_interval.is_zero() || args.health_poll.is_zero() {
        eprintln!("flotilla-agent: --drift-interval and --health-poll must be more than zero");
        return ExitCode::from(64);
    }
    config.drift_interval = args.drift_interval;
    config.health_poll = args.health_poll;
    config.sim.ready_delay = args.sim_ready_delay;
    if !config.sim.namespaces.contains(&config.namespace) {
        config.sim.namespaces.push(config.namespace.clone());
    }
    let (agent, _status) = Agent::new(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    match agent.run(stop_rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
