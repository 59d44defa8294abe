//! What rendering costs for tool-rendered apps, in process, the way a sync renders a fleet
//! (`render_all` in hub/src/engine/sources.rs): `load_config` + `AppManifests::load_with`, then
//! for every targeted cluster its `render_key`, one `render` and one `BundleCache::put` per
//! distinct key.
//!
//! The repository holds the same web service (ServiceAccount, ConfigMap, Service, Deployment,
//! PodDisruptionBudget, HorizontalPodAutoscaler) three ways, each with three variants chosen per
//! cluster by its `tier` label (dev, staging, prod):
//! * `web`: a Kustomize base and three overlays (`overlays[].path`), each with a namePrefix,
//!   an image override, a strategic-merge and a JSON 6902 patch and a ConfigMap generator;
//! * `web-helm`: a chart and three values files (`overlays[].helm.valuesFiles`);
//! * `web-plain`, the floor: the same objects as plain manifests with three Flotilla overlays
//!   (variables and a patch file each), no tool.
//!
//! Every app is measured over each fleet size twice: **cold** (a fresh tool cache and bundle
//! cache, as after a hub restart) on the first commit, and **warm** (the caches of the cold
//! sync) on later commits that change only another app's file. Cold must cost 3 tool runs and
//! warm none; each sync must produce 3 distinct bundles.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_hub::git::{CommitTree, GitRef, Mirror, SourceSpec};
use flotilla_hub::render::{
    AppManifests, BundleCache, ClusterInfo, Limits, RenderEnv, ToolConfig, Tools, load_config,
    targeted_clusters,
};
use serde::Serialize;

use crate::render::Timing;
use crate::repo::GitRepo;

/// The cluster label that picks the variant, and its values.
const TIER: &str = "tier";
const TIERS: [&str; 3] = ["dev", "staging", "prod"];
/// Per tier: (replicas, image tag, log level, max replicas).
const VARIANTS: [(u32, &str, &str, u32); 3] = [
    (1, "1.5.0-rc.2", "debug", 2),
    (2, "1.4.3", "info", 6),
    (5, "1.4.2", "warn", 20),
];

/// The apps measured: (name in flotilla.yaml, how it renders).
pub const APPS: [(&str, &str); 3] = [
    ("web", "kustomize"),
    ("web-helm", "helm"),
    ("web-plain", "plain (floor)"),
];

pub struct Options {
    /// Fleet sizes, ascending.
    pub clusters: Vec<usize>,
    /// Timed syncs per (app, fleet size, cold/warm).
    pub reps: usize,
    pub tools: ToolConfig,
    /// Also measure the Helm chart.
    pub helm: bool,
}

