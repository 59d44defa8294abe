//! Shared helpers for the system tests: a real hub in-process on `127.0.0.1:0` with real TLS,
//! real agents on simulated clusters, and waiting on conditions with deadlines (never sleeping).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_agent::cluster::SimConfig;
use flotilla_agent::sim::SimCluster;
use flotilla_agent::{Agent, AgentConfig, AgentError, AgentStatus};
use flotilla_hub::server::{HubConfig, RunningHub, start};
use flotilla_proto::credential::AdminCredential;
use flotilla_proto::tls::{TlsDialer, mtls_client_config};
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::{AddClusterRequest, Cluster, GetClusterRequest, ListClustersRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub mod bench;
pub mod chart_repo;
pub mod etcd;
pub mod hub_process;
pub mod prom;
pub mod web_app;

/// The path of a workspace binary (`flotilla`, `flotilla-hub`, `flotilla-agent`) of the same
/// build as the running test: `cargo test --workspace` builds them (each of their packages has
/// integration tests) before any test runs.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("the test runs from target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} is not built; run `cargo test --workspace` (or `cargo build --bins` first)",
        path.display()
    );
    path
}
/// The default deadline for waiting on a condition.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Installs a test log subscriber once (RUST_LOG controls it).
/// Where `.ci/tools` put the real kubectl (kustomize) and helm: `$FLOTILLA_TOOLS_DIR`, else
/// `~/.cache/flotilla/tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("FLOTILLA_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/flotilla/tools")
        })
}

/// The hub's rendering tools for tests: the ones `.ci/tools` installed.
pub fn tool_config() -> flotilla_hub::render::ToolConfig {
    let dir = tools_dir();
    flotilla_hub::render::ToolConfig {
        kustomize_bin: dir.join("kubectl"),
        helm_bin: dir.join("helm"),
        ..Default::default()
    }
}

pub fn init_logs() {
    flotilla_proto::telemetry::init("warn", false);
}

/// How a test starts: the log subscriber installed, and a scratch directory of its own (removed
/// when dropped).
pub fn test_dir() -> tempfile::TempDir {
    init_logs();
    tempfile::tempdir().unwrap()
}

/// Asserts that `text` contains `part`, showing `text` when it does not.
#[track_caller]
pub fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{part:?} is not in:\n{text}");
}

/// Asserts that a gRPC call was refused with `code` and a message that contains `part`.
#[track_caller]
pub fn assert_status(status: &tonic::Status, code: tonic::Code, part: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(part), "{status:?}");
}

/// Runs `cmd` to its end and returns its stdout; panics with its stderr when it fails.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Polls `check` until it yields `Some`, or panics with `what` after `DEADLINE`. The poll
/// interval is only a pacing of retries, not the synchronisation itself.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the agent status satisfies `cond`.
pub async fn wait_status(
    rx: &mut watch::Receiver<AgentStatus>,
    what: &str,
    cond: impl FnMut(&AgentStatus) -> bool,
) -> AgentStatus {
    let outcome = match tokio::time::timeout(DEADLINE, rx.wait_for(cond)).await {
        Ok(Ok(s)) => Ok(s.clone()),
        Ok(Err(_)) => Err("agent stopped"),
        Err(_) => Err("timed out"),
    };
    outcome.unwrap_or_else(|why| panic!("{why} waiting for {what}: {:?}", rx.borrow()))
}

