//! The simulated cluster's state: stored objects with their ownership, the resourceVersion
//! counter, the recorded requests, and the one write path every change goes through (server
//! metadata, generation, the status simulator, dry-run).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::RecordedRequest;
use super::fields::{Managers, Scope, Writer};
use super::kubelet;
use super::resources::{self, CRD_GROUP, CRD_PLURAL, CrdInfo, ResourceType};

/// The field manager of the status simulator.
pub(crate) const SIMULATOR: &str = "flotilla-simulator";

/// Group and plural: which collection an object is stored in.
pub(crate) type Collection = (String, String);
/// Namespace ("" for cluster-scoped) and name.
pub(crate) type ObjectKey = (String, String);

/// One stored object. `object` never holds `managedFields`; they are rendered from `managers`.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub object: Value,
    pub managers: Managers,
}

/// A settle the simulator owes an object once `delay` has passed (if the generation holds).
#[derive(Debug, Clone)]
pub(crate) struct PendingSettle {
    pub collection: Collection,
    pub key: ObjectKey,
    /// The object's uid: a deleted and re-created object is another object.
    pub uid: String,
    pub generation: i64,
    pub delay: Duration,
}

/// A change to one object, ready to commit.
pub(crate) struct Write<'a> {
    pub rt: &'a ResourceType,
    pub key: ObjectKey,
    /// The full new object (managedFields stripped, status policy applied).
    pub object: Value,
    pub managers: Managers,
    pub dry_run: bool,
}

pub(crate) struct State {
    pub ready_delay: Duration,
    /// How many requests to keep (0: none).
    history: usize,
    resource_version: u64,
    objects: BTreeMap<Collection, BTreeMap<ObjectKey, Stored>>,
    load_balancers: u32,
    pub requests: VecDeque<RecordedRequest>,
    pub pending: Vec<PendingSettle>,
}

impl State {
    pub fn new(ready_delay: Duration, history: usize) -> Self {
        Self {
            ready_delay,
            history,
            resource_version: 0,
            objects: BTreeMap::new(),
            load_balancers: 0,
            requests: VecDeque::new(),
            pending: Vec::new(),
        }
    }

    pub fn record(&mut self, request: RecordedRequest) {
        if self.history == 0 {
            return;
        }
        if self.requests.len() >= self.history {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    pub fn resource_version(&self) -> String {
        self.resource_version.to_string()
    }

    // === Resource types ===

    fn crds(&self) -> impl Iterator<Item = CrdInfo> + '_ {
        self.objects
            .get(&(CRD_GROUP.to_string(), CRD_PLURAL.to_string()))
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|s| CrdInfo::from_object(&s.object))
    }

