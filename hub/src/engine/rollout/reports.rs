//! What the engine knows of the agents' reports: per app and cluster the status record's own
//! entry (revision, digest, phase, health and message are what promotion reads), shared with
//! the status records rather than copied, so 1,000,000 app statuses are held once. A report
//! updates its apps' entries in O(1) each. Filled from the stored statuses when the engine
//! starts, then from each report as it is recorded (with the record it was merged into).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use flotilla_proto::state::Phase;
use flotilla_proto::v1;

use crate::render::ClusterId;
use crate::state::desired::StatusRecord;
use crate::state::intern::intern;
use crate::state::status::AppReport;

/// One app's last report from one cluster: the status record's own entry, shared (the index
/// adds a pointer per app and cluster, not a copy).
pub type Seen = AppReport;

#[derive(Debug, Default)]
struct Index {
    /// App → cluster → its last report. (No cluster → apps map: forgetting a cluster, once
    /// per reconnect, looks in every app, which is cheaper than a set per cluster kept always.)
    apps: HashMap<Arc<str>, HashMap<ClusterId, Arc<Seen>>>,
}

impl Index {
    fn forget_cluster(&mut self, cluster: ClusterId) {
        for per in self.apps.values_mut() {
            per.remove(&cluster);
        }
    }

    fn set(&mut self, cluster: ClusterId, app: &str, seen: Option<Arc<Seen>>) {
        match seen {
            Some(s) => {
                match self.apps.get_mut(app) {
                    Some(per) => per.insert(cluster, s),
                    None => self.apps.entry(intern(app)).or_default().insert(cluster, s),
                };
            }
            None => {
                if let Some(per) = self.apps.get_mut(app) {
                    per.remove(&cluster);
                }
            }
        }
    }
}

/// The index of reports, shared by the engine and the scrape-time fleet view.
#[derive(Debug, Default)]
pub struct Reports {
    index: RwLock<Index>,
}

impl Reports {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a stored status record (at start).
    pub fn load(&self, cluster: ClusterId, rec: &StatusRecord) {
        let mut ix = self.write();
        for a in &rec.apps {
            ix.set(cluster, &a.app, Some(a.clone()));
        }
    }

    /// Takes a report as it was recorded into `rec` (the cluster's record with it merged):
    /// `replace` starts the cluster from nothing, an app reported `removed` is forgotten, every
    /// other app it names now points at the record's entry. Returns the apps it named.
    pub fn record(
        &self,
        cluster: ClusterId,
        report: &v1::StatusReport,
        rec: &StatusRecord,
    ) -> Vec<String> {
        let mut ix = self.write();
        if report.replace {
            ix.forget_cluster(cluster);
        }
        let mut apps = Vec::with_capacity(report.apps.len());
        for a in &report.apps {
            let seen = (a.phase() != Phase::Removed)
                .then(|| rec.app(&a.app).cloned())
                .flatten();
            ix.set(cluster, &a.app, seen);
            apps.push(a.app.clone());
        }
        apps
    }

    /// Forgets a cluster (removed from the hub).
    pub fn forget(&self, cluster: ClusterId) {
        self.write().forget_cluster(cluster);
    }

    /// What `cluster` last reported of `app`.
    pub fn get(&self, app: &str, cluster: ClusterId) -> Option<Arc<Seen>> {
        self.read().apps.get(app)?.get(&cluster).cloned()
    }

    /// Reads `app`'s reports in place.
    pub fn with_app<T>(
        &self,
        app: &str,
        f: impl for<'a> FnOnce(&'a dyn Fn(ClusterId) -> Option<&'a Seen>) -> T,
    ) -> T {
        let ix = self.read();
        let per = ix.apps.get(app);
        f(&|c| per.and_then(|p| p.get(&c)).map(|v| &**v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use flotilla_proto::state::Health;

    fn status(app: &str, rev: &str, phase: Phase) -> v1::AppStatus {
        let mut a = v1::AppStatus {
            app: app.into(),
            revision: rev.into(),
            bundle_digest: format!("sha256:{rev}"),
            ..Default::default()
        };
        a.set_phase(phase);
        a.set_health(Health::Healthy);
        a
    }

    #[test]
    fn reports_replace_merge_and_forget() {
        use std::collections::HashMap;
        let r = Reports::default();
        // Each cluster's record, merged as the status ingest does before it tells the engine.
        let mut recs: HashMap<ClusterId, StatusRecord> = HashMap::new();
        let mut record = |cluster, replace, apps| {
            let report = v1::StatusReport {
                generation: 1,
                apps,
                replace,
                seq: 0,
            };
            let rec = recs.entry(cluster).or_default();
            rec.merge(&report);
            r.record(cluster, &report, rec);
        };
        record(
            1,
            true,
            vec![
                status("web", "r1", Phase::Applied),
                status("db", "r1", Phase::Applied),
            ],
        );
        record(2, true, vec![status("web", "r1", Phase::Applied)]);
        assert_eq!(&*r.get("web", 1).unwrap().revision, "r1");
        // One string for every cluster on r1.
        assert!(Arc::ptr_eq(
            &r.get("web", 1).unwrap().revision,
            &r.get("web", 2).unwrap().revision
        ));
        record(1, false, vec![status("web", "r2", Phase::Failed)]);
        assert_eq!(r.get("web", 1).unwrap().phase, Phase::Failed);
        assert!(
            r.get("db", 1).is_some(),
            "a partial report keeps the other apps"
        );
        record(1, false, vec![status("db", "", Phase::Removed)]);
        assert!(r.get("db", 1).is_none());
        record(1, true, vec![]);
        assert!(r.get("web", 1).is_none(), "replace starts from nothing");
        assert!(r.get("web", 2).is_some());
    }

    #[test]
    fn the_index_shares_the_records_entries() {
        let r = Reports::default();
        let report = v1::StatusReport {
            generation: 1,
            apps: vec![status("web", "r1", Phase::Applied)],
            replace: true,
            seq: 0,
        };
        let mut rec = StatusRecord::default();
        rec.merge(&report);
        r.record(7, &report, &rec);
        assert!(Arc::ptr_eq(
            &r.get("web", 7).unwrap(),
            rec.app("web").unwrap()
        ));
    }
}
