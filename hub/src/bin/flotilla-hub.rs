//! `flotilla-hub`: parses and validates flags (bad config exits 64 naming the flag), binds, and
//! runs the hub until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_hub::server::{HubConfig, StoreKind, start};
use flotilla_hub::store::etcd::{EtcdConfig, EtcdTls};
use flotilla_proto::telemetry::{Export, LogFormat, SpanForwarder, TraceConfig};

/// jemalloc: with 100 apps on 1,000 sessions the hub peaked at 459 MiB with it, 692 MiB with
/// glibc's allocator (and 819 MiB with mimalloc), at the same speed; its background threads
/// give freed memory back to the system (glibc kept what 10,000 closed connections had held).
/// Its options (one arena, small thread caches, a one-second decay) are compiled in from
/// `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Threads the runtime's blocking pool may grow to. Store transactions and git fetches run
/// there; redb serialises writes, so a burst of session opens would otherwise park one thread
/// per waiting write (157 threads at 10,000 sessions), each with its stack and, under glibc, a
/// share of the malloc arenas.
const MAX_BLOCKING_THREADS: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-hub",
    version,
    about = "Flotilla hub: tracks git, promotes revisions, serves agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Directory for the store, CA and admin credential.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "./flotilla-data")]
    data_dir: PathBuf,
    /// gRPC (mutual TLS) listen address.
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Name or IP for the serving certificate (repeatable); the first is put into join tokens.
    #[arg(long, env = "FLOTILLA_ADVERTISE", value_delimiter = ',')]
    advertise: Vec<String>,
    /// HOST:PORT agents may dial, written into join tokens in this order (repeatable; every
    /// hub replica, or a load balancer's addresses) [default: the first --advertise name and
    /// the --listen port].
    #[arg(long = "endpoint", env = "FLOTILLA_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Plain-HTTP side port: /healthz, /readyz, /metrics.
    #[arg(long, env = "FLOTILLA_HTTP_LISTEN", default_value = "127.0.0.1:7480")]
    http_listen: SocketAddr,
    /// Lifetime of cluster certificates (agents renew at ~70%).
    #[arg(long, env = "FLOTILLA_CERT_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,
    /// SPIFFE trust domain of the identities this hub signs.
    #[arg(long, env = "FLOTILLA_TRUST_DOMAIN", default_value = "flotilla.local")]
    trust_domain: String,
    /// Operator-provided CA certificate (PEM); needs --ca-key.
    #[arg(long, env = "FLOTILLA_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Operator-provided CA private key (PEM); needs --ca-cert.
    #[arg(long, env = "FLOTILLA_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// OTLP/gRPC collector for traces (e.g. http://otel-collector:4317) [default:
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT; none: no traces].
    /// Agents' spans relayed over their sessions are exported there too.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Expected interval between agent heartbeats.
    #[arg(long, env = "FLOTILLA_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// How long a cluster may stay disconnected during a rollout stage before it counts as
    /// failed.
    #[arg(long, env = "FLOTILLA_DISCONNECT_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    disconnect_grace: Duration,
    /// Largest manifest, patch or flotilla.yaml file rendering reads (e.g. 8MiB, 512KiB).
    #[arg(long, env = "FLOTILLA_MAX_FILE_SIZE", default_value = "8MiB", value_parser = parse_size)]
    max_file_size: u64,
    /// Largest rendered bundle (e.g. 64MiB).
    #[arg(long, env = "FLOTILLA_MAX_BUNDLE_SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_bundle_size: u64,
    /// The kubectl that builds Kustomize apps (`kubectl kustomize`); found on PATH by default.
    #[arg(long, env = "FLOTILLA_KUSTOMIZE_BIN", default_value = "kubectl")]
    kustomize_bin: PathBuf,
    /// The helm that renders Helm apps (`helm template`); found on PATH by default.
    #[arg(long, env = "FLOTILLA_HELM_BIN", default_value = "helm")]
    helm_bin: PathBuf,
    /// Credentials for chart repositories and OCI registries (YAML: `repositories: [{url,
    /// username, password}]`, matched by URL prefix), read when a chart is fetched.
    #[arg(long, env = "FLOTILLA_HELM_CREDENTIALS")]
    helm_credentials: Option<PathBuf>,
    /// How long one Kustomize or Helm render may take before it is stopped (a render error).
    #[arg(long, env = "FLOTILLA_RENDER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    render_timeout: Duration,
    /// Bytes per second one bundle download may take (e.g. 10MiB); unset: unlimited.
    #[arg(long, env = "FLOTILLA_BUNDLE_RATE_LIMIT", value_parser = parse_size)]
    bundle_rate_limit: Option<u64>,
    /// How long a desired state sent to an agent and not yet acknowledged holds back newer
    /// ones (which then go together, as the newest state).
    #[arg(long, env = "FLOTILLA_DESIRED_HOLD", default_value = "5s", value_parser = humantime::parse_duration)]
    desired_hold: Duration,
    /// How long the acknowledgement of a durable status report waits for the agent's next
    /// reports to become durable too, so that one acknowledgement covers them all (0s: each at
    /// once). Agents only clear their outbox on it; nothing waits for it.
    #[arg(long, env = "FLOTILLA_STATUS_ACK_DELAY", default_value = "25ms", value_parser = humantime::parse_duration)]
    status_ack_delay: Duration,
    /// Where the hub's state lives: `redb` (a file in --data-dir, the default) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (an etcd v3 cluster, shared by several hub
    /// replicas; keys under PREFIX).
    #[arg(long, env = "FLOTILLA_STORE", default_value = "redb")]
    store: String,
    /// CA certificate (PEM) that signed the etcd members' certificates: talk to etcd over TLS.
    #[arg(long, env = "FLOTILLA_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-key and --etcd-ca.
    #[arg(long, env = "FLOTILLA_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// Client private key (PEM) for --etcd-cert.
    #[arg(long, env = "FLOTILLA_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// This replica's name among the hub replicas sharing an etcd store (unique; shown by
    /// `flotilla hub status`) [default: $HOSTNAME (the pod name), else the token address].
    #[arg(long, env = "FLOTILLA_REPLICA_NAME")]
    replica_name: Option<String>,
    /// The lease the replicas' leader election is held with: the lead moves at most this
    /// long after its holder dies (at once when it stops cleanly). At least 2s.
    #[arg(long, env = "FLOTILLA_LEASE_TIME", default_value = "6s", value_parser = humantime::parse_duration)]
    lease_time: Duration,
    /// The etcd members' --max-txn-ops: the most writes the hub puts into one transaction.
    #[arg(long, env = "FLOTILLA_ETCD_MAX_TXN_OPS", default_value_t = flotilla_hub::store::etcd::DEFAULT_MAX_TXN_OPS)]
    etcd_max_txn_ops: usize,
    /// Log as JSON lines (same as `--log-format json`).
    #[arg(long, env = "FLOTILLA_LOG_JSON")]
    log_json: bool,
    /// `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// Parses `123`, `512KiB`, `8MiB`, `1GiB` (binary units; `K`, `M`, `G` accepted too).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 8MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