    /// Established CRDs: only those are served.
    pub fn established_crds(&self) -> impl Iterator<Item = CrdInfo> + '_ {
        self.crds().filter(|c| c.established)
    }

    /// The served resource at (group, version, plural).
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        resources::built_in(group, version, plural).or_else(|| {
            self.established_crds()
                .find(|c| c.group == group && c.plural == plural)
                .and_then(|c| c.resource(version))
        })
    }

    /// The resource of (group, kind) in any version, established or not (for inspection).
    fn resolve_kind(&self, group: &str, kind: &str) -> Option<ResourceType> {
        resources::built_in_kind(group, kind).or_else(|| {
            let crd = self.crds().find(|c| c.group == group && c.kind == kind)?;
            let version = crd.storage.clone()?;
            crd.resource(&version)
        })
    }

    /// Every served resource of (group, version); `None` when the group/version is not served.
    pub fn resources_in(&self, group: &str, version: &str) -> Option<Vec<ResourceType>> {
        let mut list = resources::built_ins_in(group, version).unwrap_or_default();
        list.extend(
            self.established_crds()
                .filter(|c| c.group == group)
                .filter_map(|c| c.resource(version)),
        );
        (!list.is_empty()).then_some(list)
    }

    /// Served API groups (core excluded) with their versions, preferred version first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = resources::built_in_groups()
            .into_iter()
            .map(|(g, v)| (g.to_string(), vec![v.to_string()]))
            .collect();
        for crd in self.established_crds() {
            let i = match out.iter().position(|(g, _)| *g == crd.group) {
                Some(i) => i,
                None => {
                    out.push((crd.group.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            for (v, _) in &crd.versions {
                if !out[i].1.contains(v) {
                    out[i].1.push(v.clone());
                }
            }
        }
        for (_, versions) in &mut out {
            versions.sort_by_key(|v| std::cmp::Reverse(resources::version_priority(v)));
        }
        out
    }

    // === Objects ===

    pub fn get(&self, rt: &ResourceType, key: &ObjectKey) -> Option<&Stored> {
        self.objects.get(&collection(rt))?.get(key)
    }

    /// Objects of `rt`, in `namespace` or in all namespaces, ordered by namespace and name.
    pub fn list<'s>(
        &'s self,
        rt: &ResourceType,
        namespace: Option<&'s str>,
    ) -> impl Iterator<Item = (&'s ObjectKey, &'s Stored)> + 's {
        self.objects
            .get(&collection(rt))
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.0 == ns))
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    /// Every stored object, rendered.
    pub fn all_objects(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for ((group, plural), objects) in &self.objects {
            for stored in objects.values() {
                let api_version = stored.object.get("apiVersion").and_then(Value::as_str);
                let rt = api_version
                    .and_then(|av| self.resolve(group, av.rsplit('/').next()?, plural))
                    .or_else(|| {
                        let kind = stored.object.get("kind").and_then(Value::as_str)?;
                        self.resolve_kind(group, kind)
                    });
                match rt {
                    Some(rt) => out.push(render(&rt, stored)),
                    None => out.push(stored.object.clone()),
                }
            }
        }
        out
    }

    /// One stored object, rendered in `api_version`.
    pub fn inspect(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let mut rt = self.resolve_kind(group, kind)?;
        rt.version = version.to_string();
        let key = (namespace.unwrap_or_default().to_string(), name.to_string());
        self.get(&rt, &key).map(|s| render(&rt, s))
    }

    /// Commits a create or update after the caller computed the new object and ownership.
    /// Sets the server metadata, bumps generation when more than metadata and status changed,
    /// runs the status simulator, and returns the object as served plus whether it was
    /// created. A write that changes nothing stores nothing; a dry run stores nothing either.
    pub fn commit(&mut self, w: Write<'_>) -> (Value, bool) {
        let Write {
            rt,
            key,
            mut object,
            mut managers,
            dry_run,
        } = w;
        let old = self.get(rt, &key).cloned();
        let created = old.is_none();
        let now = now();
        {
            let meta = metadata_mut(&mut object);
            meta.remove("managedFields");
            match &old {
                Some(old) => {
                    let old_meta = &old.object["metadata"];
                    for k in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                        match old_meta.get(k) {
                            Some(v) => meta.insert(k.into(), v.clone()),
                            None => meta.remove(k),
                        };
                    }
                }
                None => {
                    meta.insert("uid".into(), new_uid().into());
                    meta.insert("creationTimestamp".into(), now.clone().into());
                    meta.insert("generation".into(), 1.into());
                    meta.remove("resourceVersion");
                }
            }
        }
        if let Some(old) = &old {
            if old.object == object && old.managers.same_ownership(&managers) {
                return (render(rt, old), false);
            }
            if spec_changed(rt, &old.object, &object) {
                let g = generation(&old.object) + 1;
                metadata_mut(&mut object).insert("generation".into(), g.into());
            }
        }
        if dry_run {
            return (render(rt, &Stored { object, managers }), created);
        }

        self.resource_version += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), self.resource_version().into());
        let gen_moved = old
            .as_ref()
            .is_none_or(|o| generation(&o.object) != generation(&object));
        if gen_moved {
            let before = object.clone();
            if kubelet::at_write(rt, &mut object, &now) {
                let delay = kubelet::settle_delay(rt, self.ready_delay);
                if delay.is_zero() {
                    kubelet::settle(rt, &mut object, &now, &mut self.load_balancers);
                } else {
                    self.pending.push(PendingSettle {
                        collection: collection(rt),
                        key: key.clone(),
                        uid: uid(&object).to_string(),
                        generation: generation(&object),
                        delay,
                    });
                }
            }
            let simulator = Writer {
                manager: SIMULATOR,
                api_version: rt.api_version(),
                time: &now,
            };
            managers.record_update(Some(&before), &object, &simulator, status_scope(rt));
        }
        let stored = Stored { object, managers };
        let out = render(rt, &stored);
        self.objects
            .entry(collection(rt))
            .or_default()
            .insert(key, stored);
        (out, created)
    }

    /// The simulator's delayed settle of one object, if it still is at `generation`.
    pub fn settle(&mut self, s: &PendingSettle) {
        let Some(stored) = self.objects.get(&s.collection).and_then(|m| m.get(&s.key)) else {
            return;
        };
        if generation(&stored.object) != s.generation || uid(&stored.object) != s.uid {
            return;
        }
        let (group, plural) = &s.collection;
        let kind = stored
            .object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(rt) = self
            .resolve_kind(group, kind)
            .filter(|rt| rt.plural == *plural)
        else {
            return;
        };
        let now = now();
        let mut object = stored.object.clone();
        let mut managers = stored.managers.clone();
        kubelet::settle(&rt, &mut object, &now, &mut self.load_balancers);
        if object == stored.object {
            return;
        }
        let simulator = Writer {
            manager: SIMULATOR,
            api_version: rt.api_version(),
            time: &now,
        };
        managers.record_update(Some(&stored.object), &object, &simulator, status_scope(&rt));
        self.resource_version += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), self.resource_version().into());
        let stored = Stored { object, managers };
        self.objects
            .entry(s.collection.clone())
            .or_default()
            .insert(s.key.clone(), stored);
    }

    /// Deletes one object (and what it owns: a Namespace's objects, a CRD's custom
    /// resources). Returns the deleted object as last served.
    pub fn delete(&mut self, rt: &ResourceType, key: &ObjectKey) -> Option<Value> {
        let stored = self.objects.get_mut(&collection(rt))?.remove(key)?;
        self.resource_version += 1;
        if rt.is("", "Namespace") {
            for objects in self.objects.values_mut() {
                objects.retain(|(ns, _), _| *ns != key.1);
            }
        } else if rt.is(CRD_GROUP, "CustomResourceDefinition")
            && let Some(crd) = CrdInfo::from_object(&stored.object)
        {
            self.objects.remove(&(crd.group, crd.plural));
        }
        Some(render(rt, &stored))
    }

    /// Creates the namespaces that exist from the start.
    pub fn seed_namespaces(&mut self, names: &[String]) {
        let rt = resources::built_in("", "v1", "namespaces").expect("built in");
        for name in names {
            let object = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]},
            });
            self.commit(Write {
                rt: &rt,
                key: (String::new(), name.clone()),
                object,
                managers: Managers::default(),
                dry_run: false,
            });
        }
    }
}

