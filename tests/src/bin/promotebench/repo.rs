//! The git repository a scenario commits to, made with the `git` CLI: `flotilla.yaml` with N apps
//! that all use the 3-stage pipeline `regions` (canary → wave1 → wave2 by the label `ring`, no
//! soak, every cluster of a stage at once), and per app a Deployment and a ConfigMap. Each round
//! rewrites every app's ConfigMap, so every app gets new content, hence a new revision.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The label that puts a cluster in a stage, and its values in stage order.
pub const RING: &str = "ring";
pub const STAGES: [&str; 3] = ["canary", "wave1", "wave2"];

/// A repository of apps that all target the clusters `targets` selects.
pub struct PromoteRepo {
    dir: PathBuf,
    apps: Vec<String>,
}

impl PromoteRepo {
    /// Creates the repository in `dir` with its first commit (round 0); returns it and that
    /// commit.
    pub fn create(dir: &Path, apps: Vec<String>, targets: &Targets) -> Result<(Self, String)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let repo = Self {
            dir: dir.to_path_buf(),
            apps,
        };
        repo.git(&["init", "-q", "-b", "main"])?;
        repo.write("flotilla.yaml", &config(&repo.apps, targets))?;
        for app in &repo.apps {
            repo.write(&format!("apps/{app}/deployment.yaml"), &deployment(app))?;
            repo.write(&format!("apps/{app}/config.yaml"), &config_map(app, 0))?;
        }
        repo.git(&["add", "-A"])?;
        let c0 = repo.commit("round 0")?;
        Ok((repo, c0))
    }

    /// The repository as a source URL (an absolute local path).
    pub fn url(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// Changes every app's ConfigMap for `round` and commits; returns the commit.
    pub fn commit_round(&self, round: u32) -> Result<String> {
        for app in &self.apps {
            self.write(&format!("apps/{app}/config.yaml"), &config_map(app, round))?;
        }
        self.commit(&format!("round {round}"))
    }

    fn commit(&self, message: &str) -> Result<String> {
        self.git(&["commit", "-q", "-a", "-m", message])?;
        self.git(&["rev-parse", "HEAD"])
    }

    fn write(&self, rel: &str, text: &str) -> Result<()> {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    }

    /// Runs git in the repository (see [`flotilla_tests::bench::git`]).
    fn git(&self, args: &[&str]) -> Result<String> {
        flotilla_tests::bench::git(&self.dir, args)
    }
}

/// Which clusters the apps run on.
pub enum Targets {
    /// Every cluster in a stage (labelled `ring`).
    Staged,
    /// The clusters labelled `<label>: "yes"`.
    Labelled(&'static str),
}

impl Targets {
    fn selector(&self) -> String {
        match self {
            Targets::Staged => format!("{{matchExpressions: [{{key: {RING}, operator: Exists}}]}}"),
            Targets::Labelled(label) => format!("{{matchLabels: {{{label}: \"yes\"}}}}"),
        }
    }
}

/// `flotilla.yaml`: every app on the clusters `targets` selects, promoted by `regions`.
fn config(apps: &[String], targets: &Targets) -> String {
    let targets = targets.selector();
    let mut s = String::from("apps:\n");
    for app in apps {
        s.push_str(&format!(
            "  {app}:
    path: apps/{app}
    namespace: {app}
    targets: {targets}
    pipeline: regions
    vars:
      image: registry.example/{app}:v1
"
        ));
    }
    s.push_str("pipelines:\n  regions:\n    stages:\n");
    for stage in STAGES {
        s.push_str(&format!(
            "      - {{name: {stage}, selector: {{matchLabels: {{{RING}: {stage}}}}}, soak: 0s, maxParallel: 100%}}\n"
        ));
    }
    // Generous, so that a slow hub shows up as time, not as failed clusters.
    s.push_str("    healthTimeout: 30m\n    onFailure: halt\n");
    s
}

fn deployment(app: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}
  labels: {{app: {app}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: {app}}}
  template:
    metadata:
      labels: {{app: {app}}}
    spec:
      containers:
        - name: main
          image: \"${{image}}\"
"
    )
}

fn config_map(app: &str, round: u32) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {app}-config
data:
  round: \"{round}\"
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_app_uses_the_three_stage_pipeline() {
        let c = config(&["a".into(), "b".into()], &Targets::Labelled("many"));
        assert_eq!(c.matches("pipeline: regions").count(), 2);
        assert!(c.contains("targets: {matchLabels: {many: \"yes\"}}"));
        let every = config(&["a".into()], &Targets::Staged);
        assert!(every.contains("targets: {matchExpressions: [{key: ring, operator: Exists}]}"));
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&every).unwrap();
        assert_eq!(
            parsed["apps"]["a"]["targets"]["matchExpressions"][0]["operator"],
            "Exists"
        );
        assert!(c.contains(
            "- {name: wave1, selector: {matchLabels: {ring: wave1}}, soak: 0s, maxParallel: 100%}"
        ));
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&c).unwrap();
        assert_eq!(parsed["pipelines"]["regions"]["stages"][2]["name"], "wave2");
    }
}
