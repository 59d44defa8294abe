//! The demo's fleet repository: the example in `deploy/examples/fleet` (built into the binary, so
//! the demo runs from anywhere), committed with the git CLI into a temporary repository, and the
//! bad release the demo commits on top of it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The app of the example fleet and the pipeline that promotes it.
pub const APP: &str = "web";
pub const PIPELINE: &str = "regions";

/// The example fleet's files: (path in the repository, content).
pub const FILES: &[(&str, &str)] = &[
    (
        "flotilla.yaml",
        include_str!("../../../deploy/examples/fleet/flotilla.yaml"),
    ),
    (
        "apps/web/namespace.yaml",
        include_str!("../../../deploy/examples/fleet/apps/web/namespace.yaml"),
    ),
    (
        "apps/web/configmap.yaml",
        include_str!("../../../deploy/examples/fleet/apps/web/configmap.yaml"),
    ),
    (
        "apps/web/deployment.yaml",
        include_str!("../../../deploy/examples/fleet/apps/web/deployment.yaml"),
    ),
    (
        "apps/web/service.yaml",
        include_str!("../../../deploy/examples/fleet/apps/web/service.yaml"),
    ),
    (
        "patches/canary.yaml",
        include_str!("../../../deploy/examples/fleet/patches/canary.yaml"),
    ),
];

/// The demo clusters: (name, region, ring). The example's pipeline selects each in one stage.
pub const CLUSTERS: [(&str, &str, &str); 6] = [
    ("eu-west-1a", "eu-west-1", "canary"),
    ("eu-west-1b", "eu-west-1", "main"),
    ("us-east-1a", "us-east-1", "main"),
    ("us-east-1b", "us-east-1", "main"),
    ("ap-southeast-1a", "ap-southeast-1", "main"),
    ("ap-southeast-1b", "ap-southeast-1", "main"),
];

pub const CONFIG: &str = "flotilla.yaml";
pub const DEPLOYMENT: &str = "apps/web/deployment.yaml";
const GOOD_IMAGE: &str = "image: nginx:1.27.3";
const BAD_IMAGE: &str = "image: nginx:1.28.0";
const DEPLOYMENT_HEAD: &str = "kind: Deployment\nmetadata:\n  name: web\n";
const FAIL_ANNOTATION: &str = "  annotations:
    # The simulated cluster never makes an object with this annotation ready.
    flotilla.io/simulate: fail
";

/// A commit of the fleet repository.
#[derive(Debug, Clone)]
pub struct Commit {
    pub id: String,
    pub subject: String,
}

/// The temporary fleet repository.
#[derive(Debug)]
pub struct FleetRepo {
    dir: PathBuf,
}

impl FleetRepo {
    /// Writes the example fleet into `dir` and commits it; returns the repository and the commit.
    pub fn create(dir: &Path) -> Result<(Self, Commit), String> {
        for (path, text) in FILES {
            let file = dir.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        let repo = FleetRepo {
            dir: dir.to_path_buf(),
        };
        repo.git(&["init", "-q"])?;
        let commit = repo.commit("web: first release, nginx 1.27.3")?;
        Ok((repo, commit))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Commits a release that never becomes ready (see [`break_release`]).
    pub fn commit_bad_release(&self) -> Result<Commit, String> {
        let read =
            |p: &str| std::fs::read_to_string(self.dir.join(p)).map_err(|e| format!("{p}: {e}"));
        let (config, deployment) = break_release(&read(CONFIG)?, &read(DEPLOYMENT)?)?;
        let write = |p: &str, text: &str| {
            std::fs::write(self.dir.join(p), text).map_err(|e| format!("{p}: {e}"))
        };
        write(CONFIG, &config)?;
        write(DEPLOYMENT, &deployment)?;
        self.commit("web: nginx 1.28.0 (this release never becomes ready)")
    }

    fn commit(&self, subject: &str) -> Result<Commit, String> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", subject])?;
        Ok(Commit {
            id: self.git(&["rev-parse", "HEAD"])?,
            subject: subject.to_string(),
        })
    }

    fn git(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "user.name=flotilla demo",
                "-c",
                "user.email=demo@flotilla.invalid",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            // A surrounding git (a hook, a CI step) must not redirect these commands.
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .output()
            .map_err(|e| format!("git is not available: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The bad release as an edit of (`flotilla.yaml`, `apps/web/deployment.yaml`): a new image, and
/// the annotation that makes the simulated cluster fail the Deployment instead of making it ready.
pub fn break_release(config: &str, deployment: &str) -> Result<(String, String), String> {
    let once = |text: &str, what: &str, file: &str| match text.matches(what).count() {
        1 => Ok(()),
        n => Err(format!(
            "the example's {file} should hold {what:?} once, not {n} times"
        )),
    };
    once(config, GOOD_IMAGE, CONFIG)?;
    once(deployment, DEPLOYMENT_HEAD, DEPLOYMENT)?;
    Ok((
        config.replace(GOOD_IMAGE, BAD_IMAGE),
        deployment.replace(
            DEPLOYMENT_HEAD,
            &format!("{DEPLOYMENT_HEAD}{FAIL_ANNOTATION}"),
        ),
    ))
}

#[cfg(test)]
mod tests {
    // That the example renders as the demo needs (each cluster in one stage, the bad release
    // failing) is tested with the hub's renderer in `tests/tests/demo.rs`.
    use super::*;

    #[test]
    fn every_file_of_the_example_is_built_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/fleet");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "yaml") {
                    on_disk.push(p.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        on_disk.sort();
        let mut built_in: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
    }
}
