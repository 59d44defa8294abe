//! `deliverybench`: how fast a commit reaches the fleet, and what it costs on the hub side.
//!
//! * **Delivery latency.** Starts one `flotilla-hub` as a child process, enrolls N clusters and
//!   opens N lightweight session clients (real mutual TLS and session protocol) that take every
//!   `DesiredState` like an agent: fetch each bundle with `FetchBundle`, check the sha256 of its
//!   gunzipped content against the digest, `Ack`, report "applied". A source is added over the
//!   Admin API; then rounds of commit → signed GitHub-style webhook → every session holds the new
//!   digest, and rounds of commit → polling fetch → every session holds it.
//! * **Delivery across hub replicas** (`--replicas N`, N ≥ 3; default 1: only the above). After
//!   the single hub's rounds, the same rounds against N `flotilla-hub` replicas sharing a
//!   3-member etcd the program starts (the installed `etcd`, or `$FLOTILLA_ETCD_BIN`) under one
//!   operator CA, each with its own data dir and `--replica-name hub-<i>`. Once exactly one
//!   replica reports `flotilla_hub_leader 1`, every session connects to one follower, and the
//!   source is added and the webhooks are posted through the other follower, so that each
//!   change crosses replicas twice: the webhook replica passes the request on to the leader
//!   through the store, the leader syncs and writes the rollout record, the session replica
//!   follows it and wakes its sessions. A second table puts the single hub and the replicas
//!   side by side (p50/p99 and their HA/single ratio), with the hops from the leader's log.
//! * **Render throughput.** In-process: `load_config` + `AppManifests::load` + `render` of a
//!   repository of N Kubernetes objects for one cluster, over a directory and over a git commit.
//! * **Rendering Kustomize and Helm apps** (`--phases kustomize`, not in the default phases).
//!   In-process, the way a sync renders a fleet: a Kustomize base with 3 overlays chosen per
//!   cluster by a label, the same as a Helm chart with 3 values files, and as plain manifests
//!   with 3 Flotilla overlays (the floor), over `--kustomize-clusters` clusters (1,000 and
//!   10,000): a cold sync (empty render and bundle caches: 3 tool runs, 3 bundles) and a warm one
//!   (a commit changing only another app: no tool run), with the real `kubectl` and `helm`
//!   (`--kustomize-bin`, `--helm-bin`; default: where `.ci/tools` puts them).
//! * **gix against `git fetch`.** On the same repository (with history): an initial fetch into a
//!   fresh bare repository and an incremental fetch after one new commit, side by side.
//!
//! All traffic stays on loopback; every loop is bounded in count and time (`--max-duration`,
//! `--round-timeout`).
//!
//! Exit status: 0 when the run completed (and met the target where it is judged), 1 when it
//! could not complete (a hub replica exiting included; the end of every replica's log is
//! printed), 2 when it completed but missed the target: after a webhook, every connected session
//! holds the new bundle digest within 1 s (p99 of rounds) at ≥ 1000 sessions. With `--replicas`
//! the target is judged for the single hub and for the replicas alike (the change made on one
//! replica reaching sessions held by another); missing it in either gives 2.
//!
//! ```text
//! cargo build --release -p flotilla-tests --bin deliverybench -p flotilla-hub --bin flotilla-hub
//! cargo run --release -p flotilla-tests --bin deliverybench -- --sessions 1000
//! # Kustomize, Helm and plain apps with 3 variants over 1,000 and 10,000 clusters:
//! cargo run --release -p flotilla-tests --bin deliverybench -- --phases kustomize
//! # single hub and 3 replicas on etcd, side by side (delivery only):
//! cargo run --release -p flotilla-tests --bin deliverybench -- --phases delivery \
//!     --replicas 3 --sessions 1000
//! ```

mod delivery;
mod gitfetch;
mod ha;
mod kustomize;
mod render;
mod repo;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use flotilla_tests::bench::program::{
    self, hub_bin, keep_or_remove, raise_nofile, temp_dir, verdict_status, within_max_duration,
    write_json,
};

use crate::delivery::DeliveryReport;
use crate::ha::HaReport;
use crate::repo::LargeShape;
use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Commit-to-delivery latency through a hub child and N session clients.
    Delivery,
    /// Render throughput of the large repository.
    Render,
    /// gix against the git CLI on the large repository.
    Fetch,
    /// What rendering a Kustomize app (and a Helm chart, and the plain floor) with 3 variants
    /// costs over a fleet, cold and warm, with the real tools.
    Kustomize,
}

