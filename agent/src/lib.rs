//! `flotilla-agent`: the agent that runs in each cluster. It joins the hub with a one-line
//! token, keeps its own key, holds a mutual-TLS session to the hub (dialing out only), renews
//! its certificate over that session, and reconnects with jittered backoff.
//!
//! Layers, lowest first; a module imports only from its own layer or those below, and no two
//! modules import each other (`tests/tests/layers.rs` checks it):
//! 0. [`backoff`], [`metrics`], [`sim`] (the simulated cluster), [`bundles`] (the bundle cache);
//! 1. [`http`] (metrics and health port), [`cluster`] (the backends), [`identity`] (key,
//!    certificate and their storage);
//! 2. [`join`], [`reconcile`];
//! 3. [`session`] — and the crate root, which wires them into an [`Agent`].

pub mod backoff;
pub mod bundles;
pub mod cluster;
pub mod http;
pub mod identity;
pub mod join;
pub mod metrics;
pub mod reconcile;
pub mod session;
#[cfg(feature = "simulated")]
pub mod sim;
/// Without the feature `simulated` only the simulated cluster's configuration is built.
#[cfg(not(feature = "simulated"))]
pub mod sim {
    mod config;
    pub use config::SimConfig;
}

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::clock::{SharedClock, SystemClock, unix_ms};
use flotilla_proto::tls::TlsDialer;
use flotilla_proto::token::JoinToken;
use flotilla_proto::v1::{AgentInfo, AppStatus};
use tokio::sync::watch;

pub use crate::cluster::{ClusterBackend, ClusterError, SimConfig};
pub use crate::identity::{SecretRefError, StateLocation};
/// The Kubernetes client crates at the versions the agent uses, so embedders and tests can name
/// `kube::Client` and resource types without pinning them separately.
pub use {k8s_openapi, kube};

use crate::backoff::Backoff;
use crate::bundles::BundleStore;
use crate::identity::{IdentityError, IdentityStore, SecretState, StateDir};
use crate::join::JoinError;
use crate::metrics::AgentMetrics;
use crate::reconcile::status::StatusBoard;
use crate::reconcile::{ReconcileConfig, Reconciler};
use crate::session::{SessionCtx, SessionEnd, SessionError};

/// Stops a task when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The namespace the agent runs in when nothing says otherwise.
pub const DEFAULT_NAMESPACE: &str = "flotilla-system";

/// Reconnect backoff cap.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Agent configuration.
#[derive(Clone)]
pub struct AgentConfig {
    /// Where the key, certificate and CA are kept.
    pub state: StateLocation,
    /// Join token, used only when the state holds no identity yet.
    pub join_token: Option<String>,
    /// Overrides the hub endpoints from the token or state (`host:port` or
    /// `https://host:port`; several: the hub's replicas, tried in turn).
    pub hub_override: Vec<String>,
    pub cluster: ClusterBackend,
    /// Kubeconfig file for `ClusterBackend::Kube` (default: inferred, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// A ready client to use instead of connecting per `cluster` and `kubeconfig` (tests and
    /// embedders: e.g. a fake client they inspect afterwards). `cluster` still labels it.
    pub kube_client: Option<kube::Client>,
    /// Where fetched bundles are kept; default `<state dir>/bundles`, or
    /// `./flotilla-agent-cache` when the identity lives in a Secret.
    pub cache_dir: Option<PathBuf>,
    pub clock: SharedClock,
    pub backoff_base: Duration,
    /// The agent's namespace: app inventories live here.
    pub namespace: String,
    /// How often live objects are compared with the bundles.
    pub drift_interval: Duration,
    /// How often an app that is still progressing is re-assessed.
    pub health_poll: Duration,
    /// How long a bundle download may wait for its next chunk before it resumes afresh.
    pub bundle_chunk_timeout: Duration,
    /// The simulated cluster's behaviour (`ClusterBackend::Simulated` without `kube_client`).
    pub sim: SimConfig,
    /// Where to serve `/metrics` and `/healthz` (`None`: nowhere). Port 0 picks one; the
    /// bound address shows in [`AgentStatus::metrics_addr`].
    pub metrics_listen: Option<SocketAddr>,
    /// The relay that takes this process's finished spans to the hub over the session (set by
    /// the binary when traces are relayed; see `flotilla_proto::telemetry`).
    pub span_relay: Option<flotilla_proto::telemetry::SpanRelay>,
    /// Record spans (reconciles, drift, reconnects, renewals) for export; the binary sets it
    /// when traces are exported directly or relayed.
    pub trace_spans: bool,
}

