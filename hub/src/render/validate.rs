//! Loading `flotilla.yaml` from a [`SourceTree`] and validating it, with errors that name the
//! file, line, column and field (`flotilla.yaml:12:7: apps.web.pipeline: unknown pipeline
//! "regionz"`).
//!
//! Parsing happens in three passes over the text: a size-budgeted pass that rejects alias bombs,
//! duplicate keys and tags; the typed `serde` pass (syntax, unknown fields, value formats — the
//! parser reports where); and semantic checks on the typed model (names, references, cycles,
//! paths), whose field paths are turned into positions with [`locate`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::Limits;
use super::config::{CONFIG_FILE, FleetConfig};
use super::locate::{FieldPath, locate};
use super::selector::{LabelSelector, SelectorError};
use super::tree::{self, Resolved, SourceTree, TreeError};
use super::vars;
use super::yaml::{self, Budget, Location, YamlError};

/// Errors loading `flotilla.yaml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is there but wrong; says where.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    #[error("{file}: not found (a source path needs a {CONFIG_FILE} at its root)")]
    NotFound { file: String },
    #[error("{file}: {size} bytes is over the file size limit of {limit} bytes")]
    TooLarge { file: String, size: u64, limit: u64 },
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: TreeError,
    },
}

impl ConfigError {
    /// The positioned problem, when the file was read but is invalid.
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            ConfigError::Invalid(d) => Some(d),
            _ => None,
        }
    }

    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ConfigError::Invalid(_) => "invalid",
            ConfigError::NotFound { .. } => "not_found",
            ConfigError::TooLarge { .. } => "too_large",
            ConfigError::Read { .. } => "read",
        }
    }
}

/// A problem in `flotilla.yaml` and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Repository path of the file.
    pub file: String,
    /// Where, when known.
    pub location: Option<Location>,
    /// The field at fault, such as `apps.web.pipeline` (empty for a syntax error).
    pub field: String,
    pub problem: Problem,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for Diagnostic {}

/// What is wrong with a field of `flotilla.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Reported by the YAML parser: syntax, unknown fields, wrong types, bad durations, counts
    /// and operators.
    #[error("{0}")]
    Yaml(String),
    #[error("YAML aliases expand beyond the limit of {limit} bytes (an alias bomb?)")]
    AliasExpansion { limit: u64 },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("unknown pipeline {0:?}")]
    UnknownPipeline(String),
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    #[error("{0:?} is listed more than once")]
    Repeated(String),
    #[error("dependency cycle: {}", .0.join(" -> "))]
    DependencyCycle(Vec<String>),
    #[error("a pipeline needs at least one stage")]
    NoStages,
    #[error("must be longer than zero")]
    ZeroDuration,
    #[error("{0}")]
    Selector(SelectorError),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("app directory {0:?} not found")]
    AppPathNotFound(String),
    #[error("patch file {0:?} not found")]
    PatchNotFound(String),
    #[error("values file {0:?} not found")]
    ValuesFileNotFound(String),
    #[error("createNamespace needs the app's namespace: set `namespace`")]
    CreateNamespaceWithoutNamespace,
    #[error("Helm values must be a mapping")]
    ValuesNotAMapping,
    #[error("{0}")]
    RemoteChart(&'static str),
    #[error("{0}")]
    Tree(String),
}