fn config_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("flotilla-hub: invalid configuration: {msg}");
    ExitCode::from(EXIT_CONFIG)
}

/// Checks what clap cannot, before anything binds or dials.
fn validate(a: &ServeArgs) -> Result<HubConfig, String> {
    if a.cert_lifetime < Duration::from_secs(1)
        || a.cert_lifetime > Duration::from_secs(366 * 86_400)
    {
        return Err(format!(
            "--cert-lifetime {} must be between 1s and 366d",
            humantime::format_duration(a.cert_lifetime)
        ));
    }
    if a.heartbeat_interval < Duration::from_millis(100) {
        return Err("--heartbeat-interval must be at least 100ms".into());
    }
    if a.trust_domain.is_empty()
        || !a
            .trust_domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(format!(
            "--trust-domain {:?} must be lowercase letters, digits, '-' and '.'",
            a.trust_domain
        ));
    }
    for name in &a.advertise {
        if name.is_empty() || name.contains(['/', ' ', '@']) {
            return Err(format!(
                "--advertise {name:?} is not a host name or IP address"
            ));
        }
    }
    for e in &a.endpoints {
        let ok = flotilla_proto::tls::split_host_port(e)
            .is_ok_and(|(h, p)| p > 0 && !h.contains(['/', ' ', '@']));
        if !ok {
            return Err(format!("--endpoint {e:?} is not HOST:PORT"));
        }
    }
    if a.listen == a.http_listen && a.listen.port() != 0 {
        return Err(format!("--listen and --http-listen are both {}", a.listen));
    }
    for (flag, p) in [("--ca-cert", &a.ca_cert), ("--ca-key", &a.ca_key)] {
        if let Some(p) = p
            && !p.is_file()
        {
            return Err(format!("{flag} {}: no such file", p.display()));
        }
    }
    if a.data_dir.exists() && !a.data_dir.is_dir() {
        return Err(format!(
            "--data-dir {} is not a directory",
            a.data_dir.display()
        ));
    }
    let mut c = HubConfig::new(&a.data_dir);
    c.advertise = a.advertise.clone();
    c.endpoints = a.endpoints.clone();
    c.cert_lifetime = a.cert_lifetime;
    c.trust_domain = a.trust_domain.clone();
    c.ca_files = a.ca_cert.clone().zip(a.ca_key.clone());
    c.heartbeat_interval = a.heartbeat_interval;
    c.bundle_rate = a.bundle_rate_limit;
    c.desired_hold = a.desired_hold;
    c.status_ack_delay = a.status_ack_delay;
    c.disconnect_grace = a.disconnect_grace;
    if a.max_file_size > a.max_bundle_size {
        return Err("--max-file-size must not exceed --max-bundle-size".into());
    }
    c.limits = flotilla_hub::render::Limits {
        max_file_bytes: a.max_file_size,
        max_bundle_bytes: a.max_bundle_size,
    };
    if a.render_timeout.is_zero() {
        return Err("--render-timeout must be longer than zero".into());
    }
    c.tools = flotilla_hub::render::ToolConfig {
        kustomize_bin: a.kustomize_bin.clone(),
        helm_bin: a.helm_bin.clone(),
        timeout: a.render_timeout,
        helm_credentials: a.helm_credentials.clone(),
        ..Default::default()
    };
    c.store = store_kind(a)?;
    if a.lease_time < Duration::from_secs(2) {
        return Err("--lease-time must be at least 2s".into());
    }
    c.lease_time = a.lease_time;
    c.replica_name = a
        .replica_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|n| !n.is_empty());
    Ok(c)
}

