//! Agent idle footprint: a real `flotilla-hub` child, a git repository of apps the hub renders,
//! and one real `flotilla-agent` child per cluster (`--cluster simulated --sim-ready-delay 0s`).
//! Each cluster is labelled `size=K` and so runs K apps of 20 objects. The agents are started
//! one after another, each waited for until the hub reports every app of its cluster `applied`
//! and `healthy` (time to healthy), then all of them sit through one idle window together,
//! sampled from `/proc` every second: VmRSS at the end, VmHWM, and CPU time over the window.
//!
//! The simulated cluster is an in-memory Kubernetes API inside the agent process, so the
//! objects applied to it count in the agent's RSS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_proto::state::{Health, Phase};
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::{
    AddClusterRequest, AddSourceRequest, Cluster, GetClusterRequest, SyncSourceRequest,
};
use flotilla_tests::bench::hub::{
    HubProcess, ProcSample, ProcStatus, log_tail, sample_pid, sigterm,
};
use flotilla_tests::bench::stats::ms;
use flotilla_tests::bench::{admin_client, prog};
use serde::Serialize;
use tonic::transport::Channel;

use crate::objects::AppShape;
use crate::repo::{self, SIZE_LABEL};

/// How often the hub is asked about a cluster's apps while waiting.
pub const POLL: Duration = Duration::from_millis(100);
/// How often the agents are sampled during the idle window.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long a process may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
const SOURCE: &str = "agentbench";

/// What the idle measurement needs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub hub_bin: PathBuf,
    pub agent_bin: PathBuf,
    /// Apps per cluster, one agent each.
    pub sizes: Vec<usize>,
    pub idle: Duration,
    pub drift_interval: Duration,
    pub healthy_timeout: Duration,
    pub hub_heartbeat_interval: String,
    /// Extra environment for the agents (experiments such as TOKIO_WORKER_THREADS).
    pub agent_env: Vec<(String, String)>,
}