/// Reads, parses and validates `<source_path>/flotilla.yaml` from `tree`, including that every
/// app directory and patch file exists.
pub fn load_config(
    tree: &dyn SourceTree,
    source_path: &str,
    limits: &Limits,
) -> Result<FleetConfig, ConfigError> {
    let source_path = tree::normalize(source_path).map_err(|source| ConfigError::Read {
        file: source_path.to_owned(),
        source,
    })?;
    let file = tree::join(&source_path, CONFIG_FILE);
    let (real, size) = match tree::resolve(tree, &file) {
        Ok(Resolved::File { path, size }) => (path, size),
        Ok(Resolved::Dir { .. }) | Err(TreeError::NotFound { .. }) => {
            return Err(ConfigError::NotFound { file });
        }
        Err(source) => return Err(ConfigError::Read { file, source }),
    };
    if size > limits.max_file_bytes {
        return Err(ConfigError::TooLarge {
            file,
            size,
            limit: limits.max_file_bytes,
        });
    }
    let bytes = tree.read(&real).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(ConfigError::TooLarge {
            file,
            size: bytes.len() as u64,
            limit: limits.max_file_bytes,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        invalid(
            &file,
            None,
            String::new(),
            Problem::Yaml("the file is not UTF-8".into()),
        )
    })?;
    let mut config = parse_config(&file, &text, limits)?;
    config.source_path = source_path;
    check_paths(tree, &config)
        .map_err(|(path, at_key, problem)| positioned(&file, &text, &path, at_key, problem))?;
    Ok(config)
}

/// Parses and validates the text of a `flotilla.yaml` named `file` (everything but the checks
/// that need the tree). The result's `source_path` is empty.
pub fn parse_config(file: &str, text: &str, limits: &Limits) -> Result<FleetConfig, ConfigError> {
    let budget = Budget::new(limits.max_bundle_bytes);
    yaml::parse_documents(text.as_bytes(), &budget).map_err(|e| yaml_error(file, e, limits))?;
    let config: FleetConfig = serde_yaml_ng::from_str(text)
        .map_err(|e| yaml_error(file, yaml::split_error(&e), limits))?;
    check(&config)
        .map_err(|(path, at_key, problem)| positioned(file, text, &path, at_key, problem))?;
    Ok(config)
}

fn invalid(file: &str, location: Option<Location>, field: String, problem: Problem) -> ConfigError {
    ConfigError::Invalid(Box::new(Diagnostic {
        file: file.to_owned(),
        location,
        field,
        problem,
    }))
}

fn yaml_error(file: &str, err: YamlError, limits: &Limits) -> ConfigError {
    match err {
        YamlError::Syntax {
            location,
            field,
            message,
        } => invalid(file, location, field, Problem::Yaml(message)),
        YamlError::Aliases { location } | YamlError::Budget { location } => invalid(
            file,
            location,
            String::new(),
            Problem::AliasExpansion {
                limit: limits.max_bundle_bytes,
            },
        ),
    }
}

fn positioned(
    file: &str,
    text: &str,
    path: &FieldPath,
    at_key: bool,
    problem: Problem,
) -> ConfigError {
    invalid(file, locate(text, path, at_key), path.to_string(), problem)
}

/// A semantic problem: the field, whether the key itself is at fault, and what.
type Found = (FieldPath, bool, Problem);

fn at(path: FieldPath, problem: Problem) -> Found {
    (path, false, problem)
}

