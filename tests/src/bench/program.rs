//! What every benchmark program does around its measurements: run on a Tokio runtime and turn
//! the outcome into the exit status, find the hub binary and enough file descriptors, work in a
//! temporary directory within a bounded time, and write the report as JSON.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde::Serialize;
use tempfile::TempDir;

use super::{default_hub_bin, prog};

/// A program's `main`: parses the command line into `A` and runs `run` with it on a
/// multi-threaded Tokio runtime. An error is printed prefixed with the program's name and exits
/// with status 1; otherwise the exit status is `run`'s.
pub fn main<A, F>(run: impl FnOnce(A) -> F) -> ExitCode
where
    A: Parser,
    F: Future<Output = Result<ExitCode>>,
{
    let args = A::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}: {e:#}", prog());
            ExitCode::from(1)
        }
    }
}

/// The exit status of a run that completed: 0 when it met its target (or was not judged), 2 when
/// it missed it.
pub fn verdict_status(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (a hub child started later inherits it) and
/// checks that it leaves room for `sessions` connections in each process; returns the limit.
pub fn raise_nofile(sessions: usize) -> Result<u64> {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    println!(
        "{}: RLIMIT_NOFILE soft limit {nofile} (hub inherits it)",
        prog()
    );
    let need = sessions as u64 + 256;
    if nofile < need {
        bail!(
            "{sessions} sessions need about {need} file descriptors in each process, but the \
             limit is {nofile}; raise the hard limit (ulimit -Hn) or use fewer sessions"
        );
    }
    Ok(nofile)
}

/// The hub binary: `given` (`--hub-bin`), or `flotilla-hub` next to the running executable; an
/// error that says how to build it when it does not exist.
pub fn hub_bin(given: Option<&Path>) -> Result<PathBuf> {
    let bin = match given {
        Some(p) => p.to_path_buf(),
        None => default_hub_bin()?,
    };
    if !bin.is_file() {
        bail!(
            "hub binary {} not found; build it with `cargo build --release -p flotilla-hub --bin \
             flotilla-hub` or pass --hub-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// A new temporary directory named after the program (`flotilla-<program>-…`).
pub fn temp_dir() -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("flotilla-{}-", prog()))
        .tempdir()
        .context("creating the temporary directory")
}

/// Keeps `dir` (and says where it is) when `keep`, else removes it.
pub fn keep_or_remove(dir: TempDir, keep: bool) {
    if keep {
        println!("{}: kept {}", prog(), dir.keep().display());
    }
}

/// Runs `work`, failing it when it takes longer than `max` (`--max-duration`).
pub async fn within_max_duration<T>(
    max: Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(max, work).await.unwrap_or_else(|_| {
        Err(anyhow!(
            "the run exceeded --max-duration {}",
            humantime::format_duration(max)
        ))
    })
}

/// Writes `report` as pretty JSON to `path` (`--json`), when given.
pub fn write_json(path: Option<&Path>, report: &impl Serialize) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("{}: wrote {}", prog(), path.display());
    }
    Ok(())
}
