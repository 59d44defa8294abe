//! The scrape-time view of the fleet for the metrics: per app and region how many clusters should
//! run its revision, run it applied, healthy or failed, and per region the clusters by state —
//! read from memory (rollout records, the engine's report index, the registry, live sessions), with no
//! work per status report.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_proto::state::{Health, Phase};

use super::rollout::Rollouts;
use crate::state::error::HubError;
use crate::state::sessions::Sessions;
use crate::telemetry::metrics::{AppCounts, FleetSnapshot, REGION_LABEL};

/// What the hub's state should be read from at scrape time.
#[derive(Clone, Debug)]
pub struct FleetSources {
    pub registry: crate::state::registry::Registry,
    pub sessions: Arc<Sessions>,
    pub rollouts: Rollouts,
}

impl FleetSources {
    /// Reads the fleet from memory: rollout records (which say each cluster's desired entry),
    /// the engine's index of the agents' reports and the cluster list (for regions and
    /// states). Linear in apps × clusters, with no work per
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
        for rec in self.rollouts.records_shared().await? {
            let Some(newest) = rec.renders.last() else {
                continue;
            };
            let mut clusters = newest.entries.clusters();
            clusters.extend(rec.pins.keys().copied());
            let mut per_region: HashMap<&str, AppCounts> = HashMap::new();
            self.rollouts.reports().with_app(&rec.app, |seen| {
                for cluster in &clusters {
                    let Some(entry) = rec.desired_for(cluster) else {
                        continue;
                    };
                    let region = self
                        .registry
                        .name_of(cluster)
                        .and_then(|n| region_of.get(&*n))
                        .map(String::as_str)
                        .unwrap_or("");
                    let counts = per_region.entry(region).or_default();
                    counts.desired += 1;
                    let Some(a) = seen(cluster) else {
                        continue;
                    };
                    if *a.revision != *entry.revision || *a.bundle_digest != *entry.bundle_digest {
                        continue;
                    }
                    match a.phase {
                        Phase::Applied => {
                            counts.applied += 1;
                            if a.health == Health::Healthy {
                                counts.healthy += 1;
                            }
                        }
                        Phase::Failed => counts.failed += 1,
                        _ => {}
                    }
                }
            });
            for (region, counts) in per_region {
                snap.app_clusters
                    .insert((rec.app.clone(), region.to_string()), counts);
            }
        }
        Ok(snap)
    }
}
