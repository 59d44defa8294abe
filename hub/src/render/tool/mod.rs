//! Apps rendered by the real tools: a directory with a `kustomization.yaml` by `kubectl
//! kustomize`, a Helm chart (`Chart.yaml`) by `helm template`. The tools run sandboxed
//! ([`sandbox`]) on a temporary copy of just the files they need from the commit's tree, and
//! what they print is read as the app's manifests; everything after (variables, patches,
//! namespaces, canonical bundles) is the same as for a directory of plain manifests.
//!
//! Renders are cached by what they depend on: the tool and its version, the content of the
//! files it reads (the chart, or the kustomization with every local base and file it refers
//! to) and, for Helm, the release, namespace and values. A fleet of 10,000 clusters in three
//! value sets costs three renders, and a commit that changes nothing an app reads costs none.

mod kustomize;
pub mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Limits;
use super::error::RenderError;
use super::manifests::{SourceDoc, parse_output};
use super::tree::{self, SourceTree, TreeError};
pub use sandbox::Isolation;
use sandbox::{Bounds, Invocation, RunError};

/// How an app directory is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// Plain manifests, read as they are.
    Plain,
    /// A kustomization, built with `kubectl kustomize`.
    Kustomize,
    /// A Helm chart, rendered with `helm template`.
    Helm,
}

impl DirKind {
    /// What is in `dir`: a `Chart.yaml` makes a Helm chart, else a `kustomization.yaml`
    /// (`.yml`, `Kustomization`) a kustomization, else plain manifests.
    pub fn of(tree: &dyn SourceTree, dir: &str) -> Result<DirKind, TreeError> {
        let real = match tree::resolve(tree, dir)? {
            tree::Resolved::Dir { path } => path,
            tree::Resolved::File { .. } => {
                return Err(TreeError::NotADirectory {
                    path: dir.to_owned(),
                });
            }
        };
        let names: Vec<String> = tree.entries(&real)?.into_iter().map(|e| e.name).collect();
        let has = |n: &str| names.iter().any(|m| m == n);
        Ok(if has("Chart.yaml") {
            DirKind::Helm
        } else if kustomize::FILE_NAMES.iter().any(|n| has(n)) {
            DirKind::Kustomize
        } else {
            DirKind::Plain
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DirKind::Plain => "manifests",
            DirKind::Kustomize => "kustomize",
            DirKind::Helm => "helm",
        }
    }
}

/// Where the tools are and how they may run (`flotilla-hub serve --kustomize-bin`,
/// `--helm-bin`, `--render-timeout`).
#[derive(Debug, Clone)]
pub struct ToolConfig {
    /// `kubectl` (kustomize built in: `kubectl kustomize DIR`), found on PATH by default.
    pub kustomize_bin: PathBuf,
    /// `helm`, found on PATH by default.
    pub helm_bin: PathBuf,
    /// How long one render may take.
    pub timeout: Duration,
    /// How many bytes of rendered output the cache keeps, at most.
    pub cache_bytes: u64,
    /// Where charts fetched from repositories are kept, one file per (repository, chart,
    /// version); `None`: a temporary directory of this process.
    pub chart_cache: Option<PathBuf>,
    /// A YAML file of chart repository credentials (`repositories: [{url, username,
    /// password}]`, matched by URL prefix), read when a chart is fetched.
    pub helm_credentials: Option<PathBuf>,
}

impl Default for ToolConfig {
    fn default() -> Self {
        ToolConfig {
            kustomize_bin: "kubectl".into(),
            helm_bin: "helm".into(),
            timeout: Duration::from_secs(60),
            cache_bytes: 256 << 20,
            chart_cache: None,
            helm_credentials: None,
        }
    }
}

/// The versions the tools report (`source get`, the hub's readiness), or why they cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolVersions {
    pub kustomize: Result<String, String>,
    pub helm: Result<String, String>,
}

/// What a tool rendered: its documents, parsed.
#[derive(Debug)]
pub(crate) struct ToolOutput {
    pub docs: Vec<SourceDoc>,
    /// Whether any string in them refers to a cluster built-in (`${cluster.…}`).
    pub mentions_cluster: bool,
    bytes: u64,
}

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<[u8; 32], Arc<ToolOutput>> for ByBytes {
    fn weight(&self, _key: &[u8; 32], val: &Arc<ToolOutput>) -> u64 {
        val.bytes.max(1)
    }
}