/// Resident memory split, KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mem {
    pub rss_kib: u64,
    /// RssAnon: heap, stacks and other private memory.
    pub anon_kib: u64,
    /// RssFile: pages of the executable and other mapped files.
    pub file_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentResult {
    pub cluster: String,
    pub apps: usize,
    pub objects: usize,
    /// Agent started → the hub shows it connected.
    pub connected_ms: f64,
    /// Agent started → the hub shows every app applied and healthy at the desired revision.
    pub healthy_ms: f64,
    /// When the hub first showed every app healthy.
    pub at_healthy: Mem,
    /// At the end of the idle window.
    pub end: Mem,
    /// VmHWM at the end of the idle window (peak since start).
    pub hwm_kib: u64,
    /// Largest VmRSS seen during the window.
    pub window_max_rss_kib: u64,
    /// CPU time during the window over its length, percent of one core.
    pub cpu_percent: f64,
    /// The busiest sampling interval (about 1 s) of the window, percent of one core.
    pub max_interval_cpu_percent: f64,
    pub threads: u64,
    /// After the window, from the hub: every app still applied and healthy.
    pub still_healthy: bool,
    pub drifted: u64,
    pub healed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleReport {
    pub agents: Vec<AgentResult>,
    pub objects_per_app: usize,
    pub window_secs: f64,
    pub drift_interval_secs: f64,
    /// The window is longer than the longest drift interval (+10% jitter), so every agent ran
    /// at least one drift check in it.
    pub drift_check_in_window: bool,
    pub hub_heartbeat_interval: String,
    pub agent_env: Vec<String>,
}

/// A running `flotilla-agent`.
struct AgentProcess {
    cluster: String,
    pid: u32,
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(opts: &Options, cluster: &str, token: &str, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("agent.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&opts.agent_bin)
            .args(["--join", token])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--cluster", "simulated", "--sim-ready-delay", "0s"])
            // Many agents on one machine: each serves its metrics on a port of its own.
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args([
                "--drift-interval",
                &humantime::format_duration(opts.drift_interval).to_string(),
            ])
            .env("NO_COLOR", "1")
            .envs(opts.agent_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", opts.agent_bin.display()))?;
        Ok(Self {
            cluster: cluster.to_string(),
            pid: child.id(),
            child,
            log,
        })
    }

    /// Fails when the agent has exited, with the end of its log.
    fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "the agent of {} exited ({st}); log {}:\n{}",
                self.cluster,
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    fn sample(&mut self) -> Result<ProcSample> {
        self.check_running()?;
        sample_pid(self.pid, "agent")
    }

    fn mem(&self) -> Result<Mem> {
        let status = ProcStatus::read(self.pid, "agent")?;
        Ok(Mem {
            rss_kib: status.field("VmRSS:"),
            anon_kib: status.field("RssAnon:"),
            file_kib: status.field("RssFile:"),
        })
    }

    /// SIGTERM, then SIGKILL after `STOP_GRACE`.
    async fn stop(mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        sigterm(self.pid);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{}: the agent of {} did not exit within {STOP_GRACE:?} of SIGTERM; killing it",
            prog(),
            self.cluster
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    /// A last resort on error paths: never leave an agent running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn cluster_name(size: usize) -> String {
    format!("idle-{size}")
}

/// Runs the whole idle measurement in `dir`; the hub and the agents are stopped however it ends.
pub async fn run(opts: &Options, dir: &Path) -> Result<IdleReport> {
    let hub_dir = dir.join("hub");
    std::fs::create_dir_all(&hub_dir)?;
    println!("{}: starting {}", prog(), opts.hub_bin.display());
    let hub = HubProcess::start(&opts.hub_bin, &hub_dir, &opts.hub_heartbeat_interval).await?;
    let mut agents = Vec::new();
    let outcome = measure(opts, dir, &hub, &mut agents).await;
    for a in agents {
        a.stop().await;
    }
    let hub_log = hub.log_tail(20);
    let stopped = hub.stop(STOP_GRACE).await;
    match outcome {
        Ok(r) => {
            stopped?;
            Ok(r)
        }
        Err(e) => Err(e.context(format!("hub log:\n{hub_log}"))),
    }
}

async fn measure(
    opts: &Options,
    dir: &Path,
    hub: &HubProcess,
    agents: &mut Vec<AgentProcess>,
) -> Result<IdleReport> {
    let shape = AppShape::SMALL;
    let mut admin = admin_client(hub).await?;
    let mut rep = IdleReport {
        objects_per_app: shape.objects(),
        drift_interval_secs: opts.drift_interval.as_secs_f64(),
        drift_check_in_window: opts.idle > opts.drift_interval.mul_f64(1.1),
        hub_heartbeat_interval: opts.hub_heartbeat_interval.clone(),
        agent_env: opts
            .agent_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        ..Default::default()
    };

    let apps = opts.sizes.iter().copied().max().unwrap_or(0);
    println!(
        "{}: writing a git repository of {apps} apps × {} objects",
        prog(),
        shape.objects()
    );
    let repo_dir = dir.join("repo");
    let commit = repo::create(&repo_dir, &opts.sizes, shape)?;

    let mut tokens = BTreeMap::new();
    for &size in &opts.sizes {
        let name = cluster_name(size);
        let resp = admin
            .add_cluster(AddClusterRequest {
                name: name.clone(),
                labels: [(SIZE_LABEL.to_string(), size.to_string())].into(),
                ttl_seconds: 3600,
                reusable: false,
            })
            .await
            .map_err(|s| anyhow!("AddCluster {name}: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        tokens.insert(size, resp.token);
    }

    admin
        .add_source(AddSourceRequest {
            name: SOURCE.into(),
            url: repo_dir.to_string_lossy().into_owned(),
            r#ref: "main".into(),
            // Far longer than the run: the hub stays quiet after the first sync.
            interval_seconds: 24 * 3600,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("AddSource: {:?}: {}", s.code(), s.message()))?;
    let src = admin
        .sync_source(SyncSourceRequest {
            name: SOURCE.into(),
        })
        .await
        .map_err(|s| anyhow!("SyncSource: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    if !src.error.is_empty() || src.commit != commit {
        bail!(
            "the source did not sync commit {commit} (at {:?}): {}",
            src.commit,
            src.error
        );
    }
    for &size in &opts.sizes {
        let c = get_cluster(&mut admin, &cluster_name(size)).await?;
        let desired = c
            .apps
            .iter()
            .filter(|a| !a.desired_revision.is_empty())
            .count();
        if desired != size {
            bail!(
                "cluster {} has {desired} apps desired, expected {size}",
                c.name
            );
        }
    }
    println!(
        "{}: the hub rendered commit {} for {} clusters",
        prog(),
        &commit[..12],
        opts.sizes.len()
    );

    // One agent at a time, so that each one's start-up has the machine to itself.
    for &size in &opts.sizes {
        let name = cluster_name(size);
        let mut agent = AgentProcess::start(
            opts,
            &name,
            &tokens[&size],
            &dir.join(format!("agent-{size}")),
        )?;
        let started = Instant::now();
        println!(
            "{}: started the agent of {name} (pid {}); waiting until its {size} apps are healthy",
            prog(),
            agent.pid
        );
        let waited = wait_healthy(&mut admin, hub, &mut agent, size, started, opts).await;
        let mem = agent.mem();
        agents.push(agent);
        let (connected, healthy) = waited?;
        let r = AgentResult {
            cluster: name.clone(),
            apps: size,
            objects: size * shape.objects(),
            connected_ms: ms(connected),
            healthy_ms: ms(healthy),
            at_healthy: mem?,
            ..Default::default()
        };
        println!(
            "{}: {name}: connected after {:.0} ms, every app healthy after {:.0} ms, RSS {:.1} MiB",
            prog(),
            r.connected_ms,
            r.healthy_ms,
            r.at_healthy.rss_kib as f64 / 1024.0
        );
        rep.agents.push(r);
    }

    // The idle window, all agents together.
    println!(
        "{}: idle window of {} s (drift interval {}, hub heartbeat interval {})",
        prog(),
        opts.idle.as_secs(),
        humantime::format_duration(opts.drift_interval),
        opts.hub_heartbeat_interval
    );
    let t0 = Instant::now();
    let mut start = Vec::with_capacity(agents.len());
    for a in agents.iter_mut() {
        start.push(a.sample()?);
    }
    let mut prev: Vec<(Instant, ProcSample)> = start.iter().map(|s| (t0, *s)).collect();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.tick().await;
    while t0.elapsed() < opts.idle {
        ticker.tick().await;
        if let Some(why) = hub.exit_status() {
            bail!("the hub exited during the idle window ({why})");
        }
        for (i, a) in agents.iter_mut().enumerate() {
            let now = Instant::now();
            let s = a.sample()?;
            let r = &mut rep.agents[i];
            let dt = now.duration_since(prev[i].0).as_secs_f64();
            if dt > 0.0 {
                let pct = (s.cpu_secs - prev[i].1.cpu_secs) / dt * 100.0;
                r.max_interval_cpu_percent = r.max_interval_cpu_percent.max(pct);
            }
            r.window_max_rss_kib = r.window_max_rss_kib.max(s.rss_kib);
            prev[i] = (now, s);
        }
    }
    let window = t0.elapsed();
    rep.window_secs = window.as_secs_f64();
    for (i, a) in agents.iter_mut().enumerate() {
        let s = a.sample()?;
        let r = &mut rep.agents[i];
        r.end = a.mem()?;
        r.hwm_kib = s.hwm_kib;
        r.threads = s.threads;
        r.window_max_rss_kib = r.window_max_rss_kib.max(s.rss_kib);
        r.cpu_percent = (s.cpu_secs - start[i].cpu_secs) / window.as_secs_f64() * 100.0;
    }

    // Still healthy after the window (the drift check found nothing to heal).
    for r in rep.agents.iter_mut() {
        let c = get_cluster(&mut admin, &r.cluster).await?;
        r.still_healthy = c.state == "connected" && all_healthy(&c, r.apps);
        r.drifted = c.apps.iter().map(|a| u64::from(a.drifted)).sum();
        r.healed = c.apps.iter().map(|a| a.healed).sum();
    }
    Ok(rep)
}

async fn get_cluster(admin: &mut AdminClient<Channel>, name: &str) -> Result<Cluster> {
    Ok(admin
        .get_cluster(GetClusterRequest {
            name: name.to_string(),
        })
        .await
        .map_err(|s| anyhow!("GetCluster {name}: {:?}: {}", s.code(), s.message()))?
        .into_inner())
}

/// Every one of the `want` desired apps reported applied and healthy at its desired revision.
fn all_healthy(c: &Cluster, want: usize) -> bool {
    let desired: Vec<_> = c
        .apps
        .iter()
        .filter(|a| !a.desired_revision.is_empty())
        .collect();
    desired.len() == want
        && desired.iter().all(|a| {
            a.phase() == Phase::Applied
                && a.health() == Health::Healthy
                && a.revision == a.desired_revision
        })
}

/// Polls the hub until the agent's cluster is connected and every app is healthy; returns
/// (started → connected, started → healthy).
async fn wait_healthy(
    admin: &mut AdminClient<Channel>,
    hub: &HubProcess,
    agent: &mut AgentProcess,
    apps: usize,
    started: Instant,
    opts: &Options,
) -> Result<(Duration, Duration)> {
    let deadline = started + opts.healthy_timeout;
    let mut connected = None;
    loop {
        agent.check_running()?;
        if let Some(why) = hub.exit_status() {
            bail!("the hub exited ({why})");
        }
        let c = get_cluster(admin, &agent.cluster).await?;
        if c.state == "connected" && connected.is_none() {
            connected = Some(started.elapsed());
        }
        if let Some(conn) = connected
            && all_healthy(&c, apps)
        {
            return Ok((conn, started.elapsed()));
        }
        if Instant::now() > deadline {
            let mut phases: BTreeMap<String, usize> = BTreeMap::new();
            for a in &c.apps {
                *phases
                    .entry(format!("{}/{}", a.phase, a.health))
                    .or_default() += 1;
            }
            let example = c
                .apps
                .iter()
                .find(|a| a.health() != Health::Healthy)
                .map(|a| format!("; e.g. {}: {}", a.name, a.message))
                .unwrap_or_default();
            bail!(
                "cluster {} not healthy within {:?}: state {}, apps by phase/health {phases:?}{example}; agent log {}:\n{}",
                agent.cluster,
                opts.healthy_timeout,
                c.state,
                agent.log.display(),
                log_tail(&agent.log, 20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
