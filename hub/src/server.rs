//! Wiring of one hub process: opens the data dir (store, CA, admin credential), builds the TLS
//! configuration and the gRPC services, and runs the TLS accept loop and the HTTP side port until
//! shutdown. The caller binds the listeners (so tests bind `127.0.0.1:0`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::clock::SharedClock;
use flotilla_proto::limits::MAX_MESSAGE_BYTES;
use flotilla_proto::v1::admin_server::AdminServer;
use flotilla_proto::v1::agent_session_server::AgentSessionServer;
use flotilla_proto::v1::registration_server::RegistrationServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;

use crate::api::admin::{AdminService, HubReplicas};
use crate::api::auth::{JoinLimiter, PeerCheck, server_config};
use crate::api::registration::RegistrationService;
use crate::api::session::{SessionConfig, SessionContext, SessionService};
use crate::engine::rollout::Rollouts;
use crate::engine::sources::Sources;
use crate::pki::Ca;
use crate::render::BundleCache;
use crate::state::desired::DesiredStates;
use crate::state::registry::Followed;
use crate::state::registry::Registry;
use crate::state::sessions::Sessions;
use crate::store::SharedStore;
use crate::store::election::{ReplicaInfo, Role};
use crate::store::lead::Lead;
use crate::store::redb::RedbStore;
use crate::telemetry::metrics::Metrics;

/// Lifetime of the hub's serving certificate (reissued at every start).
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long shutdown waits for connections to drain.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Validated hub configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    /// Names and IPs in the serving certificate; the first one (with the bound port) is the
    /// address written into join tokens and the admin credential.
    pub advertise: Vec<String>,
    pub cert_lifetime: Duration,
    pub trust_domain: String,
    /// Operator-provided CA (certificate, key) instead of the generated one.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    pub heartbeat_interval: Duration,
    /// Bytes per second one bundle download may take (`None`: as fast as the link allows), so
    /// that a fleet fetching a release at once does not saturate the hub's uplink.
    pub bundle_rate: Option<u64>,
    /// How long a desired state sent to an agent and not acknowledged holds back newer ones,
    /// which then go together as the newest (an acknowledgement ends the hold at once).
    pub desired_hold: Duration,
    /// How long the acknowledgement of a durable status report waits so that it covers the
    /// reports made durable after it too (zero: every durable report is acknowledged at once).
    pub status_ack_delay: Duration,
    /// How long a cluster may stay disconnected during a rollout stage before it counts as
    /// failed.
    pub disconnect_grace: Duration,
    /// Failed joins allowed per source address per `join_failure_window`.
    pub join_failure_burst: usize,
    pub join_failure_window: Duration,
    /// Rendering size limits (per file, per bundle).
    pub limits: crate::render::Limits,
    /// The rendering tools (`kubectl kustomize`, `helm template`): where, and how long.
    pub tools: crate::render::ToolConfig,
    pub clock: SharedClock,
    /// Where agents' relayed spans go (set when the hub exports traces); `None`: agents are
    /// told not to send spans.
    pub span_forwarder: Option<flotilla_proto::telemetry::SpanForwarder>,
    /// Where the hub's state lives: the embedded redb file in the data dir (the default), or
    /// an etcd cluster.
    pub store: StoreKind,
    /// Every `host:port` agents may dial (the replicas of the hub, or a load balancer's
    /// addresses), written into join tokens in this order; empty: this hub's own address.
    pub endpoints: Vec<String>,
    /// This replica's name among the replicas sharing an etcd store (unique); `None`: the
    /// address written into tokens.
    pub replica_name: Option<String>,
    /// The lease the election among replicas is held with: the lead moves at most this long
    /// after its holder dies.
    pub lease_time: Duration,
}

/// The store backend of a hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// `store.redb` in the data dir.
    #[default]
    Redb,
    /// An etcd cluster (the CA, admin credential and caches stay in the data dir).
    Etcd(crate::store::etcd::EtcdConfig),
}

