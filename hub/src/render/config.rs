//! The `flotilla.yaml` model: apps, overlays and promotion pipelines, with the value types they
//! use (durations, counts or percentages, variable values). Loading and validation live in
//! `validate.rs`; `docs/flotilla-yaml.md` is the user-facing reference.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::selector::LabelSelector;

/// The name of the fleet file at the root of every source path.
pub const CONFIG_FILE: &str = "flotilla.yaml";

/// A parsed and validated `flotilla.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FleetConfig {
    /// Apps by name.
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    /// Promotion pipelines by name.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// The repository path of the directory holding the file (`""` for the root); app and patch
    /// paths are relative to it. Set by `load_config`.
    #[serde(skip)]
    pub source_path: String,
}

/// One app: a directory of manifests and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppConfig {
    /// Directory of manifests, relative to the source path, read recursively (a kustomization
    /// or a Helm chart); may be left out only for a chart from a repository (`helm.repo`).
    #[serde(default)]
    pub path: String,
    /// Namespace given to namespaced objects that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The clusters the app runs on (`{}` selects every cluster).
    pub targets: LabelSelector,
    /// Variables for `${name}` substitution.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, VarValue>,
    /// Per-cluster changes, applied in order where `when` matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<Overlay>,
    /// Apps that must be healthy on a cluster before this one is applied there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The promotion pipeline; without one a revision goes to every targeted cluster at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Kinds treated as cluster-scoped in addition to the built-in list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_scoped_kinds: Vec<String>,
    /// Whether objects removed from the bundle are deleted from the cluster.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub prune: bool,
    /// Whether drift found by the agent is corrected (otherwise only reported).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub self_heal: bool,
    /// Whether an apply takes fields owned by another field manager instead of failing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
    /// How long the app may take to become healthy on a cluster after an apply; default: its
    /// pipeline's `healthTimeout`, or 10 minutes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration"
    )]
    pub health_timeout: Option<Duration>,
    /// How many of its clusters one change may take the app off before the removal waits for
    /// an approval; default: its pipeline's `maxRemoval`, or 10%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_removal: Option<CountOrPercent>,
    /// Whether the agent creates the app's `namespace` before applying it (and deletes it with
    /// the app, never while it holds objects Flotilla did not apply).
    #[serde(default, skip_serializing_if = "is_false")]
    pub create_namespace: bool,
    /// How a Helm chart (a directory with `Chart.yaml`) is rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmConfig>,
}

/// `helm:` of an app whose directory is a Helm chart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmConfig {
    /// The release name `helm template` renders with; default: the app's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// Values files, relative to the source path, in order (a later one wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Inline values, over the files; variables are substituted in their strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
    /// A chart repository (`https://…`, serving `index.yaml`) or OCI registry (`oci://…`) to
    /// fetch `chart` at `version` from, instead of the app's `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The chart's name in `repo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// The chart's exact version (no ranges: a commit must always render the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl HelmConfig {
    /// `(repo, chart, version)` of a chart fetched from a repository.
    pub fn remote(&self) -> Option<(&str, &str, &str)> {
        Some((
            self.repo.as_deref()?,
            self.chart.as_deref()?,
            self.version.as_deref()?,
        ))
    }
}

/// `overlays[].helm:`: values for the clusters the overlay matches, over the app's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmOverlay {
    /// Values files, after the app's and earlier overlays'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Inline values, over everything before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
}

impl AppConfig {
    fn pipeline_in<'a>(&self, config: &'a FleetConfig) -> Option<&'a PipelineConfig> {
        self.pipeline.as_ref().and_then(|p| config.pipelines.get(p))
    }

    /// The app's `maxRemoval`, else its pipeline's, else 10%.
    pub fn effective_max_removal(&self, config: &FleetConfig) -> CountOrPercent {
        self.max_removal
            .or_else(|| self.pipeline_in(config).and_then(|p| p.max_removal))
            .unwrap_or(DEFAULT_MAX_REMOVAL)
    }

    /// How long the app may take to become healthy after an apply: its own `healthTimeout`,
    /// else its pipeline's, else [`DEFAULT_HEALTH_TIMEOUT`].
    pub fn effective_health_timeout(&self, config: &FleetConfig) -> Duration {
        self.health_timeout
            .or_else(|| self.pipeline_in(config).map(|p| p.health_timeout))
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT)
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Changes for the clusters a selector matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Overlay {
    /// Which clusters; absent means every targeted cluster.
    #[serde(default)]
    pub when: LabelSelector,
    /// Variables that override the app's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, VarValue>,
    /// Files of JSON merge patches (RFC 7386), relative to the source path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<String>,
    /// A directory rendered instead of the app's `path` (a Kustomize overlay per cluster); the
    /// last matching overlay that sets one wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Helm values for these clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmOverlay>,
}

/// A promotion pipeline: stages run in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineConfig {
    pub stages: Vec<Stage>,
    /// How long a cluster may take to become healthy after an apply.
    #[serde(default = "default_health_timeout", with = "duration")]
    pub health_timeout: Duration,
    /// What to do when a stage fails.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// How many failed clusters (or what share of a stage's clusters) fail the stage.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: CountOrPercent,
    /// How many of an app's clusters one change may take it off without an approval (the
    /// app's own `maxRemoval` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_removal: Option<CountOrPercent>,
}