/// Figures of one (app, fleet size, cold/warm).
#[derive(Debug, Clone, Serialize)]
pub struct SyncRow {
    pub app: String,
    pub renderer: String,
    pub clusters: usize,
    /// "cold" or "warm".
    pub sync: String,
    pub timing: Timing,
    /// Median per targeted cluster.
    pub per_cluster_us: f64,
    /// Tool runs of one sync (the same in every repetition, or the run fails).
    pub tool_runs: u64,
    /// `render` calls of one sync (distinct render keys).
    pub renders: usize,
    /// Distinct bundles of one sync.
    pub bundles: usize,
    /// Objects in each distinct bundle, in tier order of first appearance.
    pub objects_per_bundle: Vec<usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KustomizeReport {
    pub kustomize_version: String,
    pub helm_version: Option<String>,
    pub isolation: String,
    pub rows: Vec<SyncRow>,
}

// === the repository ===

const FLEET: &str = "\
apps:
  web:
    path: web/base
    namespace: web
    targets: {}
    overlays:
      - when: {matchLabels: {tier: dev}}
        path: web/overlays/dev
      - when: {matchLabels: {tier: staging}}
        path: web/overlays/staging
      - when: {matchLabels: {tier: prod}}
        path: web/overlays/prod
  web-helm:
    path: charts/web
    namespace: web
    targets: {}
    helm:
      releaseName: web
    overlays:
      - when: {matchLabels: {tier: dev}}
        helm: {valuesFiles: [values/web-dev.yaml]}
      - when: {matchLabels: {tier: staging}}
        helm: {valuesFiles: [values/web-staging.yaml]}
      - when: {matchLabels: {tier: prod}}
        helm: {valuesFiles: [values/web-prod.yaml]}
  web-plain:
    path: plain/web
    namespace: web
    targets: {}
    overlays:
PLAIN_OVERLAYS  notes:
    path: notes
    namespace: notes
    targets: {}
";

fn fleet_config() -> String {
    let overlays: String = TIERS
        .iter()
        .zip(VARIANTS)
        .map(|(tier, (replicas, tag, level, max))| {
            format!(
                "      - when: {{matchLabels: {{tier: {tier}}}}}\n        \
                 vars: {{prefix: {tier}-, tier: {tier}, tag: \"{tag}\", level: {level}, replicas: {replicas}, maxReplicas: {max}}}\n        \
                 patches: [plain/patches/{tier}.yaml]\n"
            )
        })
        .collect();
    FLEET.replace("PLAIN_OVERLAYS", &overlays)
}

/// The base objects, Kustomize-style (fixed values, overridden by the overlays).
const BASE: &[(&str, &str)] = &[
    (
        "serviceaccount.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n",
    ),
    (
        "configmap.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  \
         nginx.conf: |\n    server {\n      listen 8080;\n      location / { proxy_pass http://127.0.0.1:9000; }\n    }\n  \
         features: \"search,cart\"\n",
    ),
    (
        "service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  \
         ports:\n  - {name: http, port: 80, targetPort: 8080}\n",
    ),
    (
        "deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  \
         selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    \
         spec:\n      serviceAccountName: web\n      containers:\n      - name: web\n        \
         image: registry.example/shop/web:1.0.0\n        ports:\n        - {containerPort: 8080}\n        \
         envFrom:\n        - configMapRef: {name: web-env}\n        \
         resources:\n          requests: {cpu: 100m, memory: 128Mi}\n        \
         volumeMounts:\n        - {name: config, mountPath: /etc/nginx}\n      \
         volumes:\n      - name: config\n        configMap: {name: web-config}\n",
    ),
    (
        "pdb.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: web\nspec:\n  \
         maxUnavailable: 1\n  selector:\n    matchLabels: {app: web}\n",
    ),
    (
        "hpa.yaml",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  \
         scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  \
         maxReplicas: 3\n  metrics:\n  - type: Resource\n    resource:\n      name: cpu\n      \
         target: {type: Utilization, averageUtilization: 70}\n",
    ),
];

const BASE_KUSTOMIZATION: &str = "\
resources:
- serviceaccount.yaml
- configmap.yaml
- service.yaml
- deployment.yaml
- pdb.yaml
- hpa.yaml
labels:
- pairs: {app.kubernetes.io/name: web, team: storefront}
configMapGenerator:
- name: web-env
  literals: [LOG_LEVEL=info, PORT=8080]
";

fn overlay_kustomization(
    tier: &str,
    (replicas, tag, level, max): (u32, &str, &str, u32),
) -> String {
    format!(
        "resources: [../../base]\n\
         namePrefix: {tier}-\n\
         labels:\n- pairs: {{tier: {tier}}}\n\
         images:\n- name: registry.example/shop/web\n  newTag: \"{tag}\"\n\
         configMapGenerator:\n- name: web-env\n  behavior: merge\n  literals: [LOG_LEVEL={level}]\n\
         patches:\n\
         - path: deployment.yaml\n\
         - target: {{kind: HorizontalPodAutoscaler, name: web}}\n  patch: |-\n    \
         - {{op: replace, path: /spec/maxReplicas, value: {max}}}\n    \
         - {{op: replace, path: /spec/minReplicas, value: {replicas}}}\n"
    )
}

fn overlay_deployment_patch(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  \
         template:\n    spec:\n      containers:\n      - name: web\n        \
         resources:\n          limits: {{memory: 512Mi}}\n"
    )
}

