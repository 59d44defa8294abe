//! `promotebench`: how long a staged promotion takes across a large fleet.
//!
//! Starts one `flotilla-hub` as a child process, enrolls N clusters and connects them as
//! lightweight session clients (real mutual TLS and session protocol) that act like agents whose
//! applies succeed at once: fetch and verify each new bundle, ack, and report the app `applied`
//! and `healthy` at its revision. The clusters are labelled into the three stages of a pipeline
//! (1% `ring=canary`, 33% `ring=wave1`, the rest `ring=wave2`; no soak, every cluster of a stage
//! at once). Then:
//!
//! * **One app, 3 stages** (`--rounds` times): commit a change, t0, `SyncSource`, until the
//!   rollout of the new revision has `succeeded` — per stage and in total, from the rollout's own
//!   timestamps, plus when every session held the new bundle.
//! * **`--apps` apps at once** on `--apps-sessions` clusters: one commit that changes every app,
//!   until every app's rollout has succeeded.
//!
//! **HA mode, `--replicas N`** (N > 1; default 1, the single hub above): the same run does all
//! of the above on one hub on its embedded redb store first, then the same fleet and scenarios
//! against N hub replicas sharing a 3-member etcd (real `etcd` members on free loopback ports,
//! started by the program; one operator CA for every replica, each with its own data dir, log,
//! `--replica-name` and every replica's `--endpoint`). Clusters are enrolled, connected and
//! labelled through the replicas in turn (each replica's gauge counts its own sessions; held =
//! their sum); the scenarios' admin calls and source syncs go to a replica that does not lead
//! ([`ha`]); the hub's CPU and memory are the replicas' summed, each replica's and the etcd
//! members' given beside them. The report prints both runs' tables and one of the figures side
//! by side with the ratio HA / redb (times, CPU, peak memory: the largest replica's and the
//! replicas' summed). At the end, before the replicas stop, every key under the run's etcd
//! prefix is listed through the hub's own `EtcdStore::list` and its key and value bytes summed
//! by key family (`/clusters/`, `/rollouts/`, `/status/`, `/status-log/`, `/audit/`,
//! `/sources/`, `/tokens/`, …): bytes per cluster for the families that grow with the fleet, per
//! app for `/rollouts/`, the largest value (against etcd's default 1.5 MiB request limit), the
//! total and etcd's database size; and the largest store batch (against `--max-txn-ops 128`).
//! `--json` then holds both runs and the HA figures (`{"redb": …, "ha": …, "replicas": …}`).
//! Needs `etcd` on the PATH (or `FLOTILLA_ETCD_BIN`); `--otlp` is for one hub only.
//!
//! All traffic stays on loopback; every wait is bounded (`--timeout` per round, `--max-duration`
//! for the run, again for the replicas' run in HA mode).
//!
//! Exit status: 0 when the run completed (and met the targets where they are judged), 1 when
//! it could not complete, 2 when it completed but missed a target. The targets, judged at
//! 10,000 sessions: the single-app promotion succeeds within 10 s of the sync (median of
//! rounds); 100 apps promoted at once all succeed within 60 s (median of the commits after the
//! first); the hub's peak RSS with 100 apps stays within 1 GiB. In HA mode the single hub's
//! figures are judged; the replicas' are compared with them.
//!
//! ```text
//! cargo build --release -p flotilla-hub --bin flotilla-hub -p flotilla-tests --bin promotebench
//! cargo run --release -p flotilla-tests --bin promotebench -- --sessions 10000
//! target/release/promotebench --replicas 3 --sessions 10000 --apps 100 --apps-sessions 10000
//! ```

mod agent;
mod ha;
mod measure;
mod repo;
mod report;
mod scenarios;
mod setup;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use flotilla_tests::bench::hub::HubProcess;
use flotilla_tests::bench::otlp::SpanSink;
use flotilla_tests::bench::program::{
    self, hub_bin, keep_or_remove, raise_nofile, temp_dir, verdict_status, within_max_duration,
    write_json,
};
use flotilla_tests::bench::replicas::HubSet;
use flotilla_tests::bench::{admin_client, prog};

use crate::measure::{Backend, Ctx};
use crate::report::Report;
use crate::scenarios::ScenarioReport;

