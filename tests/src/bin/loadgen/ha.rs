//! HA mode (`--replicas N`, N > 1): the same phases against one hub on its embedded redb store
//! and then against N hub replicas sharing a 3-member etcd
//! ([`flotilla_tests::bench::replicas::Replicas`]), in one run, so that every figure can be
//! given as a ratio HA / redb; then a failover.
//!
//! Against the replicas, cluster `i` is enrolled through replica `i % N` (AddCluster and Join)
//! and opens its session there, every time (the storm reconnects each cluster to its replica,
//! whose ticket it holds). Each replica counts its own sessions (`flotilla_hub_sessions_connected`
//! is per process); sessions held = the sum. The hub's memory and CPU are the replicas' summed,
//! and each replica's share is reported too, with the etcd members' own memory and CPU.
//!
//! **Failover**: after the storm, the last replica (normally not the leader; the report says)
//! is killed with SIGKILL while it holds its share of the sessions. Each of its clients does
//! what an agent given every replica's endpoint does: once its session ends it waits the
//! agent's own jittered backoff (`flotilla_agent::backoff::Backoff`, the agent's base and cap)
//! and dials the next endpoint in the list, moving on to the one after it on each failure (a
//! bounded number of attempts). Measured: the time from the kill until the remaining replicas'
//! gauges sum to the total again (every dropped session re-attached), the clients' own view
//! (last drop noticed, last Welcome), how many failed, the reconnects' latency and the remaining
//! replicas' CPU per re-attach.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use flotilla_agent::backoff::Backoff;
use flotilla_agent::{AgentConfig, BACKOFF_CAP};
use flotilla_tests::bench::client::{Enrolled, Fleet, Session, open_session};
use flotilla_tests::bench::fleet::{Enrollment, Opened};
use flotilla_tests::bench::hub::{HubProcess, ProcSample};
use flotilla_tests::bench::program::{verdict_status, within_max_duration, write_json};
use flotilla_tests::bench::replicas::{ETCD_MEMBERS, HubSet, Replicas};
use flotilla_tests::bench::stats::Latency;
use tempfile::TempDir;
use tokio::task::JoinSet;

use crate::report::{HaReport, HaRun, ReplicaFigures, Report, comparison_table};
use crate::{Args, SETTLE, one_hub, phases};

/// How long the dropped clients may take, from the kill, to be re-attached elsewhere.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a dropped client waits to see its session end before giving it up.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reconnect attempts per dropped client, and how long one may take.
const MAX_ATTEMPTS: u32 = 8;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between looks at the remaining replicas' gauges during the failover.
const GAUGE_POLL: Duration = Duration::from_millis(100);
/// How long the lead may take to move when the killed replica led.
const LEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The first errors kept.
const ERROR_EXAMPLES: usize = 5;

/// The resumed handshakes a hub admitted.
const RESUMED: &str = "flotilla_hub_tls_resumed_handshakes_total";

/// The HA part of [`phases`]: the replicas, and where their own figures go.
pub struct Ha<'a> {
    pub replicas: &'a Replicas,
    pub rep: &'a mut HaReport,
    /// Sessions the killed replica held (ended by the kill, on purpose).
    dropped: usize,
}

impl<'a> Ha<'a> {
    pub fn new(replicas: &'a Replicas, rep: &'a mut HaReport) -> Self {
        rep.replicas = replicas.hubs.len();
        rep.etcd_members = ETCD_MEMBERS;
        rep.etcd_processes = replicas.etcd_processes();
        rep.store = replicas.etcd.url(&replicas.prefix);
        rep.per_replica = replicas
            .names
            .iter()
            .zip(&replicas.hubs)
            .map(|(name, h)| ReplicaFigures {
                name: name.clone(),
                pid: h.pid,
                ..Default::default()
            })
            .collect();
        Self {
            replicas,
            rep,
            dropped: 0,
        }
    }

    pub fn baseline(&mut self, each: &[ProcSample]) {
        for (r, s) in self.rep.per_replica.iter_mut().zip(each) {
            r.baseline = *s;
        }
        self.rep.etcd_baseline = self.replicas.etcd_sample();
    }

    pub fn enrolled(&mut self, each: &[ProcSample]) {
        for (r, s) in self.rep.per_replica.iter_mut().zip(each) {
            r.enrolled = *s;
        }
    }

