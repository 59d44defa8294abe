//! Field ownership and server-side apply for the simulated cluster, plus the two JSON patch
//! formats.
//!
//! Ownership is kept per manager entry (manager, operation, subresource) as a set of leaf paths:
//! maps are recursed into, everything else (scalars, lists, empty maps) is a leaf, so lists are
//! atomic. It is rendered as real `managedFields` (FieldsV1) on output.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// A field path: the map keys from the object root.
pub(crate) type Path = Vec<String>;

/// Metadata fields the server sets; nobody owns them.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// Which part of an object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole object.
    All,
    /// Everything but `.status` (a main write to a kind with a status subresource).
    NoStatus,
    /// Only `.status` (a write to the status subresource).
    Status,
}

impl Scope {
    fn subresource(self) -> Option<&'static str> {
        (self == Scope::Status).then_some("status")
    }

    fn admits(self, path: &[String]) -> bool {
        if path.len() == 1 && (path[0] == "apiVersion" || path[0] == "kind") {
            return false;
        }
        if path.len() >= 2 && path[0] == "metadata" && SERVER_METADATA.contains(&path[1].as_str()) {
            return false;
        }
        let status = path.first().is_some_and(|k| k == "status");
        match self {
            Scope::All => true,
            Scope::NoStatus => !status,
            Scope::Status => status,
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub(crate) struct ManagerEntry {
    pub manager: String,
    pub operation: Operation,
    pub subresource: Option<&'static str>,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<Path>,
}

impl ManagerEntry {
    fn same_key(&self, manager: &str, operation: Operation, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    /// How conflict messages name this manager, as the real server does.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// Every manager entry of one object, in first-write order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Managers(pub Vec<ManagerEntry>);

impl Managers {
    /// Same owners of the same fields (times and API versions aside): nothing to persist.
    pub fn same_ownership(&self, other: &Managers) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|(a, b)| {
                a.same_key(&b.manager, b.operation, b.subresource) && a.fields == b.fields
            })
    }

    /// The entries as the `metadata.managedFields` array.
    pub fn render(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|e| {
                    let mut m = Map::new();
                    m.insert("manager".into(), e.manager.clone().into());
                    m.insert("operation".into(), e.operation.as_str().into());
                    m.insert("apiVersion".into(), e.api_version.clone().into());
                    m.insert("time".into(), e.time.clone().into());
                    m.insert("fieldsType".into(), "FieldsV1".into());
                    m.insert("fieldsV1".into(), fields_v1(&e.fields));
                    if let Some(sub) = e.subresource {
                        m.insert("subresource".into(), sub.into());
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    fn entry_mut(
        &mut self,
        manager: &str,
        operation: Operation,
        subresource: Option<&'static str>,
        api_version: &str,
        time: &str,
    ) -> &mut ManagerEntry {
        let i = match self
            .0
            .iter()
            .position(|e| e.same_key(manager, operation, subresource))
        {
            Some(i) => i,
            None => {
                self.0.push(ManagerEntry {
                    manager: manager.into(),
                    operation,
                    subresource,
                    api_version: String::new(),
                    time: String::new(),
                    fields: BTreeSet::new(),
                });
                self.0.len() - 1
            }
        };
        let e = &mut self.0[i];
        e.api_version = api_version.into();
        e.time = time.into();
        e
    }

    fn drop_empty(&mut self) {
        self.0.retain(|e| !e.fields.is_empty());
    }

    /// Whether any entry owns a field at or under, or a leaf above, `path`.
    fn owned_by_anyone(&self, path: &[String]) -> bool {
        self.0
            .iter()
            .any(|e| e.fields.iter().any(|q| overlaps(q, path)))
    }

    /// Records an Update by `manager`: it takes every leaf it changed from whoever owned it;
    /// fields it removed are owned by nobody afterwards. Updates never conflict.
    pub fn record_update(
        &mut self,
        old: Option<&Value>,
        new: &Value,
        who: &Writer<'_>,
        scope: Scope,
    ) {
        let null = Value::Null;
        let old = old.unwrap_or(&null);
        let old_leaves = leaf_paths(old, scope);
        let new_leaves = leaf_paths(new, scope);
        let changed: Vec<&Path> = new_leaves
            .iter()
            .filter(|p| get(old, p) != get(new, p))
            .collect();
        let removed: Vec<&Path> = old_leaves.difference(&new_leaves).collect();
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        for e in &mut self.0 {
            e.fields.retain(|q| {
                !changed.iter().any(|p| overlaps(p, q)) && !removed.iter().any(|p| q.starts_with(p))
            });
        }
        if !changed.is_empty() {
            let sub = scope.subresource();
            let e = self.entry_mut(
                who.manager,
                Operation::Update,
                sub,
                &who.api_version,
                who.time,
            );
            e.fields.extend(changed.into_iter().cloned());
        }
        self.drop_empty();
    }
}

/// Who writes: the field manager, the API version it writes in, and when.
pub(crate) struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: String,
    pub time: &'a str,
}

/// One field another manager owns with a different value than an apply sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    pub manager: String,
    pub path: String,
}

/// The 409 message and causes of an apply conflict, in the real server's wording.
pub(crate) fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager, c.path
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| c.manager == m) {
            lines.push(format!("- {}", c.path));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Server-side apply of `config` (already stripped of nulls and of fields outside `scope`) to
/// `live` (`Value::Null` when the object does not exist yet). Returns the new object and
/// ownership, or the conflicts when `force` is off.
pub(crate) fn apply(
    live: &Value,
    managers: &Managers,
    config: &Value,
    who: &Writer<'_>,
    scope: Scope,
    force: bool,
) -> Result<(Value, Managers), Vec<Conflict>> {
    let sub = scope.subresource();
    let paths = leaf_paths(config, scope);
    let is_applier = |e: &ManagerEntry| e.same_key(who.manager, Operation::Apply, sub);

    // Conflicts: a field another manager owns that this apply would change.
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Path)> = Vec::new();
    for (i, e) in managers.0.iter().enumerate() {
        if is_applier(e) {
            continue;
        }
        for q in &e.fields {
            for p in &paths {
                let collides = q.starts_with(p)
                    || (p.starts_with(q) && !get(live, q).is_some_and(Value::is_object));
                if collides && get(live, p) != get(config, p) {
                    let c = Conflict {
                        manager: e.describe(),
                        path: format_path(p),
                    };
                    if !conflicts.contains(&c) {
                        conflicts.push(c);
                    }
                    taken.push((i, q.clone()));
                }
            }
        }
    }
    conflicts.sort_by(|a, b| (&a.manager, &a.path).cmp(&(&b.manager, &b.path)));
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }

    let mut next = managers.clone();
    for (i, q) in &taken {
        next.0[*i].fields.remove(q);
    }
    let previously: BTreeSet<Path> = next
        .0
        .iter()
        .find(|e| is_applier(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let entry = next.entry_mut(
        who.manager,
        Operation::Apply,
        sub,
        &who.api_version,
        who.time,
    );
    entry.fields = paths.clone();

    // Fields this manager applied before and no longer does go, unless someone else owns them.
    let mut object = if live.is_object() {
        live.clone()
    } else {
        Value::Object(Map::new())
    };
    for p in previously.difference(&paths) {
        if !next
            .0
            .iter()
            .any(|e| !is_applier(e) && e.fields.iter().any(|q| overlaps(q, p)))
        {
            remove(&mut object, p, &next);
        }
    }
    deep_merge(&mut object, config);
    next.drop_empty();
    Ok((object, next))
}

/// Removes the field at `path` and then every map above it left empty that nobody owns (the
/// top-level `metadata` stays).
fn remove(object: &mut Value, path: &[String], managers: &Managers) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let Some(Value::Object(map)) = get_mut(object, parent) else {
        return;
    };
    map.remove(last);
    let mut parent = parent.to_vec();
    while !parent.is_empty() && parent != ["metadata"] {
        let empty = get(object, &parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
        if !empty || managers.owned_by_anyone(&parent) {
            break;
        }
        let last = parent.pop().expect("non-empty");
        if let Some(Value::Object(map)) = get_mut(object, &parent) {
            map.remove(&last);
        }
    }
}

/// `.spec.replicas`, as the real server prints a field path.
pub(crate) fn format_path(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

/// One path lies within the other (or they are equal).
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The leaf paths of `value` that `scope` admits.
fn leaf_paths(value: &Value, scope: Scope) -> BTreeSet<Path> {
    fn walk(v: &Value, path: &mut Path, scope: Scope, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, scope, out);
                    path.pop();
                }
            }
            _ if path.is_empty() => {}
            _ => {
                if scope.admits(path) {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), scope, &mut out);
    out
}

pub(crate) fn get<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, k| v.as_object()?.get(k))
}

