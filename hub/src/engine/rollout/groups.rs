//! The compact shapes a rollout record keeps clusters in, so that it grows with the distinct
//! renderings and with the clusters whose state differs, not with clusters × revisions:
//! [`Groups`] (one entry per distinct rendering, with the clusters that get it) and
//! [`ByRevision`] (clusters per revision they ran). Pure data.

use serde::{Deserialize, Serialize};

use crate::render::{ClusterId, ClusterSet};
use crate::state::desired::AppEntry;

/// One distinct entry and the clusters that get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub entry: AppEntry,
    pub clusters: ClusterSet,
}

/// Entries per cluster, stored once per distinct entry (bundle digest, size, options,
/// dependencies): at 10,000 clusters that all render alike, one entry and one range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Groups(pub(super) Vec<Group>);

impl Groups {
    /// Whether some cluster gets bundle `digest`.
    pub fn has_digest(&self, digest: &str) -> bool {
        self.0.iter().any(|g| g.entry.bundle_digest == digest)
    }

    /// The entries of `entries` grouped by identical entry.
    pub fn from_entries(entries: impl IntoIterator<Item = (ClusterId, AppEntry)>) -> Self {
        let mut g = Groups::default();
        for (c, e) in entries {
            g.insert(c, e);
        }
        g
    }

    /// Adds `cluster`, which has no entry yet, with `entry`: to the group with an equal entry,
    /// or as a new group. Returns the group's index (for [`Self::add_to`]).
    pub fn add(&mut self, cluster: ClusterId, entry: AppEntry) -> usize {
        match self.0.iter().position(|g| g.entry == entry) {
            Some(i) => {
                self.0[i].clusters.insert(cluster);
                i
            }
            None => {
                self.0.push(Group {
                    entry,
                    clusters: std::iter::once(cluster).collect(),
                });
                self.0.len() - 1
            }
        }
    }

    /// Adds `cluster`, which has no entry yet, to group `i` (as returned by [`Self::add`], with
    /// no removal since).
    pub fn add_to(&mut self, i: usize, cluster: ClusterId) {
        self.0[i].clusters.insert(cluster);
    }

    pub fn get(&self, cluster: ClusterId) -> Option<&AppEntry> {
        self.0
            .iter()
            .find(|g| g.clusters.contains(cluster))
            .map(|g| &g.entry)
    }

    pub fn contains(&self, cluster: ClusterId) -> bool {
        self.0.iter().any(|g| g.clusters.contains(cluster))
    }

    /// Sets `cluster`'s entry (it leaves the group it was in).
    pub fn insert(&mut self, cluster: ClusterId, entry: AppEntry) {
        self.remove(cluster);
        self.add(cluster, entry);
    }

    /// Takes `cluster` out; its entry, if it had one.
    pub fn remove(&mut self, cluster: ClusterId) -> Option<AppEntry> {
        let i = self.0.iter().position(|g| g.clusters.contains(cluster))?;
        let g = &mut self.0[i];
        g.clusters.remove(cluster);
        let entry = g.entry.clone();
        if g.clusters.is_empty() {
            self.0.remove(i);
        }
        Some(entry)
    }

