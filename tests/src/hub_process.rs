//! The real `flotilla-hub` binary as a child process, for the tests that kill or restart it, and
//! what those tests share (an in-process agent's configuration, a fleet repository).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::cluster::SimConfig;
use flotilla_agent::sim::SimCluster;
use flotilla_agent::{AgentConfig, AgentStatus, ClusterBackend};
use flotilla_proto::state::AppState;

use crate::{TestRepo, bin, run_ok};
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    crate::bench::hub::free_port().expect("a free loopback port")
}

pub struct Hub {
    pub child: Child,
    pub data: std::path::PathBuf,
    pub port: u16,
}

impl Hub {
    pub fn start(data: &Path, port: u16, http: u16) -> Self {
        Self::start_with(data, port, http, &[], &[])
    }

    /// With extra flags and environment variables.
    pub fn start_with(
        data: &Path,
        port: u16,
        http: u16,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(bin("flotilla-hub"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--heartbeat-interval", "1s"])
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let hub = Self {
            child,
            data: data.to_path_buf(),
            port,
        };
        hub.wait_ready();
        hub
    }

    /// Hub replica `name` (data under `dir/name`) on the etcd store `store`, with the operator
    /// CA `ca` (certificate, key), a 3 s election lease and every replica's `endpoints`.
    pub fn start_replica(
        dir: &Path,
        (port, http): (u16, u16),
        store: &str,
        (ca, key): (&Path, &Path),
        name: &str,
        endpoints: &[String],
    ) -> Self {
        let (ca, key) = (ca.display().to_string(), key.display().to_string());
        let mut args = vec![
            "--store",
            store,
            "--ca-cert",
            &ca,
            "--ca-key",
            &key,
            "--replica-name",
            name,
            "--lease-time",
            "3s",
        ];
        for e in endpoints {
            args.extend(["--endpoint", e.as_str()]);
        }
        Self::start_with(&dir.join(name), port, http, &args, &[])
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || !self.data.join("admin.yaml").exists()
        {
            assert!(Instant::now() < deadline, "hub never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }

    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = run_ok(
            Command::new(bin("flotilla"))
                .arg("--config")
                .arg(self.data.join("admin.yaml"))
                .args(args)
                .args(["-o", "json"]),
        );
        serde_json::from_slice(&out).unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flotilla_hub_leader` of the hub whose HTTP port is `http` (`None`: no answer).
pub async fn leads(http: u16) -> Option<bool> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let (status, body) = crate::bench::hub::http_get(addr, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    let line = body
        .lines()
        .find(|l| l.starts_with("flotilla_hub_leader "))?;
    Some(line.ends_with(" 1"))
}

pub async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn web_revision(s: &AgentStatus) -> Option<String> {
    s.apps
        .iter()
        .find(|a| a.app == "web" && a.healthy())
        .map(|a| a.revision.clone())
}

/// Adds cluster `name` with `labels` (`key=value`) to the hub and returns the configuration of
/// an in-process agent joining as it, on a simulated cluster whose workloads are ready at once.
pub fn agent_config(hub: &Hub, dir: &Path, name: &str, labels: &[&str]) -> AgentConfig {
    let mut args = vec!["cluster", "add", name];
    for l in labels {
        args.extend(["--label", l]);
    }
    let added = hub.cli(&args);
    let mut cfg = AgentConfig::new(dir.join(name));
    cfg.join_token = Some(added["token"].as_str().unwrap().to_string());
    cfg.cluster = ClusterBackend::Simulated;
    cfg.kube_client = Some(
        SimCluster::new(SimConfig {
            ready_delay: Duration::ZERO,
            ..SimConfig::default()
        })
        .client(),
    );
    cfg.health_poll = Duration::from_millis(50);
    cfg.backoff_base = Duration::from_millis(50);
    cfg
}

/// The `flotilla.yaml` of [`fleet_repo`]; `PROD` stands for the prod stage's own settings.
const FLEET: &str = "apps:
  web:
    path: web
    namespace: default
    targets: {}
    pipeline: two
pipelines:
  two:
    stages:
      - {name: canary, selector: {matchLabels: {ring: canary}}}
      - {name: prod, selector: {matchLabels: {ring: prod}}PROD}
    healthTimeout: 5m
";

/// A git repository at `dir/repo` whose app `web` (one ConfigMap in `web/`) goes through the
/// stage `canary` (clusters labelled `ring=canary`) and then `prod` (`ring=prod`, with
/// `prod_settings` such as `, approval: manual`), committed; returns its path and the commit.
pub fn fleet_repo(dir: &Path, prod_settings: &str) -> (std::path::PathBuf, String) {
    let repo = TestRepo::init(&dir.join("repo"));
    repo.write("flotilla.yaml", &FLEET.replace("PROD", prod_settings));
    repo.write(
        "web/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: '1'}\n",
    );
    let commit = repo.commit("r1");
    (repo.path, commit)
}

/// Adds the source `fleet` tracking `repo` on `main` (polled hourly) and syncs it now.
pub fn add_and_sync(hub: &Hub, repo: &Path) {
    hub.cli(&[
        "source",
        "add",
        "fleet",
        "--url",
        repo.to_str().unwrap(),
        "--ref",
        "main",
        "--interval",
        "1h",
    ]);
    hub.cli(&["source", "sync", "fleet"]);
}
