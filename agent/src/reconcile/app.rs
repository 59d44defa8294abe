//! One app's run: the record of what the reconciler applied, assessed and found drifted for
//! the app's desired revision, and what follows from it — object counts, the app's health and
//! phase, whether it settled, the objects worth naming, the message and the [`AppStatus`]
//! report. Pure: no I/O, no cluster calls and no spans (the reconciler in the parent module
//! fills the record in and ends its spans); the report only reads the wall clock for its
//! timestamp.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use flotilla_proto::clock::unix_ms;
use flotilla_proto::state::{Health, ObjectHealth, Phase};
use flotilla_proto::v1::{AppDesired, AppStatus, ObjectCounts, ObjectStatus};
use tokio::time::Instant;

use super::AppTrace;
use super::health::Assessment;
use super::hooks::HookRun;
use super::kubeapi::ObjError;
use super::objects::{Obj, ObjKey};

/// At most this many objects are singled out per app in a status report.
pub const MAX_WORST: usize = 8;

/// Where one app stands.
pub(super) struct AppRun {
    pub(super) desired: AppDesired,
    /// The bundle's objects in apply order, or why the bundle could not be read.
    pub(super) objects: Result<Vec<Obj>, String>,
    /// The digest whose apply last ran to the end (some objects may have failed).
    pub(super) applied_digest: Option<String>,
    pub(super) applied_at: Option<Instant>,
    pub(super) apply_errors: BTreeMap<ObjKey, ObjError>,
    /// An error that stopped the apply before any object (inventory unreadable, …).
    pub(super) blocked: Option<String>,
    /// Why the app waits for its dependencies.
    pub(super) waiting: Option<String>,
    pub(super) health: BTreeMap<ObjKey, Assessment>,
    pub(super) timed_out: bool,
    /// The last drift check: drifted objects with their paths, and whether self-heal fixed them.
    pub(super) drift: BTreeMap<ObjKey, (Vec<String>, bool)>,
    pub(super) healed: u64,
    pub(super) notes: Vec<String>,
    /// Spans of this revision's reconcile, when the hub sent a trace context.
    pub(super) trace: Option<AppTrace>,
    /// The revision's Helm hooks and how far they got.
    pub(super) hooks: HookRun,
}

impl AppRun {
    pub(super) fn new(desired: AppDesired, objects: Result<Vec<Obj>, String>) -> Self {
        Self {
            desired,
            objects,
            applied_digest: None,
            applied_at: None,
            apply_errors: BTreeMap::new(),
            blocked: None,
            waiting: None,
            health: BTreeMap::new(),
            timed_out: false,
            drift: BTreeMap::new(),
            healed: 0,
            notes: Vec::new(),
            trace: None,
            hooks: HookRun::default(),
        }
    }

    pub(super) fn opts(&self) -> flotilla_proto::v1::AppOptions {
        self.desired.options.clone().unwrap_or_default()
    }

    /// How long the app may take to become healthy (and each of its hooks to be done).
    pub(super) fn health_timeout(&self, default: Duration) -> Duration {
        match self.opts().health_timeout_ms {
            0 => default,
            ms => Duration::from_millis(ms),
        }
    }

    pub(super) fn objs(&self) -> &[Obj] {
        self.objects.as_deref().unwrap_or(&[])
    }

    pub(super) fn applied_current(&self) -> bool {
        self.applied_digest.as_deref() == Some(self.desired.bundle_digest.as_str())
    }

    pub(super) fn counts(&self) -> ObjectCounts {
        let mut c = ObjectCounts {
            total: self.objs().len() as u32,
            ..Default::default()
        };
        for o in self.objs() {
            if self.apply_errors.contains_key(&o.key) {
                c.failed += 1;
                continue;
            }
            match self.health.get(&o.key).map(|a| a.health) {
                Some(ObjectHealth::Current) => c.current += 1,
                Some(ObjectHealth::InProgress) => c.in_progress += 1,
                Some(ObjectHealth::Failed) => c.failed += 1,
                Some(ObjectHealth::Unknown) | None => c.unknown += 1,
            }
        }
        c
    }

    /// Whether every object of the revision is applied and Current (hooks aside).
    pub(super) fn objects_healthy(&self) -> bool {
        self.applied_current() && self.apply_errors.is_empty() && {
            let c = self.counts();
            c.current == c.total
        }
    }

    /// Whether a hook runs, or the post-install/post-upgrade stage was not looked at yet.
    fn hooks_pending(&self) -> bool {
        self.hooks.wait.is_some() || self.hooks.post_pending()
    }

