//! Render throughput, in-process: `load_config` + `AppManifests::load` + `render` of every app
//! for one cluster, over a directory on disk (`DirTree`) and over a git commit (`CommitTree`
//! from a `Mirror` of the same repository).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_hub::git::{GitRef, Mirror, SourceSpec};
use flotilla_hub::render::{AppManifests, ClusterInfo, DirTree, Limits, SourceTree, load_config};
use serde::Serialize;

use crate::repo::LargeRepo;

/// Best and median of repeated timings of the same work.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub reps: usize,
    pub best_ms: f64,
    pub median_ms: f64,
}

impl Timing {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        if samples.is_empty() {
            return Self::default();
        }
        let median = samples[(samples.len() - 1) / 2];
        Self {
            reps: samples.len(),
            best_ms: samples[0].as_secs_f64() * 1000.0,
            median_ms: median.as_secs_f64() * 1000.0,
        }
    }
}

/// Render throughput over one kind of tree.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Throughput {
    pub timing: Timing,
    pub best_objects_per_sec: f64,
    pub median_objects_per_sec: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RenderReport {
    pub objects: usize,
    pub apps: usize,
    /// Bytes of canonical JSON produced per pass.
    pub canonical_bytes: u64,
    pub cluster: String,
    pub dir_tree: Throughput,
    pub commit_tree: Option<Throughput>,
    /// Creating the mirror and fetching the repository for the commit tree (not timed above).
    pub mirror_fetch_ms: f64,
}

/// The cluster rendered for: labelled so that every app's overlay applies.
fn cluster() -> ClusterInfo {
    ClusterInfo::new(
        "bench-eu-1",
        [("env", "prod"), ("region", "eu-west-1"), ("ring", "canary")],
    )
}

/// One pass: returns (objects rendered, canonical bytes).
fn render_once(tree: &dyn SourceTree, cluster: &ClusterInfo) -> Result<(usize, u64)> {
    let limits = Limits::default();
    let config = load_config(tree, "", &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut objects, mut bytes) = (0usize, 0u64);
    for app in config.apps.keys() {
        let manifests = AppManifests::load(tree, &config, app, &limits)
            .with_context(|| format!("loading app {app}"))?;
        let r = manifests
            .render(cluster)
            .with_context(|| format!("rendering app {app}"))?;
        objects += r.objects.len();
        bytes += r.canonical.len() as u64;
    }
    Ok((objects, bytes))
}

fn measure(
    tree: &dyn SourceTree,
    cluster: &ClusterInfo,
    reps: usize,
    want: usize,
) -> Result<(Throughput, u64)> {
    // One untimed pass warms the page cache and checks the output.
    let (objects, bytes) = render_once(tree, cluster)?;
    if objects != want {
        bail!("rendering produced {objects} objects, expected {want}");
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let (n, _) = render_once(tree, cluster)?;
        samples.push(t.elapsed());
        if n != want {
            bail!("rendering produced {n} objects, expected {want}");
        }
    }
    let timing = Timing::of(samples);
    let per_sec = |ms: f64| want as f64 / (ms / 1000.0);
    Ok((
        Throughput {
            timing,
            best_objects_per_sec: per_sec(timing.best_ms),
            median_objects_per_sec: per_sec(timing.median_ms),
        },
        bytes,
    ))
}

/// Measures both trees; the mirror for the commit tree lives under `scratch`.
pub fn run(repo: &LargeRepo, reps: usize, scratch: &Path) -> Result<RenderReport> {
    let cluster = cluster();
    let dir = DirTree::new(&repo.dir);
    let (dir_tree, canonical_bytes) =
        measure(&dir, &cluster, reps, repo.objects).context("rendering the directory tree")?;
    println!(
        "deliverybench: render over DirTree: best {:.0} ms ({:.0} objects/s), median {:.0} ms",
        dir_tree.timing.best_ms, dir_tree.best_objects_per_sec, dir_tree.timing.median_ms
    );

    let spec = SourceSpec::new(
        "render",
        repo.dir.to_string_lossy(),
        GitRef::Branch("main".into()),
    );
    let t = Instant::now();
    let mirror = Mirror::open_or_init(scratch, &spec).context("creating the render mirror")?;
    let fetched = mirror
        .fetch(&spec)
        .context("fetching into the render mirror")?;
    let mirror_fetch_ms = t.elapsed().as_secs_f64() * 1000.0;
    if fetched.commit != repo.head {
        bail!(
            "the mirror fetched {} but the repository is at {}",
            fetched.commit,
            repo.head
        );
    }
    let tree = mirror
        .tree(&fetched.commit, "")
        .context("opening the commit tree")?;
    let (commit_tree, _) =
        measure(&tree, &cluster, reps, repo.objects).context("rendering the commit tree")?;
    println!(
        "deliverybench: render over CommitTree: best {:.0} ms ({:.0} objects/s), median {:.0} ms",
        commit_tree.timing.best_ms, commit_tree.best_objects_per_sec, commit_tree.timing.median_ms
    );
    Ok(RenderReport {
        objects: repo.objects,
        apps: repo.apps,
        canonical_bytes,
        cluster: cluster.name,
        dir_tree,
        commit_tree: Some(commit_tree),
        mirror_fetch_ms,
    })
}
