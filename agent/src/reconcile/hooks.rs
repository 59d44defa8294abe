//! Helm hooks: bundle objects annotated `helm.sh/hook`, run around the apply of a revision
//! instead of being applied with it.
//!
//! The mapping (see "Helm hooks" in docs/flotilla-yaml.md):
//! - `pre-install` (the app was never applied on this cluster) or `pre-upgrade` (a previous
//!   revision is there) run before the rest of the bundle, one at a time in (weight, kind, name)
//!   order, each waited for: a Job until `Complete`, anything else until Current by the kstatus
//!   rules. A hook that fails, or is not done within the app's health timeout, fails the
//!   revision on this cluster and nothing else of the bundle is applied.
//! - `post-install` / `post-upgrade` run the same way once the rest is applied and healthy; the
//!   app is not healthy until they are done, and their failure fails the revision.
//! - `test`, `test-success`, `pre/post-delete` and `pre/post-rollback` are never applied (a
//!   rollback is the apply of an earlier revision, which runs the upgrade hooks).
//! - Delete policies: `before-hook-creation` (Helm's default when none is given) deletes the
//!   previous instance before creating the hook again; `hook-succeeded` / `hook-failed` delete
//!   it once it succeeded / failed.
//! - Hooks run once per revision applied: what ran is kept in the app's inventory
//!   ([`HookRecord`]), so neither a drift pass nor an agent restart runs them again. Hook
//!   objects are not desired objects (no drift, no prune); every instance Flotilla created and
//!   no policy deleted yet is recorded, so removing the app deletes it too.
//! - A hook with `metadata.generateName` and no name is created with POST (the API server picks
//!   the name); a named hook is server-side applied.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::health::{Health, assess};
use super::inventory::{Inventories, Inventory};
use super::kubeapi::{Kube, ObjError};
use super::objects::{BundleParseError, Obj, ObjKey};

pub const HOOK_ANNOTATION: &str = "helm.sh/hook";
pub const WEIGHT_ANNOTATION: &str = "helm.sh/hook-weight";
pub const DELETE_POLICY_ANNOTATION: &str = "helm.sh/hook-delete-policy";

/// When a hook runs, relative to the apply of the rest of the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Pre,
    Post,
}

/// The Helm hook events the agent runs; every other value is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Events {
    pre_install: bool,
    pre_upgrade: bool,
    post_install: bool,
    post_upgrade: bool,
}

impl Events {
    fn at(&self, stage: Stage, install: bool) -> bool {
        match (stage, install) {
            (Stage::Pre, true) => self.pre_install,
            (Stage::Pre, false) => self.pre_upgrade,
            (Stage::Post, true) => self.post_install,
            (Stage::Post, false) => self.post_upgrade,
        }
    }

    fn any(&self) -> bool {
        self.pre_install || self.pre_upgrade || self.post_install || self.post_upgrade
    }
}

/// The name of a stage's event, for messages.
pub fn event_name(stage: Stage, install: bool) -> &'static str {
    match (stage, install) {
        (Stage::Pre, true) => "pre-install",
        (Stage::Pre, false) => "pre-upgrade",
        (Stage::Post, true) => "post-install",
        (Stage::Post, false) => "post-upgrade",
    }
}

/// One hook object of a bundle.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Its key; for a `generateName` hook the name is the prefix.
    pub key: ObjKey,
    /// Created with POST from `metadata.generateName` (the API server picks the name).
    pub generate: bool,
    pub weight: i64,
    events: Events,
    before_creation: bool,
    on_success: bool,
    on_failure: bool,
    obj: Obj,
}

/// What the annotations of `obj` say, when it is a hook.
fn annotation<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
}