/// Admin API answers (ListClusters, GetRollout) grow with the fleet.
const ADMIN_MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "promotebench",
    about = "Time to promote a revision through a 3-stage pipeline across N sessions; N apps at once",
    long_about = "Starts a flotilla-hub child process with N session clients that take bundles \
                  and report them applied and healthy, labels the clusters into three stages \
                  (1% canary, 33% wave1, 66% wave2; no soak), and measures commit synced → \
                  rollout succeeded for one app (per stage and in total), then for many apps \
                  changed by one commit. With --replicas N, the same against N hub replicas \
                  sharing a 3-member etcd after the single hub, figures as ratios HA / redb, \
                  and the bytes etcd holds by key family.\n\nExit status: 0 ok, 1 run failed, 2 a target missed \
                  (at 10,000 sessions: one app promoted in ≤ 10 s, median of rounds; 100 apps in \
                  ≤ 60 s; hub peak RSS with 100 apps ≤ 1 GiB)."
)]
struct Args {
    /// Concurrent sessions (clusters) in the fleet.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Measured commits of the single-app scenario (after its first revision).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Apps of the many-app scenario, all changed by one commit.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    apps: u64,
    /// Clusters the many-app scenario runs on: the first ones of the fleet (at most --sessions).
    #[arg(long, default_value_t = 1000)]
    apps_sessions: usize,
    /// Measured commits of the many-app scenario (after its first revision).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    apps_rounds: u32,
    /// Skip the single-app scenario.
    #[arg(long)]
    skip_single: bool,
    /// Skip the many-app scenario.
    #[arg(long)]
    skip_many: bool,
    /// Longest wait for one rollout round (the first revision included) before the run fails.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Sessions take new desired states without fetching bundles (ack and report only).
    #[arg(long)]
    no_fetch: bool,
    /// Number of loopback source addresses (127.0.0.2, 127.0.0.3, …) to spread connections over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=250))]
    sources: u64,
    /// Joins, handshakes and label changes in flight at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// The hub binary [default: flotilla-hub next to this executable].
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// The hub's --heartbeat-interval.
    #[arg(long, default_value = "30s")]
    hub_heartbeat_interval: String,
    /// Export the hub's traces (OTLP/gRPC) to a receiver in this program that counts the spans,
    /// to measure what tracing costs the hub.
    #[arg(long)]
    otlp: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (repositories, hub data and log) instead of removing it.
    #[arg(long)]
    keep_dir: bool,
    /// Upper bound on the whole run; it fails when exceeded.
    #[arg(long, default_value = "3h", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Hub replicas (HA mode). 1: one hub on its embedded redb store, as without this flag.
    /// More: the same run on one hub on redb first, then on this many replicas sharing a
    /// 3-member etcd (sessions round robin over them), each figure printed as HA / redb, and
    /// the bytes etcd holds under the run's prefix by key family.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    replicas: u64,
}

fn main() -> ExitCode {
    program::main(run)
}

fn validate(args: &Args) -> Result<PathBuf> {
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    if args.skip_single && args.skip_many {
        bail!("--skip-single and --skip-many leave nothing to measure");
    }
    if args.timeout.is_zero() {
        bail!("--timeout must be positive");
    }
    if args.apps_sessions == 0 && !args.skip_many {
        bail!("--apps-sessions must be at least 1");
    }
    if args.otlp && args.replicas > 1 {
        bail!("--otlp measures one hub's traces; it does not go with --replicas");
    }
    hub_bin(args.hub_bin.as_deref())
}

async fn run(args: Args) -> Result<ExitCode> {
    let hub_bin = validate(&args)?;
    raise_nofile(args.sessions)?;
    let tmp = temp_dir()?;
    let dir = tmp.path().to_path_buf();
    println!("promotebench: working in {}", dir.display());
    if args.replicas > 1 {
        return ha::run(&args, &hub_bin, tmp).await;
    }
    let (mut rep, outcome) = one_hub(&args, &hub_bin, &dir).await?;
    keep_or_remove(tmp, args.keep_dir || outcome.is_err());

    rep.finish();
    if outcome.is_err() {
        rep.verdict = "INCOMPLETE (the run failed; partial results)".into();
    }
    for (title, table) in rep.tables() {
        println!("\n{title}\n{table}");
    }
    println!(
        "\n{}: wall time {:.0} s (setup and every scenario)",
        prog(),
        rep.wall_secs
    );
    write_json(args.json.as_deref(), &rep)?;
    outcome?;
    Ok(verdict_status(rep.passed()))
}