/// The store named by `--store` and the etcd flags.
fn store_kind(a: &ServeArgs) -> Result<StoreKind, String> {
    let read = |flag: &str, p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
    };
    if a.store == "redb" {
        if a.etcd_ca.is_some() || a.etcd_cert.is_some() {
            return Err("--etcd-ca and --etcd-cert need --store etcd://...".into());
        }
        return Ok(StoreKind::Redb);
    }
    let mut cfg = EtcdConfig::parse(&a.store).map_err(|e| format!("--store {e}"))?;
    if a.etcd_max_txn_ops < 2 {
        return Err("--etcd-max-txn-ops must be at least 2".into());
    }
    cfg.max_txn_ops = a.etcd_max_txn_ops;
    if let Some(ca) = &a.etcd_ca {
        let identity = match (&a.etcd_cert, &a.etcd_key) {
            (Some(c), Some(k)) => Some((read("--etcd-cert", c)?, read("--etcd-key", k)?)),
            _ => None,
        };
        cfg.tls = Some(EtcdTls {
            ca_pem: read("--etcd-ca", ca)?,
            identity,
        });
    }
    if a.ca_cert.is_none() {
        return Err(flotilla_hub::server::ETCD_NEEDS_CA.into());
    }
    Ok(StoreKind::Etcd(cfg))
}

/// Runs [`serve`] on a runtime with one worker thread per core and a bounded blocking pool.
fn main() -> ExitCode {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build();
    match runtime {
        Ok(r) => r.block_on(serve()),
        Err(e) => {
            eprintln!("flotilla-hub: starting the Tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => {
                let _ = e.print();
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let Command::Serve(args) = cli.command;
    let endpoint = flotilla_proto::telemetry::traces::endpoint(args.otlp_endpoint.as_deref());
    let traces = endpoint.clone().map(|e| TraceConfig {
        default_service: "flotilla-hub",
        export: Export::Direct(e),
    });
    let json_logs = args.log_json || args.log_format == LogFormat::Json;
    let tracing_guard = match flotilla_proto::telemetry::init_with_traces("info", json_logs, traces)
    {
        Ok(t) => t,
        Err(m) => {
            flotilla_proto::telemetry::init("info", json_logs);
            return config_error(format!("--otlp-endpoint: {m}"));
        }
    };
    let mut config = match validate(&args) {
        Ok(c) => c,
        Err(m) => return config_error(m),
    };
    if let Some(e) = &endpoint {
        match SpanForwarder::start(e) {
            Ok(f) => config.span_forwarder = Some(f),
            Err(m) => return config_error(format!("--otlp-endpoint: {m}")),
        }
        tracing::info!(endpoint = %e, "exporting traces over OTLP/gRPC (and agents' relayed spans)");
    }
    // Every agent session is a file descriptor: use the hard limit, not the small default.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => return config_error(format!("--listen {}: {e}", args.listen)),
    };
    let http = match tokio::net::TcpListener::bind(args.http_listen).await {
        Ok(l) => l,
        Err(e) => return config_error(format!("--http-listen {}: {e}", args.http_listen)),
    };
    // Installed before anything is written, so that a SIGTERM during start-up (the admin
    // credential already on disk) still ends in a clean shutdown rather than the default kill.
    let stop = shutdown_signal();
    let hub = match start(config, listener, Some(http)).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("flotilla-hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let http = hub.http_addr.map(|a| a.to_string()).unwrap_or_default();
    if json_logs {
        tracing::info!(listen = %hub.addr, %http, admin_credential = %hub.admin_credential_path().display(), "serving");
    } else {
        eprintln!(
            "flotilla-hub: serving on {} (HTTP {http}); admin credential: {}",
            hub.addr,
            hub.admin_credential_path().display()
        );
    }
    stop.await;
    tracing::info!("shutting down");
    hub.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || tracing_guard.shutdown()).await;
    ExitCode::SUCCESS
}

/// Installs the SIGTERM handler now; the future ends on SIGTERM or Ctrl-C.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
}
