//! Rendering an app for a cluster into a canonical, content-addressed bundle: read manifests,
//! substitute variables, apply overlays, default namespaces, check identities, serialize
//! canonically and digest.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Limits;
use super::config::{AppConfig, CONFIG_FILE, FleetConfig};
use super::error::{Origin, RenderError};
use super::manifests::{SourceDoc, is_manifest, read_documents};
use super::objects::{ObjectKey, is_cluster_scoped, missing_field, namespace_of, set_namespace};
use super::overlay::{PatchTarget, merge_patch};
use super::selector::ClusterInfo;
use super::tool::{ChartRef, DirKind, ToolOutput, Tools};
use super::tree::{self, Resolved, SourceTree, TreeError};
use super::vars::{Scope, substitute};
use super::yaml::Budget;

/// An app rendered for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedApp {
    /// The objects, sorted by (group, kind, namespace, name).
    pub objects: Vec<Value>,
    /// The canonical bundle: a compact JSON array of `objects`, keys sorted (see
    /// [`canonical_bundle`]).
    pub canonical: Vec<u8>,
    /// `sha256:<hex>` of `canonical`.
    pub digest: String,
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The clusters among `clusters` that `app` targets (none when the app is unknown).
pub fn targeted_clusters<'c>(
    config: &FleetConfig,
    app: &str,
    clusters: &'c [ClusterInfo],
) -> Vec<&'c ClusterInfo> {
    match config.apps.get(app) {
        Some(app) => clusters
            .iter()
            .filter(|c| app.targets.matches(&c.labels))
            .collect(),
        None => Vec::new(),
    }
}

/// Renders `app` for `cluster` (reads the tree each time; to render one app for many clusters,
/// load it once with [`AppManifests::load`]).
pub fn render_app(
    tree: &dyn SourceTree,
    config: &FleetConfig,
    app: &str,
    cluster: &ClusterInfo,
    limits: &Limits,
) -> Result<RenderedApp, RenderError> {
    AppManifests::load(tree, config, app, limits)?.render(cluster)
}

/// How tool-rendered apps (Kustomize, Helm) of a source are rendered: the hub's tools and
/// whether the source lets renders reach the network.
#[derive(Debug, Clone)]
pub struct RenderEnv {
    pub tools: Arc<Tools>,
    pub network: bool,
}

impl Default for RenderEnv {
    /// The tools found on PATH, without network.
    fn default() -> Self {
        static TOOLS: OnceLock<Arc<Tools>> = OnceLock::new();
        RenderEnv {
            tools: TOOLS.get_or_init(|| Arc::new(Tools::default())).clone(),
            network: false,
        }
    }
}

/// Helm values files by name, with their content.
type ValuesFiles = Vec<(String, Vec<u8>)>;

/// A directory an app renders from: its own `path`, or an overlay's.
#[derive(Debug, Clone)]
enum DirSource {
    /// Plain manifests, read and parsed at load; whether any refers to a cluster built-in.
    Plain {
        docs: Vec<SourceDoc>,
        mentions_cluster: bool,
    },
    /// A kustomization, built when first needed.
    Kustomize { dir: String },
    /// A Helm chart, rendered per distinct values.
    Helm { dir: String },
    /// A chart fetched from a repository (`helm.repo`), rendered per distinct values.
    RemoteChart {
        repo: String,
        chart: String,
        version: String,
    },
}

/// An app's manifests and patch files, read and parsed once, ready to render for any cluster.
#[derive(Clone)]
pub struct AppManifests<'t> {
    app: String,
    config: AppConfig,
    limits: Limits,
    tree: &'t dyn SourceTree,
    env: RenderEnv,
    /// The directories the app renders from: `[0]` its `path`, then those overlays name.
    dirs: Vec<DirSource>,
    /// Per overlay, the index in `dirs` of the directory it renders instead, if any.
    overlay_dir: Vec<Option<usize>>,
    /// Per overlay, the documents of its patch files in order.
    patches: Vec<Vec<SourceDoc>>,
    /// Helm values files, read at load: `[0]` the app's, then one list per overlay.
    values_files: Vec<Vec<(String, Vec<u8>)>>,
    /// No patch refers to a cluster built-in (`${cluster.…}`).
    patches_cluster_free: bool,
    /// What the tools rendered for this app at this commit, by their input (a kustomization's
    /// directory; a chart with its values): each distinct input is read and looked up once,
    /// whatever the number of clusters.
    memo: Arc<Mutex<HashMap<Vec<u8>, Arc<ToolOutput>>>>,
}