/// Whether `obj` is a Helm hook (whatever its events).
pub fn is_hook(obj: &Value) -> bool {
    annotation(obj, HOOK_ANNOTATION).is_some()
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

impl Hook {
    /// The hook that bundle object #`index` is; `Ok(None)` when none of its events is one the
    /// agent runs (`test`, `pre-delete`, …: it is never applied).
    pub fn parse(index: usize, value: &Value) -> Result<Option<Hook>, BundleParseError> {
        let events_text = annotation(value, HOOK_ANNOTATION).unwrap_or_default();
        let mut events = Events {
            pre_install: false,
            pre_upgrade: false,
            post_install: false,
            post_upgrade: false,
        };
        for e in list(events_text) {
            match e {
                "pre-install" => events.pre_install = true,
                "pre-upgrade" => events.pre_upgrade = true,
                "post-install" => events.post_install = true,
                "post-upgrade" => events.post_upgrade = true,
                // test, test-success, pre/post-delete, pre/post-rollback, and values Helm
                // itself ignores: never applied.
                _ => {}
            }
        }
        if !events.any() {
            return Ok(None);
        }
        let weight = match annotation(value, WEIGHT_ANNOTATION).map(str::trim) {
            None | Some("") => 0,
            Some(w) => w
                .parse::<i64>()
                .map_err(|_| BundleParseError::HookWeight(index, w.to_string()))?,
        };
        let policies: Vec<&str> = match annotation(value, DELETE_POLICY_ANNOTATION) {
            Some(p) => list(p).collect(),
            None => vec!["before-hook-creation"],
        };
        let named = ObjKey::of(value).filter(|k| !k.name.is_empty());
        let generate = named.is_none();
        let key = named
            .or_else(|| ObjKey::generated(value))
            .ok_or(BundleParseError::NoIdentity(index))?;
        Ok(Some(Hook {
            obj: Obj::new(key.clone(), value),
            key,
            generate,
            weight,
            events,
            before_creation: policies.contains(&"before-hook-creation"),
            on_success: policies.contains(&"hook-succeeded"),
            on_failure: policies.contains(&"hook-failed"),
        }))
    }

    /// Whether `instance` (a live object's key) is an instance of this hook.
    fn owns(&self, instance: &ObjKey) -> bool {
        let same_kind = instance.api_version == self.key.api_version
            && instance.kind == self.key.kind
            && instance.namespace == self.key.namespace;
        same_kind
            && if self.generate {
                instance.name.len() > self.key.name.len()
                    && instance.name.starts_with(&self.key.name)
            } else {
                instance.name == self.key.name
            }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.generate {
            write!(f, "{}*", self.key)
        } else {
            write!(f, "{}", self.key)
        }
    }
}

/// What ran for the app's current revision, kept in its inventory (`hooks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    /// The bundle digest the rest of the record is about.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Whether that revision is the app's first on this cluster (install, not upgrade).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub install: bool,
    /// The stages whose hooks all succeeded.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub done: BTreeSet<Stage>,
    /// Why the revision failed in a hook ("" when none did).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failed: String,
    /// Hook objects Flotilla created that no delete policy removed yet (any revision's):
    /// deleted with the app.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub created: BTreeSet<ObjKey>,
}

/// The hook being waited for.
#[derive(Debug, Clone)]
struct Running {
    stage: Stage,
    index: usize,
    instance: ObjKey,
    started: Instant,
}

/// The hooks of one app's desired revision and how far they got (in memory; what must
/// survive a restart is in the [`HookRecord`]).
#[derive(Debug, Default)]
pub struct HookRun {
    pub hooks: Vec<Hook>,
    running: Option<Running>,
    /// The next hook to start, per stage.
    next: Option<(Stage, usize)>,
    done: BTreeSet<Stage>,
    /// What the app waits for, while a hook runs.
    pub wait: Option<String>,
    /// Why the revision failed in a hook.
    pub failed: Option<String>,
}

/// Where the hooks of a stage are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Done,
    Waiting(String),
    Failed(String),
}

/// What one check of a running hook found.
enum Outcome {
    Succeeded,
    Running(String),
    Failed(String),
}

/// A Job is done at its `Complete` condition and failed at `Failed`; anything else succeeds
/// once Current by the kstatus rules.
fn outcome(live: &Value) -> Outcome {
    let kind = live.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api = live
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind == "Job" && api.starts_with("batch/") {
        let conditions = live
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is = |c: &Value, t: &str| c["type"] == t && c["status"] == "True";
        if conditions.iter().any(|c| is(c, "Complete")) {
            return Outcome::Succeeded;
        }
        if let Some(c) = conditions.iter().find(|c| is(c, "Failed")) {
            return Outcome::Failed(format!(
                "{}: {}",
                c["reason"].as_str().unwrap_or("Failed"),
                c["message"].as_str().unwrap_or_default()
            ));
        }
        return Outcome::Running("the Job is not Complete yet".into());
    }
    let a = assess(live);
    match a.health {
        Health::Current => Outcome::Succeeded,
        Health::Failed => Outcome::Failed(format!("{}: {}", a.reason, a.message)),
        _ => Outcome::Running(format!("{}: {}", a.reason, a.message)),
    }
}