/// One hub on its embedded redb store (data and log in `dir/hub`, the repositories in `dir`):
/// the fleet and every scenario; the report and how the run ended.
async fn one_hub(args: &Args, hub_bin: &Path, dir: &Path) -> Result<(Report, Result<()>)> {
    std::fs::create_dir_all(dir.join("hub"))?;
    let started = Instant::now();
    let sink = match args.otlp {
        true => Some(SpanSink::start().await?),
        false => None,
    };
    let extra: Vec<String> = sink
        .iter()
        .flat_map(|s| ["--otlp-endpoint".to_string(), s.endpoint()])
        .collect();
    let hub = HubProcess::start_with(
        hub_bin,
        &dir.join("hub"),
        &args.hub_heartbeat_interval,
        &extra,
    )
    .await?;
    hub.announce();
    let mut rep = Report::default();
    let hubs = [&hub];
    let backend = Backend::Redb(&hub);
    let outcome = hub
        .unless_died(within_max_duration(
            args.max_duration,
            measure(args, HubSet(&hubs), &backend, 0, dir, &mut rep),
        ))
        .await;
    if let Ok(s) = hub.sample() {
        rep.hub_end = s;
    }
    rep.wall_secs = started.elapsed().as_secs_f64();
    hub.shutdown().await;
    // The hub flushes its spans when it stops.
    rep.spans = sink.map(|s| s.counts());
    Ok((rep, outcome))
}

/// Brings the fleet up on `hubs` and runs the scenarios; results go to `rep` as they come. The
/// admin calls of the scenarios (sources, syncs, rollout reads) go to `hubs.0[admin_at]` (with
/// replicas, one that does not lead: [`ha::trigger_replica`]).
async fn measure(
    args: &Args,
    hubs: HubSet<'_>,
    backend: &Backend<'_>,
    admin_at: usize,
    dir: &Path,
    rep: &mut Report,
) -> Result<()> {
    let mut admins = Vec::new();
    for hub in hubs.0 {
        admins.push(
            admin_client(hub)
                .await?
                .max_decoding_message_size(ADMIN_MAX_MESSAGE),
        );
    }
    let opts = setup::Options {
        sessions: args.sessions,
        apps_sessions: args.apps_sessions.min(args.sessions),
        sources: args.sources as usize,
        concurrency: args.concurrency as usize,
        fetch: !args.no_fetch,
    };
    let setup::Setup {
        sessions,
        fleet,
        events,
        counters,
        scopes,
    } = setup::bring_up(&opts, hubs, &admins, &mut rep.setup).await?;
    let admin = admins[admin_at].clone();
    let mut ctx = Ctx {
        hubs,
        backend,
        admin,
        events,
        counters,
        fleet: &fleet,
        timeout: args.timeout,
        failures: 0,
        failure_examples: Vec::new(),
    };
    let result = scenarios_in_turn(args, &mut ctx, &scopes, dir, rep).await;
    rep.bundle_failures = ctx.failures;
    rep.failure_examples = ctx.failure_examples.clone();
    (rep.sessions_ended_early, rep.ended_examples) = fleet.ended_early();
    result?;

    flotilla_tests::bench::fleet::close_all(sessions).await;
    Ok(())
}

async fn scenarios_in_turn(
    args: &Args,
    ctx: &mut Ctx<'_>,
    scopes: &setup::Scopes,
    dir: &Path,
    rep: &mut Report,
) -> Result<()> {
    if !args.skip_single {
        scenarios::single(
            ctx,
            scopes,
            dir,
            args.rounds,
            rep.single.insert(ScenarioReport::default()),
        )
        .await?;
    }
    if !args.skip_many {
        scenarios::many(
            ctx,
            scopes,
            dir,
            args.apps as usize,
            args.apps_rounds,
            !args.skip_single,
            rep.many.insert(ScenarioReport::default()),
        )
        .await?;
    }
    Ok(())
}
