//! `agentbench`: what the agent costs and how fast it applies.
//!
//! * **Idle footprint.** A real `flotilla-hub` child, a git repository of 100 apps × 20 objects
//!   (Namespace, 6 Deployments, 6 Services, 7 ConfigMaps) added as a source, and one real
//!   `flotilla-agent` child per cluster (`--cluster simulated --sim-ready-delay 0s`) for
//!   clusters running 0, 10 and 100 of the apps (by the label `size`). Each agent is waited for
//!   until the hub shows every app applied and healthy, then all idle for `--idle-seconds`
//!   (default 70, so at least one drift check at the default 60 s interval): VmRSS at the end,
//!   VmHWM, CPU over the window. The simulated cluster lives inside the agent process, so its
//!   objects count in the agent's RSS.
//! * **Apply time.** In-process: the agent's `Reconciler` on a fresh `SimCluster` applies one
//!   app of 1,000 objects and 50 apps of 20; time from sending the desired state to every app
//!   applied and to every app healthy, `--runs` times, min and median.
//!
//! Exit status: 0 when the run completed and met the idle RSS targets (≤ 20 MiB with 0 apps,
//! ≤ 40 MiB with 100 apps), 1 when it could not complete, 2 when a target was missed.
//!
//! ```text
//! cargo build --release -p flotilla-agent -p flotilla-hub
//! cargo run --release -p flotilla-tests --bin agentbench
//! ```

mod apply;
mod idle;
mod objects;
mod repo;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use flotilla_tests::bench::program::{self, keep_or_remove, temp_dir, verdict_status, write_json};
use flotilla_tests::bench::{default_agent_bin, default_hub_bin, prog};

use crate::report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "agentbench",
    about = "Agent idle RSS/CPU with 0, 10 and 100 apps; time to apply 1,000 objects on the simulated backend",
    long_about = "Starts a flotilla-hub child and one flotilla-agent child per cluster \
                  (--cluster simulated) running 0, 10 and 100 apps of 20 objects from a git \
                  source, waits until every app is healthy, and measures each agent's RSS, peak \
                  RSS and CPU over an idle window. Then, in-process, times the agent's reconciler \
                  applying 1,000 objects to a fresh simulated cluster.\n\nNeeds release builds \
                  of both programs: cargo build --release -p flotilla-agent -p flotilla-hub\n\n\
                  Exit status: 0 ok, 1 run failed, 2 an idle RSS target (≤ 20 MiB with 0 apps, \
                  ≤ 40 MiB with 100 apps) missed."
)]
struct Args {
    /// Length of the idle window (whole seconds). The default includes one drift check at
    /// the agent's default 60 s drift interval.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_seconds: u64,
    /// Repetitions of each apply scenario.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// Do not measure the idle agents.
    #[arg(long)]
    skip_idle: bool,
    /// Do not measure the in-process apply.
    #[arg(long)]
    skip_apply: bool,

    /// Apps per cluster, one agent each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,10,100")]
    app_counts: Vec<usize>,
    /// The agents' --drift-interval.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drift_interval: Duration,
    /// Longest wait for an agent's apps to become healthy.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    healthy_timeout: Duration,
    /// Longest wait for one apply run.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    apply_timeout: Duration,
    /// The hub's --heartbeat-interval (the hub's default).
    #[arg(long, default_value = "10s")]
    hub_heartbeat_interval: String,
    /// Extra environment for the agent processes, e.g. TOKIO_WORKER_THREADS=1 (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    agent_env: Vec<(String, String)>,
    /// The hub binary [default: flotilla-hub next to this executable].
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// The agent binary [default: flotilla-agent next to this executable].
    #[arg(long)]
    agent_bin: Option<PathBuf>,

    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (repository, hub and agent data and logs).
    #[arg(long)]
    keep_dir: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> ExitCode {
    program::main(run)
}

/// A release binary next to this one, or the one given; a clear error when it is missing.
fn binary(given: &Option<PathBuf>, default: Result<PathBuf>, package: &str) -> Result<PathBuf> {
    let p = match given {
        Some(p) => p.clone(),
        None => default?,
    };
    if !p.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p {package}` or pass --{}-bin",
            p.display(),
            package.trim_start_matches("flotilla-")
        );
    }
    Ok(p)
}

async fn run(args: Args) -> Result<ExitCode> {
    if args.skip_idle && args.skip_apply {
        bail!("--skip-idle and --skip-apply leave nothing to measure");
    }
    let idle_opts = if args.skip_idle {
        None
    } else {
        if args.app_counts.is_empty() {
            bail!("--app-counts names no cluster");
        }
        if args.drift_interval.is_zero() {
            bail!("--drift-interval must be more than zero");
        }
        Some(idle::Options {
            hub_bin: binary(&args.hub_bin, default_hub_bin(), "flotilla-hub")?,
            agent_bin: binary(&args.agent_bin, default_agent_bin(), "flotilla-agent")?,
            sizes: args.app_counts.clone(),
            idle: Duration::from_secs(args.idle_seconds),
            drift_interval: args.drift_interval,
            healthy_timeout: args.healthy_timeout,
            hub_heartbeat_interval: args.hub_heartbeat_interval.clone(),
            agent_env: args.agent_env.clone(),
        })
    };

    let mut rep = Report::default();
    // In-process first, while the machine is quiet.
    if !args.skip_apply {
        println!(
            "{}: apply on the simulated backend, {} runs per scenario",
            prog(),
            args.runs
        );
        rep.apply = Some(
            apply::run(
                &apply::Scenario::defaults(),
                args.runs as usize,
                args.apply_timeout,
            )
            .await?,
        );
    }
    if let Some(opts) = &idle_opts {
        let tmp = temp_dir()?;
        println!("{}: working in {}", prog(), tmp.path().display());
        let outcome = idle::run(opts, tmp.path()).await;
        keep_or_remove(tmp, args.keep_dir || outcome.is_err());
        match outcome {
            Ok(r) => rep.idle = Some(r),
            Err(e) => {
                if rep.apply.is_some() {
                    println!("{}", rep.render());
                }
                return Err(e);
            }
        }
    }
    rep.finish();
    println!("{}", rep.render());
    write_json(args.json.as_deref(), &rep)?;
    Ok(verdict_status(rep.passed()))
}