#[derive(Debug, Parser)]
#[command(
    name = "deliverybench",
    about = "Commit-to-delivery latency (webhook and polling), render throughput, gix vs git fetch",
    long_about = "Starts a flotilla-hub child process with N session clients that fetch and \
                  verify bundles like agents, and measures commit → every session holds the new \
                  bundle digest through a signed webhook and through polling; renders a large \
                  repository in-process (objects/s); and times gix against the git CLI fetching \
                  that repository. With --replicas N (N ≥ 3) the delivery rounds also run \
                  against N hub replicas on a 3-member etcd, the sessions on one follower and \
                  the webhooks on another, side by side with the single hub.\n\nExit status: 0 \
                  ok, 1 run failed, 2 target (webhook → every session holds the new digest in \
                  ≤ 1 s p99 at ≥ 1000 sessions) missed by the single hub or the replicas."
)]
struct Args {
    /// What to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "delivery,render,fetch"
    )]
    phases: Vec<Phase>,

    /// Number of concurrent sessions (clusters) for the delivery rounds.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Webhook rounds (commit, signed POST, wait until every session holds the new digest).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Polling rounds (commit, wait for the next poll and every session).
    #[arg(long, default_value_t = 5)]
    poll_rounds: u32,
    /// The polling source's interval (whole seconds, ≥ 1 s).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Longest wait for every session to hold a new revision before the run fails.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    round_timeout: Duration,
    /// Name the cluster in a manifest, so that every cluster gets its own bundle.
    #[arg(long)]
    per_cluster_bundles: bool,
    /// Number of loopback source addresses (127.0.0.2, 127.0.0.3, …) to spread connections over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=250))]
    sources: u64,
    /// Joins and handshakes in flight at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// The hub binary [default: flotilla-hub next to this executable].
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// The hub's --heartbeat-interval.
    #[arg(long, default_value = "30s")]
    hub_heartbeat_interval: String,
    /// Also run the delivery rounds against this many hub replicas on a 3-member etcd (1: only
    /// the single hub; otherwise at least 3: a leader and two followers, one holding the
    /// sessions, the other taking the webhooks).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    replicas: u64,

    /// Kubernetes objects in the large repository (render and fetch).
    #[arg(long, default_value_t = 5000)]
    objects: usize,
    /// Apps the objects are spread over (each with vars and an overlay with a patch).
    #[arg(long, default_value_t = 50)]
    apps: usize,
    /// Documents per multi-document manifest file.
    #[arg(long, default_value_t = 10)]
    docs_per_file: usize,
    /// Commits of history after the first one (each changes one file).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=5000))]
    history: u64,
    /// Timed render passes per tree.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    render_reps: u64,
    /// Fleet sizes of the kustomize phase (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    kustomize_clusters: Vec<usize>,
    /// Timed syncs of each app per fleet size, cold and warm alike (kustomize phase).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    kustomize_reps: u64,
    /// `kubectl` (kustomize built in) for the kustomize phase [default: $FLOTILLA_TOOLS_DIR or
    /// ~/.cache/flotilla/tools, where `.ci/tools` installs it].
    #[arg(long)]
    kustomize_bin: Option<PathBuf>,
    /// `helm` for the kustomize phase [default: beside the default kubectl].
    #[arg(long)]
    helm_bin: Option<PathBuf>,
    /// Leave the Helm chart out of the kustomize phase.
    #[arg(long)]
    no_helm: bool,
    /// Repetitions of each fetch measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    fetch_reps: u64,

    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (repositories, hub data and log) instead of removing it.
    #[arg(long)]
    keep_dir: bool,
    /// Upper bound on the whole run; it fails when exceeded.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    max_duration: Duration,
}

fn main() -> ExitCode {
    program::main(run)
}

fn validate(args: &Args) -> Result<()> {
    if args.phases.is_empty() {
        bail!("--phases names nothing to measure");
    }
    if args.phases.contains(&Phase::Delivery) {
        if args.sessions == 0 {
            bail!("--sessions must be at least 1");
        }
        if args.poll_interval < Duration::from_secs(1) || args.poll_interval.subsec_nanos() != 0 {
            bail!("--poll-interval must be whole seconds, at least 1s (sources poll in seconds)");
        }
        if args.round_timeout.is_zero() {
            bail!("--round-timeout must be positive");
        }
    }
    if args.replicas > 1 {
        if !args.phases.contains(&Phase::Delivery) {
            bail!("--replicas measures the delivery phase; add it to --phases");
        }
        if args.replicas < 3 {
            bail!(
                "--replicas must be 1 or at least 3 (a leader, a follower holding the sessions \
                 and another taking the webhooks)"
            );
        }
    }
    if args.phases.contains(&Phase::Kustomize)
        && (args.kustomize_clusters.is_empty() || args.kustomize_clusters.contains(&0))
    {
        bail!("--kustomize-clusters must name fleet sizes of at least 1 cluster");
    }
    if (args.phases.contains(&Phase::Render) || args.phases.contains(&Phase::Fetch))
        && (args.apps == 0 || args.objects < args.apps || args.docs_per_file == 0)
    {
        bail!("the large repository needs --objects ≥ --apps ≥ 1 and --docs-per-file ≥ 1");
    }
    Ok(())
}