/// The chart: the same objects, with the variant from the values.
const CHART: &[(&str, &str)] = &[
    (
        "Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 1.4.0\nappVersion: \"1.4.2\"\n",
    ),
    (
        "values.yaml",
        "prefix: \"\"\ntag: 1.0.0\nlogLevel: info\nreplicas: 1\nmaxReplicas: 3\n",
    ),
    (
        "templates/_helpers.tpl",
        "{{- define \"web.labels\" -}}\napp.kubernetes.io/name: web\nteam: storefront\n\
         tier: {{ .Values.tier | quote }}\nhelm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}\n{{- end }}\n",
    ),
    (
        "templates/serviceaccount.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{ .Values.prefix }}web\n  \
         labels:\n    {{- include \"web.labels\" . | nindent 4 }}\n",
    ),
    (
        "templates/configmap.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.prefix }}web-config\n  \
         labels:\n    {{- include \"web.labels\" . | nindent 4 }}\ndata:\n  \
         nginx.conf: |\n    server {\n      listen 8080;\n      location / { proxy_pass http://127.0.0.1:9000; }\n    }\n  \
         features: \"search,cart\"\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.prefix }}web-env\n  \
         labels:\n    {{- include \"web.labels\" . | nindent 4 }}\ndata:\n  \
         LOG_LEVEL: {{ .Values.logLevel | quote }}\n  PORT: \"8080\"\n",
    ),
    (
        "templates/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Values.prefix }}web\n  \
         labels:\n    {{- include \"web.labels\" . | nindent 4 }}\nspec:\n  selector:\n    app: web\n  \
         ports:\n  - {name: http, port: 80, targetPort: 8080}\n",
    ),
    (
        "templates/deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Values.prefix }}web\n  \
         labels:\n    {{- include \"web.labels\" . | nindent 4 }}\nspec:\n  \
         replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels: {app: web}\n  template:\n    \
         metadata:\n      labels: {app: web}\n    spec:\n      \
         serviceAccountName: {{ .Values.prefix }}web\n      containers:\n      - name: web\n        \
         image: \"registry.example/shop/web:{{ .Values.tag }}\"\n        ports:\n        - {containerPort: 8080}\n        \
         envFrom:\n        - configMapRef: {name: {{ .Values.prefix }}web-env}\n        \
         resources:\n          requests: {cpu: 100m, memory: 128Mi}\n          limits: {memory: 512Mi}\n        \
         volumeMounts:\n        - {name: config, mountPath: /etc/nginx}\n      \
         volumes:\n      - name: config\n        configMap: {name: {{ .Values.prefix }}web-config}\n",
    ),
    (
        "templates/pdb.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: {{ .Values.prefix }}web\n  \
         labels:\n    {{- include \"web.labels\" . | nindent 4 }}\nspec:\n  \
         maxUnavailable: 1\n  selector:\n    matchLabels: {app: web}\n",
    ),
    (
        "templates/hpa.yaml",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {{ .Values.prefix }}web\n  \
         labels:\n    {{- include \"web.labels\" . | nindent 4 }}\nspec:\n  \
         scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: {{ .Values.prefix }}web}\n  \
         minReplicas: {{ .Values.replicas }}\n  maxReplicas: {{ .Values.maxReplicas }}\n  metrics:\n  \
         - type: Resource\n    resource:\n      name: cpu\n      \
         target: {type: Utilization, averageUtilization: 70}\n",
    ),
];

fn chart_values(tier: &str, (replicas, tag, level, max): (u32, &str, &str, u32)) -> String {
    format!(
        "prefix: {tier}-\ntier: {tier}\ntag: \"{tag}\"\nlogLevel: {level}\nreplicas: {replicas}\nmaxReplicas: {max}\n"
    )
}

/// The plain app: the same objects with `${…}` variables from the overlay (names included).
fn plain_manifests() -> String {
    let labels = "  labels: {app.kubernetes.io/name: web, team: storefront, tier: \"${tier}\"}\n";
    let mut docs = Vec::new();
    for (_, text) in BASE {
        let text = text
            .replace("  name: web\n", "  name: ${prefix}web\n")
            .replace("  name: web-config\n", "  name: ${prefix}web-config\n")
            .replacen(
                "metadata:\n  name: ${prefix}web",
                &format!("metadata:\n{labels}  name: ${{prefix}}web"),
                1,
            )
            .replace(
                "serviceAccountName: web",
                "serviceAccountName: ${prefix}web",
            )
            .replace("{name: web-env}", "{name: \"${prefix}web-env\"}")
            .replace(
                "configMap: {name: web-config}",
                "configMap: {name: \"${prefix}web-config\"}",
            )
            .replace(
                "kind: Deployment, name: web}",
                "kind: Deployment, name: \"${prefix}web\"}",
            )
            .replace(
                "replicas: 1\n  selector",
                "replicas: ${replicas}\n  selector",
            )
            .replace("minReplicas: 1", "minReplicas: ${replicas}")
            .replace("maxReplicas: 3", "maxReplicas: ${maxReplicas}")
            .replace("web:1.0.0", "web:${tag}")
            .replace(
                "requests: {cpu: 100m, memory: 128Mi}\n",
                "requests: {cpu: 100m, memory: 128Mi}\n          limits: {memory: 512Mi}\n",
            );
        docs.push(text);
    }
    docs.push(format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n{labels}  name: ${{prefix}}web-env\ndata:\n  \
         LOG_LEVEL: \"${{level}}\"\n  PORT: \"8080\"\n"
    ));
    docs.join("---\n")
}

/// A Flotilla overlay patch (JSON merge patch: lists are replaced whole, so it touches maps).
fn plain_patch(tier: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {tier}-web\n  \
         annotations: {{flotilla.example/tier: {tier}}}\nspec:\n  revisionHistoryLimit: 5\n  \
         strategy:\n    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}\n"
    )
}