fn collection(rt: &ResourceType) -> Collection {
    (rt.group.clone(), rt.plural.clone())
}

/// The scope the status simulator writes in.
fn status_scope(rt: &ResourceType) -> Scope {
    if rt.status { Scope::Status } else { Scope::All }
}

/// Whether something outside `metadata` (and `status`, for kinds with a status subresource)
/// changed: what moves `metadata.generation`.
fn spec_changed(rt: &ResourceType, old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        if rt.status {
            m.remove("status");
        }
        m
    };
    strip(old) != strip(new)
}

pub(crate) fn generation(object: &Value) -> i64 {
    object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn uid(object: &Value) -> &str {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `object.metadata` as a map, created if missing.
pub(crate) fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let meta = object
        .as_object_mut()
        .expect("an object")
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("a map")
}

/// The object as served: in `rt`'s apiVersion, with its managedFields.
pub(crate) fn render(rt: &ResourceType, stored: &Stored) -> Value {
    let mut object = stored.object.clone();
    if let Value::Object(m) = &mut object {
        m.insert("apiVersion".into(), rt.api_version().into());
        m.insert("kind".into(), rt.kind.clone().into());
    }
    if !stored.managers.0.is_empty() {
        metadata_mut(&mut object).insert("managedFields".into(), stored.managers.render());
    }
    object
}

/// Now, RFC 3339 in UTC to the second (the Kubernetes `Time` format).
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random UUID (version 4) as a string.
fn new_uid() -> String {
    let n: u128 = rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_uuid_v4_shaped_and_unique() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, new_uid());
    }
}