    /// Healthy: every object Current and no hook pending or failed.
    pub(super) fn healthy(&self) -> bool {
        self.objects_healthy() && !self.hooks_pending() && self.hooks.failed.is_none()
    }

    /// The app's health: its worst object.
    pub(super) fn app_health(&self) -> Health {
        if self.objects.is_err() || self.blocked.is_some() {
            return Health::Unknown;
        }
        if self.hooks.failed.is_some() {
            return Health::Degraded;
        }
        if !self.applied_current() {
            return if self.health.is_empty() {
                Health::Unknown
            } else {
                Health::Progressing
            };
        }
        let c = self.counts();
        if self.timed_out || c.failed > 0 {
            Health::Degraded
        } else if c.current == c.total && !self.hooks_pending() {
            Health::Healthy
        } else {
            Health::Progressing
        }
    }

    pub(super) fn phase(&self) -> Phase {
        if self.objects.is_err() || self.blocked.is_some() || self.hooks.failed.is_some() {
            Phase::Failed
        } else if !self.applied_current() {
            Phase::Applying
        } else if !self.apply_errors.is_empty() || self.timed_out {
            Phase::Failed
        } else {
            Phase::Applied
        }
    }

    /// Whether nothing will change without an outside event (no need to poll soon).
    pub(super) fn settled(&self) -> bool {
        match self.phase() {
            Phase::Applying => {
                self.waiting.is_none() && self.hooks.wait.is_none() && self.objects.is_ok()
            }
            Phase::Failed => true,
            _ => self.app_health() == Health::Healthy || self.timed_out,
        }
    }