/// What an app's rendering for a cluster depends on (see [`AppManifests::render_key`]):
/// clusters with equal keys render alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RenderKey(Vec<u8>);

impl RenderKey {
    /// The key of the overlays `matching` a cluster, then `extra` (what else the rendering
    /// depends on: a chart's values).
    fn of(matching: &[usize], extra: &[u8]) -> RenderKey {
        let mut key = Vec::with_capacity(4 + 4 * matching.len() + extra.len());
        key.extend_from_slice(&(matching.len() as u32).to_le_bytes());
        for &i in matching {
            key.extend_from_slice(&(i as u32).to_le_bytes());
        }
        key.extend_from_slice(extra);
        RenderKey(key)
    }
}

impl std::fmt::Debug for AppManifests<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppManifests")
            .field("app", &self.app)
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

/// Whether a string value of `value` refers to a cluster built-in (or might: a literal
/// `$${cluster.` counts too).
pub(crate) fn mentions_cluster(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("${cluster."),
        Value::Array(items) => items.iter().any(mentions_cluster),
        Value::Object(map) => map.values().any(mentions_cluster),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

impl<'t> AppManifests<'t> {
    /// Reads the manifests under the app's directory (recursive, sorted, hidden entries skipped,
    /// `.yaml`/`.yml`/`.json`, patch files left out) and every overlay's patch files; a
    /// kustomization or Helm chart is rendered later, with the tools on PATH.
    pub fn load(
        tree: &'t dyn SourceTree,
        config: &FleetConfig,
        app: &str,
        limits: &Limits,
    ) -> Result<Self, RenderError> {
        Self::load_with(tree, config, app, limits, RenderEnv::default())
    }

    /// [`Self::load`], rendering kustomizations and charts with `env`.
    pub fn load_with(
        tree: &'t dyn SourceTree,
        config: &FleetConfig,
        app: &str,
        limits: &Limits,
        env: RenderEnv,
    ) -> Result<Self, RenderError> {
        let app_config = config
            .apps
            .get(app)
            .ok_or_else(|| RenderError::UnknownApp(app.to_owned()))?;
        let budget = Budget::new(limits.max_bundle_bytes);
        let mut patch_files = BTreeSet::new();
        let mut patches = Vec::new();
        for overlay in &app_config.overlays {
            let mut docs = Vec::new();
            for patch in &overlay.patches {
                let file = tree::join(&config.source_path, patch);
                let (real, size) = read_file_at(tree, &file)?;
                docs.extend(read_documents(tree, &file, &real, size, limits, &budget)?);
                patch_files.insert(real);
            }
            patches.push(docs);
        }
        let mut values_files = Vec::new();
        let helm_files = std::iter::once(app_config.helm.as_ref().map(|h| &h.values_files)).chain(
            app_config
                .overlays
                .iter()
                .map(|o| o.helm.as_ref().map(|h| &h.values_files)),
        );
        for files in helm_files {
            let mut read = Vec::new();
            for name in files.into_iter().flatten() {
                let file = tree::join(&config.source_path, name);
                let (real, size) = read_file_at(tree, &file)?;
                if size > limits.max_file_bytes {
                    return Err(RenderError::FileTooLarge {
                        file,
                        size,
                        limit: limits.max_file_bytes,
                    });
                }
                read.push((file, tree.read(&real)?));
            }
            values_files.push(read);
        }

        // The directories to render from, each loaded once.
        let mut dirs = Vec::new();
        let mut dir_index: Vec<(String, usize)> = Vec::new();
        let mut overlay_dir = Vec::new();
        let paths = std::iter::once(Some(&app_config.path))
            .chain(app_config.overlays.iter().map(|o| o.path.as_ref()));
        for (n, path) in paths.enumerate() {
            let Some(path) = path else {
                overlay_dir.push(None);
                continue;
            };
            if n == 0
                && let Some((repo, chart, version)) =
                    app_config.helm.as_ref().and_then(|h| h.remote())
            {
                dirs.push(DirSource::RemoteChart {
                    repo: repo.to_owned(),
                    chart: chart.to_owned(),
                    version: version.to_owned(),
                });
                continue;
            }
            let dir = tree::join(&config.source_path, path);
            let index = match dir_index.iter().find(|(d, _)| *d == dir) {
                Some(&(_, i)) => i,
                None => {
                    let source =
                        load_dir(tree, app, app_config, &dir, &patch_files, limits, &budget)?;
                    dirs.push(source);
                    dir_index.push((dir, dirs.len() - 1));
                    dirs.len() - 1
                }
            };
            if n > 0 {
                overlay_dir.push(Some(index));
            }
        }
        let patches_cluster_free = !patches.iter().flatten().any(|d| mentions_cluster(&d.value));
        Ok(AppManifests {
            app: app.to_owned(),
            config: app_config.clone(),
            limits: *limits,
            tree,
            env,
            dirs,
            overlay_dir,
            patches,
            values_files,
            patches_cluster_free,
            memo: Arc::default(),
        })
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// How the app's own directory renders (plain manifests, Kustomize or Helm).
    pub fn kind(&self) -> DirKind {
        match self.dirs[0] {
            DirSource::Plain { .. } => DirKind::Plain,
            DirSource::Kustomize { .. } => DirKind::Kustomize,
            DirSource::Helm { .. } | DirSource::RemoteChart { .. } => DirKind::Helm,
        }
    }

    /// What the rendering for `cluster` depends on, when that is less than the cluster itself:
    /// the overlays that match it (and for a Helm chart the values they make), unless the
    /// patches, the manifests or the kustomization's output refer to cluster built-ins. Clusters
    /// with the same key render alike, so a fleet renders once per distinct key: 10,000 clusters
    /// whose chart values come in 3 sets render 3 times.
    pub fn render_key(&self, cluster: &ClusterInfo) -> Option<RenderKey> {
        if !self.patches_cluster_free {
            return None;
        }
        let matching = self.matching(cluster);
        let dir = self.dir_for(&matching);
        match &self.dirs[dir] {
            DirSource::Plain {
                mentions_cluster, ..
            } => (!mentions_cluster).then(|| RenderKey::of(&matching, &[])),
            // The output is substituted like manifests: it must not name the cluster either.
            DirSource::Kustomize { .. } => {
                let out = self.tool_output(dir, &matching, cluster).ok()?;
                (!out.mentions_cluster).then(|| RenderKey::of(&matching, &[]))
            }
            // Only the values are substituted: the key holds them as substituted.
            DirSource::Helm { .. } | DirSource::RemoteChart { .. } => {
                let (_, values) = self
                    .helm_values(&matching, &self.scope(cluster, &matching))
                    .ok()?;
                Some(RenderKey::of(&matching, &super::canonical_json(&values)))
            }
        }
    }

    /// The variables of `cluster`: the matching overlays', the app's, the built-ins.
    fn scope<'s>(&'s self, cluster: &'s ClusterInfo, matching: &[usize]) -> Scope<'s> {
        let mut scope = Scope::new(cluster);
        for &i in matching.iter().rev() {
            scope = scope.with_layer(&self.config.overlays[i].vars);
        }
        scope.with_layer(&self.config.vars)
    }

    /// What the tool renders from `self.dirs[dir]` for a cluster the overlays `matching` pick
    /// (a plain directory has no tool output), looked up in this app's memo first.
    fn tool_output(
        &self,
        dir: usize,
        matching: &[usize],
        cluster: &ClusterInfo,
    ) -> Result<Arc<ToolOutput>, RenderError> {
        let memo_key = |extra: &[u8]| {
            let mut k = (dir as u32).to_le_bytes().to_vec();
            k.extend_from_slice(RenderKey::of(matching, extra).0.as_slice());
            k
        };
        let (key, values) = match &self.dirs[dir] {
            DirSource::Kustomize { .. } => ((dir as u32).to_le_bytes().to_vec(), None),
            _ => {
                let (files, values) = self.helm_values(matching, &self.scope(cluster, matching))?;
                (
                    memo_key(&super::canonical_json(&values)),
                    Some((files, values)),
                )
            }
        };
        if let Some(hit) = self
            .memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let tools = &self.env.tools;
        let out = match (&self.dirs[dir], values) {
            (DirSource::Kustomize { dir }, _) => {
                tools.kustomize(self.tree, dir, &self.limits, self.env.network)?
            }
            (DirSource::Helm { dir }, Some((files, values))) => {
                self.helm(ChartRef::Dir(dir), files, &values)?
            }
            (
                DirSource::RemoteChart {
                    repo,
                    chart,
                    version,
                },
                Some((files, values)),
            ) => {
                let package = tools.fetch_chart(repo, chart, version)?;
                let what = format!("{chart} {version} from {repo}");
                let chart_ref = ChartRef::Package {
                    what: &what,
                    bytes: &package,
                };
                self.helm(chart_ref, files, &values)?
            }
            _ => unreachable!("plain directories have no tool output"),
        };
        self.memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, out.clone());
        Ok(out)
    }

    fn matching(&self, cluster: &ClusterInfo) -> Vec<usize> {
        (0..self.config.overlays.len())
            .filter(|&i| self.config.overlays[i].when.matches(&cluster.labels))
            .collect()
    }

    /// The directory to render from: the last matching overlay's that names one, else the app's.
    fn dir_for(&self, matching: &[usize]) -> usize {
        matching
            .iter()
            .rev()
            .find_map(|&i| self.overlay_dir[i])
            .unwrap_or(0)
    }

    /// Renders the app for `cluster` (whether the app targets it is the caller's business).
    pub fn render(&self, cluster: &ClusterInfo) -> Result<RenderedApp, RenderError> {
        let matching = self.matching(cluster);
        let scope = self.scope(cluster, &matching);
        let dir = self.dir_for(&matching);
        let tool_output;
        let (docs, substitute_docs): (&[SourceDoc], bool) = match &self.dirs[dir] {
            DirSource::Plain { docs, .. } => (docs, true),
            source => {
                tool_output = self.tool_output(dir, &matching, cluster)?;
                // A kustomization's output is substituted like manifests; a chart's is not
                // (its values were).
                let substitute = matches!(source, DirSource::Kustomize { .. });
                (&tool_output.docs, substitute)
            }
        };
        let mut objects = Vec::with_capacity(docs.len());
        for doc in docs {
            let value = if substitute_docs {
                substituted(doc, &scope)?
            } else {
                doc.value.clone()
            };
            objects.push((doc.origin.clone(), value));
        }
        for &i in &matching {
            for doc in &self.patches[i] {
                self.apply_patch(doc, &scope, &mut objects)?;
            }
        }
        self.finish(objects)
    }

    /// The Helm values for a cluster the overlays `matching` pick: the app's values files, then
    /// the matching overlays', and the inline values merged in the same order (mappings merge,
    /// `null` deletes, anything else replaces), variables substituted.
    fn helm_values(
        &self,
        matching: &[usize],
        scope: &Scope<'_>,
    ) -> Result<(ValuesFiles, Value), RenderError> {
        let mut files = self.values_files[0].clone();
        let mut values = Value::Object(Default::default());
        let app_values = self.config.helm.as_ref().and_then(|h| h.values.as_ref());
        if let Some(v) = app_values {
            merge_patch(&mut values, v);
        }
        for &i in matching {
            files.extend(self.values_files[i + 1].iter().cloned());
            if let Some(v) = self.config.overlays[i]
                .helm
                .as_ref()
                .and_then(|h| h.values.as_ref())
            {
                merge_patch(&mut values, v);
            }
        }
        substitute(&mut values, scope).map_err(|error| RenderError::Variable {
            origin: Origin {
                file: format!("{CONFIG_FILE} (apps.{}.helm.values)", self.app),
                document: 1,
                item: None,
            },
            error,
        })?;
        Ok((files, values))
    }

    /// `helm template` of `chart` with `files` and `values`.
    fn helm(
        &self,
        chart: ChartRef<'_>,
        files: Vec<(String, Vec<u8>)>,
        values: &Value,
    ) -> Result<Arc<ToolOutput>, RenderError> {
        let release = self
            .config
            .helm
            .as_ref()
            .and_then(|h| h.release_name.as_deref())
            .unwrap_or(&self.app);
        self.env.tools.helm(
            self.tree,
            chart,
            release,
            self.config.namespace.as_deref(),
            files,
            values,
            &self.limits,
            self.env.network,
        )
    }

    fn is_cluster_scoped(&self, object: &Value) -> bool {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        is_cluster_scoped(kind, &self.config.cluster_scoped_kinds)
    }

    /// The namespace `object` ends up in (its own, or the app's default if it is namespaced).
    fn effective_namespace<'v>(&'v self, object: &'v Value) -> Option<&'v str> {
        if self.is_cluster_scoped(object) {
            return None;
        }
        namespace_of(object).or(self.config.namespace.as_deref())
    }

    fn apply_patch(
        &self,
        doc: &SourceDoc,
        scope: &Scope<'_>,
        objects: &mut [(Origin, Value)],
    ) -> Result<(), RenderError> {
        let patch = substituted(doc, scope)?;
        let target = PatchTarget::of(&patch).map_err(|reason| RenderError::InvalidPatch {
            origin: doc.origin.clone(),
            reason,
        })?;
        let mut hit = false;
        for (_, object) in objects.iter_mut() {
            let namespace = self.effective_namespace(object).map(str::to_owned);
            if target.matches(object, namespace.as_deref()) {
                merge_patch(object, &patch);
                hit = true;
            }
        }
        if !hit {
            return Err(RenderError::PatchUnmatched {
                origin: doc.origin.clone(),
                target: target.to_string(),
            });
        }
        Ok(())
    }

    /// Defaults namespaces, rejects duplicates, sorts, serializes and digests.
    fn finish(&self, objects: Vec<(Origin, Value)>) -> Result<RenderedApp, RenderError> {
        let mut keyed = Vec::with_capacity(objects.len());
        for (origin, mut object) in objects {
            let key = match (missing_field(&object), ObjectKey::of_rendered(&object)) {
                (None, Some(key)) => key,
                (Some("metadata.name"), Some(key)) => {
                    return Err(RenderError::GenerateName {
                        origin,
                        object: key.to_string(),
                    });
                }
                (field, _) => {
                    return Err(RenderError::MissingField {
                        origin,
                        field: field.unwrap_or("metadata.name"),
                    });
                }
            };
            let key = if self.is_cluster_scoped(&object) || !key.namespace.is_empty() {
                key
            } else {
                let Some(ns) = self.config.namespace.as_deref() else {
                    return Err(RenderError::NoNamespace {
                        origin,
                        object: key.to_string(),
                        app: self.app.clone(),
                    });
                };
                set_namespace(&mut object, ns);
                ObjectKey {
                    namespace: ns.to_owned(),
                    ..key
                }
            };
            keyed.push((key, origin, object));
        }
        // Stable: objects with equal keys stay in file order, so `first` is the earlier file.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in keyed.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(RenderError::Duplicate {
                    object: pair[0].0.to_string(),
                    first: pair[0].1.clone(),
                    second: pair[1].1.clone(),
                });
            }
        }
        let objects: Vec<Value> = keyed.into_iter().map(|(_, _, o)| o).collect();
        let canonical = canonical_bundle(&objects);
        let size = canonical.len() as u64;
        if size > self.limits.max_bundle_bytes {
            return Err(RenderError::BundleTooLarge {
                app: self.app.clone(),
                size,
                limit: self.limits.max_bundle_bytes,
            });
        }
        Ok(RenderedApp {
            digest: digest_of(&canonical),
            objects,
            canonical,
        })
    }
}