/// Semantic checks on a parsed config, in a fixed order (apps, then pipelines).
fn check(config: &FleetConfig) -> Result<(), Found> {
    let root = FieldPath::default();
    for (name, app) in &config.apps {
        let here = root.key("apps").key(name);
        check_name(name).map_err(|p| (here.clone(), true, p))?;
        let remote = app.helm.as_ref().is_some_and(|h| h.repo.is_some());
        if remote && !app.path.is_empty() {
            return Err(at(
                here.key("path"),
                Problem::RemoteChart("a chart from a repository (`helm.repo`) takes no `path`"),
            ));
        }
        if !remote {
            check_rel_path(&app.path).map_err(|p| at(here.key("path"), p))?;
        }
        if let Some(ns) = &app.namespace {
            check_name(ns).map_err(|p| at(here.key("namespace"), p))?;
        }
        check_selector(&app.targets, &here.key("targets"))?;
        check_vars(&app.vars, &here.key("vars"))?;
        if app.create_namespace && app.namespace.is_none() {
            return Err(at(
                here.key("createNamespace"),
                Problem::CreateNamespaceWithoutNamespace,
            ));
        }
        if let Some(helm) = &app.helm {
            let h = here.key("helm");
            if let Some(release) = &helm.release_name {
                check_name(release).map_err(|p| at(h.key("releaseName"), p))?;
            }
            check_values(&helm.values_files, helm.values.as_ref(), &h)?;
            check_remote_chart(helm, &h)?;
        }
        for (i, overlay) in app.overlays.iter().enumerate() {
            let o = here.key("overlays").index(i);
            check_selector(&overlay.when, &o.key("when"))?;
            check_vars(&overlay.vars, &o.key("vars"))?;
            for (j, patch) in overlay.patches.iter().enumerate() {
                check_rel_path(patch).map_err(|p| at(o.key("patches").index(j), p))?;
            }
            if let Some(path) = &overlay.path {
                check_rel_path(path).map_err(|p| at(o.key("path"), p))?;
            }
            if let Some(helm) = &overlay.helm {
                check_values(&helm.values_files, helm.values.as_ref(), &o.key("helm"))?;
            }
        }
        let mut seen = BTreeSet::new();
        for (i, dep) in app.depends_on.iter().enumerate() {
            let d = here.key("dependsOn").index(i);
            if !config.apps.contains_key(dep) {
                return Err(at(d, Problem::UnknownApp(dep.clone())));
            }
            if !seen.insert(dep) {
                return Err(at(d, Problem::Repeated(dep.clone())));
            }
        }
        if app.health_timeout.is_some_and(|t| t.is_zero()) {
            return Err(at(here.key("healthTimeout"), Problem::ZeroDuration));
        }
        if let Some(p) = &app.pipeline
            && !config.pipelines.contains_key(p)
        {
            return Err(at(
                here.key("pipeline"),
                Problem::UnknownPipeline(p.clone()),
            ));
        }
        for (i, kind) in app.cluster_scoped_kinds.iter().enumerate() {
            if kind.is_empty() || kind.contains(char::is_whitespace) {
                return Err(at(
                    here.key("clusterScopedKinds").index(i),
                    Problem::InvalidName {
                        name: kind.clone(),
                        reason: "a kind is one word, such as ClusterIssuer",
                    },
                ));
            }
        }
    }
    check_cycles(config)?;
    for (name, pipeline) in &config.pipelines {
        let here = root.key("pipelines").key(name);
        check_name(name).map_err(|p| (here.clone(), true, p))?;
        if pipeline.stages.is_empty() {
            return Err(at(here.key("stages"), Problem::NoStages));
        }
        if pipeline.health_timeout.is_zero() {
            return Err(at(here.key("healthTimeout"), Problem::ZeroDuration));
        }
        let mut seen = BTreeSet::new();
        for (i, stage) in pipeline.stages.iter().enumerate() {
            let s = here.key("stages").index(i);
            check_name(&stage.name).map_err(|p| at(s.key("name"), p))?;
            if !seen.insert(&stage.name) {
                return Err(at(s.key("name"), Problem::Repeated(stage.name.clone())));
            }
            check_selector(&stage.selector, &s.key("selector"))?;
        }
    }
    Ok(())
}

