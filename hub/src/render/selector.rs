//! Cluster label selectors (`matchLabels` + `matchExpressions`, Kubernetes semantics) and the
//! cluster facts rendering and targeting read ([`ClusterInfo`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What rendering and targeting know about a cluster: its fleet-wide id, name and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The registry's id of the cluster (0 where no registry is involved: rendering alone).
    #[serde(default)]
    pub id: super::ClusterId,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ClusterInfo {
    /// A cluster with the given name and labels.
    pub fn new<K, V>(name: impl Into<String>, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        ClusterInfo {
            id: 0,
            name: name.into(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The same cluster with the registry's id.
    pub fn with_id(self, id: super::ClusterId) -> Self {
        ClusterInfo { id, ..self }
    }
}

/// A label selector. Every `matchLabels` pair and every expression must hold; the empty
/// selector matches every cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a [`LabelSelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label is set to one of `values`.
    In,
    /// The label is unset, or set to none of `values`.
    NotIn,
    /// The label is set (`values` must be empty).
    Exists,
    /// The label is unset (`values` must be empty).
    DoesNotExist,
}

/// Why a selector is malformed (the caller adds where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("operator {0:?} needs at least one value")]
    MissingValues(SelectorOperator),
    #[error("operator {0:?} takes no values")]
    UnexpectedValues(SelectorOperator),
    #[error("label key must not be empty")]
    EmptyKey,
}

impl LabelSelector {
    /// Whether a cluster with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Checks the selector's shape. On error, returns the `matchExpressions` index at fault
    /// (`None` for a `matchLabels` problem).
    pub fn check(&self) -> Result<(), (Option<usize>, SelectorError)> {
        if self.match_labels.keys().any(String::is_empty) {
            return Err((None, SelectorError::EmptyKey));
        }
        for (i, req) in self.match_expressions.iter().enumerate() {
            req.check().map_err(|e| (Some(i), e))?;
        }
        Ok(())
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }

    fn check(&self) -> Result<(), SelectorError> {
        if self.key.is_empty() {
            return Err(SelectorError::EmptyKey);
        }
        match self.operator {
            SelectorOperator::In | SelectorOperator::NotIn if self.values.is_empty() => {
                Err(SelectorError::MissingValues(self.operator))
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist
                if !self.values.is_empty() =>
            {
                Err(SelectorError::UnexpectedValues(self.operator))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&labels(&[])));
        assert!(LabelSelector::default().matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn match_labels_and_expressions_all_must_hold() {
        let sel = LabelSelector {
            match_labels: labels(&[("env", "prod")]),
            match_expressions: vec![
                req(
                    "region",
                    SelectorOperator::In,
                    &["eu-west-1", "eu-central-1"],
                ),
                req("ring", SelectorOperator::NotIn, &["canary"]),
                req("gpu", SelectorOperator::DoesNotExist, &[]),
                req("geo", SelectorOperator::Exists, &[]),
            ],
        };
        let ok = labels(&[("env", "prod"), ("region", "eu-west-1"), ("geo", "eu")]);
        assert!(sel.matches(&ok));
        let mut canary = ok.clone();
        canary.insert("ring".into(), "canary".into());
        assert!(!sel.matches(&canary));
        let mut gpu = ok.clone();
        gpu.insert("gpu".into(), "a100".into());
        assert!(!sel.matches(&gpu));
        let mut us = ok.clone();
        us.insert("region".into(), "us-east-1".into());
        assert!(!sel.matches(&us));
        let mut dev = ok;
        dev.insert("env".into(), "dev".into());
        assert!(!sel.matches(&dev));
    }

    #[test]
    fn check_rejects_operator_value_mismatches() {
        let sel = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![
                req("a", SelectorOperator::Exists, &[]),
                req("b", SelectorOperator::In, &[]),
            ],
        };
        assert_eq!(
            sel.check(),
            Err((Some(1), SelectorError::MissingValues(SelectorOperator::In)))
        );
        let sel = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![req("a", SelectorOperator::Exists, &["x"])],
        };
        assert_eq!(
            sel.check(),
            Err((
                Some(0),
                SelectorError::UnexpectedValues(SelectorOperator::Exists)
            ))
        );
    }
}
