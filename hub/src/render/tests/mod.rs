//! Tests of loading and rendering over real directories (`DirTree` on temporary directories
//! written by each test).

mod bad_input;
mod config;
mod render;
mod tools;

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::{
    ClusterInfo, DirTree, FleetConfig, Limits, RenderError, RenderedApp, load_config, render_app,
};

/// A `flotilla.yaml` with one app, `web`: manifests in `apps/web`, namespace `web`, every
/// cluster targeted.
pub(super) const WEB: &str =
    "apps:\n  web:\n    path: apps/web\n    namespace: web\n    targets: {}\n";

/// [`WEB`] followed by `app_lines`, more fields of the `web` app.
pub(super) fn web_with(app_lines: &str) -> String {
    format!("{WEB}{app_lines}")
}

/// A repository in a temporary directory.
pub(super) struct Repo {
    dir: TempDir,
    pub tree: DirTree,
}

/// A repository holding `files` (path, content); parent directories are created.
pub(super) fn repo(files: &[(&str, &str)]) -> Repo {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = DirTree::new(dir.path());
    let repo = Repo { dir, tree };
    for (path, content) in files {
        repo.write(path, content);
    }
    repo
}

/// A repository with [`WEB`] as its `flotilla.yaml` and `files`.
pub(super) fn web_repo(files: &[(&str, &str)]) -> Repo {
    let repo = repo(files);
    repo.write("flotilla.yaml", WEB);
    repo
}

impl Repo {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, path: &str, content: &str) {
        self.write_bytes(path, content.as_bytes());
    }

    pub fn write_bytes(&self, path: &str, content: &[u8]) {
        let full = self.dir.path().join(path);
        fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        fs::write(full, content).expect("write");
    }

    pub fn symlink(&self, link: &str, target: &str) {
        let full = self.dir.path().join(link);
        fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, full).expect("symlink");
    }

    /// `flotilla.yaml` at the root, loaded with default limits.
    pub fn config(&self) -> FleetConfig {
        load_config(&self.tree, "", &Limits::default()).expect("valid flotilla.yaml")
    }
}

pub(super) fn cluster(name: &str, labels: &[(&str, &str)]) -> ClusterInfo {
    ClusterInfo::new(name, labels.iter().copied())
}

/// Renders `web` from `r` for a cluster `c1` with `labels` (default limits).
pub(super) fn render_web(r: &Repo, labels: &[(&str, &str)]) -> Result<RenderedApp, RenderError> {
    render_app(
        &r.tree,
        &r.config(),
        "web",
        &cluster("c1", labels),
        &Limits::default(),
    )
}

/// Why rendering `web` from `r` for a cluster without labels fails.
pub(super) fn render_err(r: &Repo) -> RenderError {
    render_web(r, &[]).expect_err("expected a render error")
}