/// A chart from a repository names the repository, chart and exact version together.
fn check_remote_chart(helm: &crate::render::HelmConfig, path: &FieldPath) -> Result<(), Found> {
    let (repo, chart, version) = (&helm.repo, &helm.chart, &helm.version);
    if repo.is_none() && chart.is_none() && version.is_none() {
        return Ok(());
    }
    let Some(repo) = repo else {
        return Err(at(
            path.key("repo"),
            Problem::RemoteChart(
                "`repo` is missing: set the chart repository (https://…) or registry (oci://…)",
            ),
        ));
    };
    if !(repo.starts_with("https://") || repo.starts_with("http://") || repo.starts_with("oci://"))
    {
        return Err(at(
            path.key("repo"),
            Problem::RemoteChart("must start with https://, http:// or oci://"),
        ));
    }
    match chart {
        None => {
            return Err(at(
                path.key("chart"),
                Problem::RemoteChart("`chart` is missing: the chart's name in the repository"),
            ));
        }
        Some(c) if c.is_empty() || c.contains(['/', ' ']) => {
            return Err(at(
                path.key("chart"),
                Problem::RemoteChart("a chart name is one word, such as redis"),
            ));
        }
        Some(_) => {}
    }
    match version {
        None => Err(at(
            path.key("version"),
            Problem::RemoteChart("`version` is missing: name the chart's exact version"),
        )),
        Some(v)
            if v.is_empty()
                || v.contains(['^', '~', '>', '<', '=', '*', ' ', ',', '|'])
                || v.ends_with(".x") =>
        {
            Err(at(
                path.key("version"),
                Problem::RemoteChart(
                    "must be one exact version such as 1.4.2, not a range: a commit must always render the same chart",
                ),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// Helm values files are relative paths and inline values a mapping.
fn check_values(
    files: &[String],
    values: Option<&serde_json::Value>,
    path: &FieldPath,
) -> Result<(), Found> {
    for (i, file) in files.iter().enumerate() {
        check_rel_path(file).map_err(|p| at(path.key("valuesFiles").index(i), p))?;
    }
    match values {
        Some(v) if !v.is_object() && !v.is_null() => {
            Err(at(path.key("values"), Problem::ValuesNotAMapping))
        }
        _ => Ok(()),
    }
}

/// App, pipeline, stage and namespace names: DNS labels (RFC 1123), the same rule as cluster names.
fn check_name(name: &str) -> Result<(), Problem> {
    match flotilla_proto::identity::validate_name(name) {
        Ok(()) => Ok(()),
        Err(flotilla_proto::identity::IdentityError::BadName { why, .. }) => {
            Err(Problem::InvalidName {
                name: name.to_owned(),
                reason: why,
            })
        }
        Err(_) => Err(Problem::InvalidName {
            name: name.to_owned(),
            reason: "not a DNS label",
        }),
    }
}

/// Paths in the file: relative to the source path, and staying inside it.
fn check_rel_path(path: &str) -> Result<(), Problem> {
    let bad = |reason| {
        Err(Problem::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.starts_with('/') {
        return bad("must be relative to the directory of flotilla.yaml");
    }
    if path.split('/').any(|c| c == "..") {
        return bad("must not contain '..'");
    }
    Ok(())
}

fn check_selector(sel: &LabelSelector, path: &FieldPath) -> Result<(), Found> {
    sel.check().map_err(|(i, e)| {
        let p = match i {
            Some(i) => path.key("matchExpressions").index(i),
            None => path.key("matchLabels"),
        };
        at(p, Problem::Selector(e))
    })
}

fn check_vars<V>(vars: &BTreeMap<String, V>, path: &FieldPath) -> Result<(), Found> {
    for name in vars.keys() {
        if !vars::valid_name(name) {
            return Err((
                path.key(name),
                true,
                Problem::InvalidName {
                    name: name.clone(),
                    reason: "a variable name starts with a letter or '_' and holds letters, digits, '_', '-', '.' and '/'",
                },
            ));
        }
    }
    Ok(())
}

/// Finds a `dependsOn` cycle; reports it at the first edge of the cycle.
fn check_cycles(config: &FleetConfig) -> Result<(), Found> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    fn visit<'a>(
        config: &'a FleetConfig,
        app: &'a str,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Result<(), Found> {
        match marks.get(app) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Active) => {
                let start = stack.iter().position(|a| *a == app).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(app.to_owned());
                // Point at the first edge of the cycle: cycle[0]'s dependsOn entry cycle[1].
                let (from, to) = (&cycle[0], &cycle[1]);
                let index = config
                    .apps
                    .get(from)
                    .and_then(|a| a.depends_on.iter().position(|d| d == to))
                    .unwrap_or(0);
                let path = FieldPath::default()
                    .key("apps")
                    .key(from)
                    .key("dependsOn")
                    .index(index);
                return Err(at(path, Problem::DependencyCycle(cycle)));
            }
            None => {}
        }
        marks.insert(app, Mark::Active);
        stack.push(app);
        if let Some(cfg) = config.apps.get(app) {
            for dep in &cfg.depends_on {
                visit(config, dep, marks, stack)?;
            }
        }
        stack.pop();
        marks.insert(app, Mark::Done);
        Ok(())
    }
    let mut marks = BTreeMap::new();
    for app in config.apps.keys() {
        visit(config, app, &mut marks, &mut Vec::new())?;
    }
    Ok(())
}

/// Checks that app directories and patch files exist in the tree.
fn check_paths(tree: &dyn SourceTree, config: &FleetConfig) -> Result<(), Found> {
    let tree_problem = |e: TreeError| Problem::Tree(e.to_string());
    for (name, app) in &config.apps {
        let here = FieldPath::default().key("apps").key(name);
        let dir = tree::join(&config.source_path, &app.path);
        let remote = app.helm.as_ref().is_some_and(|h| h.repo.is_some());
        match tree::resolve(tree, &dir) {
            _ if remote && app.path.is_empty() => {}
            Ok(Resolved::Dir { .. }) => {}
            Ok(Resolved::File { .. }) | Err(TreeError::NotFound { .. }) => {
                return Err(at(here.key("path"), Problem::AppPathNotFound(dir)));
            }
            Err(e) => return Err(at(here.key("path"), tree_problem(e))),
        }
        let file_exists = |file: &str, path: FieldPath, missing: fn(String) -> Problem| {
            let file = tree::join(&config.source_path, file);
            match tree::resolve(tree, &file) {
                Ok(Resolved::File { .. }) => Ok(()),
                Ok(Resolved::Dir { .. }) | Err(TreeError::NotFound { .. }) => {
                    Err(at(path, missing(file)))
                }
                Err(e) => Err(at(path, tree_problem(e))),
            }
        };
        let values_files = app.helm.iter().map(|h| (here.key("helm"), &h.values_files));
        for (i, overlay) in app.overlays.iter().enumerate() {
            let o = here.key("overlays").index(i);
            for (j, patch) in overlay.patches.iter().enumerate() {
                file_exists(patch, o.key("patches").index(j), Problem::PatchNotFound)?;
            }
            if let Some(path) = &overlay.path {
                let dir = tree::join(&config.source_path, path);
                match tree::resolve(tree, &dir) {
                    Ok(Resolved::Dir { .. }) => {}
                    Ok(Resolved::File { .. }) | Err(TreeError::NotFound { .. }) => {
                        return Err(at(o.key("path"), Problem::AppPathNotFound(dir)));
                    }
                    Err(e) => return Err(at(o.key("path"), tree_problem(e))),
                }
            }
        }
        let overlay_values = app.overlays.iter().enumerate().filter_map(|(i, o)| {
            let h = o.helm.as_ref()?;
            Some((here.key("overlays").index(i).key("helm"), &h.values_files))
        });
        for (h, files) in values_files.chain(overlay_values) {
            for (j, file) in files.iter().enumerate() {
                file_exists(
                    file,
                    h.key("valuesFiles").index(j),
                    Problem::ValuesFileNotFound,
                )?;
            }
        }
    }
    Ok(())
}

impl FleetConfig {
    /// App names in an order where every app comes after the apps it depends on (ties by name).
    pub fn dependency_order(&self) -> Vec<&str> {
        let mut order: Vec<&str> = Vec::new();
        let mut placed = BTreeSet::new();
        while order.len() < self.apps.len() {
            let before = order.len();
            for (name, app) in &self.apps {
                if !placed.contains(name.as_str())
                    && app.depends_on.iter().all(|d| placed.contains(d.as_str()))
                {
                    placed.insert(name.as_str());
                    order.push(name);
                }
            }
            if order.len() == before {
                // Only reachable with a cycle, which validation rejects.
                break;
            }
        }
        order
    }
}