/// What the hooks of a stage need from the reconciler.
pub struct HookCtx<'a> {
    pub kube: &'a mut Kube,
    pub inventories: &'a Inventories,
    pub app: &'a str,
    pub revision: &'a str,
    pub digest: &'a str,
    /// How long one hook may take.
    pub timeout: Duration,
}

impl HookCtx<'_> {
    async fn save(&self, inv: &Inventory) -> Result<(), String> {
        self.inventories
            .save(self.app, inv)
            .await
            .map_err(|e| format!("cannot write the app's inventory: {e}"))
    }

    /// Deletes a hook instance; `Ok(true)` once it is gone.
    async fn delete(&mut self, instance: &ObjKey) -> Result<bool, ObjError> {
        self.kube.delete(instance).await?;
        Ok(self.kube.get(instance).await?.is_none())
    }
}

impl HookRun {
    pub fn new(hooks: Vec<Hook>) -> Self {
        Self {
            hooks,
            ..Default::default()
        }
    }

    /// Whether the post stage still has to be looked at (hooks exist and it is not done).
    pub fn post_pending(&self) -> bool {
        !self.hooks.is_empty() && !self.done.contains(&Stage::Post) && self.failed.is_none()
    }

    /// Moves the hooks of `stage` on as far as they go without waiting, and says where they
    /// are; `inv` (the app's inventory, loaded by the caller) is saved on every change to its
    /// record.
    pub async fn advance(
        &mut self,
        cx: &mut HookCtx<'_>,
        inv: &mut Inventory,
        stage: Stage,
    ) -> Progress {
        let p = self.step(cx, inv, stage).await;
        match &p {
            Progress::Done => {
                self.done.insert(stage);
                self.wait = None;
            }
            Progress::Waiting(w) => self.wait = Some(w.clone()),
            Progress::Failed(f) => {
                self.wait = None;
                self.failed = Some(f.clone());
            }
        }
        p
    }

    async fn step(&mut self, cx: &mut HookCtx<'_>, inv: &mut Inventory, stage: Stage) -> Progress {
        if self.hooks.is_empty() || self.done.contains(&stage) {
            return Progress::Done;
        }
        if inv.hooks.digest != cx.digest {
            // A revision not seen before: install when the app has never been applied here.
            let created = std::mem::take(&mut inv.hooks.created);
            inv.hooks = HookRecord {
                digest: cx.digest.to_string(),
                install: inv.revision.is_empty(),
                created,
                ..Default::default()
            };
            if let Err(e) = cx.save(inv).await {
                return Progress::Waiting(e);
            }
        }
        if !inv.hooks.failed.is_empty() {
            return Progress::Failed(inv.hooks.failed.clone());
        }
        if inv.hooks.done.contains(&stage) {
            return Progress::Done;
        }
        let install = inv.hooks.install;
        let event = event_name(stage, install);
        let mut order: Vec<&Hook> = self
            .hooks
            .iter()
            .filter(|h| h.events.at(stage, install))
            .collect();
        order.sort_by(|a, b| {
            (a.weight, &a.key.kind, &a.key.name).cmp(&(b.weight, &b.key.kind, &b.key.name))
        });
        let order: Vec<Hook> = order.into_iter().cloned().collect();
        loop {
            let Some(run) = self.running.clone().filter(|r| r.stage == stage) else {
                let index = match self.next {
                    Some((s, i)) if s == stage => i,
                    _ => 0,
                };
                let Some(hook) = order.get(index) else {
                    inv.hooks.done.insert(stage);
                    if let Err(e) = cx.save(inv).await {
                        inv.hooks.done.remove(&stage);
                        return Progress::Waiting(e);
                    }
                    tracing::info!(
                        app = cx.app,
                        revision = cx.revision,
                        hooks = event,
                        "hooks done"
                    );
                    return Progress::Done;
                };
                match self.start(cx, inv, hook).await {
                    Ok(Some(instance)) => {
                        tracing::info!(app = cx.app, hook = %instance, event, "hook started");
                        self.running = Some(Running {
                            stage,
                            index,
                            instance,
                            started: Instant::now(),
                        });
                        continue;
                    }
                    Ok(None) => {
                        return Progress::Waiting(format!(
                            "{event} hook {hook}: waiting for its previous instance to be deleted"
                        ));
                    }
                    Err(e) => return self.fail(cx, inv, event, hook, e).await,
                }
            };
            let hook = &order[run.index];
            let found = match cx.kube.get(&run.instance).await {
                Ok(Some(live)) => outcome(&live),
                Ok(None) => Outcome::Failed("deleted before it completed".into()),
                Err(e) => Outcome::Running(format!("cannot read it: {e}")),
            };
            match found {
                Outcome::Succeeded => {
                    tracing::info!(app = cx.app, hook = %run.instance, event, "hook succeeded");
                    if hook.on_success {
                        self.forget_instance(cx, inv, &run.instance).await;
                    }
                    self.running = None;
                    self.next = Some((stage, run.index + 1));
                }
                Outcome::Failed(why) => {
                    if hook.on_failure {
                        self.forget_instance(cx, inv, &run.instance).await;
                    }
                    // A generated name is news; a hook's own name is in the message already.
                    let why = if hook.generate {
                        format!("{}: {why}", run.instance)
                    } else {
                        why
                    };
                    return self.fail(cx, inv, event, hook, why).await;
                }
                Outcome::Running(why) => {
                    if run.started.elapsed() >= cx.timeout {
                        let why = format!(
                            "not done within {}: {why}",
                            humantime::format_duration(cx.timeout)
                        );
                        if hook.on_failure {
                            self.forget_instance(cx, inv, &run.instance).await;
                        }
                        return self.fail(cx, inv, event, hook, why).await;
                    }
                    return Progress::Waiting(format!(
                        "running {event} hook {} ({} of {}): {why}",
                        run.instance,
                        run.index + 1,
                        order.len()
                    ));
                }
            }
        }
    }

