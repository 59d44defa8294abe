//! The real `flotilla-hub` binary as a child process, for the tests that kill or restart it, and
//! what those tests share (an in-process agent's configuration, a fleet repository).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::cluster::SimConfig;
use flotilla_agent::sim::SimCluster;
use flotilla_agent::{AgentConfig, AgentStatus, ClusterBackend};
use flotilla_proto::state::AppState;

use crate::bin;
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let out = Command::new(bin("flotilla"))
            .arg("--config")
            .arg(self.data.join("admin.yaml"))
            .args(args)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

/// A git repository at `dir/repo` with `flotilla.yaml` = `fleet` and one ConfigMap in `web/`,
/// committed; returns its path and the commit.
pub fn fleet_repo(dir: &Path, fleet: &str) -> (std::path::PathBuf, String) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("web")).unwrap();
    std::fs::write(repo.join("flotilla.yaml"), fleet).unwrap();
    std::fs::write(
        repo.join("web/config.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: '1'}\n",
    )
    .unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "r1"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    (repo, commit)
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