fn notes_file(n: usize) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  revision: \"{n}\"\n"
    )
}

/// Writes the repository and commits it, then `warm_commits` commits that each change only
/// the other app's file. Returns the commits, first the full one.
pub fn build_repo(dir: &Path, warm_commits: usize) -> Result<(GitRepo, Vec<String>)> {
    let repo = GitRepo::init(dir)?;
    repo.write("flotilla.yaml", &fleet_config())?;
    for (name, text) in BASE {
        repo.write(&format!("web/base/{name}"), text)?;
    }
    repo.write("web/base/kustomization.yaml", BASE_KUSTOMIZATION)?;
    for (tier, variant) in TIERS.iter().zip(VARIANTS) {
        repo.write(
            &format!("web/overlays/{tier}/kustomization.yaml"),
            &overlay_kustomization(tier, variant),
        )?;
        repo.write(
            &format!("web/overlays/{tier}/deployment.yaml"),
            &overlay_deployment_patch(variant.0),
        )?;
        repo.write(
            &format!("values/web-{tier}.yaml"),
            &chart_values(tier, variant),
        )?;
        repo.write(&format!("plain/patches/{tier}.yaml"), &plain_patch(tier))?;
    }
    for (name, text) in CHART {
        repo.write(&format!("charts/web/{name}"), text)?;
    }
    repo.write("plain/web/web.yaml", &plain_manifests())?;
    repo.write("notes/notes.yaml", &notes_file(0))?;
    let mut commits = vec![repo.commit_all("web three ways, and notes")?];
    for n in 1..=warm_commits {
        repo.write("notes/notes.yaml", &notes_file(n))?;
        commits.push(repo.commit_tracked(&format!("notes {n}"))?);
    }
    Ok((repo, commits))
}

/// The fleet: `n` clusters spread over the tiers in turn (ids from 1, as in the registry).
pub fn fleet(n: usize) -> Vec<ClusterInfo> {
    (0..n)
        .map(|i| {
            ClusterInfo::new(
                format!("cluster-{i:05}"),
                [
                    (TIER, TIERS[i % TIERS.len()]),
                    ("region", ["eu-west-1", "us-east-1"][i / 3 % 2]),
                ],
            )
            .with_id(i as u32 + 1)
        })
        .collect()
}

/// What one sync of one app produced.
struct Synced {
    renders: usize,
    digests: BTreeSet<String>,
    objects_per_bundle: Vec<usize>,
    targeted: usize,
}