    /// Every cluster with an entry.
    pub fn clusters(&self) -> ClusterSet {
        let mut all = ClusterSet::new();
        for g in &self.0 {
            all.extend_set(&g.clusters);
        }
        all
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|g| g.clusters.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The distinct entries with their clusters.
    pub fn groups(&self) -> &[Group] {
        &self.0
    }

    /// Every cluster with its entry, by group.
    pub fn iter(&self) -> impl Iterator<Item = (ClusterId, &AppEntry)> {
        self.0
            .iter()
            .flat_map(|g| g.clusters.iter().map(move |c| (c, &g.entry)))
    }

    /// Stamps every entry with `revision`.
    pub fn stamp(&mut self, revision: &str) {
        for g in &mut self.0 {
            g.entry.revision = revision.to_owned();
        }
    }
}

/// Clusters per revision (`None`: no revision of the app), for the clusters whose revision
/// differs from a rollout's common case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByRevision(Vec<(Option<String>, ClusterSet)>);

impl ByRevision {
    /// The revision recorded for `cluster` (`None`: nothing recorded; `Some(None)`: no
    /// revision).
    pub fn get(&self, cluster: ClusterId) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(_, set)| set.contains(cluster))
            .map(|(rev, _)| rev.as_deref())
    }

    pub fn insert(&mut self, cluster: ClusterId, revision: Option<String>) {
        for (_, set) in &mut self.0 {
            set.remove(cluster);
        }
        self.0.retain(|(_, set)| !set.is_empty());
        match self.0.iter_mut().find(|(r, _)| *r == revision) {
            Some((_, set)) => {
                set.insert(cluster);
            }
            None => self.0.push((revision, std::iter::once(cluster).collect())),
        }
    }

    /// The revisions recorded.
    pub fn revisions(&self) -> impl Iterator<Item = &String> {
        self.0.iter().filter_map(|(r, _)| r.as_ref())
    }

    /// Every cluster with its recorded revision.
    pub fn iter(&self) -> impl Iterator<Item = (ClusterId, Option<&str>)> {
        self.0
            .iter()
            .flat_map(|(r, set)| set.iter().map(move |c| (c, r.as_deref())))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The stored form of an app's kept renderings: a group whose clusters are exactly those of a
/// group of an earlier rendering refers to it (`[rendering, group]`) instead of repeating the
/// set. Revisions of an app usually split the fleet alike (the same overlays, the same
/// targets), so ten kept renderings cost about one set of cluster sets.
pub mod renders {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Group, Groups};
    use crate::engine::rollout::plan::Render;
    use crate::render::ClusterSet;
    use crate::state::desired::AppEntry;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Clusters {
        Set(ClusterSet),
        /// The same clusters as group `.1` of rendering `.0`.
        Same(usize, usize),
    }

    #[derive(Serialize, Deserialize)]
    struct StoredGroup {
        entry: AppEntry,
        clusters: Clusters,
    }

    #[derive(Serialize, Deserialize)]
    struct StoredRender {
        revision: String,
        entries: Vec<StoredGroup>,
    }

    pub fn serialize<S: Serializer>(renders: &[Render], s: S) -> Result<S::Ok, S::Error> {
        let mut out: Vec<StoredRender> = Vec::with_capacity(renders.len());
        for (i, r) in renders.iter().enumerate() {
            let entries = r
                .entries
                .groups()
                .iter()
                .map(|g| {
                    let earlier = renders[..i].iter().enumerate().find_map(|(ri, prev)| {
                        prev.entries
                            .groups()
                            .iter()
                            .position(|pg| pg.clusters == g.clusters)
                            .map(|gi| (ri, gi))
                    });
                    StoredGroup {
                        entry: g.entry.clone(),
                        clusters: match earlier {
                            Some((ri, gi)) => Clusters::Same(ri, gi),
                            None => Clusters::Set(g.clusters.clone()),
                        },
                    }
                })
                .collect();
            out.push(StoredRender {
                revision: r.revision.clone(),
                entries,
            });
        }
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Render>, D::Error> {
        let stored = Vec::<StoredRender>::deserialize(d)?;
        let mut out: Vec<Render> = Vec::with_capacity(stored.len());
        for r in stored {
            let mut groups = Vec::with_capacity(r.entries.len());
            for g in r.entries {
                let clusters = match g.clusters {
                    Clusters::Set(set) => set,
                    Clusters::Same(ri, gi) => out
                        .get(ri)
                        .and_then(|prev| prev.entries.groups().get(gi))
                        .map(|pg| pg.clusters.clone())
                        .ok_or_else(|| {
                            serde::de::Error::custom(format!(
                                "rendering {} refers to a group {ri}/{gi} that comes later or does not exist",
                                r.revision
                            ))
                        })?,
                };
                groups.push(Group {
                    entry: g.entry,
                    clusters,
                });
            }
            out.push(Render {
                revision: r.revision,
                entries: Groups(groups),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str) -> AppEntry {
        AppEntry {
            app: "web".into(),
            revision: "r1".into(),
            bundle_digest: digest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn groups_hold_one_entry_per_distinct_rendering() {
        let mut g = Groups::from_entries((1..=10_000).map(|c| (c, entry("sha256:a"))));
        g.insert(7, entry("sha256:b"));
        assert_eq!(g.groups().len(), 2);
        assert_eq!(g.len(), 10_000);
        assert_eq!(g.get(7).unwrap().bundle_digest, "sha256:b");
        assert_eq!(g.get(8).unwrap().bundle_digest, "sha256:a");
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.len() < 800, "{json}");
        assert_eq!(g.remove(7).unwrap().bundle_digest, "sha256:b");
        assert_eq!(g.groups().len(), 1, "an empty group goes");
        assert!(!g.contains(7));
        let back: Groups = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn by_revision_keeps_one_revision_per_cluster() {
        let mut b = ByRevision::default();
        b.insert(1, Some("r1".into()));
        b.insert(2, None);
        b.insert(1, Some("r2".into()));
        assert_eq!(b.get(1), Some(Some("r2")));
        assert_eq!(b.get(2), Some(None));
        assert_eq!(b.get(3), None);
        assert_eq!(b.revisions().collect::<Vec<_>>(), ["r2"]);
    }

    #[test]
    fn renderings_that_split_the_fleet_alike_store_the_split_once() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Rec {
            #[serde(with = "renders")]
            renders: Vec<crate::engine::rollout::plan::Render>,
        }
        let odd = |c: ClusterId| if c.is_multiple_of(2) { "b" } else { "a" };
        let rec = Rec {
            renders: (0..10)
                .map(|i| {
                    crate::engine::rollout::plan::Render::stamped(
                        &format!("r{i}"),
                        (1..=10_000).map(|c| (c, entry(&format!("sha256:{i}{}", odd(c))))),
                    )
                })
                .collect(),
        };
        let json = serde_json::to_string(&rec).unwrap();
        let one_split = serde_json::to_string(&rec.renders[0]).unwrap().len();
        assert!(
            json.len() < one_split + 10 * 600,
            "{} vs {one_split}",
            json.len()
        );
        let back: Rec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        assert!(serde_json::from_str::<Rec>(r#"{"renders":[{"revision":"r","entries":[{"entry":{"app":"a","revision":"r","bundle_digest":"d","bundle_size":1},"clusters":[3,0]}]}]}"#).is_err());
    }
}