    /// The etcd members' CPU time so far.
    pub fn etcd_cpu(&self) -> f64 {
        self.replicas.etcd_sample().cpu_secs
    }

    /// The handshake phase opened `sessions`; etcd's CPU was `before` when it started.
    pub fn opened(&mut self, before: f64, sessions: usize) {
        self.rep.etcd_cpu_ms_per_handshake =
            (self.etcd_cpu() - before) * 1000.0 / sessions.max(1) as f64;
    }

    /// The sessions are held: each replica's sample and gauge, who leads, etcd's memory.
    pub async fn held(&mut self, each: &[ProcSample], gauges: &[usize]) {
        let leads = self.replicas.leaders().await;
        for (i, r) in self.rep.per_replica.iter_mut().enumerate() {
            r.held = each[i];
            r.sessions_held = gauges[i];
            r.led = leads.iter().any(|(j, l)| *j == i && *l == Some(true));
        }
        self.rep.etcd_held = self.replicas.etcd_sample();
    }

    pub fn after_heartbeats(&mut self, each: &[ProcSample]) {
        for (r, s) in self.rep.per_replica.iter_mut().zip(each) {
            r.after_heartbeats = *s;
        }
    }

    /// Sessions ended on purpose by the kill.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// The replicas not killed.
    pub fn live(&self) -> Vec<&'a HubProcess> {
        self.replicas.live()
    }

    /// Kills the last replica (`kill -9`) while it holds its share of `opened` and moves its
    /// clients to the others; returns every session held afterwards.
    pub async fn failover(
        &mut self,
        enr: &Enrollment,
        fleet: &Arc<Fleet>,
        opened: Opened,
    ) -> Result<Vec<Session>> {
        let r = self.replicas;
        let n = r.hubs.len();
        let victim = n - 1;
        let all = r.live();
        let before = HubSet(&all).gauges().await?;
        let total_before: usize = before.iter().sum();
        let victim_led = r
            .leaders()
            .await
            .iter()
            .any(|(i, l)| *i == victim && *l == Some(true));
        let mut keep = Vec::new();
        let mut moving = Vec::new();
        for ((s, h), i) in opened
            .sessions
            .into_iter()
            .zip(opened.hub_of)
            .zip(opened.cluster_of)
        {
            if h == victim {
                moving.push((s, i));
            } else {
                keep.push(s);
            }
        }
        let survivors: Vec<&HubProcess> = (0..n)
            .filter(|i| *i != victim)
            .map(|i| &r.hubs[i])
            .collect();
        let survivors = HubSet(&survivors);
        let resumed_before = survivors.metric_sum(RESUMED).await?.unwrap_or(0.0);
        let cpu_before = survivors.sample()?.cpu_secs;
        let f = &mut self.rep.failover;
        f.victim = r.names[victim].clone();
        f.victim_led = victim_led;
        f.total_before = total_before;
        f.dropped = moving.len();
        self.dropped = moving.len();
        println!(
            "loadgen: failover: kill -9 of {} ({}; its gauge {} of {total_before} sessions, {} \
             clients); they reconnect to the next endpoint with the agent's backoff",
            f.victim,
            if victim_led { "leader" } else { "not leading" },
            before[victim],
            moving.len()
        );

        // --- the kill, and every dropped client on its way to another replica ----------------
        let endpoints = Arc::new(r.endpoints.clone());
        let base = AgentConfig::new(std::path::PathBuf::new()).backoff_base;
        let killed_at = Instant::now();
        r.kill9(victim)?;
        let mut tasks = JoinSet::new();
        for (s, i) in moving {
            let who = enr.enrolled[i].clone();
            let to = Reattach {
                who,
                src: enr.source_of(i),
                endpoints: endpoints.clone(),
                from: victim,
                fleet: fleet.clone(),
                killed_at,
                base,
            };
            tasks.spawn(to.run(s));
        }
        let moving = tasks.len();
        let deadline = Instant::now() + REATTACH_TIMEOUT;
        let (mut back, mut latencies) = (Vec::new(), Vec::new());
        let mut done = 0usize;
        let mut cpu_after = cpu_before;
        let mut tick = tokio::time::interval(GAUGE_POLL);
        while f.reattach_secs.is_none() || done < moving {
            if Instant::now() > deadline {
                eprintln!(
                    "loadgen: failover: {done}/{moving} clients done and the remaining replicas \
                     not back at {total_before} sessions within {REATTACH_TIMEOUT:?}"
                );
                break;
            }
            tokio::select! {
                Some(joined) = tasks.join_next(), if done < moving => {
                    done += 1;
                    match joined.map_err(|e| anyhow!("a reconnecting client's task failed: {e}"))? {
                        Ok(b) => {
                            f.last_welcome_secs = f.last_welcome_secs.max(b.welcomed.as_secs_f64());
                            f.noticed_max_secs = f.noticed_max_secs.max(b.noticed.as_secs_f64());
                            f.attempts_max = f.attempts_max.max(b.attempt);
                            f.retried += usize::from(b.attempt > 1);
                            latencies.push(b.took);
                            back.push(b.session);
                        }
                        Err(e) => {
                            f.failed += 1;
                            if f.errors.len() < ERROR_EXAMPLES {
                                f.errors.push(e);
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if f.reattach_secs.is_none() {
                        let now: usize = survivors.gauges().await?.iter().sum();
                        if now + f.failed >= total_before {
                            f.reattach_secs = Some(killed_at.elapsed().as_secs_f64());
                            cpu_after = survivors.sample()?.cpu_secs;
                        }
                    }
                }
            }
        }
        if done < moving {
            f.failed += moving - done;
            tasks.abort_all();
        }
        f.reattached = back.len();
        f.reconnect_latency = Latency::of(&mut latencies);
        f.resumed = (survivors.metric_sum(RESUMED).await?.unwrap_or(0.0) - resumed_before).max(0.0)
            as usize;
        f.survivors_cpu_ms_per_reattach =
            (cpu_after - cpu_before) * 1000.0 / f.reattached.max(1) as f64;
        for e in &f.errors {
            eprintln!("loadgen:   failover: {e}");
        }
        match f.reattach_secs {
            Some(s) => println!(
                "loadgen: failover: {}/{} dropped sessions re-attached {s:.2} s after the kill \
                 (last Welcome {:.2} s, last drop noticed {:.2} s), {} failed",
                f.reattached, f.dropped, f.last_welcome_secs, f.noticed_max_secs, f.failed
            ),
            None => println!(
                "loadgen: failover: {}/{} dropped sessions re-attached; the remaining replicas' \
                 gauges did not get back to {total_before}; {} failed",
                f.reattached, f.dropped, f.failed
            ),
        }

        // --- who leads now, and the remaining replicas with the extra sessions ---------------
        let lead = r.wait_for_leader(LEAD_TIMEOUT).await?;
        f.leader_after = r.names[lead].clone();
        if victim_led {
            f.lead_moved_secs = Some(killed_at.elapsed().as_secs_f64());
        }
        tokio::time::sleep(SETTLE).await;
        let gauges = survivors.gauges().await?;
        let samples = survivors.samples()?;
        f.survivors = (0..n)
            .filter(|i| *i != victim)
            .zip(gauges.into_iter().zip(samples))
            .map(|(i, (g, s))| (r.names[i].clone(), g, s))
            .collect();
        keep.extend(back);
        Ok(keep)
    }
}

/// One dropped client's way back: see its session end, then reconnect through the next
/// endpoints with the agent's backoff.
struct Reattach {
    who: Enrolled,
    src: IpAddr,
    endpoints: Arc<Vec<String>>,
    /// The index of the endpoint it was on.
    from: usize,
    fleet: Arc<Fleet>,
    killed_at: Instant,
    base: Duration,
}

/// A dropped client back on another replica.
struct Back {
    session: Session,
    /// Dial → Welcome of the attempt that succeeded, and which attempt it was.
    took: Duration,
    attempt: u32,
    /// From the kill until the old session ended, and until the Welcome.
    noticed: Duration,
    welcomed: Duration,
}

impl Reattach {
    async fn run(self, old: Session) -> Result<Back, String> {
        let Session { cmd, mut task } = old;
        // The session task ends when the connection does (the replica is gone).
        if tokio::time::timeout(NOTICE_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        drop(cmd);
        let noticed = self.killed_at.elapsed();
        // As the agent: backoff first, then the next endpoint; the one after it on failure.
        let mut backoff = Backoff::new(self.base, BACKOFF_CAP);
        let mut at = self.from;
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            at = (at + 1) % self.endpoints.len();
            tokio::time::sleep(backoff.next_delay()).await;
            let open = open_session(
                &self.who,
                &self.endpoints[at],
                self.src,
                self.fleet.clone(),
                None,
            );
            match tokio::time::timeout(ATTEMPT_TIMEOUT, open).await {
                Ok(Ok((session, took))) => {
                    return Ok(Back {
                        session,
                        took,
                        attempt,
                        noticed,
                        welcomed: self.killed_at.elapsed(),
                    });
                }
                Ok(Err(e)) => last = format!("{}: {e:#}", self.endpoints[at]),
                Err(_) => {
                    last = format!(
                        "{}: no Welcome within {ATTEMPT_TIMEOUT:?}",
                        self.endpoints[at]
                    )
                }
            }
        }
        Err(format!(
            "{}: not re-attached in {MAX_ATTEMPTS} attempts; last: {last}",
            self.who.cluster
        ))
    }
}

/// The HA run: one hub on redb, then the replicas, the comparison; the exit status is the redb
/// run's verdict (the HA figures are compared, not judged).
pub async fn run(args: &Args, bin: &Path, tmp: TempDir, nofile: u64) -> Result<ExitCode> {
    let n = args.replicas as usize;
    println!(
        "loadgen: HA mode: {} sessions against one hub on redb, then against {n} hub replicas \
         sharing a {ETCD_MEMBERS}-member etcd",
        args.sessions
    );
    let redb_dir = tmp.path().join("redb");
    std::fs::create_dir_all(&redb_dir)?;
    let (mut redb, outcome, redb_log) = one_hub(args, bin, &redb_dir, nofile).await?;
    redb.finish();
    if let Err(e) = outcome {
        println!(
            "loadgen: kept {} (hub log: {})",
            tmp.keep().display(),
            redb_log.display()
        );
        redb.verdict = "INCOMPLETE (the run failed; partial results)".into();
        println!("{}", redb.table());
        write_json(args.json.as_deref(), &redb)?;
        return Err(e.context("the run on one hub on redb failed"));
    }

    let ha_dir = tmp.path().join("ha");
    let replicas = match Replicas::start(bin, &ha_dir, n, &args.hub_heartbeat_interval, &[]).await {
        Ok(r) => r,
        Err(e) => {
            println!("loadgen: kept {}", tmp.keep().display());
            println!("{}", redb.table());
            return Err(e);
        }
    };
    replicas.announce();
    let mut ha = Report {
        sessions_requested: args.sessions,
        sources: args.sources as usize,
        concurrency: args.concurrency as usize,
        heartbeat_rounds: args.heartbeat_rounds,
        nofile_limit: nofile,
        ..Default::default()
    };
    let mut extra = HaReport::default();
    let outcome = {
        let live = replicas.live();
        let hubs = HubSet(&live);
        let h = Ha::new(&replicas, &mut extra);
        replicas
            .supervise(within_max_duration(
                args.max_duration,
                phases(args, hubs, &mut ha, Some(h)),
            ))
            .await
    };
    let logs = replicas
        .hubs
        .iter()
        .map(|h| h.log_path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    replicas.shutdown().await;
    ha.finish();
    extra.finish();
    // The targets are the single hub's; the HA figures are compared with it instead.
    ha.targets.clear();
    ha.verdict = match &outcome {
        Ok(_) => "not judged (HA run: compared with redb)".into(),
        Err(_) => "INCOMPLETE (the run failed; partial results)".into(),
    };
    if args.keep_dir || outcome.is_err() {
        println!(
            "loadgen: kept {} (hub logs: {}, {logs})",
            tmp.keep().display(),
            redb_log.display()
        );
    } else {
        drop(tmp);
    }
    println!("\nloadgen: one hub on redb\n{}", redb.table());
    if ha.sessions_opened > 0 || ha.enrolled > 0 {
        println!(
            "\nloadgen: {n} hub replicas on a {ETCD_MEMBERS}-member etcd (hub figures summed over \
             the replicas)\n{}",
            ha.table()
        );
        println!(
            "\nloadgen: HA against redb, {} sessions\n{}",
            args.sessions,
            comparison_table(&redb, &ha, &extra)
        );
    }
    write_json(
        args.json.as_deref(),
        &HaRun {
            redb: &redb,
            ha: &ha,
            replicas: &extra,
        },
    )?;
    outcome.map_err(|e| e.context(format!("the run on {n} replicas on etcd failed")))?;
    Ok(verdict_status(redb.passed()))
}
