//! `flotilla-agent`: parses flags, wires the agent, runs it until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

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
