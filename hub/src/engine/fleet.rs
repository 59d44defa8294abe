//! The scrape-time view of the fleet for the metrics: per app and region how many clusters should
//! run its revision, run it applied, healthy or failed, and per region the clusters by state —
//! read from memory (rollout records, the status cache, the registry, live sessions), with no
//! work per status report.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_proto::state::{AppState, Phase};

use super::rollout::Rollouts;
use crate::state::desired::DesiredStates;
use crate::state::error::HubError;
use crate::state::sessions::Sessions;
use crate::telemetry::metrics::{AppCounts, FleetSnapshot, REGION_LABEL};

/// What the hub's state should be read from at scrape time.
#[derive(Clone, Debug)]
pub struct FleetSources {
    pub registry: crate::state::registry::Registry,
    pub sessions: Arc<Sessions>,
    pub rollouts: Rollouts,
    pub desired: DesiredStates,
}

impl FleetSources {
    /// Reads the fleet from memory: rollout records (which say each cluster's desired entry),
    /// the status cache (a cluster's status is read from the store once, then kept) and the
    /// cluster list (for regions and states). Linear in apps × clusters, with no work per
    /// status report.
    pub async fn snapshot(&self) -> Result<FleetSnapshot, HubError> {
        let records = self.registry.list_clusters().await?;
        let mut region_of: HashMap<String, String> = HashMap::with_capacity(records.len());
        let mut snap = FleetSnapshot::default();
        for rec in &records {
            let region = rec.labels.get(REGION_LABEL).cloned().unwrap_or_default();
            let state = rec.state(self.sessions.get(&rec.name).is_some());
            *snap.clusters.entry((region.clone(), state)).or_insert(0) += 1;
            region_of.insert(rec.name.clone(), region);
        }
        let mut statuses: HashMap<String, Arc<crate::state::desired::StatusRecord>> =
            HashMap::new();
        for rec in self.rollouts.records_shared().await? {
            let Some(newest) = rec.renders.last() else {
                continue;
            };
            let names: std::collections::BTreeSet<&String> =
                newest.entries.keys().chain(rec.pins.keys()).collect();
            let mut per_region: HashMap<&str, AppCounts> = HashMap::new();
            for cluster in names {
                let Some(entry) = rec.desired_for(cluster) else {
                    continue;
                };
                let region = region_of.get(cluster).map(String::as_str).unwrap_or("");
                let counts = per_region.entry(region).or_default();
                counts.desired += 1;
                let status = match statuses.get(cluster) {
                    Some(s) => s.clone(),
                    None => {
                        let s = self.desired.status_shared(cluster).await?;
                        statuses.insert(cluster.clone(), s.clone());
                        s
                    }
                };
                let Ok(i) = status
                    .apps
                    .binary_search_by(|a| a.app.as_str().cmp(&rec.app))
                else {
                    continue;
                };
                let a = &status.apps[i];
                if a.revision != entry.revision || a.bundle_digest != entry.bundle_digest {
                    continue;
                }
                match a.phase {
                    Phase::Applied => {
                        counts.applied += 1;
                        if a.healthy() {
                            counts.healthy += 1;
                        }
                    }
                    Phase::Failed => counts.failed += 1,
                    _ => {}
                }
            }
            for (region, counts) in per_region {
                snap.app_clusters
                    .insert((rec.app.clone(), region.to_string()), counts);
            }
        }
        Ok(snap)
    }
}