/// One app of one commit for the fleet, the way `render_all` does it.
fn sync_app(
    tree: &CommitTree,
    app: &str,
    clusters: &[ClusterInfo],
    env: &RenderEnv,
    bundles: &BundleCache,
) -> Result<Synced> {
    let limits = Limits::default();
    let config = load_config(tree, "", &limits).map_err(|e| anyhow!("{e}"))?;
    let manifests = AppManifests::load_with(tree, &config, app, &limits, env.clone())
        .with_context(|| format!("loading app {app}"))?;
    let mut group_of: HashMap<flotilla_hub::render::RenderKey, usize> = HashMap::new();
    let mut out = Synced {
        renders: 0,
        digests: BTreeSet::new(),
        objects_per_bundle: Vec::new(),
        targeted: 0,
    };
    for cluster in targeted_clusters(&config, app, clusters) {
        out.targeted += 1;
        let key = manifests.render_key(cluster);
        if key.as_ref().is_some_and(|k| group_of.contains_key(k)) {
            continue;
        }
        let r = manifests
            .render(cluster)
            .with_context(|| format!("rendering {app} for {}", cluster.name))?;
        out.renders += 1;
        let b = bundles.put(&r.canonical).context("storing the bundle")?;
        if out.digests.insert(b.digest) {
            out.objects_per_bundle.push(r.objects.len());
        }
        if let Some(k) = key {
            group_of.insert(k, out.renders);
        }
    }
    Ok(out)
}

/// The tool runs, renders and bundles one sync must show.
fn check(app: &str, sync: &str, want_runs: u64, runs: u64, s: &Synced, n: usize) -> Result<()> {
    let variants = TIERS.len();
    if s.targeted != n {
        bail!(
            "{app} ({sync}, {n} clusters): targeted {} clusters",
            s.targeted
        );
    }
    if runs != want_runs {
        bail!("{app} ({sync}, {n} clusters): {runs} tool runs, expected {want_runs}");
    }
    if s.renders != variants || s.digests.len() != variants {
        bail!(
            "{app} ({sync}, {n} clusters): {} renders and {} distinct bundles, expected {variants} of each",
            s.renders,
            s.digests.len()
        );
    }
    Ok(())
}

struct Measured {
    samples: Vec<Duration>,
    runs: u64,
    synced: Synced,
}

/// Cold syncs: each with a fresh tool cache (versions asked before timing, as a running hub has
/// done for its readiness) and a fresh bundle cache. Returns the tools and bundle cache of the
/// last one, warm.
fn cold(
    opts: &Options,
    tree: &CommitTree,
    app: &str,
    fleet: &[ClusterInfo],
    scratch: &Path,
) -> Result<(Measured, RenderEnv, BundleCache)> {
    let mut samples = Vec::with_capacity(opts.reps);
    let mut last = None;
    for rep in 0..opts.reps {
        let tools = Arc::new(Tools::new(opts.tools.clone()));
        let versions = tools.versions();
        versions
            .kustomize
            .as_ref()
            .map_err(|e| anyhow!("kustomize ({}): {e}", opts.tools.kustomize_bin.display()))?;
        if opts.helm {
            versions
                .helm
                .as_ref()
                .map_err(|e| anyhow!("helm ({}): {e}", opts.tools.helm_bin.display()))?;
        }
        tools.isolation();
        let env = RenderEnv {
            tools: tools.clone(),
            network: false,
        };
        let dir = scratch.join(format!("bundles-{app}-{}-{rep}", fleet.len()));
        let bundles = BundleCache::open(&dir).context("opening a bundle cache")?;
        let t = Instant::now();
        let synced = sync_app(tree, app, fleet, &env, &bundles)?;
        samples.push(t.elapsed());
        last = Some((tools.runs(), synced, env, bundles));
    }
    let (runs, synced, env, bundles) = last.ok_or_else(|| anyhow!("no repetitions"))?;
    Ok((
        Measured {
            samples,
            runs,
            synced,
        },
        env,
        bundles,
    ))
}

