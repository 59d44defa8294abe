//! The git repositories the benchmark works on, made with the `git` CLI: a small fleet repo for
//! the delivery rounds (one app on every cluster), and a large one (N Kubernetes objects in
//! multi-document files, `${var}` substitutions, an overlay with a patch per app, plus commit
//! history) for the render and fetch measurements.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A working repository driven by the `git` CLI.
pub struct GitRepo {
    pub dir: PathBuf,
}

impl GitRepo {
    /// `git init` (branch `main`) in `dir`, created if needed.
    pub fn init(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let repo = Self {
            dir: dir.to_path_buf(),
        };
        repo.git(&["init", "-q", "-b", "main"])?;
        Ok(repo)
    }

    /// Runs git in the repository; returns its trimmed stdout, or an error with its stderr.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        git_in(&self.dir, args)
    }

    /// Writes `rel` (parents created).
    pub fn write(&self, rel: &str, text: &str) -> Result<()> {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    }

    /// Stages everything and commits; returns the new commit id.
    pub fn commit_all(&self, message: &str) -> Result<String> {
        self.git(&["add", "-A"])?;
        self.commit_tracked(message)
    }

    /// Commits changes to tracked files only (`commit -a`, one process); returns the commit id.
    pub fn commit_tracked(&self, message: &str) -> Result<String> {
        self.git(&["commit", "-q", "-a", "-m", message])?;
        self.head()
    }

    pub fn head(&self) -> Result<String> {
        self.git(&["rev-parse", "HEAD"])
    }

    /// The repository as a URL for a source (an absolute local path).
    pub fn url(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }
}

/// Runs `git -C dir …` as the benchmark (see [`flotilla_tests::bench::git`]).
pub use flotilla_tests::bench::git as git_in;

// === the delivery repository ===

/// The app every cluster runs in the delivery rounds.
pub const DELIVERY_APP: &str = "bench";

/// `flotilla.yaml` of the delivery repository: one app on every cluster.
const DELIVERY_CONFIG: &str = "apps:
  bench:
    path: apps/bench
    namespace: bench
    targets: {}
    vars:
      image: registry.example/bench:v1
      replicas: 2
";

/// The manifest that changes every round. With `per_cluster`, it names the cluster, so every
/// cluster gets its own bundle; otherwise every cluster gets the same one.
fn delivery_config_map(round: u32, per_cluster: bool) -> String {
    let cluster = if per_cluster {
        "\n  cluster: \"${cluster.name}\""
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: bench-config
data:
  round: \"{round}\"{cluster}
  greeting: hello
"
    )
}

const DELIVERY_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench
  labels: {app: bench}
spec:
  replicas: \"${replicas}\"
  selector:
    matchLabels: {app: bench}
  template:
    metadata:
      labels: {app: bench}
    spec:
      containers:
        - name: main
          image: \"${image}\"
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: bench
spec:
  selector: {app: bench}
  ports: [{port: 80, targetPort: 8080}]
";

/// The small repository the delivery rounds commit to.
pub struct DeliveryRepo {
    pub repo: GitRepo,
    per_cluster: bool,
}

impl DeliveryRepo {
    /// Creates it with its first commit (round 0).
    pub fn create(dir: &Path, per_cluster: bool) -> Result<(Self, String)> {
        let repo = GitRepo::init(dir)?;
        repo.write("flotilla.yaml", DELIVERY_CONFIG)?;
        repo.write("apps/bench/deployment.yaml", DELIVERY_DEPLOYMENT)?;
        repo.write(
            "apps/bench/config.yaml",
            &delivery_config_map(0, per_cluster),
        )?;
        let c = repo.commit_all("round 0")?;
        Ok((Self { repo, per_cluster }, c))
    }

    /// Commits the change of round `round`; returns the commit id.
    pub fn commit_round(&self, round: u32) -> Result<String> {
        self.repo.write(
            "apps/bench/config.yaml",
            &delivery_config_map(round, self.per_cluster),
        )?;
        self.repo.commit_tracked(&format!("round {round}"))
    }
}

// === the large repository ===

/// The shape of the large repository.
#[derive(Debug, Clone, Copy)]
pub struct LargeShape {
    /// Kubernetes objects in total.
    pub objects: usize,
    pub apps: usize,
    /// Documents per manifest file.
    pub docs_per_file: usize,
    /// Commits after the first, each changing one file.
    pub history: usize,
}

/// What was built.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LargeRepo {
    #[serde(skip)]
    pub dir: PathBuf,
    pub objects: usize,
    pub apps: usize,
    pub manifest_files: usize,
    pub manifest_bytes: u64,
    pub commits: usize,
    /// Git objects in the pack after `git gc`.
    pub git_objects: u64,
    pub pack_kib: u64,
    pub build_secs: f64,
    #[serde(skip)]
    pub head: String,
}

impl LargeShape {
    /// Objects of app `a` (the remainder goes to the first apps).
    fn objects_of(&self, a: usize) -> usize {
        self.objects / self.apps + usize::from(a < self.objects % self.apps)
    }

    fn files_of(&self, a: usize) -> usize {
        self.objects_of(a).div_ceil(self.docs_per_file)
    }
}

fn app_name(a: usize) -> String {
    format!("app-{a:03}")
}

/// `flotilla.yaml` of the large repository: every app on every cluster, with vars and one
/// overlay (for `env: prod`) that overrides vars and patches one Deployment.
fn large_config(shape: &LargeShape) -> String {
    let mut s = String::from("apps:\n");
    for a in 0..shape.apps {
        let name = app_name(a);
        s.push_str(&format!(
            "  {name}:
    path: apps/{name}
    namespace: {name}
    targets: {{}}
    vars:
      image: registry.example/{name}:v1
      replicas: 2
      greeting: hello
      tier: backend
"
        ));
        if shape.objects_of(a) >= 2 {
            s.push_str(&format!(
                "    overlays:
      - when: {{matchLabels: {{env: prod}}}}
        vars: {{replicas: 5, greeting: hello-prod}}
        patches: [patches/{name}.yaml]
"
            ));
        }
    }
    s
}

