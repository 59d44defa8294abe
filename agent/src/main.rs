//! `flotilla-agent`: parses flags, wires the agent, runs it until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flotilla_agent::{Agent, AgentConfig, ClusterBackend, StateLocation};
use flotilla_proto::telemetry::{Export, LogFormat, SpanRelay, TraceConfig, traces};

/// Where the agent's spans go (`--traces`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TraceMode {
    Auto,
    Relay,
    Direct,
    Off,
}

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
    /// Hub address override (`host:port` or `https://host:port`); repeatable for several hub
    /// replicas (tried in turn), replacing the endpoints from the token or the saved state.
    #[arg(long, env = "FLOTILLA_HUB", value_delimiter = ',')]
    hub: Vec<String>,
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
    /// How long a bundle download may wait for its next chunk before it resumes where it
    /// stopped.
    #[arg(long, env = "FLOTILLA_BUNDLE_CHUNK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    bundle_chunk_timeout: Duration,
    /// Log as JSON lines (same as `--log-format json`).
    #[arg(long, env = "FLOTILLA_LOG_JSON")]
    log_json: bool,
    /// `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Where this agent's spans go: `relay` sends them over the session for the hub to export
    /// (no route to a collector needed; only when the hub exports traces), `direct` exports
    /// them over OTLP/gRPC itself, `auto` is `direct` when an endpoint is configured and
    /// `relay` otherwise.
    #[arg(long, env = "FLOTILLA_TRACES", value_enum, default_value = "auto")]
    traces: TraceMode,
    /// OTLP/gRPC collector for `--traces direct` [default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    /// else OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317].
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Where to serve Prometheus `/metrics` and `/healthz` (plain HTTP, read-only), or `off`.
    #[arg(long, env = "FLOTILLA_METRICS_LISTEN", default_value = "0.0.0.0:9465", value_name = "ADDR|off", value_parser = parse_metrics_listen)]
    metrics_listen: MetricsListen,
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct MetricsListen(Option<std::net::SocketAddr>);

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|e| format!("{e}: expected HOST:PORT (an IP address) or off"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let endpoint = traces::endpoint(args.otlp_endpoint.as_deref());
    let export = match (args.traces, endpoint) {
        (TraceMode::Off, _) => None,
        (TraceMode::Direct, e) => Some(Export::Direct(
            e.unwrap_or_else(|| traces::DEFAULT_ENDPOINT.to_string()),
        )),
        (TraceMode::Auto, Some(e)) => Some(Export::Direct(e)),
        (TraceMode::Relay | TraceMode::Auto, _) => Some(Export::Relay(SpanRelay::new())),
    };
    let relay = match &export {
        Some(Export::Relay(r)) => Some(r.clone()),
        _ => None,
    };
    let trace_config = export.map(|export| TraceConfig {
        default_service: "flotilla-agent",
        export,
    });
    let json_logs = args.log_json || args.log_format == LogFormat::Json;
    let tracing_guard =
        match flotilla_proto::telemetry::init_with_traces("info", json_logs, trace_config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("flotilla-agent: --otlp-endpoint: {e}");
                return ExitCode::from(64);
            }
        };
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
    if args.bundle_chunk_timeout.is_zero() {
        eprintln!("flotilla-agent: --bundle-chunk-timeout must be more than zero");
        return ExitCode::from(64);
    }
    config.bundle_chunk_timeout = args.bundle_chunk_timeout;
    config.drift_interval = args.drift_interval;
    config.health_poll = args.health_poll;
    config.sim.ready_delay = args.sim_ready_delay;
    config.metrics_listen = args.metrics_listen.0;
    config.trace_spans = tracing_guard.active();
    config.span_relay = relay;
    if !config.sim.namespaces.contains(&config.namespace) {
        config.sim.namespaces.push(config.namespace.clone());
    }
    let (agent, _status) = Agent::new(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let result = agent.run(stop_rx).await;
    let _ = tokio::task::spawn_blocking(move || tracing_guard.shutdown()).await;
    match result {
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
