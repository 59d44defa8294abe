//! `loadgen`: the session load generator. Starts one `flotilla-hub` as a child process, enrolls
//! N clusters through the real Admin API and `Registration.Join`, then opens N lightweight
//! session clients (real mutual TLS, real `AgentSession.Connect`, no reconcile) spread over
//! several loopback source addresses, holds them, and measures:
//!
//! * sessions held (the hub's own `flotilla_hub_sessions_connected` gauge),
//! * hub RSS per held session (from `/proc/<pid>/status`) and hub threads,
//! * full mTLS handshakes per second (dial → Welcome) and hub CPU per handshake,
//! * heartbeat round-trip p50/p99/max with every session firing at once,
//! * a reconnect storm ([`storm`]): every session dropped at once and reconnected, resuming its
//!   TLS session from the hub's ticket; time until all are re-attached, hub CPU per resumed
//!   handshake, hub RSS after against before,
//! * with `--floor` ([`floor`]), the same N connections held against a bare tokio-rustls + h2
//!   server in a child process (`loadgen floor-server`, hidden): its RSS per connection and CPU
//!   per full and resumed handshake beside the hub's.
//!
//! **HA mode, `--replicas N`** (N > 1; default 1, the single hub above): the same run measures
//! a single hub on its embedded redb store first (exactly as without the flag, `--floor`
//! included), then the same phases against N hub replicas sharing a 3-member etcd (real `etcd`
//! members on free loopback ports, started by the program in its temporary directory): one
//! operator CA for every replica, each with its own data dir, log, `--replica-name` and every
//! replica's `--endpoint`. The clusters are enrolled through the replicas in turn and their
//! sessions spread round robin over them; each replica counts its own sessions on its
//! `flotilla_hub_sessions_connected` gauge (held = their sum), and the hub's memory and CPU are
//! the replicas' summed, with each replica's share and the etcd members' own memory and CPU
//! beside them. The report prints both runs' tables and one table of every figure side by side
//! with the ratio HA / redb. Then the **failover** ([`ha`]): a `kill -9` of the last replica
//! while it holds its share of the sessions; its clients reconnect to the next endpoint with the
//! agent's jittered backoff, and the report gives the time from the kill until the remaining
//! replicas' gauges sum to the total again, and how many failed. `--json` then holds both runs
//! and the HA figures (`{"redb": …, "ha": …, "replicas": …}`). Needs `etcd` on the PATH (or
//! `FLOTILLA_ETCD_BIN`).
//!
//! All traffic stays on loopback; every loop is bounded in count and time (`--max-duration`,
//! for the single hub's phases and again for the replicas').
//!
//! Exit status: 0 when the run completed (and met the targets where they are judged), 1 when it
//! could not complete (hub died, more than 1% of sessions failed, timeout), 2 when it completed
//! but missed a target at ≥ 10,000 sessions (see [`report`]; in HA mode the single hub's
//! figures are judged, the replicas' compared with them).
//!
//! ```text
//! cargo build --release -p flotilla-tests --bin loadgen -p flotilla-hub --bin flotilla-hub
//! cargo run --release -p flotilla-tests --bin loadgen -- --sessions 10000 --floor
//! cargo run --release -p flotilla-tests --bin loadgen -- --sessions 10000 --replicas 3
//! ```

mod floor;
mod ha;
mod report;
mod storm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use flotilla_tests::bench::admin_client;
use flotilla_tests::bench::client::{Cmd, Enrolled, Fleet, Session};
use flotilla_tests::bench::fleet::{check_ended_early, enroll, enroll_spread, too_many_failures};
use flotilla_tests::bench::hub::HubProcess;
use flotilla_tests::bench::program::{
    self, hub_bin, raise_nofile, temp_dir, verdict_status, within_max_duration, write_json,
};
use flotilla_tests::bench::replicas::{HubSet, sum};
use flotilla_tests::bench::stats::Latency;
use tokio::sync::mpsc;

use crate::report::Report;