/// Object `i` of app `name`: even indexes are ConfigMaps, odd ones Deployments.
fn object(name: &str, i: usize, revision: usize) -> String {
    if i.is_multiple_of(2) {
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}-cm-{i:04}
  labels: {{app: {name}, tier: \"${{tier}}\", cluster: \"${{cluster.name}}\"}}
data:
  greeting: \"${{greeting}} from ${{cluster.name}} in ${{cluster.labels.region:-nowhere}}\"
  index: \"{i}\"
  revision: \"{revision}\"
  settings.json: '{{\"timeoutSeconds\": 30, \"retries\": 3, \"feature\": \"${{tier}}\"}}'
"
        )
    } else {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}-dep-{i:04}
  labels: {{app: {name}, tier: \"${{tier}}\"}}
spec:
  replicas: \"${{replicas}}\"
  selector:
    matchLabels: {{app: {name}-dep-{i:04}}}
  template:
    metadata:
      labels: {{app: {name}-dep-{i:04}}}
    spec:
      containers:
        - name: main
          image: \"${{image}}\"
          args: [\"--index={i}\", \"--revision={revision}\"]
          env:
            - {{name: CLUSTER, value: \"${{cluster.name}}\"}}
            - {{name: GREETING, value: \"${{greeting}}\"}}
          resources:
            requests: {{cpu: 10m, memory: 16Mi}}
            limits: {{memory: 64Mi}}
"
        )
    }
}

/// Manifest file `f` of app `a` at `revision`.
fn manifest_file(shape: &LargeShape, a: usize, f: usize, revision: usize) -> String {
    let name = app_name(a);
    let from = f * shape.docs_per_file;
    let to = (from + shape.docs_per_file).min(shape.objects_of(a));
    (from..to)
        .map(|i| object(&name, i, revision))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn patch_file(a: usize) -> String {
    let name = app_name(a);
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}-dep-0001
spec:
  template:
    metadata:
      annotations: {{overlay: \"${{greeting}}\"}}
"
    )
}

/// Builds the large repository in `dir`: the first commit with every file, then
/// `shape.history` commits each changing one file, then `git gc`.
pub fn build_large(dir: &Path, shape: &LargeShape) -> Result<LargeRepo> {
    if shape.apps == 0 || shape.objects < shape.apps || shape.docs_per_file == 0 {
        bail!("the large repository needs --objects ≥ --apps ≥ 1 and --docs-per-file ≥ 1");
    }
    let started = Instant::now();
    let repo = GitRepo::init(dir)?;
    repo.write("flotilla.yaml", &large_config(shape))?;
    let (mut files, mut bytes) = (0usize, 0u64);
    for a in 0..shape.apps {
        for f in 0..shape.files_of(a) {
            let text = manifest_file(shape, a, f, 0);
            bytes += text.len() as u64;
            files += 1;
            repo.write(&format!("apps/{}/objects-{f:03}.yaml", app_name(a)), &text)?;
        }
        if shape.objects_of(a) >= 2 {
            repo.write(&format!("patches/{}.yaml", app_name(a)), &patch_file(a))?;
        }
    }
    repo.commit_all("all objects")?;
    let mut last_report = Instant::now();
    for h in 0..shape.history {
        let a = h % shape.apps;
        let f = (h / shape.apps) % shape.files_of(a);
        repo.write(
            &format!("apps/{}/objects-{f:03}.yaml", app_name(a)),
            &manifest_file(shape, a, f, h + 1),
        )?;
        repo.commit_tracked(&format!("change {}", h + 1))?;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            println!(
                "deliverybench:   {}/{} history commits",
                h + 1,
                shape.history
            );
        }
    }
    repo.git(&["gc", "-q"])?;
    let head = repo.head()?;
    let counts = repo.git(&["count-objects", "-v"])?;
    let field = |name: &str| -> u64 {
        counts
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(LargeRepo {
        dir: dir.to_path_buf(),
        objects: shape.objects,
        apps: shape.apps,
        manifest_files: files,
        manifest_bytes: bytes,
        commits: shape.history + 1,
        git_objects: field("in-pack:"),
        pack_kib: field("size-pack:"),
        build_secs: started.elapsed().as_secs_f64(),
        head,
    })
}

/// Commits one more change to the large repository (for incremental fetches).
pub fn large_change(dir: &Path, shape: &LargeShape, n: usize) -> Result<String> {
    let repo = GitRepo {
        dir: dir.to_path_buf(),
    };
    let revision = shape.history + 1 + n;
    let a = revision % shape.apps;
    repo.write(
        &format!("apps/{}/objects-000.yaml", app_name(a)),
        &manifest_file(shape, a, 0, revision),
    )?;
    repo.commit_tracked(&format!("incremental change {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_spread_over_apps_and_files() {
        let shape = LargeShape {
            objects: 1003,
            apps: 10,
            docs_per_file: 10,
            history: 0,
        };
        assert_eq!((0..10).map(|a| shape.objects_of(a)).sum::<usize>(), 1003);
        assert_eq!(shape.objects_of(0), 101);
        assert_eq!(shape.files_of(0), 11);
        let docs: usize = (0..shape.files_of(0))
            .map(|f| manifest_file(&shape, 0, f, 0).matches("\nkind: ").count())
            .sum();
        assert_eq!(docs, 101);
        assert!(large_config(&shape).contains("patches: [patches/app-000.yaml]"));
    }
}