/// The real path and size of the file `file`.
fn read_file_at(tree: &dyn SourceTree, file: &str) -> Result<(String, u64), RenderError> {
    match tree::resolve(tree, file)? {
        Resolved::File { path, size } => Ok((path, size)),
        Resolved::Dir { .. } => Err(TreeError::NotAFile {
            path: file.to_owned(),
        }
        .into()),
    }
}

/// Loads one directory an app renders from: plain manifests are read now (patch files left
/// out); a kustomization or chart is only recorded.
fn load_dir(
    tree: &dyn SourceTree,
    app: &str,
    config: &AppConfig,
    dir: &str,
    patch_files: &BTreeSet<String>,
    limits: &Limits,
    budget: &Budget,
) -> Result<DirSource, RenderError> {
    let not_found = || RenderError::AppPathNotFound {
        app: app.to_owned(),
        path: dir.to_owned(),
    };
    let kind = match DirKind::of(tree, dir) {
        Ok(kind) => kind,
        Err(TreeError::NotFound { .. } | TreeError::NotADirectory { .. }) => {
            return Err(not_found());
        }
        Err(e) => return Err(e.into()),
    };
    if config.helm.as_ref().is_some_and(|h| h.repo.is_none()) && kind != DirKind::Helm {
        return Err(RenderError::NotAChart {
            app: app.to_owned(),
            dir: dir.to_owned(),
        });
    }
    Ok(match kind {
        DirKind::Kustomize => DirSource::Kustomize {
            dir: dir.to_owned(),
        },
        DirKind::Helm => DirSource::Helm {
            dir: dir.to_owned(),
        },
        DirKind::Plain => {
            let mut docs = Vec::new();
            for found in tree::walk_files(tree, dir, &is_manifest)? {
                if patch_files.contains(&found.real) {
                    continue;
                }
                docs.extend(read_documents(
                    tree,
                    &found.path,
                    &found.real,
                    found.size,
                    limits,
                    budget,
                )?);
            }
            let mentions_cluster = docs.iter().any(|d| mentions_cluster(&d.value));
            DirSource::Plain {
                docs,
                mentions_cluster,
            }
        }
    })
}