    /// The objects worth naming: failed first, then in progress and unknown, then drifted.
    fn worst(&self) -> Vec<ObjectStatus> {
        let mut rows: Vec<(u8, ObjectStatus)> = Vec::new();
        let status =
            |key: &ObjKey, health: ObjectHealth, reason: &str, message: String| ObjectStatus {
                api_version: key.api_version.clone(),
                kind: key.kind.clone(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                health: health.into(),
                reason: reason.into(),
                message,
                drifted_fields: self
                    .drift
                    .get(key)
                    .map(|(p, _)| p.clone())
                    .unwrap_or_default(),
            };
        for o in self.objs() {
            if let Some(e) = self.apply_errors.get(&o.key) {
                rows.push((
                    0,
                    status(&o.key, ObjectHealth::Failed, e.reason(), e.to_string()),
                ));
            } else if let Some(a) = self.health.get(&o.key)
                && a.health != ObjectHealth::Current
            {
                let rank = match a.health {
                    ObjectHealth::Failed => 0,
                    ObjectHealth::Unknown => 2,
                    _ => 1,
                };
                rows.push((rank, status(&o.key, a.health, &a.reason, a.message.clone())));
            } else if let Some((paths, healed)) = self.drift.get(&o.key) {
                let (reason, message) = if *healed {
                    ("DriftHealed", format!("re-applied: {}", paths.join(", ")))
                } else {
                    (
                        "Drifted",
                        format!("differs from the bundle: {}", paths.join(", ")),
                    )
                };
                rows.push((3, status(&o.key, ObjectHealth::Current, reason, message)));
            }
        }
        rows.sort_by_key(|(rank, _)| *rank);
        rows.into_iter().take(MAX_WORST).map(|(_, s)| s).collect()
    }

    pub(super) fn message(&self, backend: &str) -> String {
        if let Err(e) = &self.objects {
            return format!("bundle unreadable: {e}");
        }
        if let Some(b) = &self.blocked {
            return b.clone();
        }
        if let Some(f) = &self.hooks.failed {
            return f.clone();
        }
        if let Some(w) = &self.waiting {
            return w.clone();
        }
        if let Some(w) = &self.hooks.wait {
            return w.clone();
        }
        let total = self.objs().len();
        if !self.applied_current() {
            return format!("applying {total} objects");
        }
        let worst = self.worst();
        let first = worst
            .iter()
            .find(|w| w.health() != ObjectHealth::Current)
            .map(|w| {
                let key = ObjKey {
                    api_version: w.api_version.clone(),
                    kind: w.kind.clone(),
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                };
                format!("{key}: {}: {}", w.reason, w.message)
            })
            .unwrap_or_default();
        let mut msg = if !self.apply_errors.is_empty() {
            format!(
                "{} of {total} objects failed to apply; {first}",
                self.apply_errors.len()
            )
        } else if self.timed_out {
            let timeout = Duration::from_millis(self.opts().health_timeout_ms);
            format!(
                "not healthy within {}: {first}",
                humantime::format_duration(timeout)
            )
        } else {
            match self.app_health() {
                Health::Healthy => {
                    format!("{total} objects applied and current ({backend} cluster)")
                }
                Health::Degraded => format!("degraded: {first}"),
                _ => format!("waiting for {total} objects to become current: {first}"),
            }
        };
        let drifted = self.drift.values().filter(|(_, healed)| !healed).count();
        let healed = self.drift.values().filter(|(_, healed)| *healed).count();
        if drifted > 0 {
            msg.push_str(&format!(
                "; {drifted} objects drifted from the bundle (self-heal off)"
            ));
        }
        if healed > 0 {
            msg.push_str(&format!("; self-heal re-applied {healed} drifted objects"));
        }
        for n in &self.notes {
            msg.push_str("; ");
            msg.push_str(n);
        }
        msg
    }

    pub(super) fn report(&self, backend: &str) -> AppStatus {
        AppStatus {
            app: self.desired.app.clone(),
            revision: self.desired.revision.clone(),
            bundle_digest: self.desired.bundle_digest.clone(),
            phase: self.phase().into(),
            message: self.message(backend),
            observed_unix_ms: unix_ms(SystemTime::now()),
            health: self.app_health().into(),
            objects: Some(self.counts()),
            drifted: self.drift.values().filter(|(_, healed)| !healed).count() as u32,
            worst: self.worst(),
            healed: self.healed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ObjKey {
        ObjKey {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    /// App `web` of the ConfigMaps `names` in `shop`, desired at digest `d1`, not applied yet.
    fn run(names: &[&str]) -> AppRun {
        let desired = AppDesired {
            app: "web".into(),
            revision: "r1".into(),
            bundle_digest: "d1".into(),
            ..Default::default()
        };
        let objs = names.iter().map(|n| Obj::new(key(n), &json!({}))).collect();
        AppRun::new(desired, Ok(objs))
    }

    /// Marks `run` applied at its digest, each object assessed as `health`.
    fn applied(run: &mut AppRun, health: &[(&str, ObjectHealth)]) {
        run.applied_digest = Some(run.desired.bundle_digest.clone());
        run.applied_at = Some(Instant::now());
        run.health = health
            .iter()
            .map(|(name, h)| {
                let a = Assessment {
                    health: *h,
                    reason: format!("{h:?}"),
                    message: format!("{name} is {h:?}"),
                };
                (key(name), a)
            })
            .collect();
    }

    fn names(worst: &[ObjectStatus]) -> Vec<&str> {
        worst.iter().map(|w| w.name.as_str()).collect()
    }

    #[test]
    fn an_app_is_applying_until_its_digest_is_applied() {
        let mut r = run(&["a", "b"]);
        assert_eq!(r.phase(), Phase::Applying);
        assert_eq!(r.app_health(), Health::Unknown);
        assert_eq!(r.message("simulated"), "applying 2 objects");
        r.waiting = Some("waiting for app db".into());
        assert!(!r.settled());
        assert_eq!(r.message("simulated"), "waiting for app db");

        // Assessed under an older digest: progressing, still applying.
        applied(&mut r, &[("a", ObjectHealth::Current)]);
        r.applied_digest = Some("d0".into());
        assert_eq!(r.phase(), Phase::Applying);
        assert_eq!(r.app_health(), Health::Progressing);
    }

    #[test]
    fn an_unreadable_bundle_or_blocked_apply_fails_with_unknown_health() {
        let mut r = AppRun::new(AppDesired::default(), Err("not gzip".into()));
        assert_eq!(
            (r.phase(), r.app_health()),
            (Phase::Failed, Health::Unknown)
        );
        assert!(r.settled());
        assert_eq!(r.message(""), "bundle unreadable: not gzip");

        r = run(&["a"]);
        applied(&mut r, &[("a", ObjectHealth::Current)]);
        r.blocked = Some("cannot read the app's inventory: gone".into());
        assert_eq!(
            (r.phase(), r.app_health()),
            (Phase::Failed, Health::Unknown)
        );
        assert_eq!(r.message(""), "cannot read the app's inventory: gone");
    }

    #[test]
    fn health_is_the_worst_object_and_settles_when_all_are_current() {
        let mut r = run(&["a", "b"]);
        applied(
            &mut r,
            &[
                ("a", ObjectHealth::Current),
                ("b", ObjectHealth::InProgress),
            ],
        );
        assert_eq!(r.phase(), Phase::Applied);
        assert_eq!(r.app_health(), Health::Progressing);
        assert!(!r.healthy() && !r.settled());
        assert_eq!(
            r.message("simulated"),
            "waiting for 2 objects to become current: ConfigMap shop/b: InProgress: b is InProgress"
        );

        applied(
            &mut r,
            &[("a", ObjectHealth::Current), ("b", ObjectHealth::Current)],
        );
        assert!(r.healthy() && r.settled());
        assert_eq!(r.app_health(), Health::Healthy);
        assert_eq!(
            r.message("simulated"),
            "2 objects applied and current (simulated cluster)"
        );
        let report = r.report("simulated");
        assert_eq!(report.phase(), Phase::Applied);
        assert_eq!(report.health(), Health::Healthy);
        let counts = report.objects.unwrap();
        assert_eq!((counts.total, counts.current), (2, 2));
        assert!(report.worst.is_empty());

        applied(
            &mut r,
            &[("a", ObjectHealth::Current), ("b", ObjectHealth::Failed)],
        );
        assert_eq!(r.app_health(), Health::Degraded);
        assert!(
            r.message("")
                .starts_with("degraded: ConfigMap shop/b: Failed")
        );
    }

    #[test]
    fn a_timed_out_app_fails_degraded_and_settles() {
        let mut r = run(&["a"]);
        r.desired.options = Some(flotilla_proto::v1::AppOptions {
            health_timeout_ms: 300_000,
            ..Default::default()
        });
        applied(&mut r, &[("a", ObjectHealth::InProgress)]);
        r.timed_out = true;
        assert_eq!(
            (r.phase(), r.app_health()),
            (Phase::Failed, Health::Degraded)
        );
        assert!(r.settled());
        assert_eq!(
            r.message(""),
            "not healthy within 5m: ConfigMap shop/a: InProgress: a is InProgress"
        );
    }

    #[test]
    fn apply_errors_fail_the_app_and_lead_the_worst_objects() {
        let mut r = run(&["a", "b", "c", "d"]);
        applied(
            &mut r,
            &[
                ("a", ObjectHealth::Unknown),
                ("b", ObjectHealth::InProgress),
                ("d", ObjectHealth::Current),
            ],
        );
        r.apply_errors.insert(
            key("c"),
            ObjError::Conflict("field owned by kubectl".into()),
        );
        r.drift.insert(key("d"), (vec!["data.x".into()], false));
        assert_eq!(r.phase(), Phase::Failed);
        assert_eq!(r.app_health(), Health::Degraded);
        let c = r.counts();
        assert_eq!(
            (c.total, c.failed, c.in_progress, c.unknown, c.current),
            (4, 1, 1, 1, 1)
        );
        // Failed, then in progress, then unknown, then drifted.
        let report = r.report("");
        assert_eq!(names(&report.worst), ["c", "b", "a", "d"]);
        assert_eq!(report.worst[0].reason, "ApplyConflict");
        assert_eq!(report.worst[3].reason, "Drifted");
        assert_eq!(report.worst[3].drifted_fields, ["data.x"]);
        assert_eq!(report.drifted, 1);
        assert_eq!(
            report.message,
            "1 of 4 objects failed to apply; ConfigMap shop/c: ApplyConflict: field owned by \
             kubectl (set `force: true` on the app to take these fields over); 1 objects drifted \
             from the bundle (self-heal off)"
        );
    }

    #[test]
    fn drift_healed_and_notes_are_told_and_worst_is_capped() {
        let all: Vec<String> = (0..MAX_WORST + 2).map(|i| format!("o{i:02}")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut r = run(&all);
        let health: Vec<(&str, ObjectHealth)> =
            all.iter().map(|n| (*n, ObjectHealth::Current)).collect();
        applied(&mut r, &health);
        for n in &all {
            r.drift.insert(key(n), (vec!["data.x".into()], true));
        }
        r.healed = 12;
        r.notes
            .push("prune disabled: 1 objects removed from the bundle left in the cluster".into());
        let report = r.report("kube");
        assert_eq!(report.worst.len(), MAX_WORST);
        assert_eq!(report.worst[0].reason, "DriftHealed");
        assert_eq!(report.worst[0].message, "re-applied: data.x");
        assert_eq!((report.drifted, report.healed), (0, 12));
        assert_eq!(
            report.message,
            "10 objects applied and current (kube cluster); self-heal re-applied 10 drifted \
             objects; prune disabled: 1 objects removed from the bundle left in the cluster"
        );
    }
}