/// The rendering tools of a hub: their configuration, versions, sandbox, and the render cache.
pub struct Tools {
    config: ToolConfig,
    isolation: OnceLock<Isolation>,
    versions: OnceLock<ToolVersions>,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<ToolOutput>, ByBytes>,
    runs: AtomicU64,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("config", &self.config)
            .field("runs", &self.runs.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Tools {
    fn default() -> Self {
        Tools::new(ToolConfig::default())
    }
}

/// The chart `helm template` renders: a directory of the tree, or a package fetched from a
/// repository.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChartRef<'a> {
    Dir(&'a str),
    Package { what: &'a str, bytes: &'a [u8] },
}

/// A tool's request: which tool, the directory to copy, the arguments, and the key parts
/// beyond the files.
struct Request<'a> {
    tool: &'static str,
    /// The directory (in the tree) whose files the tool may read; `None`: none.
    root: Option<&'a str>,
    args: Vec<std::ffi::OsString>,
    /// Extra files to write beside the copy (values files), by name.
    extra: Vec<(String, Vec<u8>)>,
    /// What else the output depends on (release, namespace, values).
    key: Vec<u8>,
    /// How the output is named in errors: `helm template charts/db`.
    what: String,
    network: bool,
}

impl Tools {
    pub fn new(config: ToolConfig) -> Tools {
        let cache_bytes = config.cache_bytes.max(1);
        Tools {
            cache: quick_cache::sync::Cache::with_weighter(1024, cache_bytes, ByBytes),
            config,
            isolation: OnceLock::new(),
            versions: OnceLock::new(),
            runs: AtomicU64::new(0),
        }
    }

    /// How tools are kept off the network on this machine (probed once).
    pub fn isolation(&self) -> Isolation {
        *self.isolation.get_or_init(Isolation::probe)
    }

    /// How many times a tool actually ran (cache misses).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The tools' versions (asked once).
    pub fn versions(&self) -> &ToolVersions {
        self.versions.get_or_init(|| {
            let home = tempfile::tempdir();
            let ask = |bin: &Path, args: &[&str]| -> Result<String, String> {
                let home = home.as_ref().map_err(|e| e.to_string())?;
                let inv = Invocation {
                    bin,
                    args: args.iter().map(Into::into).collect(),
                    dir: home.path(),
                    home: home.path(),
                };
                let out =
                    sandbox::run(&inv, &self.bounds(false, 1 << 20)).map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(&out).trim().to_owned())
            };
            let kustomize = ask(
                &self.config.kustomize_bin,
                &["version", "--client", "-o", "json"],
            )
            .and_then(|json| {
                let v: serde_json::Value = serde_json::from_str(&json)
                    .map_err(|e| format!("unexpected `kubectl version` output: {e}"))?;
                let kubectl = v["clientVersion"]["gitVersion"].as_str().unwrap_or("?");
                let kustomize = v["kustomizeVersion"].as_str().unwrap_or("?");
                Ok(format!("kustomize {kustomize} (kubectl {kubectl})"))
            });
            let helm =
                ask(&self.config.helm_bin, &["version", "--short"]).map(|v| format!("helm {v}"));
            ToolVersions { kustomize, helm }
        })
    }

    fn bounds(&self, network: bool, max_output: u64) -> Bounds {
        Bounds {
            timeout: self.config.timeout,
            max_output,
            network,
            isolation: self.isolation(),
        }
    }

    /// Builds the kustomization in `dir` (a tree path).
    pub(crate) fn kustomize(
        &self,
        tree: &dyn SourceTree,
        dir: &str,
        limits: &Limits,
        network: bool,
    ) -> Result<Arc<ToolOutput>, RenderError> {
        let real = real_dir(tree, dir)?;
        let scan = kustomize::scan(tree, &real)?;
        if !scan.remote.is_empty() && !network {
            return Err(RenderError::Tool {
                what: format!("kustomize build {dir}"),
                message: format!(
                    "refers to {} on the network, and this source does not allow renders to reach the network",
                    scan.remote.join(", ")
                ),
            });
        }
        self.run(
            Request {
                tool: "kustomize",
                root: Some(&scan.root),
                args: vec!["kustomize".into(), dot_slash(&real).into()],
                extra: Vec::new(),
                key: Vec::new(),
                what: format!("kustomize build {dir}"),
                network,
            },
            tree,
            limits,
        )
    }