impl AgentConfig {
    /// A configuration keeping state in the directory `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self::with_state(StateLocation::Dir(state_dir.into()))
    }

    /// A configuration keeping state at `state`.
    pub fn with_state(state: StateLocation) -> Self {
        Self {
            state,
            join_token: None,
            hub_override: vec![],
            cluster: ClusterBackend::Simulated,
            kubeconfig: None,
            kube_client: None,
            cache_dir: None,
            clock: Arc::new(SystemClock),
            backoff_base: Duration::from_millis(250),
            namespace: DEFAULT_NAMESPACE.into(),
            drift_interval: Duration::from_secs(60),
            health_poll: Duration::from_secs(1),
            bundle_chunk_timeout: Duration::from_secs(30),
            sim: SimConfig::default(),
            metrics_listen: None,
            span_relay: None,
            trace_spans: false,
        }
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("state", &self.state)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("hub_override", &self.hub_override)
            .field("cluster", &self.cluster)
            .field("kubeconfig", &self.kubeconfig)
            .field(
                "kube_client",
                &self.kube_client.as_ref().map(|_| "<kube::Client>"),
            )
            .field("clock", &self.clock)
            .field("backoff_base", &self.backoff_base)
            .field("namespace", &self.namespace)
            .field("drift_interval", &self.drift_interval)
            .field("health_poll", &self.health_poll)
            .field("bundle_chunk_timeout", &self.bundle_chunk_timeout)
            .field("sim", &self.sim)
            .field("metrics_listen", &self.metrics_listen)
            .finish()
    }
}