async fn run(args: Args) -> Result<ExitCode> {
    validate(&args)?;
    let delivery_opts = if args.phases.contains(&Phase::Delivery) {
        raise_nofile(args.sessions)?;
        let hub_bin = hub_bin(args.hub_bin.as_deref())?;
        Some(delivery::Options {
            sessions: args.sessions,
            sources: args.sources as usize,
            concurrency: args.concurrency as usize,
            rounds: args.rounds,
            poll_rounds: args.poll_rounds,
            poll_interval: args.poll_interval,
            round_timeout: args.round_timeout,
            per_cluster_bundles: args.per_cluster_bundles,
            hub_bin,
            hub_heartbeat_interval: args.hub_heartbeat_interval.clone(),
        })
    } else {
        None
    };
    let tmp = temp_dir()?;
    println!("deliverybench: working in {}", tmp.path().display());

    let mut rep = Report::default();
    let outcome = within_max_duration(
        args.max_duration,
        measure(&args, delivery_opts.as_ref(), tmp.path(), &mut rep),
    )
    .await;

    keep_or_remove(tmp, args.keep_dir || outcome.is_err());
    rep.finish();
    if let Err(e) = outcome {
        if rep.delivery.is_some()
            || rep.render.is_some()
            || rep.fetch.is_some()
            || rep.kustomize.is_some()
        {
            rep.incomplete();
            print_tables(&rep);
            write_json(args.json.as_deref(), &rep)?;
        }
        return Err(e);
    }
    print_tables(&rep);
    write_json(args.json.as_deref(), &rep)?;
    Ok(verdict_status(rep.passed()))
}

fn print_tables(rep: &Report) {
    println!("{}", rep.table());
    if let Some(t) = rep.kustomize_table() {
        println!("rendering Kustomize and Helm apps (3 variants) over a fleet:\n{t}");
        if let Some(k) = &rep.kustomize {
            println!(
                "tools: {}; {}; kept off the network by: {}; {} syncs per row",
                k.kustomize_version,
                k.helm_version.as_deref().unwrap_or("helm not measured"),
                k.isolation,
                k.rows.first().map_or(0, |r| r.timing.reps)
            );
        }
    }
    if let Some(t) = rep.comparison() {
        println!("delivery, single hub vs replicas:\n{t}");
    }
}

/// Runs the chosen phases: the in-process ones first (on a quiet machine), then delivery.
async fn measure(
    args: &Args,
    delivery_opts: Option<&delivery::Options>,
    dir: &Path,
    rep: &mut Report,
) -> Result<()> {
    if args.phases.contains(&Phase::Kustomize) {
        let defaults = flotilla_tests::tool_config();
        let mut sizes = args.kustomize_clusters.clone();
        sizes.sort_unstable();
        sizes.dedup();
        let opts = kustomize::Options {
            clusters: sizes,
            reps: args.kustomize_reps as usize,
            tools: flotilla_hub::render::ToolConfig {
                kustomize_bin: args
                    .kustomize_bin
                    .clone()
                    .unwrap_or(defaults.kustomize_bin.clone()),
                helm_bin: args.helm_bin.clone().unwrap_or(defaults.helm_bin.clone()),
                ..defaults
            },
            helm: !args.no_helm,
        };
        println!(
            "deliverybench: rendering Kustomize, Helm and plain apps over {:?} clusters with {} and {}",
            opts.clusters,
            opts.tools.kustomize_bin.display(),
            opts.tools.helm_bin.display()
        );
        let scratch = dir.join("kustomize");
        rep.kustomize = Some(blocking(move || kustomize::run(&opts, &scratch)).await?);
    }
    let render = args.phases.contains(&Phase::Render);
    let fetch = args.phases.contains(&Phase::Fetch);
    if render || fetch {
        let shape = LargeShape {
            objects: args.objects,
            apps: args.apps,
            docs_per_file: args.docs_per_file,
            history: args.history as usize,
        };
        println!(
            "deliverybench: building a repository of {} objects in {} apps with {} commits of history",
            shape.objects, shape.apps, shape.history
        );
        let large_dir = dir.join("large-repo");
        let large = blocking(move || repo::build_large(&large_dir, &shape)).await?;
        println!(
            "deliverybench: built in {:.1} s: {} files, {} git objects, pack {:.1} MiB",
            large.build_secs,
            large.manifest_files,
            large.git_objects,
            large.pack_kib as f64 / 1024.0
        );
        rep.large_repo = Some(large.clone());
        if render {
            let (l, reps, scratch) = (
                large.clone(),
                args.render_reps as usize,
                dir.join("render-mirror"),
            );
            rep.render = Some(blocking(move || render::run(&l, reps, &scratch)).await?);
        }
        if fetch {
            let (l, reps, scratch) = (large.clone(), args.fetch_reps as usize, dir.join("fetch"));
            rep.fetch = Some(blocking(move || gitfetch::run(&l, &shape, reps, &scratch)).await?);
        }
    }
    if let Some(opts) = delivery_opts {
        let mut d = DeliveryReport::default();
        let r = delivery::run(opts, &dir.join("delivery"), &mut d).await;
        rep.delivery = Some(d);
        r?;
        if args.replicas > 1 {
            let n = args.replicas as usize;
            println!(
                "{}: the same rounds across {n} hub replicas on etcd",
                flotilla_tests::bench::prog()
            );
            let mut h = HaReport::default();
            let r = ha::run(opts, n, &dir.join("delivery-ha"), &mut h).await;
            rep.delivery_ha = Some(h);
            r?;
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("blocking task failed: {e}"))?
}