/// How long the hub may take to count every opened session.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one heartbeat round may take before missing answers count as lost.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the allocator and the runtime are given to settle after a burst before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Session load generator: N mTLS session clients against one flotilla-hub",
    long_about = "Starts a flotilla-hub child process, enrolls N clusters, opens N lightweight \
                  session clients (real mutual TLS and session protocol, no reconcile) spread \
                  over loopback source addresses, and reports sessions held, hub RSS per session, \
                  handshakes/s, heartbeat round trips and a reconnect storm (all sessions \
                  dropped at once and resumed). With --floor, the same connections are held \
                  against a bare tokio-rustls + h2 server for comparison. With --replicas N, \
                  the same against N hub replicas sharing a 3-member etcd after the single hub, \
                  figures as ratios HA / redb, then a kill -9 of one replica whose sessions \
                  re-attach to the others.\n\nExit status: 0 ok, \
                  1 run failed, 2 a target missed at ≥ 10000 sessions.",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    internal: Option<Internal>,
    /// Number of concurrent sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// The hub binary [default: flotilla-hub next to this executable].
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Number of loopback source addresses (127.0.0.2, 127.0.0.3, …) to spread connections over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=250))]
    sources: u64,
    /// Joins and handshakes in flight at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Heartbeat rounds (every session at once) for the round-trip measurement.
    #[arg(long, default_value_t = 3)]
    heartbeat_rounds: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (hub data and log) instead of removing it.
    #[arg(long)]
    keep_dir: bool,
    /// The hub's --heartbeat-interval (sessions silent for 3× this are closed by the hub).
    #[arg(long, default_value = "30s")]
    hub_heartbeat_interval: String,
    /// Upper bound on the whole run; it fails when exceeded.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Also hold the same N connections against a bare tokio-rustls + h2 server (same
    /// certificates and key type) and report its RSS per connection and CPU per handshake.
    #[arg(long)]
    floor: bool,
    /// Hub replicas (HA mode). 1: one hub on its embedded redb store, as without this flag.
    /// More: the same run on one hub on redb first, then on this many replicas sharing a
    /// 3-member etcd (sessions round robin over them), each figure printed as HA / redb, and a
    /// kill -9 of one replica whose sessions then re-attach to the others.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    replicas: u64,
}

/// What loadgen runs of itself in a child process.
#[derive(Debug, Subcommand)]
enum Internal {
    /// The bare tokio-rustls + h2 server of `--floor`.
    #[command(hide = true)]
    FloorServer(flotilla_tests::bench::floor::ServerArgs),
}

fn main() -> ExitCode {
    program::main(run)
}