fn get_mut<'v>(value: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter()
        .try_fold(value, |v, k| v.as_object_mut()?.get_mut(k))
}

/// Merges `patch` into `target`: maps recursively, everything else replaced.
fn deep_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Drops `null` map values recursively (an apply config's nulls set nothing).
pub(crate) fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// `{"f:spec":{"f:replicas":{}}}` for the paths `spec.replicas`; a path that is owned itself and
/// also has owned fields below it gets a `"."` entry, as in the real format.
fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    fn node<'m>(root: &'m mut Map<String, Value>, path: &[String]) -> &'m mut Map<String, Value> {
        path.iter().fold(root, |m, k| {
            match m
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()))
            {
                Value::Object(child) => child,
                _ => unreachable!("fieldsV1 nodes are maps"),
            }
        })
    }
    let mut root = Map::new();
    for p in paths {
        node(&mut root, p);
    }
    for p in paths {
        let n = node(&mut root, p);
        if !n.is_empty() {
            n.insert(".".into(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(m: &str) -> Writer<'_> {
        Writer {
            manager: m,
            api_version: "apps/v1".into(),
            time: "t",
        }
    }

    fn p(s: &str) -> Path {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn apply_owns_leaves_and_lists_atomically() {
        let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "w", "labels": {"a": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}}});
        let (obj, m) = apply(
            &Value::Null,
            &Managers::default(),
            &cfg,
            &who("a"),
            Scope::NoStatus,
            false,
        )
        .unwrap();
        assert_eq!(obj, cfg);
        let fields: Vec<_> = m.0[0].fields.iter().cloned().collect();
        assert_eq!(
            fields,
            [
                p("metadata.labels.a"),
                p("spec.replicas"),
                p("spec.template.spec.containers")
            ]
        );
        assert_eq!(
            fields_v1(&m.0[0].fields),
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}})
        );
    }

    #[test]
    fn conflicts_name_the_owner_and_force_takes_over() {
        let live = json!({"spec": {"replicas": 3, "x": 1}});
        let mut m = Managers::default();
        m.record_update(None, &live, &who("kubectl-edit"), Scope::NoStatus);
        let cfg = json!({"spec": {"replicas": 2, "x": 1}});
        let err = apply(&live, &m, &cfg, &who("a"), Scope::NoStatus, false).unwrap_err();
        assert_eq!(
            err,
            [Conflict {
                manager: "\"kubectl-edit\" using apps/v1".into(),
                path: ".spec.replicas".into()
            }]
        );
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"
        );
        let (obj, m2) = apply(&live, &m, &cfg, &who("a"), Scope::NoStatus, true).unwrap();
        assert_eq!(obj, cfg);
        // x is shared (same value), replicas moved to the applier.
        assert_eq!(m2.0[0].fields, BTreeSet::from([p("spec.x")]));
        assert_eq!(
            m2.0[1].fields,
            BTreeSet::from([p("spec.replicas"), p("spec.x")])
        );
    }

    #[test]
    fn several_conflicts_are_listed_per_manager() {
        let c = |m: &str, f: &str| Conflict {
            manager: format!("{m:?}"),
            path: f.into(),
        };
        let msg = conflict_message(&[
            c("b", ".spec.y"),
            c("a", ".spec.replicas"),
            c("a", ".spec.x"),
        ]);
        assert_eq!(
            msg,
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.replicas\n- .spec.x\nconflicts with \"b\":\n- .spec.y"
        );
    }

    #[test]
    fn dropped_fields_are_removed_unless_someone_else_owns_them() {
        let apply_as = |live: &Value, m: &Managers, cfg: Value, manager: &str| {
            apply(live, m, &cfg, &who(manager), Scope::All, false).unwrap()
        };
        let cfg1 = json!({"data": {"a": "1", "b": "2"}, "x": {"y": 1}});
        let (obj, m) = apply_as(&Value::Null, &Managers::default(), cfg1, "a");
        let (obj, m) = apply_as(&obj, &m, json!({"data": {"b": "2"}}), "other");
        let (obj, _) = apply_as(&obj, &m, json!({"data": {"c": "3"}}), "a");
        assert_eq!(obj, json!({"data": {"b": "2", "c": "3"}}));
    }
}