/// Warm syncs: each a later commit (only the other app changed) with the cold sync's caches.
fn warm(
    trees: &[CommitTree],
    app: &str,
    fleet: &[ClusterInfo],
    env: &RenderEnv,
    bundles: &BundleCache,
    cold_digests: &BTreeSet<String>,
) -> Result<Measured> {
    let mut samples = Vec::with_capacity(trees.len());
    let mut last = None;
    let mut max_runs = 0;
    for tree in trees {
        let before = env.tools.runs();
        let t = Instant::now();
        let synced = sync_app(tree, app, fleet, env, bundles)?;
        samples.push(t.elapsed());
        let runs = env.tools.runs() - before;
        max_runs = max_runs.max(runs);
        if &synced.digests != cold_digests {
            bail!("{app}: a commit that changes only another app changed its bundles");
        }
        last = Some(synced);
    }
    Ok(Measured {
        samples,
        runs: max_runs,
        synced: last.ok_or_else(|| anyhow!("no repetitions"))?,
    })
}

fn row(app: &str, renderer: &str, n: usize, sync: &str, m: Measured) -> SyncRow {
    let timing = Timing::of(m.samples);
    SyncRow {
        app: app.into(),
        renderer: renderer.into(),
        clusters: n,
        sync: sync.into(),
        per_cluster_us: timing.median_ms * 1000.0 / n as f64,
        timing,
        tool_runs: m.runs,
        renders: m.synced.renders,
        bundles: m.synced.digests.len(),
        objects_per_bundle: m.synced.objects_per_bundle,
    }
}

