//! `loadgen`: the session load generator. Starts one `flotilla-hub` as a child process, enrolls
//! N clusters through the real Admin API and `Registration.Join`, then opens N lightweight
//! session clients (real mutual TLS, real `AgentSession.Connect`, no reconcile) spread over
//! several loopback source addresses, holds them, and measures:
//!
//! * sessions held (the hub's own `flotilla_hub_sessions_connected` gauge),
//! * hub RSS per held session (from `/proc/<pid>/status`),
//! * full mTLS handshakes per second (dial → Welcome, no resumption),
//! * heartbeat round-trip p50/p99/max with every session firing at once.
//!
//! All traffic stays on loopback; every loop is bounded in count and time (`--max-duration`).
//!
//! Exit status: 0 when the run completed (and met the target where it is judged), 1 when it
//! could not complete (hub died, more than 1% of sessions failed, timeout), 2 when it completed
//! but missed the target of ≤ 64 KiB hub RSS per session at ≥ 10,000 sessions.
//!
//! ```text
//! cargo build --release -p flotilla-tests --bin loadgen -p flotilla-hub --bin flotilla-hub
//! cargo run --release -p flotilla-tests --bin loadgen -- --sessions 10000
//! ```

mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use flotilla_tests::bench::client::{Cmd, Fleet};
use flotilla_tests::bench::fleet::{enroll, open_all};
use flotilla_tests::bench::hub::{HubProcess, metric, metrics, wait_for_gauge};
use flotilla_tests::bench::stats::Latency;
use flotilla_tests::bench::{admin_client, default_hub_bin, raise_nofile};
use tokio::sync::mpsc;

use crate::report::Report;

/// How long the hub may take to count every opened session.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one heartbeat round may take before missing answers count as lost.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest share of sessions that may fail before the run is declared failed.
const MAX_FAILURE_RATIO: f64 = 0.01;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Session load generator: N mTLS session clients against one flotilla-hub",
    long_about = "Starts a flotilla-hub child process, enrolls N clusters, opens N lightweight \
                  session clients (real mutual TLS and session protocol, no reconcile) spread \
                  over loopback source addresses, and reports sessions held, hub RSS per session, \
                  handshakes/s and heartbeat round trips.\n\nExit status: 0 ok, 1 run failed, \
                  2 target (≤ 64 KiB hub RSS per session at ≥ 10000 sessions) missed."
)]
struct Args {
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    let nofile = raise_nofile()?;
    println!("loadgen: RLIMIT_NOFILE soft limit {nofile} (hub inherits it)");
    let need = args.sessions as u64 + 256;
    if nofile < need {
        bail!(
            "{} sessions need about {need} file descriptors in each process, but the limit is \
             {nofile}; raise the hard limit (ulimit -Hn) or use fewer sessions",
            args.sessions
        );
    }
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let bin = match &args.hub_bin {
        Some(p) => p.clone(),
        None => default_hub_bin()?,
    };
    if !bin.is_file() {
        bail!(
            "hub binary {} not found; build it with `cargo build --release -p flotilla-hub --bin flotilla-hub` or pass --hub-bin",
            bin.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-loadgen-")
        .tempdir()
        .context("creating the temporary directory")?;
    let hub = HubProcess::start(&bin, tmp.path(), &args.hub_heartbeat_interval).await?;
    println!(
        "loadgen: hub pid {} serving {} (HTTP {}), data and log in {}",
        hub.pid,
        hub.addr,
        hub.http,
        tmp.path().display()
    );

    let mut rep = Report {
        sessions_requested: args.sessions,
        sources: args.sources as usize,
        concurrency: args.concurrency as usize,
        heartbeat_rounds: args.heartbeat_rounds,
        nofile_limit: nofile,
        hub_pid: hub.pid,
        ..Default::default()
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(args.max_duration, phases(&args, &hub, &mut rep)) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow!("the run exceeded --max-duration {}", humantime::format_duration(args.max_duration))),
        },
        why = hub.died() => Err(anyhow!(
            "the hub exited unexpectedly ({why}); last lines of {}:\n{}",
            hub.log_path.display(),
            hub.log_tail(15)
        )),
    };

    // A phase that failed because the hub died first says so, with the hub's log.
    let outcome = match (outcome, hub.exit_status()) {
        (Err(e), Some(why)) if !format!("{e}").contains("exited unexpectedly") => {
            Err(e.context(format!(
                "the hub exited unexpectedly ({why}); last lines of {}:\n{}",
                hub.log_path.display(),
                hub.log_tail(15)
            )))
        }
        (o, _) => o,
    };
    println!("loadgen: stopping the hub (SIGTERM)");
    let log_path = hub.log_path.clone();
    match hub.stop(Duration::from_secs(30)).await {
        Ok(st) if st.success() => println!("loadgen: hub exited cleanly"),
        Ok(st) => eprintln!("loadgen: hub exited with {st}"),
        Err(e) => eprintln!("loadgen: stopping the hub: {e:#}"),
    }

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
            write_json(&args, &rep)?;
        }
        return Err(e);
    }
    rep.finish();
    println!("{}", rep.table());
    write_json(&args, &rep)?;
    Ok(if rep.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Writes the report as JSON when `--json` was given.
fn write_json(args: &Args, rep: &Report) -> Result<()> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(rep)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("loadgen: wrote {}", path.display());
    }
    Ok(())
}

fn too_many_failures(failed: usize, of: usize) -> bool {
    failed as f64 > of as f64 * MAX_FAILURE_RATIO
}