    /// Renders `chart` with `helm template`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn helm(
        &self,
        tree: &dyn SourceTree,
        chart: ChartRef<'_>,
        release: &str,
        namespace: Option<&str>,
        values_files: Vec<(String, Vec<u8>)>,
        values: &serde_json::Value,
        limits: &Limits,
        network: bool,
    ) -> Result<Arc<ToolOutput>, RenderError> {
        let mut extra = Vec::new();
        let mut key = Vec::new();
        let (root, chart_arg, what) = match chart {
            ChartRef::Dir(dir) => {
                let real = real_dir(tree, dir)?;
                (
                    Some(real.clone()),
                    dot_slash(&real),
                    format!("helm template {dir}"),
                )
            }
            ChartRef::Package { what, bytes } => {
                key_part(&mut key, bytes);
                extra.push(("chart.tgz".to_owned(), bytes.to_vec()));
                (
                    None,
                    "../values/chart.tgz".to_owned(),
                    format!("helm template {what}"),
                )
            }
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "template".into(),
            release.into(),
            chart_arg.into(),
            "--include-crds".into(),
        ];
        if let Some(ns) = namespace {
            args.push("--namespace".into());
            args.push(ns.into());
        }
        for (i, (name, bytes)) in values_files.into_iter().enumerate() {
            let file = format!("values-{i}.yaml");
            args.push("--values".into());
            args.push(format!("../values/{file}").into());
            key_part(&mut key, name.as_bytes());
            key_part(&mut key, &bytes);
            extra.push((file, bytes));
        }
        if values.as_object().is_some_and(|m| !m.is_empty()) {
            let bytes = super::canonical_json(values);
            args.push("--values".into());
            args.push("../values/inline.json".into());
            key_part(&mut key, &bytes);
            extra.push(("inline.json".to_owned(), bytes));
        }
        key_part(&mut key, release.as_bytes());
        key_part(&mut key, namespace.unwrap_or("").as_bytes());
        self.run(
            Request {
                tool: "helm",
                root: root.as_deref(),
                args,
                extra,
                key,
                what,
                network,
            },
            tree,
            limits,
        )
    }

    fn run(
        &self,
        req: Request<'_>,
        tree: &dyn SourceTree,
        limits: &Limits,
    ) -> Result<Arc<ToolOutput>, RenderError> {
        let failed = |message: String| RenderError::Tool {
            what: req.what.clone(),
            message,
        };
        let (bin, version) = match req.tool {
            "helm" => (&self.config.helm_bin, &self.versions().helm),
            _ => (&self.config.kustomize_bin, &self.versions().kustomize),
        };
        let version = version.as_ref().map_err(|e| failed(e.clone()))?;
        // The files the tool may read, with their content: the cache key, and on a miss the copy.
        let files = match req.root {
            Some(root) => tree::walk_all_files(tree, root)?,
            None => Vec::new(),
        };
        let mut hasher = Sha256::new();
        let mut contents = Vec::with_capacity(files.len());
        let mut total = 0u64;
        for f in &files {
            let bytes = tree.read(&f.real)?;
            total += bytes.len() as u64;
            if total > limits.max_bundle_bytes {
                return Err(failed(format!(
                    "the files it reads are over {} bytes",
                    limits.max_bundle_bytes
                )));
            }
            hasher.update((f.path.len() as u64).to_le_bytes());
            hasher.update(f.path.as_bytes());
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
            contents.push((f.path.clone(), bytes));
        }
        for part in [
            req.tool.as_bytes(),
            version.as_bytes(),
            req.key.as_slice(),
            &[u8::from(req.network)],
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        for arg in &req.args {
            hasher.update(arg.as_encoded_bytes());
            hasher.update([0]);
        }
        let key: [u8; 32] = hasher.finalize().into();
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }

        // A miss: copy the files into a fresh directory and run the tool there.
        let work = tempfile::tempdir().map_err(|e| failed(format!("temporary directory: {e}")))?;
        let copy = work.path().join("tree");
        let home = work.path().join("home");
        let values_dir = work.path().join("values");
        let write = |path: &Path, bytes: &[u8]| -> Result<(), RenderError> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| failed(format!("copying the tree: {e}")))?;
            }
            std::fs::write(path, bytes).map_err(|e| failed(format!("copying the tree: {e}")))
        };
        std::fs::create_dir_all(copy.join(req.root.unwrap_or("")))
            .map_err(|e| failed(format!("copying the tree: {e}")))?;
        for (path, bytes) in &contents {
            write(&copy.join(path), bytes)?;
        }
        for (name, bytes) in &req.extra {
            write(&values_dir.join(name), bytes)?;
        }
        // Both tools run at the copy's top, given `./<dir>`; values files are `../values/…`.
        let inv = Invocation {
            bin,
            args: req.args.clone(),
            dir: &copy,
            home: &home,
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let out = sandbox::run(&inv, &self.bounds(req.network, limits.max_bundle_bytes)).map_err(
            |e| match e {
                RunError::Failed(text) => failed(text),
                other => failed(other.to_string()),
            },
        )?;
        let docs = parse_output(&format!("{} output", req.what), &out, limits)?;
        let mentions_cluster = docs
            .iter()
            .any(|d| super::bundle::mentions_cluster(&d.value));
        let output = Arc::new(ToolOutput {
            docs,
            mentions_cluster,
            bytes: out.len() as u64,
        });
        self.cache.insert(key, output.clone());
        Ok(output)
    }
}

