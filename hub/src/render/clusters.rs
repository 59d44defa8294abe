//! Clusters as the hub's records hold them: a fleet-wide numeric id per cluster (assigned once by
//! the registry, never reused) and sets of ids as compressed bitmaps (`roaring`). An app's
//! rollout record names up to every cluster of the fleet several times (targets per kept
//! rendering, stages, batches, what each cluster held); as ids in bitmaps that stays a few
//! kilobytes at 10,000 clusters, where names would be megabytes.
//!
//! Stored as text, whichever is shorter: ascending ids with runs folded
//! (`"1-500,502,600-10000"`), or for scattered ids the bitmap's portable serialization in
//! base64 behind `r:` (at most about 11 KiB for any set of ids below 65,536).

use std::fmt;

use roaring::RoaringBitmap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A cluster's fleet-wide id (0 is never assigned).
pub type ClusterId = u32;

/// A set of clusters, iterated in ascending id order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClusterSet(RoaringBitmap);

impl ClusterSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, id: ClusterId) -> bool {
        self.0.contains(id)
    }

    /// Adds `id`; `true` when it was not there.
    pub fn insert(&mut self, id: ClusterId) -> bool {
        self.0.insert(id)
    }

    /// Removes `id`; `true` when it was there.
    pub fn remove(&mut self, id: ClusterId) -> bool {
        self.0.remove(id)
    }

    pub fn len(&self) -> usize {
        self.0.len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = ClusterId> + '_ {
        self.0.iter()
    }

    pub fn clear(&mut self) {
        self.0.clear()
    }

    /// Adds every member of `other`.
    pub fn extend_set(&mut self, other: &ClusterSet) {
        self.0 |= &other.0;
    }

    /// Removes every member of `other`.
    pub fn remove_set(&mut self, other: &ClusterSet) {
        self.0 -= &other.0;
    }

    pub fn union(&self, other: &ClusterSet) -> ClusterSet {
        ClusterSet(&self.0 | &other.0)
    }

    pub fn intersection(&self, other: &ClusterSet) -> ClusterSet {
        ClusterSet(&self.0 & &other.0)
    }

    pub fn difference(&self, other: &ClusterSet) -> ClusterSet {
        ClusterSet(&self.0 - &other.0)
    }

    pub fn intersects(&self, other: &ClusterSet) -> bool {
        !self.0.is_disjoint(&other.0)
    }

    pub fn is_subset(&self, other: &ClusterSet) -> bool {
        self.0.is_subset(&other.0)
    }
}

impl FromIterator<ClusterId> for ClusterSet {
    fn from_iter<I: IntoIterator<Item = ClusterId>>(iter: I) -> Self {
        ClusterSet(iter.into_iter().collect())
    }
}

impl<'a> FromIterator<&'a ClusterId> for ClusterSet {
    fn from_iter<I: IntoIterator<Item = &'a ClusterId>>(iter: I) -> Self {
        ClusterSet(iter.into_iter().copied().collect())
    }
}

impl Extend<ClusterId> for ClusterSet {
    fn extend<I: IntoIterator<Item = ClusterId>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl<'a> IntoIterator for &'a ClusterSet {
    type Item = ClusterId;
    type IntoIter = roaring::bitmap::Iter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ClusterSet {
    /// Ascending ids with runs folded: `1-500,502`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut run: Option<(ClusterId, ClusterId)> = None;
        let mut put = |f: &mut fmt::Formatter<'_>, (a, b): (ClusterId, ClusterId)| {
            let sep = if std::mem::take(&mut first) { "" } else { "," };
            if a == b {
                write!(f, "{sep}{a}")
            } else {
                write!(f, "{sep}{a}-{b}")
            }
        };
        for id in self.0.iter() {
            run = match run {
                Some((a, b)) if b + 1 == id => Some((a, id)),
                Some(r) => {
                    put(f, r)?;
                    Some((id, id))
                }
                None => Some((id, id)),
            };
        }
        if let Some(r) = run {
            put(f, r)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

impl std::str::FromStr for ClusterSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = RoaringBitmap::new();
        let num = |t: &str| {
            t.trim()
                .parse::<ClusterId>()
                .map_err(|_| format!("bad cluster id {t:?} in cluster set"))
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("bad range {part:?} in cluster set"));
                    }
                    set.insert_range(a..=b);
                }
                None => {
                    set.insert(num(part)?);
                }
            }
        }
        Ok(ClusterSet(set))
    }
}

/// The prefix of the base64 form.
const PACKED: &str = "r:";

impl ClusterSet {
    /// The stored form: the shorter of the folded ranges and the packed bitmap.
    pub fn to_stored(&self) -> String {
        use base64::Engine;
        let ranges = self.to_string();
        if ranges.len() < 64 {
            return ranges;
        }
        let mut bytes = Vec::with_capacity(self.0.serialized_size());
        self.0
            .serialize_into(&mut bytes)
            .expect("writing to memory succeeds");
        let packed = format!(
            "{PACKED}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        );
        if packed.len() < ranges.len() {
            packed
        } else {
            ranges
        }
    }

    /// Reads either stored form.
    pub fn from_stored(s: &str) -> Result<Self, String> {
        use base64::Engine;
        match s.strip_prefix(PACKED) {
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b64)
                    .map_err(|e| format!("bad packed cluster set: {e}"))?;
                RoaringBitmap::deserialize_from(&bytes[..])
                    .map(ClusterSet)
                    .map_err(|e| format!("bad packed cluster set: {e}"))
            }
            None => s.parse(),
        }
    }
}

impl Serialize for ClusterSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_stored())
    }
}

impl<'de> Deserialize<'de> for ClusterSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClusterSet::from_stored(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_fold_and_read_back() {
        let set: ClusterSet = [1, 2, 3, 5, 7, 8, 100].into_iter().collect();
        assert_eq!(set.to_string(), "1-3,5,7-8,100");
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, "\"1-3,5,7-8,100\"");
        let back: ClusterSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert_eq!(ClusterSet::new().to_string(), "");
        assert_eq!("".parse::<ClusterSet>().unwrap(), ClusterSet::new());
        assert!("3-1".parse::<ClusterSet>().is_err());
        assert!("x".parse::<ClusterSet>().is_err());
    }

    #[test]
    fn ten_thousand_clusters_stay_small() {
        let all: ClusterSet = (1..=10_000).collect();
        assert_eq!(all.to_string(), "1-10000");
        let every_third: ClusterSet = (1..=10_000).step_by(3).collect();
        assert_eq!(every_third.len(), 3334);
        let stored = serde_json::to_string(&every_third).unwrap();
        assert!(
            stored.starts_with("\"r:") && stored.len() < 11 * 1024,
            "{stored}"
        );
        let back: ClusterSet = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, every_third);
        assert!(ClusterSet::from_stored("r:!!").is_err());
        assert_eq!(all.difference(&every_third).len(), 10_000 - 3334);
    }
}