async fn phases(args: &Args, hub: &HubProcess, rep: &mut Report) -> Result<()> {
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
    println!("loadgen: enrolling {n} clusters (concurrency {conc})");
    let enr = enroll(&admin, n, sources, conc).await?;
    let enrolled = enr.enrolled;
    let errors = enr.errors;
    rep.enroll_failed = enr.failed;
    rep.enrolled = enrolled.len();
    rep.enroll_secs = enr.took.as_secs_f64();
    rep.enroll_per_sec = enrolled.len() as f64 / enr.took.as_secs_f64();
    println!(
        "loadgen: enrolled {} in {:.1} s ({:.0} joins/s), {} failed",
        rep.enrolled, rep.enroll_secs, rep.enroll_per_sec, rep.enroll_failed
    );
    rep.errors_examples.extend(errors.iter().cloned());
    if too_many_failures(rep.enroll_failed, n) {
        bail!(
            "{} of {n} enrollments failed (more than 1%); first errors:\n  {}",
            rep.enroll_failed,
            errors.join("\n  ")
        );
    }
    rep.hub_enrolled = hub.sample()?;

    // --- Handshakes: open every session -------------------------------------------------
    println!(
        "loadgen: opening {} sessions from {sources} loopback sources (concurrency {conc})",
        enrolled.len()
    );
    let fleet = Arc::new(Fleet::default());
    let cpu_before = hub.sample()?.cpu_secs;
    let opened = open_all(&enrolled, hub.addr.as_str(), sources, conc, &fleet, None).await;
    let sessions = opened.sessions;
    let mut open_latencies = opened.latencies;
    let open_errors = opened.errors;
    rep.open_failed = opened.failed;
    let took = opened.took;
    let cpu_after = hub.sample()?.cpu_secs;
    rep.sessions_opened = sessions.len();
    rep.handshake_secs = took.as_secs_f64();
    rep.handshakes_per_sec = sessions.len() as f64 / took.as_secs_f64();
    rep.open_latency = Latency::of(&mut open_latencies);
    rep.hub_cpu_ms_per_handshake = (cpu_after - cpu_before) * 1000.0 / sessions.len().max(1) as f64;
    drop(enrolled);
    println!(
        "loadgen: opened {} sessions in {:.1} s ({:.0} handshakes/s), {} failed",
        rep.sessions_opened, rep.handshake_secs, rep.handshakes_per_sec, rep.open_failed
    );
    rep.errors_examples.extend(open_errors.iter().cloned());
    if too_many_failures(rep.open_failed + rep.enroll_failed, n) {
        bail!(
            "{} of {n} sessions failed to open (more than 1%); first errors:\n  {}",
            rep.open_failed,
            open_errors.join("\n  ")
        );
    }
    for e in &open_errors {
        eprintln!("loadgen:   open error: {e}");
    }

    // --- Held: the hub's count and its memory ---------------------------------------------
    rep.sessions_held = wait_for_gauge(hub, sessions.len(), GAUGE_TIMEOUT).await?;
    let text = metrics(hub).await?;
    rep.hub_tls_handshakes_ok = metric(&text, "flotilla_hub_tls_handshakes_total{result=\"ok\"}");
    rep.hub_tls_handshakes_failed = metric(
        &text,
        "flotilla_hub_tls_handshakes_total{result=\"failed\"}",
    );
    // Let the allocator and the runtime settle after the burst before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rep.hub_held = hub.sample()?;
    println!(
        "loadgen: hub holds {} sessions; RSS {:.1} MiB ({:.1} KiB per session over baseline)",
        rep.sessions_held,
        rep.hub_held.rss_kib as f64 / 1024.0,
        rep.hub_held
            .rss_kib
            .saturating_sub(rep.hub_baseline.rss_kib) as f64
            / rep.sessions_held.max(1) as f64
    );

    // --- Heartbeat rounds: every session at once ------------------------------------------
    let mut samples = Vec::new();
    for round in 0..args.heartbeat_rounds {
        let (reply_tx, mut reply_rx) = mpsc::channel(sessions.len().max(1));
        let t0 = Instant::now();
        let mut dispatched = 0usize;
        for s in &sessions {
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
        let ended = fleet.ended_count.load(Ordering::SeqCst);
        if too_many_failures(ended + rep.open_failed + rep.enroll_failed, n) {
            bail!(
                "{ended} sessions ended during the heartbeat rounds (more than 1% failed in total); first: {:?}",
                fleet.ended.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
    }
    rep.heartbeat = Latency::of(&mut samples);
    if args.heartbeat_rounds > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rep.hub_after_heartbeats = Some(hub.sample()?);
    }
    let text = metrics(hub).await?;
    rep.sessions_held_end =
        metric(&text, "flotilla_hub_sessions_connected").unwrap_or(0.0) as usize;
    rep.sessions_alive_client = fleet.alive.load(Ordering::SeqCst);
    rep.sessions_ended_early = fleet.ended_count.load(Ordering::SeqCst);
    rep.ended_examples = fleet
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for e in &rep.ended_examples {
        eprintln!("loadgen:   session ended early: {e}");
    }

    // --- Close every session ----------------------------------------------------------------
    flotilla_tests::bench::fleet::close_all(sessions).await;
    let left = wait_for_gauge(hub, 0, Duration::from_secs(30)).await?;
    println!("loadgen: hub reports {left} sessions after close");
    if too_many_failures(
        rep.sessions_ended_early + rep.open_failed + rep.enroll_failed,
        n,
    ) {
        bail!(
            "{} sessions ended early (more than 1% failed in total); first: {:?}",
            rep.sessions_ended_early,
            rep.ended_examples
        );
    }
    Ok(())
}