impl Tools {
    /// The package of `chart` at `version` from the repository or registry `repo`: from the
    /// chart cache, else fetched with `helm pull` (with the credentials file's entry for
    /// `repo`, if any) and kept there. A version is fetched once, whatever the fleet.
    pub(crate) fn fetch_chart(
        &self,
        repo: &str,
        chart: &str,
        version: &str,
    ) -> Result<Vec<u8>, RenderError> {
        let what = format!("helm pull {chart} {version} from {repo}");
        let failed = |message: String| RenderError::Tool {
            what: what.clone(),
            message,
        };
        let dir = self.chart_dir().map_err(&failed)?;
        let id = hex::encode(Sha256::digest(format!("{repo}\0{chart}\0{version}")));
        let cached = dir.join(format!("{id}.tgz"));
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(bytes);
        }
        self.versions()
            .helm
            .as_ref()
            .map_err(|e| failed(e.clone()))?;
        let work = tempfile::tempdir().map_err(|e| failed(format!("temporary directory: {e}")))?;
        let home = work.path().join("home");
        let dest = work.path().join("out");
        std::fs::create_dir_all(&dest).map_err(|e| failed(e.to_string()))?;
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        args.push("pull".into());
        match repo.strip_prefix("oci://") {
            Some(_) => args.push(format!("{}/{chart}", repo.trim_end_matches('/')).into()),
            None => {
                args.extend([chart.into(), "--repo".into(), repo.into()]);
            }
        }
        args.extend(["--version".into(), version.into(), "--destination".into()]);
        args.push(dest.clone().into());
        let access = self.access_for(repo).map_err(&failed)?;
        if let (Some(user), Some(password)) = (access.username, access.password) {
            args.extend([
                "--username".into(),
                user.into(),
                "--password".into(),
                password.into(),
            ]);
        }
        if access.plain_http {
            args.push("--plain-http".into());
        }
        let inv = Invocation {
            bin: &self.config.helm_bin,
            args,
            dir: work.path(),
            home: &home,
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        sandbox::run(&inv, &self.bounds(true, 1 << 20)).map_err(|e| match e {
            RunError::Failed(text) => failed(text),
            other => failed(other.to_string()),
        })?;
        let pulled = std::fs::read_dir(&dest)
            .map_err(|e| failed(e.to_string()))?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(".tgz"))
            .ok_or_else(|| failed("helm pull wrote no chart package".into()))?;
        let bytes = std::fs::read(pulled.path()).map_err(|e| failed(e.to_string()))?;
        // Kept atomically: a concurrent render reads a whole package or none.
        let part = dir.join(format!("{id}.tgz.part-{}", std::process::id()));
        std::fs::write(&part, &bytes)
            .and_then(|()| std::fs::rename(&part, &cached))
            .map_err(|e| failed(format!("keeping the chart in {}: {e}", dir.display())))?;
        Ok(bytes)
    }

    /// Where fetched charts are kept.
    fn chart_dir(&self) -> Result<PathBuf, String> {
        static FALLBACK: OnceLock<Result<tempfile::TempDir, String>> = OnceLock::new();
        let dir = match &self.config.chart_cache {
            Some(dir) => dir.clone(),
            None => FALLBACK
                .get_or_init(|| tempfile::tempdir().map_err(|e| e.to_string()))
                .as_ref()
                .map_err(Clone::clone)?
                .path()
                .to_owned(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// How to reach `repo`, from the credentials file's entry with the longest URL prefix
    /// that matches (none: anonymous, over TLS).
    fn access_for(&self, repo: &str) -> Result<RepoAccess, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            repositories: Vec<RepoAccess>,
        }
        let Some(path) = &self.config.helm_credentials else {
            return Ok(RepoAccess::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("helm credentials {}: {e}", path.display()))?;
        let file: File = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("helm credentials {}: {e}", path.display()))?;
        Ok(file
            .repositories
            .into_iter()
            .filter(|e| repo.starts_with(e.url.trim_end_matches('/')))
            .max_by_key(|e| e.url.len())
            .unwrap_or_default())
    }
}

/// One entry of the `--helm-credentials` file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RepoAccess {
    /// The repository or registry URL (prefix) the entry is for.
    #[serde(default)]
    url: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// An OCI registry served over plain HTTP (`helm pull --plain-http`).
    #[serde(default)]
    plain_http: bool,
}

fn key_part(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(&(part.len() as u64).to_le_bytes());
    key.extend_from_slice(part);
}

/// The real (symlink-free) path of the directory `dir`.
fn real_dir(tree: &dyn SourceTree, dir: &str) -> Result<String, TreeError> {
    match tree::resolve(tree, dir)? {
        tree::Resolved::Dir { path } => Ok(path),
        tree::Resolved::File { .. } => Err(TreeError::NotADirectory {
            path: dir.to_owned(),
        }),
    }
}

/// A tree path as a tool's relative argument: `./apps/web`, or `.` for the root.
fn dot_slash(path: &str) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        format!("./{path}")
    }
}