/// What the agent is doing, for tests, the demo and health endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStatus {
    pub cluster_id: String,
    /// The generation of the desired state whose bundles are all held and verified.
    pub desired_generation: u64,
    /// The generation the reconciler works on.
    pub reconciled_generation: u64,
    /// Every app's newest status, as sent (or queued) to the hub.
    pub apps: Vec<AppStatus>,
    /// Digests of the bundles of that generation.
    pub bundles: Vec<String>,
    pub connected: bool,
    pub session_id: String,
    /// Sessions opened since start (reconnects show here).
    pub sessions_opened: u64,
    pub heartbeats_acked: u64,
    /// Bundle downloads resumed after a broken or stalled transfer.
    pub bundle_resumes: u64,
    pub renewals: u64,
    pub cert_serial: String,
    pub cert_not_after_ms: u64,
    pub last_error: Option<String>,
    /// Where `/metrics` and `/healthz` are served, once bound.
    pub metrics_addr: Option<SocketAddr>,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no identity in {0} and no --join token given")]
    NotJoined(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("invalid join token: {0}")]
    BadToken(#[from] flotilla_proto::token::TokenError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Tls(#[from] flotilla_proto::tls::TlsError),
    #[error("disconnected by the hub ({reason}): {message}")]
    Disconnected { reason: String, message: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("metrics listener {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn normalize_hub(s: &str) -> String {
    s.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// The agent.
pub struct Agent {
    config: AgentConfig,
    status: watch::Sender<AgentStatus>,
    metrics: Arc<AgentMetrics>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> (Self, watch::Receiver<AgentStatus>) {
        let (status, rx) = watch::channel(AgentStatus::default());
        let metrics = Arc::new(AgentMetrics::new());
        metrics.attach_status(rx.clone());
        if let Some(r) = &config.span_relay {
            metrics.attach_relay(r.clone());
        }
        (
            Self {
                config,
                status,
                metrics,
            },
            rx,
        )
    }

    /// The agent's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    /// Binds the metrics port, if configured, and serves it until `shutdown`.
    async fn serve_metrics(
        &self,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<AbortOnDrop>, AgentError> {
        let Some(addr) = self.config.metrics_listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::MetricsListen { addr, source })?;
        let bound = listener.local_addr().ok();
        self.status.send_modify(|s| s.metrics_addr = bound);
        tracing::info!(addr = ?bound, "serving /metrics and /healthz");
        let (metrics, rx) = (self.metrics.clone(), shutdown.clone());
        Ok(Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = http::serve(listener, metrics, rx).await {
                tracing::error!(error = %e, "metrics port failed");
            }
        }))))
    }

    fn info(&self) -> AgentInfo {
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            hostname: std::env::var("HOSTNAME").unwrap_or_default(),
            platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            cluster_backend: self.config.cluster.as_str().into(),
        }
    }

    /// The agent's cluster client: the injected one, or a fresh connection per the config.
    async fn cluster_client(&self) -> Result<kube::Client, ClusterError> {
        match &self.config.kube_client {
            Some(client) => {
                let label = match self.config.cluster {
                    ClusterBackend::Simulated => cluster::SIMULATED_LABEL,
                    ClusterBackend::Kube => "kube",
                };
                tracing::info!(
                    "cluster backend: {label} (client provided by the embedding program)"
                );
                Ok(client.clone())
            }
            None => {
                cluster::connect(
                    self.config.cluster,
                    self.config.kubeconfig.as_deref(),
                    &self.config.sim,
                )
                .await
            }
        }
    }

    /// Where identity lives, opened on the agent's cluster when it is a Secret.
    fn identity_store(&self, client: &kube::Client) -> IdentityStore {
        match &self.config.state {
            StateLocation::Dir(dir) => IdentityStore::Dir(StateDir::new(dir)),
            StateLocation::Secret { namespace, name } => {
                if self.config.cluster == ClusterBackend::Simulated {
                    tracing::warn!(
                        secret = %format!("{namespace}/{name}"),
                        "state Secret lives in the simulated in-memory cluster: it is lost when the process exits"
                    );
                }
                IdentityStore::Secret(SecretState::new(client.clone(), namespace, name))
            }
        }
    }

    fn cache_dir(&self) -> PathBuf {
        match (&self.config.cache_dir, &self.config.state) {
            (Some(d), _) => d.clone(),
            (None, StateLocation::Dir(d)) => d.join("bundles"),
            (None, StateLocation::Secret { .. }) => PathBuf::from("./flotilla-agent-cache"),
        }
    }

    /// Joins if needed, then holds the session until `shutdown` or a final refusal.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let _metrics_port = self.serve_metrics(&shutdown).await?;
        let client = self.cluster_client().await?;
        let store = self.identity_store(&client);
        let hub_override: Vec<String> = self
            .config
            .hub_override
            .iter()
            .map(|h| normalize_hub(h))
            .collect();
        let mut backoff = Backoff::new(self.config.backoff_base, BACKOFF_CAP);
        let (mut state, creds) = match store.load().await? {
            Some(found) => {
                if self.config.join_token.is_some() {
                    tracing::info!(state = %store, "already joined; ignoring --join");
                }
                found
            }
            None => {
                let line = self
                    .config
                    .join_token
                    .as_deref()
                    .ok_or_else(|| AgentError::NotJoined(store.to_string()))?;
                let token = JoinToken::decode(line)?;
                loop {
                    match join::join(&token, &hub_override, self.info()).await {
                        Ok((state, creds)) => {
                            store.save(&state, &creds).await?;
                            tracing::info!(cluster.id = %state.cluster_id, identity = %state.identity, state = %store, "joined the hub");
                            break (state, creds);
                        }
                        Err(JoinError::Transient(m)) => {
                            tracing::warn!(error = %m, "join failed; retrying");
                            self.status.send_modify(|s| s.last_error = Some(m.clone()));
                            let d = backoff.next_delay();
                            tokio::select! {
                                _ = shutdown.changed() => return Ok(()),
                                _ = tokio::time::sleep(d) => {}
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        if let Some(first) = hub_override.first() {
            state.hub = first.clone();
            state.hubs = if hub_override.len() > 1 {
                hub_override.clone()
            } else {
                vec![]
            };
        }
        let leaf = creds.leaf(&state.trust_domain)?;
        self.status.send_modify(|s| {
            s.cluster_id = state.cluster_id.clone();
            s.cert_serial = leaf.serial.clone();
            s.cert_not_after_ms = unix_ms(leaf.not_after);
        });
        let dialer = TlsDialer::new(creds.client_config()?);
        let bundles = BundleStore::new(self.cache_dir());
        let saved = bundles.load_desired();
        if let Some(d) = &saved {
            self.status.send_modify(|s| {
                s.desired_generation = d.generation;
                s.bundles = d.apps.iter().map(|a| a.bundle_digest.clone()).collect();
            });
        }
        // The reconciler runs whether or not the hub is reachable, from the last desired state.
        let board = StatusBoard::default();
        let (desired_tx, desired_rx) = watch::channel(saved);
        let reconciler = Reconciler::new(
            client.clone(),
            ReconcileConfig {
                namespace: self.config.namespace.clone(),
                drift_interval: self.config.drift_interval,
                health_poll: self.config.health_poll,
                backend: self.config.cluster.as_str(),
                cluster_id: state.cluster_id.clone(),
                trace: self.config.trace_spans,
                ..ReconcileConfig::default()
            },
            bundles.clone(),
            board.clone(),
            self.status.clone(),
        )
        .with_metrics(self.metrics.clone());
        let reconcile_task = tokio::spawn(reconciler.run(desired_rx, shutdown.clone()));
        let _stop_reconciler = AbortOnDrop(reconcile_task);
        let mut ctx = SessionCtx {
            state,
            creds,
            dialer,
            store,
            status: self.status.clone(),
            clock: self.config.clock.clone(),
            agent: self.info(),
            last_generation: bundles.load_desired().map(|d| d.generation).unwrap_or(0),
            bundles,
            chunk_timeout: self.config.bundle_chunk_timeout,
            pending_key: None,
            desired_tx,
            board,
            relay: self.config.span_relay.clone(),
            trace: self.config.trace_spans,
        };
        backoff.reset();
        loop {
            let opened_before = self.status.borrow().sessions_opened;
            self.metrics.set_attempting(true);
            let result = ctx.run_once(&mut shutdown).await;
            self.metrics.set_attempting(false);
            self.status.send_modify(|s| s.connected = false);
            match result {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::Disconnected { reason, message }) if reason == "revoked" => {
                    return Err(AgentError::Disconnected { reason, message });
                }
                Ok(end) => tracing::warn!(?end, "session ended; reconnecting"),
                Err(SessionError::Refused(m)) => return Err(SessionError::Refused(m).into()),
                Err(e) => {
                    // A failure worth another session: the transport, or our own credentials
                    // (a renewal that could not be used is retried on the next session).
                    let m = match e {
                        SessionError::Failed(m) => m,
                        other => other.to_string(),
                    };
                    tracing::warn!(error = %m, "session failed; reconnecting");
                    self.status.send_modify(|s| s.last_error = Some(m));
                }
            }
            if self.status.borrow().sessions_opened > opened_before {
                backoff.reset();
            }
            // Several hub replicas: the next session goes to the next one (after the backoff),
            // so a replica that went away is not waited for.
            if let Some(next) = ctx.next_endpoint() {
                tracing::info!(hub = %next, "reconnecting through the next hub endpoint");
            }
            self.metrics.session_reconnects.inc();
            let d = backoff.next_delay();
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(d) => {}
            }
        }
    }
}