pub fn run(opts: &Options, scratch: &Path) -> Result<KustomizeReport> {
    if opts.clusters.is_empty() || opts.reps == 0 {
        bail!("the kustomize phase needs at least one fleet size and one repetition");
    }
    let (repo, commits) = build_repo(&scratch.join("repo"), opts.reps)?;
    let spec = SourceSpec::new("kustomize", repo.url(), GitRef::Branch("main".into()));
    let mirror =
        Mirror::open_or_init(&scratch.join("mirror"), &spec).context("creating the mirror")?;
    let fetched = mirror.fetch(&spec).context("fetching into the mirror")?;
    let head = commits.last().expect("at least one commit");
    if &fetched.commit != head {
        bail!(
            "the mirror fetched {} but the repository is at {head}",
            fetched.commit
        );
    }
    let trees = commits
        .iter()
        .map(|c| mirror.tree(c, "").context("opening a commit tree"))
        .collect::<Result<Vec<_>>>()?;
    let (first, later) = trees.split_first().expect("at least one tree");

    let probe = Tools::new(opts.tools.clone());
    let mut rep = KustomizeReport {
        kustomize_version: probe
            .versions()
            .kustomize
            .clone()
            .map_err(|e| anyhow!("kustomize ({}): {e}", opts.tools.kustomize_bin.display()))?,
        helm_version: if opts.helm {
            Some(
                probe
                    .versions()
                    .helm
                    .clone()
                    .map_err(|e| anyhow!("helm ({}): {e}", opts.tools.helm_bin.display()))?,
            )
        } else {
            None
        },
        isolation: format!("{:?}", probe.isolation()),
        rows: Vec::new(),
    };
    let apps: Vec<(&str, &str)> = APPS
        .iter()
        .copied()
        .filter(|(_, r)| opts.helm || *r != "helm")
        .collect();
    let max = *opts.clusters.iter().max().expect("checked above");
    let all = fleet(max);
    // One untimed sync of each app for the smallest fleet: the tools' binaries and the mirror's
    // objects in the page cache, the outputs checked.
    for (app, _) in &apps {
        let (m, ..) = cold(
            &Options {
                reps: 1,
                clusters: Vec::new(),
                tools: opts.tools.clone(),
                helm: opts.helm,
            },
            first,
            app,
            &all[..opts.clusters[0]],
            &scratch.join("warm-up"),
        )?;
        let want = if *app == "web-plain" { 0 } else { 3 };
        check(app, "warm-up", want, m.runs, &m.synced, opts.clusters[0])?;
    }
    for &n in &opts.clusters {
        let fleet = &all[..n];
        for (app, renderer) in &apps {
            let want = if *app == "web-plain" { 0 } else { 3 };
            let (m, env, bundles) = cold(opts, first, app, fleet, scratch)?;
            check(app, "cold", want, m.runs, &m.synced, n)?;
            let digests = m.synced.digests.clone();
            let cold_row = row(app, renderer, n, "cold", m);
            let m = warm(later, app, fleet, &env, &bundles, &digests)?;
            check(app, "warm", 0, m.runs, &m.synced, n)?;
            let warm_row = row(app, renderer, n, "warm", m);
            for r in [&cold_row, &warm_row] {
                println!(
                    "deliverybench: {} ({}), {} clusters, {}: median {:.1} ms ({:.1} µs/cluster), {} tool runs, {} bundles",
                    r.app,
                    r.renderer,
                    r.clusters,
                    r.sync,
                    r.timing.median_ms,
                    r.per_cluster_us,
                    r.tool_runs,
                    r.bundles
                );
            }
            rep.rows.push(cold_row);
            rep.rows.push(warm_row);
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the real tools (`.ci/tools`): the invariants the benchmark checks hold on a small
    /// fleet, and a broken kustomization fails the run instead of measuring nothing.
    #[test]
    fn a_small_fleet_costs_three_tool_runs_cold_and_none_warm() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            clusters: vec![7, 30],
            reps: 2,
            tools: flotilla_tests::tool_config(),
            helm: true,
        };
        let rep = run(&opts, dir.path()).unwrap();
        assert!(
            rep.kustomize_version.starts_with("kustomize v5."),
            "{rep:?}"
        );
        assert_eq!(rep.rows.len(), 2 * 3 * 2, "{rep:?}");
        for r in &rep.rows {
            let want_runs = if r.sync == "cold" && r.app != "web-plain" {
                3
            } else {
                0
            };
            assert_eq!(r.tool_runs, want_runs, "{r:?}");
            assert_eq!((r.renders, r.bundles), (3, 3), "{r:?}");
            assert_eq!(r.objects_per_bundle, vec![7, 7, 7], "{r:?}");
            assert_eq!(r.timing.reps, 2, "{r:?}");
        }

        let repo = GitRepo {
            dir: dir.path().join("repo"),
        };
        repo.write(
            "web/overlays/prod/kustomization.yaml",
            "resources: [missing.yaml]\n",
        )
        .unwrap();
        let broken = check_broken(&repo);
        assert!(
            broken.contains("kustomize build web/overlays/prod"),
            "{broken}"
        );
    }

    /// Renders the (now broken) repository's Kustomize app for a prod cluster.
    fn check_broken(repo: &GitRepo) -> String {
        repo.commit_tracked("break prod").unwrap();
        let spec = SourceSpec::new("broken", repo.url(), GitRef::Branch("main".into()));
        let scratch = tempfile::tempdir().unwrap();
        let mirror = Mirror::open_or_init(scratch.path(), &spec).unwrap();
        let head = mirror.fetch(&spec).unwrap().commit;
        let tree = mirror.tree(&head, "").unwrap();
        let env = RenderEnv {
            tools: Arc::new(Tools::new(flotilla_tests::tool_config())),
            network: false,
        };
        let bundles = BundleCache::open(scratch.path().join("bundles")).unwrap();
        let err = sync_app(&tree, "web", &fleet(3), &env, &bundles)
            .err()
            .expect("a broken overlay fails the sync");
        format!("{err:#}")
    }

    #[test]
    fn the_fleet_spreads_over_the_three_tiers() {
        let f = fleet(10_000);
        for tier in TIERS {
            let n = f.iter().filter(|c| c.labels[TIER] == tier).count();
            assert!((3333..=3334).contains(&n), "{tier}: {n}");
        }
    }

    #[test]
    fn the_plain_app_names_its_objects_per_tier() {
        let text = plain_manifests();
        assert_eq!(text.matches("\nkind: ").count(), 7, "{text}");
        assert_eq!(text.matches("name: ${prefix}web\n").count(), 5, "{text}");
        assert!(text.contains("replicas: ${replicas}\n  selector"), "{text}");
        assert!(
            text.contains("image: registry.example/shop/web:${tag}"),
            "{text}"
        );
        assert!(fleet_config().contains("patches: [plain/patches/prod.yaml]"));
    }
}
