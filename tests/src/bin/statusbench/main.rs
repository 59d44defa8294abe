//! `statusbench`: durable status ingest. Starts one `flotilla-hub` as a child process, enrolls N
//! clusters, opens N reporting sessions (real mutual TLS and session protocol, see
//! `bench::reporter`) and lets each report as fast as the hub acknowledges — a `replace` report
//! first, then one changed app per report, up to `--window` reports unacknowledged per session.
//! The hub acknowledges a report only once it is durable (group commit), so the figures are
//! durable ingest:
//!
//! * reports acknowledged per second over the measured window (after a warm-up),
//! * send-to-ack latency p50/p99/max,
//! * store transactions in the window, reports and records per transaction (the hub's
//!   `flotilla_hub_store_batch_writes` histogram), time per transaction,
//! * hub CPU in the window (cores), on the same machine as the clients.
//!
//! After the load stops, every cluster's statuses are read back through the Admin API and each
//! app must hold at least the newest report the hub acknowledged for it. `--in-process` then
//! measures the group commit alone (`Statuses::record` on a redb store, no TLS or gRPC): the
//! ceiling the store puts on ingest.
//!
//! Exit status: 0 when the run completed and met the target (≥ 50,000 reports/s), 1 when it
//! could not complete (or an acknowledged status was missing), 2 when it missed the target.
//!
//! ```text
//! cargo build --release -p flotilla-tests --bin statusbench -p flotilla-hub --bin flotilla-hub
//! target/release/statusbench --sessions 2000 --window 4 --duration 20s
//! ```

mod in_process;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use flotilla_proto::v1::ListClustersRequest;
use flotilla_tests::bench::client::source_ip;
use flotilla_tests::bench::fleet::enroll;
use flotilla_tests::bench::hub::{HubProcess, metric, metrics};
use flotilla_tests::bench::program::{
    self, hub_bin, raise_nofile, temp_dir, verdict_status, within_max_duration, write_json,
};
use flotilla_tests::bench::reporter::{Load, Progress, Reporter, Tally, app_name, seq_of};
use flotilla_tests::bench::stats::Latency;
use flotilla_tests::bench::{admin_client, prog};
use futures::StreamExt;
use tokio::sync::watch;

use crate::report::{BatchFigures, Report};

#[derive(Debug, Parser)]
#[command(
    name = "statusbench",
    about = "Durable status ingest: N reporting sessions against one flotilla-hub",
    long_about = "Starts a flotilla-hub child process, enrolls N clusters, opens N sessions that \
                  report app statuses as fast as the hub acknowledges them durable, and reports \
                  reports/s, send-to-ack latency and the hub's group-commit batch sizes.\n\n\
                  Exit status: 0 ok, 1 run failed, 2 target (≥ 50000 reports/s) missed."
)]
struct Args {
    /// Reporting sessions (one cluster each).
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Apps per cluster (each report after the first carries one).
    #[arg(long, default_value_t = 10)]
    apps: usize,
    /// Reports in flight (sent, not acknowledged) per session.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Load before the measurement starts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Length of the measured window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The hub binary [default: flotilla-hub next to this executable].
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Loopback source addresses (127.0.0.2, …) to spread connections over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=250))]
    sources: u64,
    /// Joins and handshakes in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Also measure the group commit alone, in this process (as many callers as sessions).
    #[arg(long)]
    in_process: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (hub data and log) instead of removing it.
    #[arg(long)]
    keep_dir: bool,
    /// Upper bound on the whole run; it fails when exceeded.
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    max_duration: Duration,
}

fn main() -> ExitCode {
    program::main(run)
}

async fn run(args: Args) -> Result<ExitCode> {
    if args.sessions == 0 || args.apps == 0 || args.window == 0 {
        bail!("--sessions, --apps and --window must be at least 1");
    }
    raise_nofile(args.sessions)?;
    let bin = hub_bin(args.hub_bin.as_deref())?;
    let tmp = temp_dir()?;
    let hub = HubProcess::start(&bin, tmp.path(), "30s").await?;
    hub.announce();
    let mut rep = Report {
        sessions: args.sessions,
        apps: args.apps,
        window: args.window,
        warmup_secs: args.warmup.as_secs_f64(),
        ..Default::default()
    };
    let outcome = hub
        .supervise(within_max_duration(
            args.max_duration,
            phases(&args, &hub, &mut rep),
        ))
        .await;
    let log_path = hub.log_path.clone();
    hub.shutdown().await;
    if args.keep_dir || outcome.is_err() {
        let p = tmp.keep();
        println!(
            "{}: kept {} (hub log: {})",
            prog(),
            p.display(),
            log_path.display()
        );
    }
    if outcome.is_ok() && args.in_process {
        println!("{}: measuring the group commit in process", prog());
        rep.in_process =
            Some(in_process::run(args.sessions, args.apps, args.warmup, args.duration).await?);
    }
    rep.finish();
    println!("{}", rep.table());
    write_json(args.json.as_deref(), &rep)?;
    outcome?;
    if rep.missing_acked > 0 {
        bail!(
            "{} acknowledged statuses were not in the hub's records",
            rep.missing_acked
        );
    }
    Ok(verdict_status(rep.passed()))
}

/// The figures of the hub's `/metrics` that the report compares before and after the window.
#[derive(Debug, Clone, Default)]
struct Counters {
    reports: f64,
    batches: f64,
    batch_writes: f64,
    commit_secs: f64,
    /// `flotilla_hub_store_batch_writes_bucket{le}`: (le, cumulative count).
    buckets: Vec<(f64, f64)>,
}