impl HubConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            advertise: vec![],
            cert_lifetime: Duration::from_secs(24 * 3600),
            trust_domain: "flotilla.local".into(),
            ca_files: None,
            heartbeat_interval: Duration::from_secs(10),
            bundle_rate: None,
            desired_hold: Duration::from_secs(5),
            status_ack_delay: Duration::from_millis(25),
            disconnect_grace: Duration::from_secs(60),
            join_failure_burst: 10,
            join_failure_window: Duration::from_secs(60),
            limits: crate::render::Limits::default(),
            tools: crate::render::ToolConfig::default(),
            clock: Arc::new(flotilla_proto::clock::SystemClock),
            span_forwarder: None,
            store: StoreKind::Redb,
            endpoints: vec![],
            replica_name: None,
            lease_time: crate::store::election::DEFAULT_LEASE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ca(#[from] crate::pki::CaError),
    #[error(transparent)]
    Hub(#[from] crate::state::error::HubError),
    #[error(transparent)]
    Tls(#[from] flotilla_proto::tls::TlsError),
    #[error(transparent)]
    AdminCredential(#[from] crate::pki::admin::AdminCredentialError),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
}

/// Why a hub on etcd needs the operator's CA: replicas share one trust root.
pub const ETCD_NEEDS_CA: &str = "--store etcd://... needs the CA every hub replica shares \
     (--ca-cert and --ca-key, e.g. a mounted Secret): a CA generated here would be this \
     replica's alone, and clusters it signs would be refused by the others";

/// A running hub; dropping it does not stop it — call [`RunningHub::shutdown`].
pub struct RunningHub {
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// The address written into tokens and the admin credential.
    pub hub_address: String,
    pub data_dir: PathBuf,
    pub sessions: Arc<Sessions>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub ca: Arc<Ca>,
    pub desired: DesiredStates,
    pub bundles: Arc<BundleCache>,
    pub sources: Sources,
    pub rollouts: Rollouts,
    /// This replica's part in the election among replicas sharing an etcd store (on redb,
    /// always the leader).
    pub role: watch::Receiver<Role>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for RunningHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningHub")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl RunningHub {
    /// Path of the admin credential file.
    pub fn admin_credential_path(&self) -> PathBuf {
        self.data_dir.join("admin.yaml")
    }

    /// Stops accepting, tells agents, drains connections for a bounded grace period, and
    /// waits until every task (and so the store) is released.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        self.sessions
            .disconnect_all("shutdown", "the hub is shutting down");
        for t in self.tasks {
            let _ = t.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Starts a hub on the given listeners.
pub async fn start(
    config: HubConfig,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
) -> Result<RunningHub, StartError> {
    let dd = &config.data_dir;
    let derr = |source| StartError::DataDir {
        path: dd.clone(),
        source,
    };
    std::fs::create_dir_all(dd).map_err(derr)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dd, std::fs::Permissions::from_mode(0o700)).map_err(derr)?;
    }
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr().map_err(StartError::Listener)?),
        None => None,
    };
    let hub_address = match config.advertise.first() {
        Some(name) if name.contains(':') && name.parse::<std::net::Ipv6Addr>().is_ok() => {
            format!("[{name}]:{}", addr.port())
        }
        Some(name) => format!("{name}:{}", addr.port()),
        None if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        None => addr.to_string(),
    };

    let metrics = Arc::new(Metrics::new());
    if let Some(f) = &config.span_forwarder {
        metrics.attach_forwarder(f.clone());
    }
    if matches!(config.store, StoreKind::Etcd(_)) && config.ca_files.is_none() {
        return Err(StartError::Config(ETCD_NEEDS_CA.into()));
    }
    let mut etcd = None;
    let backend: SharedStore = match &config.store {
        StoreKind::Redb => Arc::new(RedbStore::open(&dd.join("store.redb"))?),
        StoreKind::Etcd(cfg) => {
            let e = crate::store::etcd::EtcdStore::connect(cfg).await?;
            etcd = Some(e.clone());
            Arc::new(e)
        }
    };
    let store: SharedStore = crate::store::timed::TimedStore::shared(backend, &metrics);
    let ca = Arc::new(Ca::load_or_create(
        dd,
        &config.trust_domain,
        config
            .ca_files
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path())),
        config.clock.clone(),
    )?);
    let replica_name = config
        .replica_name
        .clone()
        .unwrap_or_else(|| hub_address.clone());
    let mut registry = Registry::open(store.clone(), config.clock.clone()).await?;
    let live_replicas = Arc::new(crate::store::election::LiveReplicas::default());
    if etcd.is_some() {
        registry = registry.with_replica(&replica_name, live_replicas.clone());
    }
    let sessions = Arc::new(Sessions::default());
    let desired = match etcd {
        None => DesiredStates::new(store.clone()),
        Some(_) => DesiredStates::of_replica(store.clone(), &replica_name),
    };
    let bundles =
        Arc::new(
            BundleCache::open(dd.join("bundles")).map_err(|e| StartError::DataDir {
                path: dd.join("bundles"),
                source: std::io::Error::other(e.to_string()),
            })?,
        );

    let mut names = config.advertise.clone();
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    if !addr.ip().is_unspecified() && !names.contains(&addr.ip().to_string()) {
        names.push(addr.ip().to_string());
    }
    let (server_cert, server_key) = ca.issue_server(&names, SERVER_CERT_LIFETIME)?;
    crate::pki::admin::ensure_admin_credential(
        &ca,
        &config.data_dir.join("admin.yaml"),
        &hub_address,
        config.clock.now(),
    )?;
    let peer_check = PeerCheck::new(
        registry.revoked(),
        &config.trust_domain,
        ca.known_client_certs(),
    );
    let tls = server_config(
        ca.cert_pem(),
        &server_cert.chain_pem,
        &server_key,
        peer_check.clone(),
    )?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    // This replica's part in the election among replicas sharing an etcd store (run below,
    // once everything serves); on redb the one hub always leads.
    let (role_tx, role) = watch::channel(match etcd {
        None => Role::Leader { term: 0 },
        Some(_) => Role::Candidate,
    });
    let lead = match &etcd {
        None => Lead::alone(store.clone()),
        Some(e) => {
            let m = metrics.clone();
            Lead::elected(
                store.clone(),
                e.clone(),
                &replica_name,
                role.clone(),
                move |fenced| crate::store::timed::TimedStore::shared(fenced, &m),
            )
        }
    };
    let rollouts = Rollouts::new(
        lead,
        desired.clone(),
        registry.clone(),
        sessions.clone(),
        config.clock.clone(),
        config.disconnect_grace,
        metrics.clone(),
    );
    let session_svc = SessionService::new(SessionContext {
        registry: registry.clone(),
        sessions: sessions.clone(),
        ca: ca.clone(),
        metrics: metrics.clone(),
        clock: config.clock.clone(),
        config: SessionConfig {
            heartbeat_interval: config.heartbeat_interval,
            cert_lifetime: config.cert_lifetime,
            bundle_rate: config.bundle_rate,
            desired_hold: config.desired_hold,
            status_ack_delay: config.status_ack_delay,
            // Several replicas render each commit on their own syncs.
            bundle_wait: if etcd.is_some() {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            },
        },
        shutdown: shutdown_rx.clone(),
        tracker: tracker.clone(),
        desired: desired.clone(),
        bundles: bundles.clone(),
        rollouts: rollouts.clone(),
        spans: config.span_forwarder.clone(),
    });
    let registration_svc = RegistrationService {
        registry: registry.clone(),
        ca: ca.clone(),
        limiter: Arc::new(JoinLimiter::new(
            config.join_failure_burst,
            config.join_failure_window,
        )),
        metrics: metrics.clone(),
        cert_lifetime: config.cert_lifetime,
    };
    let mut tool_config = config.tools.clone();
    tool_config
        .chart_cache
        .get_or_insert_with(|| dd.join("charts"));
    let tools = Arc::new(crate::render::Tools::new(tool_config));
    let sources = Sources::new(
        store.clone(),
        registry.clone(),
        rollouts.clone(),
        bundles.clone(),
        dd.clone(),
        config.clock.clone(),
        tracker.clone(),
        shutdown_rx.clone(),
        config.limits,
        tools.clone(),
    );
    sources.start_all().await?;
    if etcd.is_some() {
        // A rendering another replica offered, with bundles this one has not rendered: sync
        // the source here now rather than at its next poll (its sessions wait for them). The
        // engine keeps the callback, and the sources keep the engine: held weakly.
        let (srcs, cache) = (sources.downgrade(), bundles.clone());
        rollouts.on_offered_elsewhere(Box::new(move |source, digests| {
            if digests.iter().any(|d| !cache.contains(d)) {
                srcs.trigger(source);
            }
        }));
    }
    // This replica as the others see it.
    let me = ReplicaInfo {
        name: replica_name.clone(),
        endpoint: config
            .endpoints
            .first()
            .cloned()
            .unwrap_or_else(|| hub_address.clone()),
        started_ms: flotilla_proto::clock::unix_ms(config.clock.now()),
        version: env!("CARGO_PKG_VERSION").into(),
        lease: 0,
    };
    metrics.leader.set(i64::from(etcd.is_none()));
    metrics.replicas.set(i64::from(etcd.is_none()));
    if etcd.is_none() {
        metrics.leader_terms.inc();
    }
    metrics
        .replica
        .get_or_create(&crate::telemetry::metrics::ReplicaLabels {
            replica: replica_name.clone(),
            store: if etcd.is_some() { "etcd" } else { "redb" }.into(),
        })
        .set(1);
    let election = etcd.clone().map(|e| (e, role_tx));
    let admin_svc = AdminService {
        registry: registry.clone(),
        sessions: sessions.clone(),
        ca: ca.clone(),
        clock: config.clock.clone(),
        hub_address: hub_address.clone(),
        endpoints: config.endpoints.clone(),
        sources: sources.clone(),
        desired: desired.clone(),
        rollouts: rollouts.clone(),
        replicas: HubReplicas {
            me: me.clone(),
            role: role.clone(),
            etcd: etcd.clone(),
        },
    };

    let mut tasks = Vec::new();
    let (conn_tx, conn_rx) = mpsc::channel(1024);
    tasks.push(tokio::spawn(crate::api::accept::accept_loop(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        conn_tx,
        peer_check,
        metrics.clone(),
        shutdown_rx.clone(),
    )));
    let mut grpc_shutdown = shutdown_rx.clone();
    let mut drain_guard = shutdown_rx.clone();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_connection_window_size(256 * 1024)
        .initial_stream_window_size(flotilla_proto::limits::INBOUND_STREAM_WINDOW)
        .add_service(
            RegistrationServer::new(registration_svc).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AgentSessionServer::new(session_svc).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AdminServer::new(admin_svc).max_decoding_message_size(MAX_MESSAGE_BYTES));
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = grpc_shutdown.changed().await;
        };
        let serve = router.serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), stop);
        // Bounded drain: sessions end on their own once told; anything slower is cut.
        tokio::select! {
            r = serve => if let Err(e) = r { tracing::error!(error = %e, "gRPC server failed") },
            _ = async { let _ = drain_guard.wait_for(|v| *v).await; tokio::time::sleep(DRAIN_GRACE).await } => {
                tracing::warn!("connections did not drain within {DRAIN_GRACE:?}; closing them");
            }
        }
    }));
    {
        // Clusters added, changed or removed by other replicas sharing the store; a removal
        // ends the cluster's live session here too.
        let (registry, live, srcs) = (registry.clone(), sessions.clone(), sources.clone());
        let engine = rollouts.clone();
        let rx = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let on_followed = |ev: Followed<'_>| match ev {
                Followed::Revoked { cluster } => {
                    if live.disconnect(cluster, "revoked", &format!("cluster {cluster:?} was removed")) {
                        tracing::info!(cluster.id = %cluster, "cluster removed on another replica; its session here is closed");
                    }
                }
                // As when an admin adds, labels or removes a cluster here: every source
                // renders for the fleet as it now is.
                Followed::FleetChanged { .. } => srcs.trigger_all(),
                Followed::SessionElsewhere { cluster, replica, opened_ms } => {
                    // The newer session wins: one opened here after it stays.
                    if live.get(cluster).is_some_and(|s| s.opened_ms < opened_ms) {
                        live.disconnect(
                            cluster,
                            "replaced",
                            &format!("a newer session for this cluster was opened on hub replica {replica}"),
                        );
                        tracing::info!(cluster.id = %cluster, %replica, "a newer session of the cluster opened on another replica; closed the one here");
                    }
                }
                // Connected through another replica, or no longer: the leader's next pass
                // looks again.
                Followed::SessionChanged { .. } => engine.kick(),
            };
            registry.follow(rx, on_followed).await
        }));
    }
    tasks.push(tokio::spawn(rollouts.clone().run(shutdown_rx.clone())));
    if etcd.is_some() {
        // Rollout records other replicas write: their desired-state changes reach the
        // sessions held here.
        tasks.push(tokio::spawn(rollouts.clone().follow(shutdown_rx.clone())));
        // Sources added or removed through other replicas are polled (or not) here too.
        tasks.push(tokio::spawn(sources.clone().follow(shutdown_rx.clone())));
        // The reports of clusters connected to other replicas: the leader moves rollouts on
        // them, and every replica shows them.
        let (d, rx) = (desired.clone(), shutdown_rx.clone());
        let followed = metrics.followed_status_reports.clone();
        tasks.push(tokio::spawn(async move {
            d.follow_statuses(rx, followed).await
        }));
    }
    if let Some(etcd) = &etcd {
        // Which replicas are registered: a session another one holds counts while it is.
        tasks.push(tokio::spawn(crate::store::election::follow_replicas(
            etcd.clone(),
            live_replicas.clone(),
            shutdown_rx.clone(),
        )));
        // A replica that went took its sessions with it: the leader looks again, and folds
        // the status journal it left (also when it takes the lead).
        let (engine, mut rx, m) = (rollouts.clone(), shutdown_rx.clone(), metrics.clone());
        let (d, mut lead, me) = (desired.clone(), role.clone(), replica_name.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = rx.changed() => return,
                    () = live_replicas.changed.notified() => {
                        m.replicas.set(live_replicas.len() as i64);
                        engine.kick();
                    }
                    changed = lead.changed() => if changed.is_err() { return },
                }
                let live = live_replicas.names();
                // Only once this replica sees itself registered: an empty or partial view
                // must not take a live replica's journal.
                if lead.borrow_and_update().is_leader()
                    && live.contains(&me)
                    && let Err(e) = d.adopt_orphan_journals(&live).await
                {
                    tracing::warn!(error = %e, "folding the status journals of replicas that are gone failed; will retry on the next change");
                }
            }
        }));
    }
    if let Some(l) = http_listener {
        let (m, s, rx) = (metrics.clone(), store.clone(), shutdown_rx.clone());
        let src = Some(sources.clone());
        let fleet = crate::engine::fleet::FleetSources {
            registry: registry.clone(),
            sessions: sessions.clone(),
            rollouts: rollouts.clone(),
        };
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::api::http::serve(l, m, s, src, Some(fleet), rx).await {
                tracing::error!(error = %e, "HTTP side port failed");
            }
        }));
    }
    tracing::info!(
        %addr,
        http = ?http_addr,
        hub_address = %hub_address,
        data_dir = %dd.display(),
        ca = %ca.fingerprint(),
        "hub serving"
    );
    if let Some((etcd, tx)) = election {
        let mut seen = role.clone();
        let (m, srcs) = (metrics.clone(), sources.clone());
        tasks.push(tokio::spawn(async move {
            let mut led = false;
            while seen.changed().await.is_ok() {
                let leads = seen.borrow_and_update().is_leader();
                m.leader.set(i64::from(leads));
                if leads && !led {
                    m.leader_terms.inc();
                    // What the sources render now is this replica's to offer.
                    srcs.trigger_all();
                }
                led = leads;
            }
        }));
        tasks.push(tokio::spawn(crate::store::election::run(
            etcd,
            me,
            config.lease_time,
            tx,
            shutdown_rx.clone(),
        )));
    }
    Ok(RunningHub {
        addr,
        http_addr,
        hub_address,
        data_dir: dd.clone(),
        sessions,
        registry,
        metrics,
        ca,
        desired,
        bundles,
        sources,
        rollouts,
        role,
        shutdown_tx,
        tasks,
        tracker,
    })
}