/// An operator CA made outside Flotilla, written to `dir` as `op-ca.crt` and `op-ca.key`;
/// returns (certificate PEM, certificate path, key path). Hub replicas sharing a store are all
/// given the same one.
pub fn operator_ca(dir: &Path) -> (String, PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp fleet CA");
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("op-ca.crt"), dir.join("op-ca.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert.pem(), cert_path, key_path)
}

/// A hub running in-process.
pub struct TestHub {
    pub hub: Option<RunningHub>,
    pub config: HubConfig,
    pub port: u16,
}

impl TestHub {
    pub fn config(dir: &Path) -> HubConfig {
        let mut c = HubConfig::new(dir.join("hub"));
        c.heartbeat_interval = Duration::from_secs(2);
        c.tools = tool_config();
        c
    }

    /// Starts a hub with the test configuration and its data in `dir`.
    pub async fn start_in(dir: &Path) -> Self {
        Self::start(Self::config(dir)).await
    }

    /// [`TestHub::start_in`] with certificates that live 3 s: agents renew theirs within a test.
    pub async fn start_short_lived(dir: &Path) -> Self {
        let mut config = Self::config(dir);
        config.cert_lifetime = Duration::from_secs(3);
        Self::start(config).await
    }

    /// Starts a hub on a fresh port.
    pub async fn start(config: HubConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hub = start(config.clone(), listener, None)
            .await
            .expect("hub starts");
        Self {
            hub: Some(hub),
            config,
            port,
        }
    }

    /// Starts a hub with the HTTP side port too; returns it and the HTTP address.
    pub async fn start_with_http(config: HubConfig) -> (Self, std::net::SocketAddr) {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = grpc.local_addr().unwrap().port();
        let hub = start(config.clone(), grpc, Some(http))
            .await
            .expect("hub starts");
        let http_addr = hub.http_addr.expect("HTTP port");
        (
            Self {
                hub: Some(hub),
                config,
                port,
            },
            http_addr,
        )
    }

    pub fn running(&self) -> &RunningHub {
        self.hub.as_ref().expect("hub is running")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn credential_path(&self) -> PathBuf {
        self.config.data_dir.join("admin.yaml")
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.hub.take() {
            h.shutdown().await;
        }
    }

    /// Stops the hub and starts it again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebind the same port");
        self.hub = Some(
            start(self.config.clone(), listener, None)
                .await
                .expect("hub restarts"),
        );
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        let cred = AdminCredential::load(&self.credential_path()).unwrap();
        let cfg = mtls_client_config(&cred.ca, &cred.cert, &cred.key).unwrap();
        AdminClient::new(TlsDialer::new(cfg).channel(&cred.hub).await.unwrap())
    }

    /// Adds a cluster and returns its join token line.
    pub async fn add_cluster(&self, name: &str, labels: &[(&str, &str)]) -> String {
        self.add_cluster_with(name, labels, 3600, false).await
    }

    pub async fn add_cluster_with(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ttl_seconds: u64,
        reusable: bool,
    ) -> String {
        self.admin()
            .await
            .add_cluster(AddClusterRequest {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ttl_seconds,
                reusable,
            })
            .await
            .expect("add cluster")
            .into_inner()
            .token
    }

    /// Adds cluster `name` (without labels) and starts an agent joining as it, its state in
    /// `dir/name`; returns the agent once it is connected.
    pub async fn join(&self, dir: &Path, name: &str) -> TestAgent {
        self.join_status(dir, name).await.0
    }

    /// [`TestHub::join`], with the agent's status when it connected.
    pub async fn join_status(&self, dir: &Path, name: &str) -> (TestAgent, AgentStatus) {
        let token = self.add_cluster(name, &[]).await;
        let mut agent = TestAgent::start(&dir.join(name), Some(token));
        let status = agent.connected().await;
        (agent, status)
    }

    /// Adds cluster `name` and lets an agent join as it (state in `dir/name`) and stop: returns
    /// the cluster's credentials, for a test to open sessions with them.
    pub async fn enroll(&self, dir: &Path, name: &str) -> (String, String, String) {
        self.join(dir, name).await.stop().await.unwrap();
        agent_credentials(&dir.join(name))
    }

    /// Adds cluster `name` with `labels` and starts an agent joining as it on the simulated
    /// cluster `sim`, its state in `dir/name`, configured by [`sim_agent_config`] and then by
    /// `configure`; returns the agent once it is connected.
    pub async fn join_sim(
        &self,
        dir: &Path,
        name: &str,
        labels: &[(&str, &str)],
        sim: &SimCluster,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> TestAgent {
        let token = self.add_cluster(name, labels).await;
        let mut cfg = sim_agent_config(&dir.join(name), token, sim);
        configure(&mut cfg);
        let mut agent = TestAgent::start_with(cfg);
        agent.connected().await;
        agent
    }

    /// Every cluster the hub knows.
    pub async fn clusters(&self) -> Vec<Cluster> {
        self.admin()
            .await
            .list_clusters(ListClustersRequest::default())
            .await
            .expect("list clusters")
            .into_inner()
            .clusters
    }

    /// A certificate for `identity` from the hub's CA that expired an hour ago: its chain and
    /// its key, in PEM.
    pub fn issue_expired(&self, identity: &flotilla_proto::identity::Identity) -> (String, String) {
        let now = std::time::SystemTime::now();
        let (issued, key) = self
            .running()
            .ca
            .issue_with_key(
                identity,
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .expect("issue a certificate");
        (issued.chain_pem, key)
    }

    pub async fn cluster(&self, name: &str) -> Cluster {
        self.admin()
            .await
            .get_cluster(GetClusterRequest { name: name.into() })
            .await
            .expect("get cluster")
            .into_inner()
    }

    /// Waits until the hub reports `name` in `state`.
    pub async fn wait_state(&self, name: &str, state: &str) -> Cluster {
        eventually(&format!("cluster {name} to be {state}"), || async {
            let c = self.cluster(name).await;
            (c.state == state).then_some(c)
        })
        .await
    }
}

/// An agent running in-process.
pub struct TestAgent {
    pub status: watch::Receiver<AgentStatus>,
    pub task: JoinHandle<Result<(), AgentError>>,
    stop: watch::Sender<bool>,
}

impl TestAgent {
    pub fn start(state_dir: &Path, token: Option<String>) -> Self {
        let mut cfg = AgentConfig::new(state_dir);
        cfg.join_token = token;
        cfg.backoff_base = Duration::from_millis(50);
        Self::start_with(cfg)
    }

    pub fn start_with(cfg: AgentConfig) -> Self {
        Self::run(Agent::new(cfg))
    }

    /// Runs an agent made with `Agent::new` (for a test that takes something from it first).
    pub fn run((agent, status): (Agent, watch::Receiver<AgentStatus>)) -> Self {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(agent.run(rx));
        Self { status, task, stop }
    }

    pub async fn connected(&mut self) -> AgentStatus {
        wait_status(&mut self.status, "agent to connect", |s| s.connected).await
    }

    /// Stops the agent and returns how it ended.
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        self.task.await.expect("agent task")
    }

    /// Starts an agent that must end by itself (a final refusal, see [`TestAgent::ended`]);
    /// returns the error it ended with.
    pub async fn refused(state_dir: &Path, token: Option<String>) -> AgentError {
        Self::start(state_dir, token)
            .ended()
            .await
            .expect_err("the agent is refused")
    }

    /// Waits for the agent to end by itself (a final refusal).
    pub async fn ended(self) -> Result<(), AgentError> {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("agent ends by itself")
            .expect("agent task")
    }
}

/// Calls `Registration.Join` directly (pinning the CA from the token line).
pub async fn join_raw(
    token_line: &str,
    csr_pem: &str,
) -> Result<flotilla_proto::v1::JoinResponse, tonic::Status> {
    let token = flotilla_proto::token::JoinToken::decode(token_line).expect("token decodes");
    let cfg = flotilla_proto::tls::bootstrap_client_config(&token.ca).unwrap();
    let ch = TlsDialer::new(cfg).channel(&token.hub).await.unwrap();
    flotilla_proto::v1::registration_client::RegistrationClient::new(ch)
        .join(flotilla_proto::v1::JoinRequest {
            token: token.token,
            csr_pem: csr_pem.into(),
            agent: None,
        })
        .await
        .map(|r| r.into_inner())
}

/// What [`open_session`] returns: the first hub message, the request sender (to keep the
/// session open) and the response stream; or how the attempt failed.
pub type OpenedSession = Result<
    (
        flotilla_proto::v1::HubMessage,
        tokio::sync::mpsc::Sender<flotilla_proto::v1::AgentMessage>,
        tonic::Streaming<flotilla_proto::v1::HubMessage>,
    ),
    String,
>;

/// Opens a session with the given credentials and Hello, and returns the first hub message.
/// The request sender is returned too so the caller can keep the session open.
pub async fn open_session(
    addr: &str,
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    hello: flotilla_proto::v1::Hello,
) -> OpenedSession {
    let cfg = mtls_client_config(ca_pem, chain_pem, key_pem).map_err(|e| e.to_string())?;
    open_session_with(&TlsDialer::new(cfg), addr, hello).await
}

/// [`open_session`] over a connection made by `dialer`: a dialer that connected before resumes
/// its TLS session from the hub's ticket.
pub async fn open_session_with(
    dialer: &TlsDialer,
    addr: &str,
    hello: flotilla_proto::v1::Hello,
) -> OpenedSession {
    use flotilla_proto::v1::agent_message::Msg;
    let ch = dialer
        .channel(addr)
        .await
        .map_err(|e| flotilla_proto::tls::error_chain(&e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(flotilla_proto::v1::AgentMessage {
        msg: Some(Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = flotilla_proto::v1::agent_session_client::AgentSessionClient::new(ch)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), flotilla_proto::tls::error_chain(&s)))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(m)) => Ok((m, tx, inbound)),
        Ok(None) => Err("stream closed".into()),
        Err(s) => Err(format!(
            "{:?}: {}",
            s.code(),
            flotilla_proto::tls::error_chain(&s)
        )),
    }
}

/// Reads an agent's credentials from its state dir: (ca, chain, key).
pub fn agent_credentials(state_dir: &Path) -> (String, String, String) {
    let (_, c) = flotilla_agent::identity::StateDir::new(state_dir)
        .load()
        .unwrap()
        .expect("agent has joined");
    (c.ca_pem, c.chain_pem, c.key_pem)
}

/// A git repository made by a test with the git CLI.
pub struct TestRepo {
    pub path: PathBuf,
}

impl TestRepo {
    /// `git init` in `path` (created), default branch `main`.
    pub fn init(path: &Path) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let repo = Self {
            path: path.to_path_buf(),
        };
        repo.git(&["init", "-q"]);
        repo
    }

    /// Runs git in the repository and returns its trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("git")
                .arg("-C")
                .arg(&self.path)
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@example.invalid",
                    "-c",
                    "init.defaultBranch=main",
                ])
                .args(args),
        );
        String::from_utf8(out).unwrap().trim().to_string()
    }

    pub fn write(&self, path: &str, text: &str) {
        let p = self.path.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Commits everything and returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// Runs the `flotilla` CLI in-process against a test hub.
pub async fn cli(hub: &TestHub, args: &[&str]) -> Result<String, String> {
    use clap::Parser;
    let cfg = hub.credential_path();
    let mut argv = vec!["flotilla", "--config", cfg.to_str().unwrap()];
    argv.extend_from_slice(args);
    flotilla_cli::run(flotilla_cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())
}

/// Runs the CLI with `-o json` and parses the output.
pub async fn cli_json(hub: &TestHub, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&cli(hub, &a).await.unwrap()).unwrap()
}

