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
//! All traffic stays on loopback; every loop is bounded in count and time (`--max-duration`).
//!
//! Exit status: 0 when the run completed (and met the targets where they are judged), 1 when it
//! could not complete (hub died, more than 1% of sessions failed, timeout), 2 when it completed
//! but missed a target at ≥ 10,000 sessions (see [`report`]).
//!
//! ```text
//! cargo build --release -p flotilla-tests --bin loadgen -p flotilla-hub --bin flotilla-hub
//! cargo run --release -p flotilla-tests --bin loadgen -- --sessions 10000 --floor
//! ```

mod floor;
mod report;
mod storm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use flotilla_tests::bench::admin_client;
use flotilla_tests::bench::client::{Cmd, Enrolled, Fleet, Session};
use flotilla_tests::bench::fleet::{check_ended_early, enroll, too_many_failures};
use flotilla_tests::bench::hub::{HubProcess, metric, metrics, wait_for_gauge};
use flotilla_tests::bench::program::{
    self, hub_bin, raise_nofile, temp_dir, verdict_status, within_max_duration, write_json,
};
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
                  against a bare tokio-rustls + h2 server for comparison.\n\nExit status: 0 ok, \
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
    let hub = HubProcess::start(&bin, tmp.path(), &args.hub_heartbeat_interval).await?;
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
    let outcome = hub
        .supervise(within_max_duration(
            args.max_duration,
            phases(&args, &hub, &mut rep),
        ))
        .await;
    let log_path = hub.log_path.clone();
    let data_dir = hub.data_dir.clone();
    hub.shutdown().await;

    let outcome = match outcome {
        Ok(enrolled) if args.floor => {
            let dir = tmp.path().join("floor");
            within_max_duration(
                args.max_duration,
                floor::phases(&args, &dir, &data_dir, &enrolled, &mut rep),
            )
            .await
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
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

/// The hub's phases; returns the enrolled clusters (for the floor).
async fn phases(args: &Args, hub: &HubProcess, rep: &mut Report) -> Result<Vec<Enrolled>> {
    let n = args.sessions;
    let sources = args.sources as usize;
    let conc = args.concurrency as usize;
    rep.hub_baseline = hub.sample()?;
    println!(
        "loadgen: hub RSS baseline {:.1} MiB",
        rep.hub_baseline.rss_kib as f64 / 1024.0
    );

    // --- Admin client ------------------------------------------------------------------
    let admin = admin_client(hub).await?;

    // --- Enrollment: AddCluster + Join for every session ----------------------------------
    let enr = enroll(&admin, n, sources, conc).await?;
    rep.enroll_failed = enr.failed;
    rep.enrolled = enr.enrolled.len();
    rep.enroll_secs = enr.took.as_secs_f64();
    rep.enroll_per_sec = enr.per_sec();
    rep.errors_examples.extend(enr.errors.iter().cloned());
    enr.check(n)?;
    rep.hub_enrolled = hub.sample()?;

    // --- Handshakes: open every session -------------------------------------------------
    println!(
        "loadgen: opening {} sessions from {sources} loopback sources (concurrency {conc})",
        enr.enrolled.len()
    );
    let fleet = Arc::new(Fleet::default());
    let cpu_before = hub.sample()?.cpu_secs;
    let mut opened = enr.open_all(hub.addr.as_str(), &fleet, None).await;
    let cpu_after = hub.sample()?.cpu_secs;
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
    let sessions = opened.sessions;

    // --- Held: the hub's count and its memory ---------------------------------------------
    rep.sessions_held = wait_for_gauge(hub, sessions.len(), GAUGE_TIMEOUT).await?;
    let text = metrics(hub).await?;
    rep.hub_tls_handshakes_ok = metric(&text, "flotilla_hub_tls_handshakes_total{result=\"ok\"}");
    rep.hub_tls_handshakes_failed = metric(
        &text,
        "flotilla_hub_tls_handshakes_total{result=\"failed\"}",
    );
    // Let the allocator and the runtime settle after the burst before reading RSS.
    tokio::time::sleep(SETTLE).await;
    rep.hub_held = hub.sample()?;
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
    let text = metrics(hub).await?;
    rep.sessions_held_end =
        metric(&text, "flotilla_hub_sessions_connected").unwrap_or(0.0) as usize;
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
    let sessions = storm::run(hub, &enr, &fleet, sessions, rep).await?;

    // --- Close every session ----------------------------------------------------------------
    flotilla_tests::bench::fleet::close_all(sessions).await;
    let left = wait_for_gauge(hub, 0, Duration::from_secs(30)).await?;
    println!("loadgen: hub reports {left} sessions after close");
    let (ended, examples) = fleet.ended_early();
    check_ended_early(ended, rep.open_failed + rep.enroll_failed, n, &examples)?;
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