    /// Creates an instance of `hook` after deleting the previous one when its policy says so;
    /// `Ok(None)` while that one is still going away.
    async fn start(
        &mut self,
        cx: &mut HookCtx<'_>,
        inv: &mut Inventory,
        hook: &Hook,
    ) -> Result<Option<ObjKey>, String> {
        if hook.before_creation {
            let mut previous: Vec<ObjKey> = inv
                .hooks
                .created
                .iter()
                .filter(|k| hook.owns(k))
                .cloned()
                .collect();
            if !hook.generate && !previous.contains(&hook.key) {
                previous.push(hook.key.clone());
            }
            for key in previous {
                match cx.delete(&key).await {
                    Ok(true) => {
                        if inv.hooks.created.remove(&key) {
                            cx.save(inv).await?;
                        }
                    }
                    Ok(false) => return Ok(None),
                    Err(e) => return Err(format!("cannot delete its previous instance: {e}")),
                }
            }
        }
        let value = hook.obj.value();
        if hook.generate {
            let live = cx
                .kube
                .create(&hook.key, &value)
                .await
                .map_err(|e| e.to_string())?;
            let key = ObjKey::of(&live)
                .ok_or_else(|| "the API server answered an object without a name".to_string())?;
            inv.hooks.created.insert(key.clone());
            cx.save(inv).await?;
            Ok(Some(key))
        } else {
            // Recorded first, so that a crash right after the apply still lists it.
            if inv.hooks.created.insert(hook.key.clone()) {
                cx.save(inv).await?;
            }
            cx.kube
                .apply(&hook.key, &value, true, false)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(hook.key.clone()))
        }
    }

    /// Deletes a hook instance its policy lets go of (a failure is logged; it stays recorded).
    async fn forget_instance(&mut self, cx: &mut HookCtx<'_>, inv: &mut Inventory, key: &ObjKey) {
        match cx.kube.delete(key).await {
            Ok(_) => {
                if inv.hooks.created.remove(key) {
                    let _ = cx.save(inv).await;
                }
            }
            Err(e) => {
                tracing::warn!(app = cx.app, hook = %key, error = %e, "cannot delete the hook")
            }
        }
    }

    /// Fails the revision at `hook`; the failure is recorded, so it stands until another
    /// revision is desired.
    async fn fail(
        &mut self,
        cx: &mut HookCtx<'_>,
        inv: &mut Inventory,
        event: &str,
        hook: &Hook,
        why: String,
    ) -> Progress {
        self.running = None;
        let what = match event {
            "pre-install" | "pre-upgrade" => {
                format!("; nothing else of revision {} was applied", cx.revision)
            }
            _ => String::new(),
        };
        let message = format!("{event} hook {hook} failed: {why}{what}");
        tracing::warn!(app = cx.app, revision = cx.revision, reason = %message, "hook failed");
        inv.hooks.failed = message.clone();
        if let Err(e) = cx.save(inv).await {
            tracing::warn!(app = cx.app, error = %e, "hook failure not recorded");
        }
        Progress::Failed(message)
    }
}