fn substituted(doc: &SourceDoc, scope: &Scope<'_>) -> Result<Value, RenderError> {
    let mut value = doc.value.clone();
    substitute(&mut value, scope).map_err(|error| RenderError::Variable {
        origin: doc.origin.clone(),
        error,
    })?;
    Ok(value)
}

/// The canonical bundle of sorted `objects`: their canonical JSON array (see
/// [`canonical_json`]).
pub fn canonical_bundle(objects: &[Value]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_canonical(object, &mut out);
    }
    out.push(b']');
    out
}

/// The canonical JSON form of `value`: compact, mapping keys sorted by their UTF-8 bytes, strings
/// escaped minimally (`"`, `\`, and control characters), numbers as `serde_json` prints them.
/// Equal values always give equal bytes, whatever key order or file layout they came from.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_escapes() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [true, null], "x": "q\"\n\u0001é"}}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": "q\"\n\u0001é", "y": [true, null]}, "b": 1}"#)
                .unwrap();
        let bytes = canonical_json(&a);
        assert_eq!(bytes, canonical_json(&b));
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"a":{"x":"q\"\n\u0001é","y":[true,null]},"b":1}"#
        );
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, a);
        assert_eq!(canonical_json(&json!(1.5)), b"1.5");
    }

    #[test]
    fn digest_format() {
        assert_eq!(
            digest_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