async fn counters(hub: &HubProcess) -> Result<Counters> {
    let text = metrics(hub).await?;
    let m = |name: &str| metric(&text, name).unwrap_or(0.0);
    let buckets = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("flotilla_hub_store_batch_writes_bucket{le=\"")?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    let cas = "flotilla_hub_store_operation_duration_seconds";
    Ok(Counters {
        reports: m("flotilla_hub_status_reports_total"),
        batches: m("flotilla_hub_store_batch_writes_count"),
        batch_writes: m("flotilla_hub_store_batch_writes_sum"),
        commit_secs: m(&format!("{cas}_sum{{op=\"compare_and_swap_many\"}}")),
        buckets,
    })
}

/// The bucket bound under which `p` percent of the window's batches fell.
fn bucket_percentile(before: &Counters, after: &Counters, p: f64) -> f64 {
    let total = after.batches - before.batches;
    if total <= 0.0 {
        return 0.0;
    }
    let want = total * p / 100.0;
    for ((le, a), (_, b)) in after.buckets.iter().zip(&before.buckets) {
        if a - b >= want {
            return *le;
        }
    }
    f64::INFINITY
}

async fn phases(args: &Args, hub: &HubProcess, rep: &mut Report) -> Result<()> {
    let admin = admin_client(hub).await?;
    let enrollment = enroll(
        &admin,
        args.sessions,
        args.sources as usize,
        args.concurrency as usize,
    )
    .await?;
    enrollment.check(args.sessions)?;
    rep.enrolled = enrollment.enrolled.len();

    println!("{}: opening {} reporting sessions", prog(), rep.enrolled);
    let started = Instant::now();
    let reporters: Vec<Result<Reporter>> = futures::stream::iter(enrollment.enrolled.iter())
        .enumerate()
        .map(|(i, who)| {
            Reporter::connect(who, &hub.addr, Some(source_ip(i, args.sources as usize)))
        })
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    let mut open = Vec::new();
    for r in reporters {
        match r {
            Ok(r) => open.push(r),
            Err(e) => rep.errors.push(format!("{e:#}")),
        }
    }
    if open.len() < args.sessions {
        bail!(
            "{} of {} sessions failed to open; first: {:?}",
            args.sessions - open.len(),
            args.sessions,
            rep.errors.first()
        );
    }
    println!(
        "{}: {} sessions open in {:.1} s; reporting (warm-up {})",
        prog(),
        open.len(),
        started.elapsed().as_secs_f64(),
        humantime::format_duration(args.warmup)
    );

    let progress = Arc::new(Progress::default());
    let (stop_tx, stop) = watch::channel(false);
    let load = Load {
        apps: args.apps,
        window: args.window,
        first_seq: 1,
    };
    let tasks: Vec<_> = open
        .into_iter()
        .map(|r| tokio::spawn(r.run(load, progress.clone(), stop.clone())))
        .collect();

    tokio::time::sleep(args.warmup).await;
    let (c0, p0) = (counters(hub).await?, hub.sample()?);
    let t0 = Instant::now();
    progress.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(args.duration).await;
    progress.measuring.store(false, Ordering::SeqCst);
    let window = t0.elapsed();
    let (c1, p1) = (counters(hub).await?, hub.sample()?);
    let _ = stop_tx.send(true);
    println!(
        "{}: measured {:.1} s; stopping",
        prog(),
        window.as_secs_f64()
    );

    let mut tallies: Vec<Tally> = Vec::with_capacity(tasks.len());
    for t in tasks {
        tallies.push(t.await?);
    }
    let mut latencies = Vec::new();
    for t in &mut tallies {
        rep.acked_measured += t.acked_measured;
        rep.acked_total += t.acked;
        latencies.append(&mut t.latencies);
        if let Some(why) = &t.ended {
            rep.ended_early += 1;
            if rep.errors.len() < 5 {
                rep.errors.push(format!("{}: {why}", t.cluster));
            }
        }
    }
    rep.window_secs = window.as_secs_f64();
    rep.latency = Latency::of(&mut latencies);
    let batches = c1.batches - c0.batches;
    rep.batches = BatchFigures {
        transactions: batches as u64,
        reports_per_transaction: (c1.reports - c0.reports) / batches.max(1.0),
        records_per_transaction: (c1.batch_writes - c0.batch_writes) / batches.max(1.0),
        records_p50: bucket_percentile(&c0, &c1, 50.0),
        records_p99: bucket_percentile(&c0, &c1, 99.0),
        commit_ms: (c1.commit_secs - c0.commit_secs) * 1000.0 / batches.max(1.0),
    };
    rep.hub_cpu_cores = (p1.cpu_secs - p0.cpu_secs) / window.as_secs_f64();
    rep.hub_rss_kib = p1.rss_kib;

    // Every acknowledged status is in the hub's records.
    let clusters = admin
        .clone()
        .list_clusters(ListClustersRequest { with_apps: true })
        .await?
        .into_inner()
        .clusters;
    for t in &tallies {
        let Some(c) = clusters.iter().find(|c| c.name == t.cluster) else {
            rep.missing_acked += t.acked_seq.iter().filter(|s| **s > 0).count();
            continue;
        };
        for (i, acked) in t.acked_seq.iter().enumerate() {
            let stored = c
                .apps
                .iter()
                .find(|a| a.name == app_name(i))
                .and_then(|a| seq_of(&a.message))
                .unwrap_or(0);
            rep.checked += 1;
            if stored < *acked || stored > t.sent_seq[i] {
                rep.missing_acked += 1;
            }
        }
    }
    Ok(())
}