async fn run(args: Args) -> Result<ExitCode> {
    if let Some(Internal::FloorServer(server)) = args.internal {
        rlimit::increase_nofile_limit(u64::MAX)?;
        flotilla_tests::bench::floor::serve(server).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let nofile = raise_nofile(args.sessions)?;
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let bin = hub_bin(args.hub_bin.as_deref())?;
    let tmp = temp_dir()?;
    if args.replicas > 1 {
        return ha::run(&args, &bin, tmp, nofile).await;
    }
    let (mut rep, outcome, log_path) = one_hub(&args, &bin, tmp.path(), nofile).await?;
    let keep = args.keep_dir || outcome.is_err();
    if keep {
        let p = tmp.keep();
        println!(
            "loadgen: kept {} (hub log: {})",
            p.display(),
            log_path.display()
        );
    } else {
        drop(tmp);
    }

    if let Err(e) = outcome {
        if rep.sessions_opened > 0 || rep.enrolled > 0 {
            rep.finish();
            rep.verdict = "INCOMPLETE (the run failed; partial results)".into();
            println!("{}", rep.table());
            write_json(args.json.as_deref(), &rep)?;
        }
        return Err(e);
    }
    rep.finish();
    println!("{}", rep.table());
    write_json(args.json.as_deref(), &rep)?;
    Ok(verdict_status(rep.passed()))
}

/// One hub on its embedded redb store, data and log under `dir`: its phases, then (with
/// `--floor`) the floor's; the report, how the phases ended, and the hub's log.
async fn one_hub(
    args: &Args,
    bin: &Path,
    dir: &Path,
    nofile: u64,
) -> Result<(Report, Result<()>, PathBuf)> {
    let hub = HubProcess::start(bin, dir, &args.hub_heartbeat_interval).await?;
    hub.announce();

    let mut rep = Report {
        sessions_requested: args.sessions,
        sources: args.sources as usize,
        concurrency: args.concurrency as usize,
        heartbeat_rounds: args.heartbeat_rounds,
        nofile_limit: nofile,
        hub_pid: hub.pid,
        ..Default::default()
    };
    // A phase that failed because the hub died first says so, with the hub's log.
    let hubs = [&hub];
    let outcome = hub
        .supervise(within_max_duration(
            args.max_duration,
            phases(args, HubSet(&hubs), &mut rep, None),
        ))
        .await;
    let log_path = hub.log_path.clone();
    let data_dir = hub.data_dir.clone();
    hub.shutdown().await;

    let outcome = match outcome {
        Ok(enrolled) if args.floor => {
            let dir = dir.join("floor");
            within_max_duration(
                args.max_duration,
                floor::phases(args, &dir, &data_dir, &enrolled, &mut rep),
            )
            .await
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    Ok((rep, outcome, log_path))
}

/// The phases against `hubs` (one hub, or the replicas of `ha`, whose per-replica figures and
/// failover go to `ha`'s report); returns the enrolled clusters (for the floor).
async fn phases(
    args: &Args,
    hubs: HubSet<'_>,
    rep: &mut Report,
    mut ha: Option<ha::Ha<'_>>,
) -> Result<Vec<Enrolled>> {
    let n = args.sessions;
    let sources = args.sources as usize;
    let conc = args.concurrency as usize;
    let each = hubs.samples()?;
    rep.hub_baseline = sum(&each);
    if let Some(ha) = ha.as_mut() {
        ha.baseline(&each);
    }
    println!(
        "loadgen: hub RSS baseline {:.1} MiB",
        rep.hub_baseline.rss_kib as f64 / 1024.0
    );

    // --- Admin client ------------------------------------------------------------------
    let enr = if let [hub] = hubs.0 {
        let admin = admin_client(hub).await?;
        // --- Enrollment: AddCluster + Join for every session ------------------------------
        enroll(&admin, n, sources, conc).await?
    } else {
        // Every replica takes a share of the AddCluster calls and of the joins.
        let mut targets = Vec::new();
        for hub in hubs.0 {
            targets.push((admin_client(hub).await?, hub.addr.clone()));
        }
        enroll_spread(&targets, n, sources, conc).await?
    };
    rep.enroll_failed = enr.failed;
    rep.enrolled = enr.enrolled.len();
    rep.enroll_secs = enr.took.as_secs_f64();
    rep.enroll_per_sec = enr.per_sec();
    rep.errors_examples.extend(enr.errors.iter().cloned());
    enr.check(n)?;
    let each = hubs.samples()?;
    rep.hub_enrolled = sum(&each);
    if let Some(ha) = ha.as_mut() {
        ha.enrolled(&each);
    }

    // --- Handshakes: open every session -------------------------------------------------
    println!(
        "loadgen: opening {} sessions from {sources} loopback sources (concurrency {conc})",
        enr.enrolled.len()
    );
    let fleet = Arc::new(Fleet::default());
    let cpu_before = hubs.sample()?.cpu_secs;
    let etcd_before = ha.as_ref().map(|h| h.etcd_cpu());
    let mut opened = enr.open_spread(&hubs.addrs(), &fleet, None).await;
    let cpu_after = hubs.sample()?.cpu_secs;
    if let (Some(ha), Some(before)) = (ha.as_mut(), etcd_before) {
        ha.opened(before, opened.sessions.len());
    }
    rep.open_failed = opened.failed;
    rep.sessions_opened = opened.sessions.len();
    rep.handshake_secs = opened.took.as_secs_f64();
    rep.handshakes_per_sec = opened.per_sec();
    rep.open_latency = Latency::of(&mut opened.latencies);
    rep.hub_cpu_ms_per_handshake =
        (cpu_after - cpu_before) * 1000.0 / opened.sessions.len().max(1) as f64;
    rep.errors_examples.extend(opened.errors.iter().cloned());
    opened.check(rep.enroll_failed, n)?;
    for e in &opened.errors {
        eprintln!("loadgen:   open error: {e}");
    }
    let per_hub = storm::per_hub(&opened, hubs.0.len());
    let sessions = opened.sessions;

    // --- Held: the hub's count and its memory ---------------------------------------------
    let held = hubs.wait_for_gauges(&per_hub, GAUGE_TIMEOUT).await?;
    rep.sessions_held = held.iter().sum();
    rep.hub_tls_handshakes_ok = hubs
        .metric_sum("flotilla_hub_tls_handshakes_total{result=\"ok\"}")
        .await?;
    rep.hub_tls_handshakes_failed = hubs
        .metric_sum("flotilla_hub_tls_handshakes_total{result=\"failed\"}")
        .await?;
    // Let the allocator and the runtime settle after the burst before reading RSS.
    tokio::time::sleep(SETTLE).await;
    let each = hubs.samples()?;
    rep.hub_held = sum(&each);
    if let Some(ha) = ha.as_mut() {
        ha.held(&each, &held).await;
    }
    println!(
        "loadgen: hub holds {} sessions; RSS {:.1} MiB ({:.1} KiB per session over baseline), {} threads",
        rep.sessions_held,
        rep.hub_held.rss_kib as f64 / 1024.0,
        rep.hub_held
            .rss_kib
            .saturating_sub(rep.hub_baseline.rss_kib) as f64
            / rep.sessions_held.max(1) as f64,
        rep.hub_held.threads
    );

    // --- Heartbeat rounds: every session at once ------------------------------------------
    heartbeat_rounds(args, &sessions, &fleet, rep).await?;
    rep.sessions_held_end = hubs.gauges().await?.iter().sum();
    rep.sessions_alive_client = fleet.alive.load(Ordering::SeqCst);
    (rep.sessions_ended_early, rep.ended_examples) = fleet.ended_early();
    for e in &rep.ended_examples {
        eprintln!("loadgen:   session ended early: {e}");
    }
    check_ended_early(
        rep.sessions_ended_early,
        rep.open_failed + rep.enroll_failed,
        n,
        &rep.ended_examples,
    )?;

    // --- Reconnect storm: drop every session at once, reconnect every one ------------------
    let mut before_storm = Vec::new();
    let opened = storm::run(hubs, &enr, &fleet, sessions, rep, &mut before_storm).await?;
    if let Some(ha) = ha.as_mut() {
        ha.after_heartbeats(&before_storm);
    }

    // --- HA: kill -9 of one replica; its sessions move to the others -----------------------
    let (sessions, killed) = match ha.as_mut() {
        Some(ha) => {
            let moved = ha.failover(&enr, &fleet, opened).await?;
            (moved, ha.dropped())
        }
        None => (opened.sessions, 0),
    };

    // --- Close every session ----------------------------------------------------------------
    flotilla_tests::bench::fleet::close_all(sessions).await;
    let live = match &ha {
        Some(ha) => ha.live(),
        None => hubs.0.to_vec(),
    };
    let live = HubSet(&live);
    let left: usize = live
        .wait_for_gauges(&vec![0; live.0.len()], Duration::from_secs(30))
        .await?
        .iter()
        .sum();
    println!("loadgen: hub reports {left} sessions after close");
    let (ended, examples) = fleet.ended_early();
    // The sessions of a replica killed on purpose ended early by design.
    check_ended_early(
        ended.saturating_sub(killed),
        rep.open_failed + rep.enroll_failed,
        n,
        &examples,
    )?;
    Ok(enr.enrolled)
}

/// Heartbeat rounds, every session at once; fails when too many sessions ended meanwhile.
async fn heartbeat_rounds(
    args: &Args,
    sessions: &[Session],
    fleet: &Fleet,
    rep: &mut Report,
) -> Result<()> {
    let mut samples = Vec::new();
    for round in 0..args.heartbeat_rounds {
        let (reply_tx, mut reply_rx) = mpsc::channel(sessions.len().max(1));
        let t0 = Instant::now();
        let mut dispatched = 0usize;
        for s in sessions {
            if s.cmd.try_send(Cmd::Round(round, reply_tx.clone())).is_ok() {
                dispatched += 1;
            }
        }
        drop(reply_tx);
        let deadline = tokio::time::Instant::from_std(t0 + ROUND_TIMEOUT);
        let (mut ok, mut failed) = (0usize, 0usize);
        loop {
            match tokio::time::timeout_at(deadline, reply_rx.recv()).await {
                Ok(Some(Ok(d))) => {
                    ok += 1;
                    samples.push(d);
                }
                Ok(Some(Err(e))) => {
                    failed += 1;
                    if rep.errors_examples.len() < 10 {
                        rep.errors_examples
                            .push(format!("heartbeat round {round}: {e}"));
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    eprintln!("loadgen: heartbeat round {round} timed out after {ROUND_TIMEOUT:?}");
                    break;
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        rep.heartbeat_round_secs.push(secs);
        rep.heartbeat_lost += dispatched - ok;
        println!(
            "loadgen: heartbeat round {}: {ok}/{dispatched} acked in {:.0} ms ({failed} failed)",
            round + 1,
            secs * 1000.0
        );
        let (ended, examples) = fleet.ended_early();
        if too_many_failures(ended + rep.open_failed + rep.enroll_failed, args.sessions) {
            bail!(
                "{ended} sessions ended during the heartbeat rounds (more than 1% failed in total); first: {examples:?}"
            );
        }
    }
    rep.heartbeat = Latency::of(&mut samples);
    Ok(())
}
