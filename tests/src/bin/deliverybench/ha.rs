//! The delivery phase across hub replicas (`--replicas N`, N ≥ 3): a 3-member etcd of the
//! installed binary ([`EtcdCluster`], data and logs under the run's directory), then N
//! `flotilla-hub serve --store etcd://…/deliverybench` children sharing one operator CA
//! ([`flotilla_tests::operator_ca`]), each with its own data dir, log, free ports and
//! `--replica-name hub-<i>`. Once exactly one replica leads (`flotilla_hub_leader 1` on its
//! /metrics, 0 on the others'), the rounds run with every session on one follower and the source
//! and the webhooks on another follower, so that a change crosses replicas twice: the webhook
//! replica passes the request on to the leader through the source's record, the leader syncs
//! and writes the rollout record, and the session replica, following `/rollouts/`, wakes its
//! sessions.
//!
//! The replicas are not given each other's `--endpoint`s (their ports are picked as they
//! start); nothing here needs them: the session clients dial the session replica directly and
//! never move.
//!
//! Everything stays on loopback; every wait has a deadline. Any replica exiting ends the phase,
//! and a failure prints the end of every replica's log.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_tests::bench::hub::{HubProcess, ProcSample, metric, metrics, sigterm};
use flotilla_tests::bench::prog;
use flotilla_tests::bench::stats::ms;
use flotilla_tests::etcd::{EtcdCluster, etcd_bin};
use serde::Serialize;

use crate::delivery::{self, DeliveryReport, Hubs};

/// Members of the etcd cluster the replicas share.
pub const ETCD_MEMBERS: usize = 3;
/// The key prefix of the run in etcd.
const PREFIX: &str = "/deliverybench";
/// How long the replicas may take to elect exactly one leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between looks at the replicas' metrics while waiting for a leader.
const POLL: Duration = Duration::from_millis(100);
/// Lines of each replica's log printed when the phase fails.
const TAIL_LINES: usize = 30;

/// The delivery figures across replicas, and how the replicas were laid out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HaReport {
    pub replicas: usize,
    pub etcd_members: usize,
    /// `etcd://…/<prefix>` the replicas share.
    pub store: String,
    /// Replica names, in start order.
    pub names: Vec<String>,
    /// The replica that led when the rounds started, the one holding the sessions, and the one
    /// the source and the webhooks went to.
    pub leader: String,
    pub session_replica: String,
    pub webhook_replica: String,
    /// From the last replica ready to exactly one leading.
    pub leader_elected_ms: f64,
    /// Who led after the rounds (the same as `leader` unless the lead moved meanwhile).
    pub leader_end: Option<String>,
    /// Per replica (in `names` order): memory and CPU time at the end.
    pub replicas_end: Vec<ProcSample>,
    pub delivery: DeliveryReport,
}

impl HaReport {
    /// Whether the lead stayed where it was while the rounds ran.
    pub fn lead_stayed(&self) -> bool {
        self.leader_end.as_deref() == Some(self.leader.as_str())
    }
}

/// SIGTERM to hubs still running when the set is dropped without [`ReplicaSet::shutdown`]
/// (the run failed on `--max-duration`), so that no replica outlives the program.
struct StopOnDrop(Vec<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for pid in self.0.drain(..) {
            sigterm(pid);
        }
    }
}

/// The etcd cluster and the hub replicas on it.
pub struct ReplicaSet {
    pub names: Vec<String>,
    pub hubs: Vec<HubProcess>,
    pub store: String,
    etcd_dir: PathBuf,
    // Dropped in this order: the hubs are told to stop before etcd's members are killed.
    stop_on_drop: StopOnDrop,
    etcd: EtcdCluster,
}

