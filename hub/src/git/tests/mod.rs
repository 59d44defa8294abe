//! Tests of the `git` module against real repositories made with the `git` CLI in temporary
//! directories: fetches ([`fetch`]), the default branch ([`head`]), https against a loopback
//! server ([`https`]), commit trees ([`tree`]), URLs and credentials ([`auth`]), and that logs
//! never carry a secret ([`logs`]).

mod auth;
mod fetch;
mod head;
mod https;
mod logs;
mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::{FetchOptions, GitRef, Mirror, SourceSpec};

/// A `git` command isolated from the machine's and the user's git configuration.
fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "user.name=Flotilla Test",
            "-c",
            "user.email=test@flotilla.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ]);
    cmd
}

/// Runs git in `dir`, panicking on failure; returns trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_command(dir).args(args).output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A working repository playing the remote.
struct Upstream {
    dir: TempDir,
}

impl Upstream {
    fn new() -> Upstream {
        let dir = TempDir::new().expect("tempdir");
        git(dir.path(), &["init", "-q"]);
        Upstream { dir }
    }

    /// A remote whose `main` has one commit (file `f` holding `1`), and that commit.
    fn with_one_commit() -> (Upstream, String) {
        let up = Upstream::new();
        let head = up.commit_file("f", "1", "one");
        (up, head)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    /// Writes `content` to `file` (creating directories), commits everything; the new HEAD.
    fn commit_file(&self, file: &str, content: &str, message: &str) -> String {
        let path = self.path().join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write");
        self.commit_all(message)
    }

    fn commit_all(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.head()
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    fn local_url(&self) -> String {
        self.path().display().to_string()
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.path().display())
    }
}

/// A hub data directory with mirrors in it.
struct DataDir {
    dir: TempDir,
}

impl DataDir {
    fn new() -> DataDir {
        DataDir {
            dir: TempDir::new().expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn mirror(&self, spec: &SourceSpec) -> Mirror {
        Mirror::open_or_init(self.path(), spec)
            .expect("open mirror")
            .with_options(FetchOptions {
                connect_timeout: std::time::Duration::from_secs(5),
                timeout: std::time::Duration::from_secs(60),
                ca_file: None,
            })
    }

    fn mirror_dir(&self, name: &str) -> PathBuf {
        Mirror::dir_for(self.path(), name)
    }

    /// The spec of source `name` tracking `reference` of `up` (by `file://` URL), and its
    /// mirror.
    fn track(&self, up: &Upstream, name: &str, reference: &str) -> (SourceSpec, Mirror) {
        let spec = spec(name, &up.file_url(), reference);
        let mirror = self.mirror(&spec);
        (spec, mirror)
    }
}

fn spec(name: &str, url: &str, reference: &str) -> SourceSpec {
    SourceSpec::new(name, url, GitRef::parse(reference).expect("valid ref"))
}

/// Whether `ancestor` is an ancestor of `rev` in the bare repository `dir` (git's answer).
fn git_is_ancestor(dir: &Path, ancestor: &str, rev: &str) -> bool {
    git_command(dir)
        .args(["merge-base", "--is-ancestor", ancestor, rev])
        .status()
        .expect("git runs")
        .success()
}