/// Deletes the hook instances recorded in `inv` (the app is being removed); returns those that
/// could not be deleted.
pub async fn remove_all(kube: &mut Kube, app: &str, inv: &Inventory) -> BTreeSet<ObjKey> {
    let mut left = BTreeSet::new();
    for key in &inv.hooks.created {
        match kube.delete(key).await {
            Ok(_) => tracing::info!(app, hook = %key, "hook deleted with the app"),
            Err(e) => {
                tracing::warn!(app, hook = %key, error = %e, "cannot delete the hook");
                left.insert(key.clone());
            }
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(annotations: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "migrate", "namespace": "shop", "annotations": annotations},
               "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "busybox"}]}}}})
    }

    #[test]
    fn annotations_are_read_as_helm_does() {
        let h = Hook::parse(
            0,
            &job(json!({"helm.sh/hook": "pre-install, pre-upgrade", "helm.sh/hook-weight": "-5"})),
        )
        .unwrap()
        .unwrap();
        assert!(h.events.at(Stage::Pre, true) && h.events.at(Stage::Pre, false));
        assert!(!h.events.at(Stage::Post, true) && !h.events.at(Stage::Post, false));
        assert_eq!(h.weight, -5);
        assert!(
            h.before_creation && !h.on_success && !h.on_failure,
            "Helm's default policy"
        );
        assert!(!h.generate);

        let h = Hook::parse(
            0,
            &job(json!({"helm.sh/hook": "post-upgrade",
            "helm.sh/hook-delete-policy": "hook-succeeded,hook-failed"})),
        )
        .unwrap()
        .unwrap();
        assert!(h.events.at(Stage::Post, false) && !h.events.at(Stage::Post, true));
        assert!(!h.before_creation && h.on_success && h.on_failure);
    }

    #[test]
    fn hooks_the_agent_does_not_run_are_dropped() {
        for event in [
            "test",
            "test-success",
            "pre-delete",
            "post-delete",
            "pre-rollback",
            "post-rollback",
        ] {
            let h = Hook::parse(0, &job(json!({"helm.sh/hook": event}))).unwrap();
            assert!(h.is_none(), "{event}");
        }
    }

    #[test]
    fn a_bad_weight_is_named() {
        let e = Hook::parse(
            3,
            &job(json!({"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "high"})),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "bundle object #3: helm.sh/hook-weight \"high\" is not an integer"
        );
    }

    #[test]
    fn a_generate_name_hook_owns_its_instances() {
        let mut v = job(json!({"helm.sh/hook": "pre-install"}));
        v["metadata"] = json!({"generateName": "migrate-", "namespace": "shop",
                               "annotations": {"helm.sh/hook": "pre-install"}});
        let h = Hook::parse(0, &v).unwrap().unwrap();
        assert!(h.generate);
        assert_eq!(h.to_string(), "Job shop/migrate-*");
        let k = |name: &str| ObjKey {
            name: name.into(),
            ..h.key.clone()
        };
        assert!(h.owns(&k("migrate-x7k2p")));
        assert!(!h.owns(&k("migrate-")));
        assert!(!h.owns(&k("other-x7k2p")));
    }

    #[test]
    fn jobs_complete_or_fail_by_their_conditions() {
        let mut j = job(json!({}));
        assert!(matches!(outcome(&j), Outcome::Running(_)));
        j["status"] = json!({"conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]});
        match outcome(&j) {
            Outcome::Failed(m) => assert_eq!(
                m,
                "BackoffLimitExceeded: Job has reached the specified backoff limit"
            ),
            _ => panic!("not failed"),
        }
        j["status"] = json!({"conditions": [{"type": "Complete", "status": "True"}]});
        assert!(matches!(outcome(&j), Outcome::Succeeded));
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert!(matches!(outcome(&cm), Outcome::Succeeded));
    }
}
