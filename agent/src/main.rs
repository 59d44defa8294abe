//! `flotilla-agent`: parses flags, wires the agent, runs it until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flotilla_agent::{Agent, AgentConfig, ClusterBackend};

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
    /// Where the key, certificate and CA are kept.
    #[arg(
        long,
        env = "FLOTILLA_STATE_DIR",
        default_value = "./flotilla-agent-state"
    )]
    state_dir: PathBuf,
    /// Cluster backend to drive.
    #[arg(
        long,
        env = "FLOTILLA_CLUSTER",
        value_enum,
        default_value = "simulated"
    )]
    cluster: ClusterBackend,
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
    if args.cluster == ClusterBackend::Kube {
        eprintln!(
            "flotilla-agent: --cluster kube is not available in this build yet; use --cluster simulated"
        );
        return ExitCode::from(64);
    }
    let mut config = AgentConfig::new(args.state_dir);
    config.join_token = args.join;
    config.hub_override = args.hub;
    config.cluster = args.cluster;
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
