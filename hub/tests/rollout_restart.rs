//! A rollout survives `kill -9` of the hub process: the real `flotilla-hub` binary is killed
//! while a revision waits for approval between stages, restarted on the same data dir and port,
//! and the rollout resumes exactly where it was — the canary keeps the revision without being
//! sent it again, production gets it only after the approval. Agents run in-process on
//! simulated clusters and reconnect by themselves.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::cluster::SimConfig;
use flotilla_agent::sim::SimCluster;
use flotilla_agent::{Agent, AgentConfig, AgentStatus, ClusterBackend};
use tokio::sync::watch;

const HUB: &str = env!("CARGO_BIN_EXE_flotilla-hub");
const CLI: &str = env!("CARGO_BIN_EXE_flotilla");
const DEADLINE: Duration = Duration::from_secs(30);

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
      - {name: prod, selector: {matchLabels: {ring: prod}}, approval: manual}
    healthTimeout: 5m
";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Hub {
    child: Child,
    data: std::path::PathBuf,
    port: u16,
}

impl Hub {
    fn start(data: &Path, port: u16, http: u16) -> Self {
        let child = Command::new(HUB)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--heartbeat-interval", "1s"])
            .arg("--data-dir")
            .arg(data)
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

    fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || !self.data.join("admin.yaml").exists()
        {
            assert!(Instant::now() < deadline, "hub never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(mut self) {
        Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }

    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(CLI)
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

fn git(dir: &Path, args: &[&str]) -> String {
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

async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn web_revision(s: &AgentStatus) -> Option<String> {
    s.apps
        .iter()
        .find(|a| a.app == "web" && a.phase == "applied" && a.health == "healthy")
        .map(|a| a.revision.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_where_it_was_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (port, http) = (free_port(), free_port());
    let hub = Hub::start(&data, port, http);

    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("web")).unwrap();
    std::fs::write(repo.join("flotilla.yaml"), FLEET).unwrap();
    std::fs::write(
        repo.join("web/config.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: '1'}\n",
    )
    .unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "r1"]);
    let r1 = git(&repo, &["rev-parse", "HEAD"]);

    let (stop, stop_rx) = watch::channel(false);
    let mut agents = Vec::new();
    let mut statuses = Vec::new();
    for (name, ring) in [
        ("canary-1", "canary"),
        ("prod-1", "prod"),
        ("prod-2", "prod"),
    ] {
        let added = hub.cli(&["cluster", "add", name, "--label", &format!("ring={ring}")]);
        let mut cfg = AgentConfig::new(dir.path().join(name));
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
        let (agent, status) = Agent::new(cfg);
        agents.push(tokio::spawn(agent.run(stop_rx.clone())));
        statuses.push(status);
    }
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

    // Canary gets r1 and is healthy; prod waits for approval.
    until("canary healthy on r1", || {
        (web_revision(&statuses[0].borrow()).as_deref() == Some(r1.as_str())).then_some(())
    })
    .await;
    let status = until("prod waiting for approval", || {
        let s = hub.cli(&["rollout", "status", "web"]);
        (s["stages"][1]["state"] == "waiting_approval").then_some(s)
    })
    .await;
    assert_eq!(status["revision"], r1.as_str());
    assert_eq!(status["state"], "waiting_approval");
    assert_eq!(status["stages"][0]["state"], "succeeded");
    let canary_generation = statuses[0].borrow().desired_generation;
    assert!(statuses[1].borrow().apps.is_empty());

    // kill -9, and start again on the same data dir and port.
    hub.kill9();
    let hub = Hub::start(&data, port, http);
    let after = until("the rollout is served again", || {
        let out = Command::new(CLI)
            .arg("--config")
            .arg(data.join("admin.yaml"))
            .args(["rollout", "status", "web", "-o", "json"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    })
    .await;
    assert_eq!(after["revision"], r1.as_str());
    assert_eq!(after["state"], "waiting_approval");
    assert_eq!(after["stages"][0]["state"], "succeeded");
    assert_eq!(after["stages"][1]["state"], "waiting_approval");
    until("agents reconnect", || {
        statuses
            .iter()
            .all(|s| s.borrow().sessions_opened >= 2 && s.borrow().connected)
            .then_some(())
    })
    .await;
    assert_eq!(
        statuses[0].borrow().desired_generation,
        canary_generation,
        "the canary was not sent anything new"
    );
    assert!(statuses[1].borrow().apps.is_empty(), "prod still waits");

    hub.cli(&["rollout", "approve", "web", "prod"]);
    for s in &statuses[1..] {
        until("prod healthy on r1", || {
            (web_revision(&s.borrow()).as_deref() == Some(r1.as_str())).then_some(())
        })
        .await;
    }
    let done = until("succeeded", || {
        let s = hub.cli(&["rollout", "status", "web"]);
        (s["state"] == "succeeded").then_some(s)
    })
    .await;
    assert_eq!(done["stages"][1]["updated"], 2);
    let _ = stop.send(true);
    for a in agents {
        let _ = a.await;
    }
}