/// The default `maxRemoval`: 10% of an app's clusters.
pub const DEFAULT_MAX_REMOVAL: CountOrPercent = CountOrPercent::Percent(10);

/// The default `healthTimeout`: 10 minutes.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(600);

fn default_health_timeout() -> Duration {
    DEFAULT_HEALTH_TIMEOUT
}

fn default_failure_threshold() -> CountOrPercent {
    CountOrPercent::Count(1)
}

fn all_at_once() -> CountOrPercent {
    CountOrPercent::Percent(100)
}

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Stage {
    pub name: String,
    /// The clusters of this stage (among the app's targets).
    pub selector: LabelSelector,
    /// How long the stage must stay healthy before the next one starts.
    #[serde(default, with = "duration")]
    pub soak: Duration,
    /// How many clusters of the stage are updated at a time.
    #[serde(default = "all_at_once")]
    pub max_parallel: CountOrPercent,
    /// Whether the stage waits for a person before it starts.
    #[serde(default)]
    pub approval: Approval,
}

/// Whether a stage needs a manual approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    #[default]
    Auto,
    Manual,
}

/// What a pipeline does when a stage fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop, and put the clusters already updated back on the previous revision.
    #[default]
    Rollback,
    /// Stop where it is.
    Halt,
}

// === CountOrPercent ===

/// A number of clusters, or a percentage of a stage's clusters (`3` or `"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOrPercent {
    /// At least 1.
    Count(u32),
    /// 1 to 100.
    Percent(u32),
}

impl CountOrPercent {
    /// The number of clusters out of `total` (a percentage rounds up, and is at least 1 when
    /// `total` is not 0).
    pub fn of(&self, total: usize) -> usize {
        match *self {
            CountOrPercent::Count(n) => n as usize,
            CountOrPercent::Percent(p) => (total * p as usize).div_ceil(100).max(total.min(1)),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid count or percentage {text:?}: use a whole number such as 2 or a percentage such as 25%"
            )
        };
        let (digits, percent) = match text.strip_suffix('%') {
            Some(d) => (d, true),
            None => (text, false),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u32 = digits.parse().map_err(|_| bad())?;
        match (percent, n) {
            (_, 0) => Err(format!("{text:?} must be at least 1")),
            (true, 101..) => Err(format!("{text:?} is over 100%")),
            (true, n) => Ok(CountOrPercent::Percent(n)),
            (false, n) => Ok(CountOrPercent::Count(n)),
        }
    }
}

impl fmt::Display for CountOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CountOrPercent::Count(n) => write!(f, "{n}"),
            CountOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for CountOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CountOrPercent::Count(n) => s.serialize_u32(*n),
            CountOrPercent::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for CountOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CountOrPercent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count such as 2 or a percentage such as 25%")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CountOrPercent, E> {
                CountOrPercent::parse(&v.to_string()).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CountOrPercent, E> {
                CountOrPercent::parse(&v.to_string()).map_err(E::custom)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<CountOrPercent, E> {
                CountOrPercent::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// === VarValue ===

/// The value of a variable: a string, a number or a boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum VarValue {
    String(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl VarValue {
    /// The value as a JSON scalar (used when a whole string is one `${name}` reference).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            VarValue::String(s) => serde_json::Value::String(s.clone()),
            VarValue::Number(n) => serde_json::Value::Number(n.clone()),
            VarValue::Bool(b) => serde_json::Value::Bool(*b),
        }
    }
}

impl fmt::Display for VarValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VarValue::String(s) => f.write_str(s),
            VarValue::Number(n) => write!(f, "{n}"),
            VarValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl From<&str> for VarValue {
    fn from(s: &str) -> Self {
        VarValue::String(s.to_owned())
    }
}

impl Serialize for VarValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for VarValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VarValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<VarValue, E> {
                Ok(VarValue::String(v.to_owned()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<VarValue, E> {
                Ok(VarValue::Bool(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<VarValue, E> {
                Ok(VarValue::Number(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VarValue, E> {
                Ok(VarValue::Number(v.into()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<VarValue, E> {
                serde_json::Number::from_f64(v)
                    .map(VarValue::Number)
                    .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
            }
        }
        d.deserialize_any(V)
    }
}

// === durations ===

/// `serde(with)` helpers for human durations such as `30s`, `10m`, `1h30m`.
pub(crate) mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 10m or 1h30m")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {v:?} ({e}): use a number with a unit, such as 30s, 10m or 1h30m"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `Option<Duration>` in the same format as [`duration`].
pub(crate) mod optional_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_or_percent_parses_and_resolves() {
        assert_eq!(CountOrPercent::parse("3"), Ok(CountOrPercent::Count(3)));
        assert_eq!(
            CountOrPercent::parse("25%"),
            Ok(CountOrPercent::Percent(25))
        );
        assert!(CountOrPercent::parse("0").is_err());
        assert!(CountOrPercent::parse("0%").is_err());
        assert!(CountOrPercent::parse("150%").is_err());
        assert!(CountOrPercent::parse("-1").is_err());
        assert!(CountOrPercent::parse("half").is_err());
        assert_eq!(CountOrPercent::Percent(25).of(10), 3);
        assert_eq!(CountOrPercent::Percent(1).of(3), 1);
        assert_eq!(CountOrPercent::Percent(100).of(0), 0);
        assert_eq!(CountOrPercent::Count(2).of(10), 2);
    }
}