/// `cluster get CLUSTER -o json`'s entry for `app` (`None`: the cluster has no entry of it).
pub async fn app_on(hub: &TestHub, cluster: &str, app: &str) -> Option<serde_json::Value> {
    let c = cli_json(hub, &["cluster", "get", cluster]).await;
    c["apps"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == app)
        .cloned()
}

/// The hub's audit log (`audit -o json`), oldest first.
pub async fn audit_log(hub: &TestHub) -> Vec<serde_json::Value> {
    cli_json(hub, &["audit"]).await.as_array().unwrap().clone()
}

/// Waits until `cluster` is desired on `rev` of `app` and reports it applied and healthy.
pub async fn wait_runs(hub: &TestHub, cluster: &str, app: &str, rev: &str) {
    eventually(
        &format!("{cluster} to run {app} {}", &rev[..12]),
        || async {
            let w = app_on(hub, cluster, app).await?;
            (w["desired_revision"] == rev
                && w["revision"] == rev
                && w["phase"] == "applied"
                && w["health"] == "healthy")
                .then_some(())
        },
    )
    .await
}

/// Adds the git source `fleet` tracking `repo` (polled hourly: tests sync it themselves).
pub async fn add_fleet_source(hub: &TestHub, repo: &Path) -> serde_json::Value {
    let url = repo.to_str().expect("utf-8 path");
    cli_json(
        hub,
        &["source", "add", "fleet", "--url", url, "--interval", "1h"],
    )
    .await
}

/// A simulated cluster whose workloads become ready `ready_delay` after they are written.
pub fn sim_cluster(ready_delay: Duration) -> SimCluster {
    SimCluster::new(SimConfig {
        ready_delay,
        ..SimConfig::default()
    })
}

/// An in-process agent joining with `token`, on the simulated cluster `sim`, quick to retry and
/// to re-assess health.
pub fn sim_agent_config(
    dir: &Path,
    token: String,
    sim: &flotilla_agent::sim::SimCluster,
) -> AgentConfig {
    let mut cfg = AgentConfig::new(dir);
    cfg.join_token = Some(token);
    cfg.backoff_base = Duration::from_millis(50);
    cfg.cluster = flotilla_agent::ClusterBackend::Simulated;
    cfg.kube_client = Some(sim.client());
    cfg.health_poll = Duration::from_millis(50);
    cfg
}
