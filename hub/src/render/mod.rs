//! Rendering: reads `flotilla.yaml` from a source tree at a commit, renders each app for each
//! targeted cluster, and produces canonical, content-addressed, compressed bundles.
//!
//! The flow, and the pieces other modules plug into:
//! - a [`SourceTree`] gives the files of a commit (`DirTree` for a local directory; the git
//!   module implements it over a commit tree);
//! - [`load_config`] reads and validates `<source_path>/flotilla.yaml` into a [`FleetConfig`];
//! - [`targeted_clusters`] picks an app's clusters; [`AppManifests::load`] reads an app's files
//!   once and [`AppManifests::render`] renders them per cluster into a [`RenderedApp`]
//!   (`render_app` does both for one cluster);
//! - [`BundleCache::put`] stores the canonical bytes under their digest; identical renderings
//!   share one file.
//!
//! Bundle format: the canonical bytes are a compact JSON array of Kubernetes objects sorted by
//! (API group, kind, namespace, name), mapping keys sorted bytewise; the digest is
//! `sha256:<hex>` of those bytes; the cache stores them gzip-compressed.
//! `docs/flotilla-yaml.md` is the user-facing reference of the file format and the rules.

mod bundle;
mod cache;
mod clusters;
mod config;
mod error;
mod locate;
mod manifests;
mod objects;
mod overlay;
mod selector;
pub mod tool;
mod tree;
mod validate;
mod vars;
mod yaml;

#[cfg(test)]
mod tests;

pub use bundle::{
    AppManifests, RenderEnv, RenderKey, RenderedApp, canonical_bundle, canonical_json, digest_of,
    render_app, targeted_clusters,
};
pub use cache::{BundleCache, BundleRef, CacheError, Compressed};
pub use clusters::{ClusterId, ClusterSet};
pub use config::{
    AppConfig, Approval, CONFIG_FILE, CountOrPercent, DEFAULT_HEALTH_TIMEOUT, DEFAULT_MAX_REMOVAL,
    FleetConfig, HelmConfig, HelmOverlay, OnFailure, Overlay, PipelineConfig, Stage, VarValue,
};
pub use error::{Origin, RenderError};
pub use objects::{CLUSTER_SCOPED_KINDS, ObjectKey, is_cluster_scoped};
pub use overlay::merge_patch;
pub use selector::{
    ClusterInfo, LabelSelector, LabelSelectorRequirement, SelectorError, SelectorOperator,
};
pub use tool::{DirKind, Isolation, ToolConfig, ToolVersions, Tools};
pub use tree::{
    DirTree, EntryKind, FoundFile, MAX_SYMLINK_HOPS, MAX_WALK_ENTRIES, Resolved, SourceTree,
    TreeEntry, TreeError, resolve, walk_all_files, walk_files,
};
pub use validate::{ConfigError, Diagnostic, Problem, load_config, parse_config};
pub use vars::VarError;
pub use yaml::Location;

/// Size limits on what rendering reads and produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest manifest, patch or `flotilla.yaml` file, in bytes (default 8 MiB).
    pub max_file_bytes: u64,
    /// The largest canonical bundle, in bytes (default 64 MiB). Parsed YAML is also held to
    /// it while reading (aliases count at their expanded size), so alias bombs fail fast.
    pub max_bundle_bytes: u64,
}

/// 8 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 << 20;
/// 64 MiB.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 64 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_bundle_bytes: DEFAULT_MAX_BUNDLE_BYTES,
        }
    }
}