impl ReplicaSet {
    /// Starts the etcd members under `dir/etcd`, then `n` replicas under `dir/hub-<i>`, one
    /// after the other (each ready before the next starts).
    pub async fn start(bin: &Path, dir: &Path, n: usize, heartbeat_interval: &str) -> Result<Self> {
        let etcd_dir = dir.join("etcd");
        std::fs::create_dir_all(&etcd_dir)
            .with_context(|| format!("creating {}", etcd_dir.display()))?;
        // The test helpers panic where this program fails (no etcd installed, a wait run
        // out); each runs in a task of its own, where a panic becomes an error.
        let etcd_path = tokio::task::spawn_blocking(etcd_bin)
            .await
            .map_err(|e| anyhow!("finding the etcd binary: {e}"))?;
        println!(
            "{}: starting a {ETCD_MEMBERS}-member etcd ({}) in {}",
            prog(),
            etcd_path.display(),
            etcd_dir.display()
        );
        let started = Instant::now();
        let at = etcd_dir.clone();
        let etcd = tokio::spawn(async move { EtcdCluster::start_in(&at, ETCD_MEMBERS).await })
            .await
            .map_err(|e| {
                anyhow!(
                    "the {ETCD_MEMBERS}-member etcd did not start ({e}); its logs are in {}",
                    etcd_dir.display()
                )
            })?;
        let store = etcd.url(PREFIX);
        println!(
            "{}: etcd has a leader after {:.0} ms; store {store}",
            prog(),
            ms(started.elapsed())
        );
        let ca_dir = dir.to_path_buf();
        let (_, ca_cert, ca_key) =
            tokio::task::spawn_blocking(move || flotilla_tests::operator_ca(&ca_dir))
                .await
                .map_err(|e| anyhow!("writing the operator CA: {e}"))?;
        let mut set = Self {
            names: Vec::with_capacity(n),
            hubs: Vec::with_capacity(n),
            store,
            etcd_dir,
            stop_on_drop: StopOnDrop(Vec::with_capacity(n)),
            etcd,
        };
        for i in 0..n {
            let name = format!("hub-{i}");
            let hub_dir = dir.join(&name);
            let extra: Vec<String> = vec![
                "--store".into(),
                set.store.clone(),
                "--ca-cert".into(),
                ca_cert.to_string_lossy().into_owned(),
                "--ca-key".into(),
                ca_key.to_string_lossy().into_owned(),
                "--replica-name".into(),
                name.clone(),
            ];
            let started = match std::fs::create_dir_all(&hub_dir) {
                Ok(()) => HubProcess::start_with(bin, &hub_dir, heartbeat_interval, &extra)
                    .await
                    .with_context(|| format!("starting replica {name}")),
                Err(e) => Err(anyhow!("creating {}: {e}", hub_dir.display())),
            };
            match started {
                Ok(hub) => {
                    println!(
                        "{}: replica {name}: pid {} serving {} (HTTP {}), data and log in {}",
                        prog(),
                        hub.pid,
                        hub.addr,
                        hub.http,
                        hub.dir.display()
                    );
                    set.stop_on_drop.0.push(hub.pid);
                    set.hubs.push(hub);
                    set.names.push(name);
                }
                Err(e) => {
                    set.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(set)
    }

    /// Each replica's `flotilla_hub_leader` (`None` when its metrics cannot be read or lack it).
    pub async fn leading(&self) -> Vec<Option<f64>> {
        let mut out = Vec::with_capacity(self.hubs.len());
        for h in &self.hubs {
            let v = metrics(h)
                .await
                .ok()
                .and_then(|t| metric(&t, "flotilla_hub_leader"));
            out.push(v);
        }
        out
    }

    /// The replica that leads when exactly one reports 1 and every other 0 (or, unless
    /// `all_answer`, cannot be read: it has exited).
    fn sole_leader(leading: &[Option<f64>], all_answer: bool) -> Option<usize> {
        let ones: Vec<usize> = (0..leading.len())
            .filter(|&i| leading[i] == Some(1.0))
            .collect();
        let others_ok = leading
            .iter()
            .filter(|v| **v != Some(1.0))
            .all(|v| *v == Some(0.0) || (v.is_none() && !all_answer));
        match ones[..] {
            [i] if others_ok => Some(i),
            _ => None,
        }
    }

    /// Waits until exactly one replica leads; its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let leading = self.leading().await;
            if let Some(i) = Self::sole_leader(&leading, true) {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!(
                    "the replicas did not settle on exactly one leader within {timeout:?}: \
                     flotilla_hub_leader of {:?} = {leading:?}",
                    self.names
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Who leads now, if exactly one of the replicas that answer does.
    pub async fn leader_now(&self) -> Option<usize> {
        Self::sole_leader(&self.leading().await, false)
    }

    /// Runs `work` unless a replica exits first; when either fails, prints the end of every
    /// replica's log (and says which have exited).
    pub async fn supervise<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let died = futures::future::select_all(
            self.hubs
                .iter()
                .enumerate()
                .map(|(i, h)| Box::pin(async move { (i, h.died().await) })),
        );
        let mut outcome = tokio::select! {
            r = work => r,
            ((i, why), _, _) = died => Err(anyhow!(
                "replica {} exited unexpectedly ({why})",
                self.names[i]
            )),
        };
        // The work may fail first (its calls to a replica fail as it goes): then the replicas
        // that have exited are the likely cause.
        let gone: Vec<String> = self
            .names
            .iter()
            .zip(&self.hubs)
            .filter_map(|(n, h)| h.exit_status().map(|why| format!("{n} ({why})")))
            .collect();
        if !gone.is_empty()
            && outcome
                .as_ref()
                .is_err_and(|e| !format!("{e}").contains("exited unexpectedly"))
        {
            let note = format!("replicas exited unexpectedly: {}", gone.join(", "));
            outcome = outcome.map_err(|e| e.context(note));
        }
        if let Err(e) = &outcome {
            eprintln!("{}: the replicated run failed: {e:#}", prog());
            self.print_tails();
        }
        outcome
    }

    /// Prints the end of every replica's log, and where etcd's logs are.
    pub fn print_tails(&self) {
        for (name, h) in self.names.iter().zip(&self.hubs) {
            let state = match h.exit_status() {
                Some(why) => format!("exited: {why}"),
                None => "running".to_string(),
            };
            eprintln!(
                "{}: --- replica {name} (pid {}, {state}), log {}:\n{}",
                prog(),
                h.pid,
                h.log_path.display(),
                h.log_tail(TAIL_LINES)
            );
        }
        eprintln!(
            "{}: the etcd members' logs are in {}",
            prog(),
            self.etcd_dir.display()
        );
    }

    /// Stops every replica (SIGTERM, each up to 30 s), then the etcd members.
    pub async fn shutdown(self) {
        let Self {
            names,
            hubs,
            mut stop_on_drop,
            etcd,
            ..
        } = self;
        stop_on_drop.0.clear();
        for (name, hub) in names.iter().zip(hubs) {
            println!("{}: replica {name}:", prog());
            hub.shutdown().await;
        }
        drop(etcd);
        println!("{}: stopped the etcd members", prog());
    }
}

/// The delivery phase across `n` replicas with its files under `dir`; the replicas and etcd are
/// stopped before returning. Partial results are left in `rep` when it fails.
pub async fn run(opts: &delivery::Options, n: usize, dir: &Path, rep: &mut HaReport) -> Result<()> {
    rep.replicas = n;
    rep.etcd_members = ETCD_MEMBERS;
    let set = ReplicaSet::start(&opts.hub_bin, dir, n, &opts.hub_heartbeat_interval).await?;
    rep.store = set.store.clone();
    rep.names = set.names.clone();
    let outcome = set.supervise(rounds(opts, dir, &set, rep)).await;
    set.shutdown().await;
    outcome
}

async fn rounds(
    opts: &delivery::Options,
    dir: &Path,
    set: &ReplicaSet,
    rep: &mut HaReport,
) -> Result<()> {
    let started = Instant::now();
    let leader = set.wait_for_leader(LEADER_TIMEOUT).await?;
    rep.leader_elected_ms = ms(started.elapsed());
    let followers: Vec<usize> = (0..set.hubs.len()).filter(|&i| i != leader).collect();
    let [sessions, hooks, ..] = followers[..] else {
        bail!("{} replicas leave fewer than two followers", set.hubs.len());
    };
    rep.leader = set.names[leader].clone();
    rep.session_replica = set.names[sessions].clone();
    rep.webhook_replica = set.names[hooks].clone();
    println!(
        "{}: {} leads ({:.0} ms after the last replica was ready); sessions on {}, source and \
         webhooks through {}",
        prog(),
        rep.leader,
        rep.leader_elected_ms,
        rep.session_replica,
        rep.webhook_replica
    );
    let hubs = Hubs {
        sessions: &set.hubs[sessions],
        hooks: &set.hubs[hooks],
        leader: Some(&set.hubs[leader]),
        all: &set.hubs,
    };
    let result = delivery::phases(opts, dir, hubs, &mut rep.delivery).await;
    // Who leads now, also when the rounds failed.
    rep.leader_end = set.leader_now().await.map(|i| set.names[i].clone());
    rep.replicas_end = set
        .hubs
        .iter()
        .map(|h| h.sample().unwrap_or_default())
        .collect();
    if !rep.lead_stayed() {
        eprintln!(
            "{}: the lead moved during the rounds: {} led at the start, {:?} at the end",
            prog(),
            rep.leader,
            rep.leader_end
        );
    }
    result
}
