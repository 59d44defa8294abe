//! [`RenderError`], the errors of rendering an app, and [`Origin`], where an object came from.

use std::fmt;

use super::tree::TreeError;
use super::vars::VarError;
use super::yaml::Location;

/// Where a document came from: file, 1-based document index, and the item index inside a
/// `kind: List` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        f.write_str(")")
    }
}

fn at(location: &Option<Location>) -> String {
    location
        .map(|l| format!(":{}:{}", l.line, l.column))
        .unwrap_or_default()
}

/// Errors rendering an app for a cluster. Each names the file (and document) or app at fault.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    #[error("app {app}: directory {path} not found")]
    AppPathNotFound { app: String, path: String },
    #[error("{0}")]
    Tree(#[from] TreeError),
    #[error("{file}: {size} bytes is over the file size limit of {limit} bytes")]
    FileTooLarge { file: String, size: u64, limit: u64 },
    #[error(
        "app {app}: the rendered bundle is {size} bytes, over the bundle size limit of {limit} bytes"
    )]
    BundleTooLarge { app: String, size: u64, limit: u64 },
    #[error(
        "{file}: the manifests expand beyond the bundle size limit of {limit} bytes (YAML aliases count at their expanded size)"
    )]
    ExpansionLimit { file: String, limit: u64 },
    #[error("{file}{}: YAML aliases are dereferenced too often (an alias bomb?)", at(.location))]
    AliasBomb {
        file: String,
        location: Option<Location>,
    },
    #[error("{file}{}: invalid YAML: {message}", at(.location))]
    Yaml {
        file: String,
        location: Option<Location>,
        message: String,
    },
    #[error("{file}:{line}:{column}: invalid JSON: {message}")]
    Json {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: not a mapping; every document must be a Kubernetes object")]
    NotAnObject { origin: Origin },
    #[error("{origin}: {field} is missing")]
    MissingField { origin: Origin, field: &'static str },
    #[error("{origin}: {error}")]
    Variable { origin: Origin, error: VarError },
    #[error("{origin}: {object} has no namespace, and app {app} sets no default namespace")]
    NoNamespace {
        origin: Origin,
        object: String,
        app: String,
    },
    #[error("{object} is defined twice: in {first} and in {second}")]
    Duplicate {
        object: String,
        first: Origin,
        second: Origin,
    },
    #[error("{origin}: invalid patch: {reason}")]
    InvalidPatch {
        origin: Origin,
        reason: &'static str,
    },
    #[error("{origin}: the patch for {target} matches no object")]
    PatchUnmatched { origin: Origin, target: String },
    #[error(
        "{origin}: {object} has metadata.generateName and no name; Flotilla creates such objects only as Helm hooks (annotation helm.sh/hook), since any other would be created anew at every apply: give it a metadata.name"
    )]
    GenerateName { origin: Origin, object: String },
    #[error("{what}: {message}")]
    Tool { what: String, message: String },
    #[error("app {app}: `helm` is set, but {dir} has no Chart.yaml")]
    NotAChart { app: String, dir: String },
}

impl RenderError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RenderError::UnknownApp(_) => "unknown_app",
            RenderError::AppPathNotFound { .. } => "app_path_not_found",
            RenderError::Tree(TreeError::SymlinkEscapes { .. }) => "symlink_escapes",
            RenderError::Tree(_) => "tree",
            RenderError::FileTooLarge { .. } => "file_too_large",
            RenderError::BundleTooLarge { .. } => "bundle_too_large",
            RenderError::ExpansionLimit { .. } | RenderError::AliasBomb { .. } => "alias_bomb",
            RenderError::Yaml { .. } | RenderError::Json { .. } => "malformed",
            RenderError::NotAnObject { .. } | RenderError::MissingField { .. } => "not_an_object",
            RenderError::Variable { .. } => "variable",
            RenderError::NoNamespace { .. } => "no_namespace",
            RenderError::Duplicate { .. } => "duplicate",
            RenderError::InvalidPatch { .. } | RenderError::PatchUnmatched { .. } => "patch",
            RenderError::GenerateName { .. } => "generate_name",
            RenderError::Tool { .. } | RenderError::NotAChart { .. } => "tool",
        }
    }
}
