//! gix against the `git` CLI on the same repository: an initial fetch into a fresh bare
//! repository (`Mirror::open_or_init` + `Mirror::fetch` against `git init --bare` +
//! `fetch_with_git_cli`), and an incremental fetch after one new commit. Both fetch the same ref
//! into the same private ref over the same local transport (`git-upload-pack` serves both).
//! The order of the two alternates between repetitions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_hub::git::{GitRef, Mirror, SourceSpec, fetch_with_git_cli};
use serde::Serialize;

use crate::render::Timing;
use crate::repo::{LargeRepo, LargeShape, git_in, large_change};

/// Where both fetch the tracked branch (the mirror's own tracking ref).
const TRACK_REF: &str = "refs/flotilla/track/heads/main";

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pair {
    pub gix: Timing,
    pub git: Timing,
    /// gix / git, of the medians.
    pub ratio_median: f64,
    /// gix / git, of the best times.
    pub ratio_best: f64,
}

impl Pair {
    fn of(gix: Vec<Duration>, git: Vec<Duration>) -> Self {
        let (gix, git) = (Timing::of(gix), Timing::of(git));
        Self {
            gix,
            git,
            ratio_median: gix.median_ms / git.median_ms,
            ratio_best: gix.best_ms / git.best_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FetchReport {
    /// Fresh bare repository + fetch of the whole history.
    pub initial: Pair,
    /// One new commit (one changed file) on top of what is held.
    pub incremental: Pair,
}

fn gix_fetch(data_dir: &Path, spec: &SourceSpec) -> Result<(Mirror, String, Duration)> {
    let t = Instant::now();
    let mirror = Mirror::open_or_init(data_dir, spec).context("gix: creating the mirror")?;
    let out = mirror.fetch(spec).context("gix: fetching")?;
    Ok((mirror, out.commit, t.elapsed()))
}

fn git_cli_init_fetch(bare: &Path, url: &str) -> Result<Duration> {
    let t = Instant::now();
    let parent = bare.parent().expect("bare dir has a parent");
    git_in(parent, &["init", "-q", "--bare", &bare.to_string_lossy()])?;
    fetch_with_git_cli(bare, url, &format!("+refs/heads/main:{TRACK_REF}"))
        .context("git CLI: fetching")?;
    Ok(t.elapsed())
}

fn git_cli_fetch(bare: &Path, url: &str) -> Result<Duration> {
    let t = Instant::now();
    fetch_with_git_cli(bare, url, &format!("+refs/heads/main:{TRACK_REF}"))
        .context("git CLI: fetching")?;
    Ok(t.elapsed())
}

fn git_cli_head(bare: &Path) -> Result<String> {
    git_in(bare, &["rev-parse", TRACK_REF])
}

/// Runs both measurements with `reps` repetitions each; scratch repositories go under
/// `scratch` (removed as it goes).
pub fn run(
    repo: &LargeRepo,
    shape: &LargeShape,
    reps: usize,
    scratch: &Path,
) -> Result<FetchReport> {
    let url = repo.dir.to_string_lossy().into_owned();
    std::fs::create_dir_all(scratch)?;
    let (mut gix_t, mut git_t) = (Vec::new(), Vec::new());
    // The last pair, kept for the incremental fetches: (mirror, its name, its data dir, git's).
    let mut kept: Option<(Mirror, String, PathBuf, PathBuf)> = None;
    for rep in 0..reps {
        let name = format!("gix-{rep}");
        let spec = SourceSpec::new(name.clone(), url.clone(), GitRef::Branch("main".into()));
        let gix_dir = scratch.join(format!("gix-{rep}"));
        let git_dir = scratch.join(format!("git-{rep}.git"));
        let run_gix = |gix_t: &mut Vec<Duration>| -> Result<Mirror> {
            let (m, commit, d) = gix_fetch(&gix_dir, &spec)?;
            if commit != repo.head {
                bail!("gix fetched {commit}, the repository is at {}", repo.head);
            }
            gix_t.push(d);
            Ok(m)
        };
        let run_git = |git_t: &mut Vec<Duration>| -> Result<()> {
            git_t.push(git_cli_init_fetch(&git_dir, &url)?);
            let head = git_cli_head(&git_dir)?;
            if head != repo.head {
                bail!("git fetched {head}, the repository is at {}", repo.head);
            }
            Ok(())
        };
        let mirror = if rep % 2 == 0 {
            let m = run_gix(&mut gix_t)?;
            run_git(&mut git_t)?;
            m
        } else {
            run_git(&mut git_t)?;
            run_gix(&mut gix_t)?
        };
        println!(
            "deliverybench: initial fetch {}/{reps}: gix {:.0} ms, git {:.0} ms",
            rep + 1,
            gix_t.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            git_t.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        // Keep the last pair for the incremental fetches; remove the others now.
        if let Some((old, _, old_gix, old_git)) = kept.take() {
            drop(old);
            let _ = std::fs::remove_dir_all(old_gix);
            let _ = std::fs::remove_dir_all(old_git);
        }
        kept = Some((mirror, name, gix_dir, git_dir));
    }
    let initial = Pair::of(gix_t, git_t);

    let Some((mirror, name, _, git_dir)) = kept else {
        bail!("--fetch-reps must be at least 1");
    };
    let spec = SourceSpec::new(name, url.clone(), GitRef::Branch("main".into()));
    let (mut gix_t, mut git_t) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let head = large_change(&repo.dir, shape, rep)?;
        let gix_once = |gix_t: &mut Vec<Duration>| -> Result<()> {
            let t = Instant::now();
            let out = mirror.fetch(&spec).context("gix: incremental fetch")?;
            gix_t.push(t.elapsed());
            if out.commit != head || !out.changed {
                bail!(
                    "gix fetched {} (changed: {}), the repository is at {head}",
                    out.commit,
                    out.changed
                );
            }
            Ok(())
        };
        let git_once = |git_t: &mut Vec<Duration>| -> Result<()> {
            git_t.push(git_cli_fetch(&git_dir, &url)?);
            let got = git_cli_head(&git_dir)?;
            if got != head {
                bail!("git fetched {got}, the repository is at {head}");
            }
            Ok(())
        };
        if rep % 2 == 0 {
            gix_once(&mut gix_t)?;
            git_once(&mut git_t)?;
        } else {
            git_once(&mut git_t)?;
            gix_once(&mut gix_t)?;
        }
        println!(
            "deliverybench: incremental fetch {}/{reps}: gix {:.0} ms, git {:.0} ms",
            rep + 1,
            gix_t.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            git_t.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
    }
    Ok(FetchReport {
        initial,
        incremental: Pair::of(gix_t, git_t),
    })
}
