//! The fleet repository the idle agents run, made with the `git` CLI: `flotilla.yaml` with N
//! apps of 20 objects each, app i in `apps/app-i/` with namespace `app-i`, targeted by the
//! cluster label `size` so that a cluster labelled `size=K` runs apps 0..K.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use flotilla_tests::bench::git;

use crate::objects::{AppShape, app_objects};

/// The label that says how many apps a cluster runs.
pub const SIZE_LABEL: &str = "size";

/// `flotilla.yaml`: app i targets the clusters whose `size` label is one of `sizes` above i.
fn config(apps: usize, sizes: &[usize]) -> String {
    let mut out = String::from("apps:\n");
    for i in 0..apps {
        let values: Vec<String> = sizes
            .iter()
            .filter(|&&k| k > i)
            .map(|k| format!("\"{k}\""))
            .collect();
        let _ = write!(
            out,
            "  app-{i}:\n    path: apps/app-{i}\n    namespace: app-{i}\n    targets:\n      matchExpressions:\n        - {{key: {SIZE_LABEL}, operator: In, values: [{}]}}\n",
            values.join(", ")
        );
    }
    out
}

/// Creates the repository in `dir` with one commit: `max(sizes)` apps of `shape`, one file
/// per kind. Returns the commit id.
pub fn create(dir: &Path, sizes: &[usize], shape: AppShape) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    git(dir, &["init", "-q", "-b", "main"])?;
    let apps = sizes.iter().copied().max().unwrap_or(0);
    std::fs::write(dir.join("flotilla.yaml"), config(apps, sizes))?;
    for i in 0..apps {
        let ns = format!("app-{i}");
        let app_dir = dir.join("apps").join(&ns);
        std::fs::create_dir_all(&app_dir)?;
        let objects = app_objects(&ns, shape, false);
        for kind in ["Namespace", "Deployment", "Service", "ConfigMap"] {
            let docs: Vec<String> = objects
                .iter()
                .filter(|o| o["kind"] == kind)
                .map(serde_yaml_ng::to_string)
                .collect::<Result<_, _>>()?;
            if docs.is_empty() {
                continue;
            }
            let file = app_dir.join(format!("{}.yaml", kind.to_lowercase()));
            std::fs::write(&file, docs.join("---\n"))
                .with_context(|| format!("writing {}", file.display()))?;
        }
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "agentbench fleet"])?;
    git(dir, &["rev-parse", "HEAD"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_target_the_larger_sizes() {
        let c = config(3, &[0, 2, 3]);
        assert!(c.contains("app-0:\n"));
        assert!(c.contains("values: [\"2\", \"3\"]"));
        assert!(c.contains("app-2:\n    path: apps/app-2\n    namespace: app-2\n"));
        assert!(c.ends_with("values: [\"3\"]}\n"));
    }
}
