//! kstatus-style health of Kubernetes objects, after the rules of `sigs.k8s.io/cli-utils`'
//! kstatus: one live object (as the API server returns it, with `metadata` and `status`) in,
//! one [`Assessment`] out. Pure: no I/O, no clock, and no panics on malformed input (it is
//! [`Health::Unknown`] with reason [`UNREADABLE`] instead).
//!
//! The order of the rules:
//! 1. generic properties of every object (deletion in progress, stale `observedGeneration`);
//! 2. the kind's own rules, for the built-in kinds that have them (matched on API group and
//!    kind, so a custom resource that happens to be called `Deployment` is not taken for one);
//! 3. otherwise the generic condition rules over `status.conditions`.
//!
//! Integer fields are read as JSON numbers only; a field the API server omits (Kubernetes omits
//! zero counters) reads as its default, usually 0.

use serde_json::Value;

/// The reason of an [`Assessment`] whose object could not be read.
pub const UNREADABLE: &str = "UnreadableStatus";

/// How healthy an object is (the protocol's type); [`Health::rank`] orders best to worst.
pub use flotilla_proto::state::ObjectHealth as Health;

/// The health of one object, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub health: Health,
    /// Short CamelCase reason, e.g. `ReplicasNotReady`, `ProgressDeadlineExceeded`, `Current`.
    pub reason: String,
    /// A human sentence, e.g. `1 of 3 replicas ready`.
    pub message: String,
}

impl Assessment {
    pub fn new(health: Health, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            health,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn current(message: impl Into<String>) -> Self {
        Self::new(Health::Current, "Current", message)
    }

    fn in_progress(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Health::InProgress, reason, message)
    }

    fn failed(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Health::Failed, reason, message)
    }
}

/// The health of one live object (the caller handles objects that are not found).
///
/// Generic rules come first, for every kind: a `metadata.deletionTimestamp` is InProgress
/// `Terminating`; a `status.observedGeneration` below `metadata.generation` is InProgress
/// `ObservedGenerationStale` (the status describes an older spec). Kinds that never have a
/// status are Current. Then the kind's own rules, or the generic condition rules. Anything
/// that cannot be read (a status that is not an object, a count that is not a number, …) is
/// Unknown with reason [`UNREADABLE`] and a message naming the field.
pub fn assess(obj: &Value) -> Assessment {
    if !obj.is_object() {
        return Assessment::new(
            Health::Unknown,
            UNREADABLE,
            "the object is not a JSON object",
        );
    }
    assess_object(obj)
        .unwrap_or_else(|Unreadable(message)| Assessment::new(Health::Unknown, UNREADABLE, message))
}

fn assess_object(obj: &Value) -> Read<Assessment> {
    // Generic: an object being deleted is on its way out, whatever its status says.
    if get(obj, &["metadata", "deletionTimestamp"])?.is_some() {
        return Ok(Assessment::in_progress(
            "Terminating",
            "the object is being deleted",
        ));
    }
    let api_version = string(obj, &["apiVersion"])?.unwrap_or("");
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let kind = string(obj, &["kind"])?.unwrap_or("");
    if has_no_status(group, kind) {
        return Ok(Assessment::current(format!(
            "{kind} has no status; it exists"
        )));
    }
    // Generic: the status describes an older spec until the controller observes the latest.
    if let (Some(observed), Some(generation)) = (
        int(obj, &["status", "observedGeneration"])?,
        int(obj, &["metadata", "generation"])?,
    ) && observed < generation
    {
        return Ok(Assessment::in_progress(
            "ObservedGenerationStale",
            format!("the controller has not observed generation {generation} yet"),
        ));
    }
    match (group, kind) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("apps", "ReplicaSet") => replica_set(obj),
        ("batch", "Job") => job(obj),
        ("", "Pod") => pod(obj),
        ("", "PersistentVolumeClaim") => persistent_volume_claim(obj),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => custom_resource_definition(obj),
        _ => generic(obj),
    }
}

/// Kinds that never have a status: Current as soon as they exist.
fn has_no_status(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        (
            "",
            "ConfigMap" | "Secret" | "ServiceAccount" | "Endpoints" | "LimitRange" | "PodTemplate"
        ) | (
            "rbac.authorization.k8s.io",
            "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
        ) | ("scheduling.k8s.io", "PriorityClass")
            | ("storage.k8s.io", "StorageClass")
            | ("networking.k8s.io", "IngressClass")
            | ("node.k8s.io", "RuntimeClass")
            | ("discovery.k8s.io", "EndpointSlice")
            | (
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration"
            )
    )
}

/// Deployment: Failed once the `Progressing` condition is False with reason
/// `ProgressDeadlineExceeded`. InProgress while fewer than `spec.replicas` (default 1) replicas
/// are updated, old replicas await termination, extra replicas await scale-down, updated
/// replicas are not yet ready or available, or the `Available` condition is False. Current
/// when every replica is updated and available.
fn deployment(obj: &Value) -> Read<Assessment> {
    let conditions = conditions(obj)?;
    if let Some(c) = conditions.find("Progressing")
        && c.status == "False"
        && c.reason == Some("ProgressDeadlineExceeded")
    {
        return Ok(Assessment::failed(
            "ProgressDeadlineExceeded",
            c.message_or("the deployment exceeded its progress deadline"),
        ));
    }
    let spec = int(obj, &["spec", "replicas"])?.unwrap_or(1);
    let replicas = status_int(obj, "replicas")?;
    let updated = status_int(obj, "updatedReplicas")?;
    let ready = status_int(obj, "readyReplicas")?;
    let available = status_int(obj, "availableReplicas")?;
    if let Some(a) = fewer(updated, spec, "ReplicasNotUpdated", "replicas updated") {
        return Ok(a);
    }
    if replicas > updated {
        return Ok(Assessment::in_progress(
            "OldReplicasPending",
            format!(
                "{} pending termination",
                count(replicas - updated, "old replica")
            ),
        ));
    }
    if let Some(a) = extra_replicas(replicas, spec) {
        return Ok(a);
    }
    if let Some(a) = fewer(ready, updated, "ReplicasNotReady", "replicas ready") {
        return Ok(a);
    }
    if let Some(a) = fewer(
        available,
        updated,
        "ReplicasNotAvailable",
        "replicas available",
    ) {
        return Ok(a);
    }
    if let Some(c) = conditions.find("Available")
        && c.status == "False"
    {
        return Ok(Assessment::in_progress(
            "Unavailable",
            c.message_or("the deployment is not available"),
        ));
    }
    Ok(Assessment::current(format!(
        "{available} of {spec} replicas updated and available"
    )))
}

/// StatefulSet: with the `OnDelete` strategy pods change only when deleted, so only the ready
/// count matters. With `RollingUpdate` it is InProgress while fewer than `spec.replicas`
/// (default 1) replicas are ready or extra replicas await scale-down; then, under a partition
/// (`spec.updateStrategy.rollingUpdate.partition` > 0), while fewer than the replicas at or above
/// the partition are updated; without one, while fewer than `spec.replicas` replicas are updated
/// or current, or the current revision differs from the update revision.
fn stateful_set(obj: &Value) -> Read<Assessment> {
    let strategy = string(obj, &["spec", "updateStrategy", "type"])?.unwrap_or("RollingUpdate");
    let spec = int(obj, &["spec", "replicas"])?.unwrap_or(1);
    let ready = status_int(obj, "readyReplicas")?;
    if let Some(a) = fewer(ready, spec, "ReplicasNotReady", "replicas ready") {
        return Ok(a);
    }
    if strategy == "OnDelete" {
        return Ok(Assessment::current(format!(
            "{ready} of {spec} replicas ready (OnDelete: pods update when deleted)"
        )));
    }
    let replicas = status_int(obj, "replicas")?;
    if let Some(a) = extra_replicas(replicas, spec) {
        return Ok(a);
    }
    let updated = status_int(obj, "updatedReplicas")?;
    let partition = int(
        obj,
        &["spec", "updateStrategy", "rollingUpdate", "partition"],
    )?
    .unwrap_or(0);
    if partition > 0 {
        let want = spec.saturating_sub(partition).max(0);
        if updated < want {
            return Ok(Assessment::in_progress(
                "PartitionRollout",
                format!("{updated} of {want} replicas at or above partition {partition} updated"),
            ));
        }
        return Ok(Assessment::current(format!(
            "{ready} of {spec} replicas ready; partition {partition} rolled out"
        )));
    }
    if let Some(a) = fewer(updated, spec, "ReplicasNotUpdated", "replicas updated") {
        return Ok(a);
    }
    let current = status_int(obj, "currentReplicas")?;
    if let Some(a) = fewer(
        current,
        spec,
        "ReplicasNotCurrent",
        "replicas at the current revision",
    ) {
        return Ok(a);
    }
    let current_revision = string(obj, &["status", "currentRevision"])?;
    let update_revision = string(obj, &["status", "updateRevision"])?;
    if current_revision != update_revision {
        return Ok(Assessment::in_progress(
            "RevisionMismatch",
            format!(
                "current revision {} is not the update revision {}",
                current_revision.unwrap_or("(none)"),
                update_revision.unwrap_or("(none)")
            ),
        ));
    }
    Ok(Assessment::current(format!(
        "{ready} of {spec} replicas ready and updated"
    )))
}

/// DaemonSet: InProgress until the controller has reported `status.desiredNumberScheduled`
/// (a freshly created DaemonSet reads 0 desired with no `observedGeneration`: not observed
/// yet). Then InProgress while fewer pods than desired are updated (not checked with the
/// `OnDelete` strategy, where pods change only when deleted), ready or available. An observed
/// DaemonSet with 0 desired pods is Current.
fn daemon_set(obj: &Value) -> Read<Assessment> {
    let desired = int(obj, &["status", "desiredNumberScheduled"])?;
    let observed = int(obj, &["status", "observedGeneration"])?.is_some();
    let generation = int(obj, &["metadata", "generation"])?.is_some();
    let desired = match desired {
        Some(0) if generation && !observed => None,
        other => other,
    };
    let Some(desired) = desired else {
        return Ok(Assessment::in_progress(
            "NotObserved",
            "the controller has not reported the desired number of pods yet",
        ));
    };
    let strategy = string(obj, &["spec", "updateStrategy", "type"])?.unwrap_or("RollingUpdate");
    let updated = status_int(obj, "updatedNumberScheduled")?;
    if strategy != "OnDelete"
        && let Some(a) = fewer(updated, desired, "PodsNotUpdated", "pods updated")
    {
        return Ok(a);
    }
    let ready = status_int(obj, "numberReady")?;
    if let Some(a) = fewer(ready, desired, "PodsNotReady", "pods ready") {
        return Ok(a);
    }
    let available = status_int(obj, "numberAvailable")?;
    if let Some(a) = fewer(available, desired, "PodsNotAvailable", "pods available") {
        return Ok(a);
    }
    Ok(Assessment::current(format!(
        "{available} of {desired} pods available"
    )))
}

/// ReplicaSet: Failed when a `ReplicaFailure` condition is True (e.g. pods cannot be created).
/// InProgress while fewer than `spec.replicas` (default 1) replicas are fully labeled, ready or
/// available, or extra replicas await scale-down.
fn replica_set(obj: &Value) -> Read<Assessment> {
    let conditions = conditions(obj)?;
    if let Some(c) = conditions.find_true("ReplicaFailure") {
        return Ok(Assessment::failed(
            c.reason_or("ReplicaFailure"),
            c.message_or("the replica set cannot create or delete pods"),
        ));
    }
    let spec = int(obj, &["spec", "replicas"])?.unwrap_or(1);
    for (field, reason, what) in [
        (
            "fullyLabeledReplicas",
            "ReplicasNotLabeled",
            "replicas labeled",
        ),
        ("readyReplicas", "ReplicasNotReady", "replicas ready"),
        (
            "availableReplicas",
            "ReplicasNotAvailable",
            "replicas available",
        ),
    ] {
        if let Some(a) = fewer(status_int(obj, field)?, spec, reason, what) {
            return Ok(a);
        }
    }
    let replicas = status_int(obj, "replicas")?;
    if let Some(a) = extra_replicas(replicas, spec) {
        return Ok(a);
    }
    Ok(Assessment::current(format!(
        "{spec} of {spec} replicas available"
    )))
}

/// Job: Failed when the `Failed` condition is True (reason from the condition, e.g.
/// `BackoffLimitExceeded`); Current when `Complete` is True, or "Suspended" while
/// `spec.suspend` is true; otherwise InProgress `JobRunning`.
fn job(obj: &Value) -> Read<Assessment> {
    let conditions = conditions(obj)?;
    let succeeded = status_int(obj, "succeeded")?;
    if let Some(c) = conditions.find_true("Failed") {
        return Ok(Assessment::failed(
            c.reason_or("JobFailed"),
            c.message_or("the job failed"),
        ));
    }
    if conditions.find_true("Complete").is_some() {
        return Ok(Assessment::new(
            Health::Current,
            "Complete",
            format!("the job completed ({succeeded} succeeded)"),
        ));
    }
    if boolean(obj, &["spec", "suspend"])? == Some(true) {
        return Ok(Assessment::new(
            Health::Current,
            "Suspended",
            "the job is suspended",
        ));
    }
    let active = status_int(obj, "active")?;
    Ok(Assessment::in_progress(
        "JobRunning",
        format!("{active} active, {succeeded} succeeded"),
    ))
}

/// Container waiting reasons that do not resolve without intervention.
const FAILED_WAITING_REASONS: [&str; 5] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// Pod: phase `Succeeded` is Current and `Failed` is Failed. A container (or init container)
/// waiting for a reason in [`FAILED_WAITING_REASONS`] is Failed with that reason. Phase
/// `Unknown` (the node stopped reporting) is Unknown. A `Running` pod is Current when its
/// `Ready` condition is True, except that a pod meant to finish (`restartPolicy` `Never` or
/// `OnFailure`) stays InProgress until it has Succeeded. Pending or not ready is InProgress.
fn pod(obj: &Value) -> Read<Assessment> {
    let phase = string(obj, &["status", "phase"])?;
    match phase {
        Some("Succeeded") => {
            return Ok(Assessment::new(
                Health::Current,
                "Succeeded",
                "the pod completed successfully",
            ));
        }
        Some("Failed") => {
            let reason = string(obj, &["status", "reason"])?.unwrap_or("PodFailed");
            let message = string(obj, &["status", "message"])?.unwrap_or("the pod failed");
            return Ok(Assessment::failed(reason, message));
        }
        _ => {}
    }
    for list in ["initContainerStatuses", "containerStatuses"] {
        for (i, status) in array(obj, &["status", list])?.iter().enumerate() {
            if !status.is_object() {
                return Err(Unreadable(format!("status.{list}[{i}] is not an object")));
            }
            let waiting = string(status, &["state", "waiting", "reason"])
                .map_err(|e| e.within(&format!("status.{list}[{i}]")))?;
            if let Some(reason) = waiting
                && FAILED_WAITING_REASONS.contains(&reason)
            {
                let name = string(status, &["name"])
                    .map_err(|e| e.within(&format!("status.{list}[{i}]")))?
                    .unwrap_or("?");
                let detail = string(status, &["state", "waiting", "message"])
                    .ok()
                    .flatten()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Ok(Assessment::failed(
                    reason,
                    format!("container {name:?} is waiting in {reason}{detail}"),
                ));
            }
        }
    }
    let conditions = conditions(obj)?;
    match phase {
        Some("Unknown") => Ok(Assessment::new(
            Health::Unknown,
            "PodPhaseUnknown",
            "the pod's node is not reporting its state",
        )),
        Some("Running") => {
            let restart = string(obj, &["spec", "restartPolicy"])?.unwrap_or("Always");
            if restart != "Always" {
                return Ok(Assessment::in_progress(
                    "PodRunning",
                    format!("the pod is running (restartPolicy {restart}: done when it succeeds)"),
                ));
            }
            match conditions.find("Ready") {
                Some(c) if c.status == "True" => {
                    Ok(Assessment::current("the pod is running and ready"))
                }
                c => Ok(Assessment::in_progress(
                    "PodNotReady",
                    c.map_or("the pod is running but not ready", |c| {
                        c.message_or("the pod is running but not ready")
                    }),
                )),
            }
        }
        _ => {
            let message = match conditions.find("PodScheduled") {
                Some(c) if c.status == "False" => c.message_or("the pod is not scheduled yet"),
                _ => "the pod is pending",
            };
            Ok(Assessment::in_progress("PodPending", message))
        }
    }
}

/// PersistentVolumeClaim: phase `Bound` is Current, `Lost` (its volume is gone) is Failed,
/// anything else InProgress `NotBound`.
fn persistent_volume_claim(obj: &Value) -> Read<Assessment> {
    match string(obj, &["status", "phase"])? {
        Some("Bound") => Ok(Assessment::current("the claim is bound")),
        Some("Lost") => Ok(Assessment::failed(
            "ClaimLost",
            "the claim's volume was lost",
        )),
        phase => Ok(Assessment::in_progress(
            "NotBound",
            format!("the claim is {}", phase.unwrap_or("not bound yet")),
        )),
    }
}

/// Service: a `LoadBalancer` service is Current once `status.loadBalancer.ingress` is
/// non-empty, InProgress `LoadBalancerPending` before; other types are Current.
fn service(obj: &Value) -> Read<Assessment> {
    if string(obj, &["spec", "type"])? != Some("LoadBalancer") {
        return Ok(Assessment::current("the service exists"));
    }
    if array(obj, &["status", "loadBalancer", "ingress"])?.is_empty() {
        return Ok(Assessment::in_progress(
            "LoadBalancerPending",
            "waiting for the load balancer's ingress point",
        ));
    }
    Ok(Assessment::current(
        "the load balancer has an ingress point",
    ))
}

/// Namespace: InProgress while its phase is `Terminating`, Current otherwise.
fn namespace(obj: &Value) -> Read<Assessment> {
    if string(obj, &["status", "phase"])? == Some("Terminating") {
        return Ok(Assessment::in_progress(
            "Terminating",
            "the namespace is terminating",
        ));
    }
    Ok(Assessment::current("the namespace is active"))
}

/// CustomResourceDefinition: Current when `Established` is True; Failed when `NamesAccepted`
/// is False (the names conflict); otherwise InProgress `NotEstablished`.
fn custom_resource_definition(obj: &Value) -> Read<Assessment> {
    let conditions = conditions(obj)?;
    if conditions.find_true("Established").is_some() {
        return Ok(Assessment::current("the definition is established"));
    }
    if let Some(c) = conditions.find("NamesAccepted")
        && c.status == "False"
    {
        return Ok(Assessment::failed(
            c.reason_or("NamesNotAccepted"),
            c.message_or("the definition's names were not accepted"),
        ));
    }
    Ok(Assessment::in_progress(
        "NotEstablished",
        "the definition is not established yet",
    ))
}

/// Any other kind, custom resources included, on `status.conditions`: `Stalled` True or a
/// `Failed` condition True is Failed; `Reconciling` True is InProgress; a `Ready` or `Available`
/// condition that is not True (False or Unknown) is InProgress with its reason and message; a
/// True one is Current. Without status or conditions the object is Current: it exists, and
/// there is nothing else to wait for.
fn generic(obj: &Value) -> Read<Assessment> {
    let conditions = conditions(obj)?;
    for kind in ["Stalled", "Failed"] {
        if let Some(c) = conditions.find_true(kind) {
            return Ok(Assessment::failed(
                c.reason_or(kind),
                c.message_or(&format!("the {kind} condition is True")),
            ));
        }
    }
    if let Some(c) = conditions.find_true("Reconciling") {
        return Ok(Assessment::in_progress(
            c.reason_or("Reconciling"),
            c.message_or("the controller is reconciling the object"),
        ));
    }
    let gates = ["Ready", "Available"].map(|kind| conditions.find(kind));
    for c in gates.iter().flatten() {
        if c.status != "True" {
            let fallback = if c.status == "False" {
                format!("Not{}", c.kind)
            } else {
                format!("{}Unknown", c.kind)
            };
            return Ok(Assessment::in_progress(
                c.reason_or(&fallback),
                c.message_or(&format!("the {} condition is {}", c.kind, c.status)),
            ));
        }
    }
    if let Some(c) = gates.iter().flatten().next() {
        return Ok(Assessment::current(
            c.message_or(&format!("the {} condition is True", c.kind)),
        ));
    }
    Ok(Assessment::current("the object exists"))
}

// ---- Reading ----

/// Why an object could not be read (the message of the Unknown assessment).
#[derive(Debug)]
struct Unreadable(String);

impl Unreadable {
    /// Prefixes the path of the element the error was found in.
    fn within(self, prefix: &str) -> Self {
        Unreadable(format!("{prefix}.{}", self.0))
    }
}

type Read<T> = Result<T, Unreadable>;

/// The value at `path`; `None` when a key is missing or null, an error when something on the
/// way is not an object.
fn get<'a>(obj: &'a Value, path: &[&str]) -> Read<Option<&'a Value>> {
    let mut cur = obj;
    for (i, key) in path.iter().enumerate() {
        let Value::Object(map) = cur else {
            return Err(Unreadable(format!(
                "{} is not an object",
                path[..i].join(".")
            )));
        };
        match map.get(*key) {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => cur = v,
        }
    }
    Ok(Some(cur))
}

fn not_a(path: &[&str], what: &str) -> Unreadable {
    Unreadable(format!("{} is not {what}", path.join(".")))
}

/// An integer field: a JSON number with no fractional part.
fn int(obj: &Value, path: &[&str]) -> Read<Option<i64>> {
    let Some(v) = get(obj, path)? else {
        return Ok(None);
    };
    if let Some(n) = v.as_i64() {
        return Ok(Some(n));
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(not_a(path, "an integer")),
    }
}

/// `status.<field>`, defaulting to 0 (the API server omits zero counters).
fn status_int(obj: &Value, field: &str) -> Read<i64> {
    Ok(int(obj, &["status", field])?.unwrap_or(0))
}

fn string<'a>(obj: &'a Value, path: &[&str]) -> Read<Option<&'a str>> {
    match get(obj, path)? {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| not_a(path, "a string")),
    }
}

fn boolean(obj: &Value, path: &[&str]) -> Read<Option<bool>> {
    match get(obj, path)? {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| not_a(path, "a boolean")),
    }
}

/// An array field; missing reads as empty.
fn array<'a>(obj: &'a Value, path: &[&str]) -> Read<&'a [Value]> {
    match get(obj, path)? {
        None => Ok(&[]),
        Some(v) => v
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| not_a(path, "an array")),
    }
}

/// One entry of `status.conditions`.
struct Condition<'a> {
    kind: &'a str,
    status: &'a str,
    reason: Option<&'a str>,
    message: Option<&'a str>,
}

impl<'a> Condition<'a> {
    fn reason_or(&self, fallback: &str) -> String {
        self.reason
            .filter(|r| !r.is_empty())
            .unwrap_or(fallback)
            .to_string()
    }

    fn message_or<'b>(&'b self, fallback: &'b str) -> &'b str {
        self.message.filter(|m| !m.is_empty()).unwrap_or(fallback)
    }
}

struct Conditions<'a>(Vec<Condition<'a>>);

impl<'a> Conditions<'a> {
    fn find(&self, kind: &str) -> Option<&Condition<'a>> {
        self.0.iter().find(|c| c.kind == kind)
    }

    fn find_true(&self, kind: &str) -> Option<&Condition<'a>> {
        self.find(kind).filter(|c| c.status == "True")
    }
}

/// `status.conditions`: each entry must be an object with string `type` and `status`.
fn conditions(obj: &Value) -> Read<Conditions<'_>> {
    let entries = array(obj, &["status", "conditions"])?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let within = |e: Unreadable| e.within(&format!("status.conditions[{i}]"));
        if !entry.is_object() {
            return Err(Unreadable(format!(
                "status.conditions[{i}] is not an object"
            )));
        }
        let kind = string(entry, &["type"]).map_err(within)?;
        let status = string(entry, &["status"]).map_err(within)?;
        let (Some(kind), Some(status)) = (kind, status) else {
            return Err(Unreadable(format!(
                "status.conditions[{i}] lacks a type or status"
            )));
        };
        out.push(Condition {
            kind,
            status,
            reason: string(entry, &["reason"]).map_err(within)?,
            message: string(entry, &["message"]).map_err(within)?,
        });
    }
    Ok(Conditions(out))
}

/// InProgress `reason` while only `n` of the `want` pods are as they should be; the message
/// reads "`n` of `want` `what`" (e.g. "1 of 3 replicas ready").
fn fewer(n: i64, want: i64, reason: &str, what: &str) -> Option<Assessment> {
    (n < want).then(|| Assessment::in_progress(reason, format!("{n} of {want} {what}")))
}

/// InProgress `ExtraReplicas` while more replicas run than `spec` asks for (a scale-down).
fn extra_replicas(replicas: i64, spec: i64) -> Option<Assessment> {
    (replicas > spec).then(|| {
        Assessment::in_progress(
            "ExtraReplicas",
            format!(
                "{} pending termination",
                count(replicas - spec, "extra replica")
            ),
        )
    })
}

/// `n` and the noun, pluralized: "1 old replica", "2 old replicas".
fn count(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn assert_health(obj: &Value, health: Health, reason: &str) -> Assessment {
        let a = assess(obj);
        assert_eq!((a.health, a.reason.as_str()), (health, reason), "{a:?}");
        a
    }

    /// [`assert_health`], and the message is `message`.
    fn assert_message(obj: &Value, health: Health, reason: &str, message: &str) {
        assert_eq!(assert_health(obj, health, reason).message, message);
    }

    // ---- Health and generic rules ----

    #[test]
    fn health_ranks_best_to_worst() {
        use Health::*;
        assert!(
            Current.rank() < InProgress.rank()
                && InProgress.rank() < Unknown.rank()
                && Unknown.rank() < Failed.rank()
        );
        let names: Vec<_> = [Current, InProgress, Unknown, Failed]
            .into_iter()
            .map(Health::as_str)
            .collect();
        assert_eq!(names, ["current", "in_progress", "unknown", "failed"]);
        assert_eq!(Failed.to_string(), "failed");
    }

    #[test]
    fn deletion_timestamp_is_terminating() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "deletionTimestamp": "2024-01-01T00:00:00Z"},
        });
        assert_health(&obj, Health::InProgress, "Terminating");
        // Even over a kind's own rules.
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Succeeded"},
        });
        assert_health(&pod, Health::InProgress, "Terminating");
    }

    #[test]
    fn stale_observed_generation_is_in_progress() {
        let mut obj = json!({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"generation": 3},
            "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]},
        });
        assert_message(
            &obj,
            Health::InProgress,
            "ObservedGenerationStale",
            "the controller has not observed generation 3 yet",
        );
        obj["status"]["observedGeneration"] = json!(3);
        assert_health(&obj, Health::Current, "Current");
        // Also ahead of a kind's own rules.
        let deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"generation": 2}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                       "readyReplicas": 1, "availableReplicas": 1},
        });
        assert_health(&deploy, Health::InProgress, "ObservedGenerationStale");
    }

    // ---- Malformed input ----

    #[test]
    fn malformed_objects_are_unknown_not_panics() {
        let cases = [
            json!("a string"),
            json!(null),
            json!([1, 2]),
            json!({"apiVersion": "v1", "kind": "Pod", "status": "Running"}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "status": [1]}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": "3"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "status": {"replicas": 1.5}}),
            json!({"apiVersion": "example.com/v1", "kind": "W", "status": {"conditions": {}}}),
            json!({"apiVersion": "example.com/v1", "kind": "W", "status": {"conditions": ["Ready"]}}),
            json!({"apiVersion": "example.com/v1", "kind": "W",
                   "status": {"conditions": [{"type": "Ready"}]}}),
            json!({"apiVersion": "example.com/v1", "kind": "W",
                   "status": {"conditions": [{"type": "Ready", "status": true}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": 3}}),
            json!({"apiVersion": "v1", "kind": "Pod", "status": {"containerStatuses": {}}}),
            json!({"apiVersion": "v1", "kind": "Pod", "status": {"containerStatuses": [7]}}),
            json!({"apiVersion": "batch/v1", "kind": "Job", "spec": {"suspend": "yes"}}),
            json!({"apiVersion": 1, "kind": "Pod"}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": "m"}),
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"},
                   "status": {"loadBalancer": {"ingress": "1.2.3.4"}}}),
        ];
        for obj in &cases {
            let a = assess(obj);
            assert_eq!(a.health, Health::Unknown, "{obj}: {a:?}");
            assert_eq!(a.reason, UNREADABLE, "{obj}: {a:?}");
            assert!(!a.message.is_empty());
        }
        let a = assess(&json!({"kind": "X", "status": "s", "metadata": {"generation": 1}}));
        assert_eq!(a.message, "status is not an object");
        let a = assess(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": "3"}}),
        );
        assert_eq!(a.message, "spec.replicas is not an integer");
    }

    #[test]
    fn integers_are_json_numbers_and_null_is_missing() {
        let deploy = |replicas: Value| {
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": replicas},
                "status": {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                           "availableReplicas": 2.0},
            })
        };
        assert_health(&deploy(json!(2)), Health::Current, "Current");
        assert_health(&deploy(json!(2.0)), Health::Current, "Current");
        // null spec.replicas defaults to 1; 2 running is then an extra one.
        assert_health(&deploy(json!(null)), Health::InProgress, "ExtraReplicas");
        assert_health(&deploy(json!("2")), Health::Unknown, UNREADABLE);
    }

    // ---- Deployment ----

    fn deployment(spec: i64, status: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": 4},
            "spec": {"replicas": spec},
            "status": status,
        })
    }

    #[test]
    fn deployment_progress_deadline_is_failed() {
        let obj = deployment(
            3,
            json!({"replicas": 3, "updatedReplicas": 1, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet \"web-1\" has timed out progressing."},
            ]}),
        );
        assert_message(
            &obj,
            Health::Failed,
            "ProgressDeadlineExceeded",
            "ReplicaSet \"web-1\" has timed out progressing.",
        );
    }

    #[test]
    fn deployment_rollout_steps_are_in_progress() {
        let counts = |replicas: i64, updated: i64, ready: i64, available: i64| {
            json!({"replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
                   "availableReplicas": available})
        };
        let not_updated = json!({"replicas": 3, "updatedReplicas": 1});
        // spec.replicas, status, then the reason and message it is in progress with.
        #[rustfmt::skip]
        let cases = [
            (3, not_updated, "ReplicasNotUpdated", "1 of 3 replicas updated"),
            (3, counts(4, 3, 4, 4), "OldReplicasPending", "1 old replica pending termination"),
            (3, counts(3, 3, 1, 1), "ReplicasNotReady", "1 of 3 replicas ready"),
            (3, counts(3, 3, 3, 2), "ReplicasNotAvailable", "2 of 3 replicas available"),
            // Scaling down: the new replica set still runs more than wanted.
            (2, counts(3, 3, 3, 3), "ExtraReplicas", "1 extra replica pending termination"),
        ];
        for (spec, status, reason, message) in cases {
            assert_message(
                &deployment(spec, status),
                Health::InProgress,
                reason,
                message,
            );
        }
    }

    #[test]
    fn deployment_available_false_is_in_progress() {
        let obj = deployment(
            2,
            json!({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                   "availableReplicas": 2, "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                 "message": "Deployment does not have minimum availability."},
            ]}),
        );
        assert_message(
            &obj,
            Health::InProgress,
            "Unavailable",
            "Deployment does not have minimum availability.",
        );
    }

    #[test]
    fn deployment_current_when_all_updated_and_available() {
        let obj = deployment(
            3,
            json!({"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3,
                   "readyReplicas": 3, "availableReplicas": 3, "conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ]}),
        );
        assert_message(
            &obj,
            Health::Current,
            "Current",
            "3 of 3 replicas updated and available",
        );
        // Scaled to zero with nothing left running.
        assert_health(&deployment(0, json!({})), Health::Current, "Current");
    }

    #[test]
    fn deployment_replicas_default_to_one() {
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}});
        // A fresh Deployment without status: nothing updated yet.
        assert_health(&obj, Health::InProgress, "ReplicasNotUpdated");
        obj["status"] = json!({"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                               "availableReplicas": 1});
        assert_health(&obj, Health::Current, "Current");
    }

    #[test]
    fn kinds_are_matched_with_their_group() {
        // A custom resource called Deployment gets the generic rules, not the replica ones.
        let obj = json!({
            "apiVersion": "example.com/v1", "kind": "Deployment", "spec": {"replicas": 3},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        assert_health(&obj, Health::Current, "Current");
    }

    // ---- StatefulSet ----

    fn stateful_set(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": spec, "status": status})
    }

    #[test]
    fn stateful_set_rolling_update() {
        let done = json!({"replicas": 3, "readyReplicas": 3, "currentReplicas": 3,
                          "updatedReplicas": 3, "currentRevision": "db-2",
                          "updateRevision": "db-2"});
        assert_health(
            &stateful_set(json!({"replicas": 3}), done.clone()),
            Health::Current,
            "Current",
        );
        // One status field off at a time: the field, its value, then the reason and message.
        #[rustfmt::skip]
        let cases = [
            ("readyReplicas", json!(2), "ReplicasNotReady", "2 of 3 replicas ready"),
            ("updatedReplicas", json!(1), "ReplicasNotUpdated", "1 of 3 replicas updated"),
            ("currentReplicas", json!(2), "ReplicasNotCurrent", "2 of 3 replicas at the current revision"),
            ("updateRevision", json!("db-3"), "RevisionMismatch", "current revision db-2 is not the update revision db-3"),
            ("replicas", json!(4), "ExtraReplicas", "1 extra replica pending termination"),
        ];
        for (field, value, reason, message) in cases {
            let mut s = done.clone();
            s[field] = value;
            assert_message(
                &stateful_set(json!({"replicas": 3}), s),
                Health::InProgress,
                reason,
                message,
            );
        }

        // Default spec.replicas is 1.
        assert_health(
            &stateful_set(json!({}), json!({})),
            Health::InProgress,
            "ReplicasNotReady",
        );
    }

    #[test]
    fn stateful_set_partitioned_rollout() {
        let spec = json!({"replicas": 4, "updateStrategy":
            {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}});
        // Replicas 2 and 3 are above the partition; only one of them updated.
        let status = json!({"replicas": 4, "readyReplicas": 4, "currentReplicas": 3,
                            "updatedReplicas": 1, "currentRevision": "db-1",
                            "updateRevision": "db-2"});
        assert_message(
            &stateful_set(spec.clone(), status.clone()),
            Health::InProgress,
            "PartitionRollout",
            "1 of 2 replicas at or above partition 2 updated",
        );
        let partition = |p: i64| {
            let mut s = spec.clone();
            s["updateStrategy"]["rollingUpdate"]["partition"] = json!(p);
            s
        };
        let counts = |updated: i64, current: i64| {
            let mut s = status.clone();
            s["updatedReplicas"] = json!(updated);
            s["currentReplicas"] = json!(current);
            s
        };
        // spec, status (updated, current), then the health and reason they are assessed with.
        #[rustfmt::skip]
        let cases = [
            // Both updated: the partitioned rollout is done although revisions differ.
            (partition(2), counts(2, 2), Health::Current, "Current"),
            // A partition at or above replicas asks for no updates at all.
            (partition(10), counts(0, 3), Health::Current, "Current"),
            // Partition 0 is the ordinary rolling update: the revision must match.
            (partition(0), counts(4, 4), Health::InProgress, "RevisionMismatch"),
        ];
        for (spec, status, health, reason) in cases {
            assert_health(&stateful_set(spec, status), health, reason);
        }
    }

    #[test]
    fn stateful_set_on_delete_counts_only_ready() {
        let spec = json!({"replicas": 3, "updateStrategy": {"type": "OnDelete"}});
        let status = json!({"replicas": 3, "readyReplicas": 3, "currentReplicas": 3,
                            "updatedReplicas": 0, "currentRevision": "db-1",
                            "updateRevision": "db-2"});
        // Only the ready count matters.
        let ready = |n: i64| {
            let mut s = status.clone();
            s["readyReplicas"] = json!(n);
            stateful_set(spec.clone(), s)
        };
        assert_health(&ready(3), Health::Current, "Current");
        assert_health(&ready(1), Health::InProgress, "ReplicasNotReady");
    }

    // ---- DaemonSet ----

    /// Sets each counter of `short` (field, expected reason) to `value` in the finished status
    /// `done` and checks that `object(status)` is in progress for that reason, with a message
    /// starting with `message`. Returns the cases, for further checks.
    fn each_counter_short<'a>(
        object: fn(Value) -> Value,
        done: &Value,
        value: i64,
        short: &'a [(&'a str, &'a str)],
        message: &str,
    ) -> &'a [(&'a str, &'a str)] {
        for (field, reason) in short {
            let mut s = done.clone();
            s[*field] = json!(value);
            let a = assert_health(&object(s), Health::InProgress, reason);
            assert!(a.message.starts_with(message), "{field}: {a:?}");
        }
        short
    }

    fn daemon_set(status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"generation": 1},
               "spec": {}, "status": status})
    }

    #[test]
    fn daemon_set_counts() {
        let done = json!({"observedGeneration": 1, "desiredNumberScheduled": 3,
                          "currentNumberScheduled": 3, "updatedNumberScheduled": 3,
                          "numberReady": 3, "numberAvailable": 3});
        assert_message(
            &daemon_set(done.clone()),
            Health::Current,
            "Current",
            "3 of 3 pods available",
        );
        let short = [
            ("updatedNumberScheduled", "PodsNotUpdated"),
            ("numberReady", "PodsNotReady"),
            ("numberAvailable", "PodsNotAvailable"),
        ];
        for &(field, reason) in each_counter_short(daemon_set, &done, 2, &short, "2 of 3 pods") {
            // Omitted counters are zero.
            let mut status = done.clone();
            status.as_object_mut().unwrap().remove(field);
            assert_health(&daemon_set(status), Health::InProgress, reason);
        }
    }

    #[test]
    fn daemon_set_desired_zero_and_missing() {
        // Observed with no node to run on: nothing to wait for.
        let a = daemon_set(json!({"observedGeneration": 1, "desiredNumberScheduled": 0,
                                  "currentNumberScheduled": 0, "numberReady": 0}));
        assert_health(&a, Health::Current, "Current");
        // As created: zero counters but not observed by the controller yet.
        let fresh = daemon_set(
            json!({"desiredNumberScheduled": 0, "currentNumberScheduled": 0,
                                      "numberReady": 0, "numberMisscheduled": 0}),
        );
        assert_health(&fresh, Health::InProgress, "NotObserved");
        assert_health(&daemon_set(json!({})), Health::InProgress, "NotObserved");
        let mut no_status = daemon_set(json!(null));
        no_status.as_object_mut().unwrap().remove("status");
        assert_health(&no_status, Health::InProgress, "NotObserved");
    }

    #[test]
    fn daemon_set_on_delete_skips_updated_count() {
        let mut obj = daemon_set(json!({"observedGeneration": 1, "desiredNumberScheduled": 2,
                                        "updatedNumberScheduled": 0, "numberReady": 2,
                                        "numberAvailable": 2}));
        assert_health(&obj, Health::InProgress, "PodsNotUpdated");
        obj["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        assert_health(&obj, Health::Current, "Current");
    }

    // ---- ReplicaSet ----

    fn replica_set(status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "spec": {"replicas": 2},
               "status": status})
    }

    #[test]
    fn replica_set_counts() {
        let done = json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2,
                          "availableReplicas": 2});
        assert_health(&replica_set(done.clone()), Health::Current, "Current");
        let short = [
            ("fullyLabeledReplicas", "ReplicasNotLabeled"),
            ("readyReplicas", "ReplicasNotReady"),
            ("availableReplicas", "ReplicasNotAvailable"),
        ];
        each_counter_short(replica_set, &done, 1, &short, "1 of 2 replicas");
        let mut s = done;
        s["replicas"] = json!(3);
        assert_health(&replica_set(s), Health::InProgress, "ExtraReplicas");
    }

    #[test]
    fn replica_set_replica_failure_is_failed() {
        let obj = replica_set(json!({"replicas": 0, "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": "pods \"web-x\" is forbidden: exceeded quota"},
        ]}));
        let a = assert_health(&obj, Health::Failed, "FailedCreate");
        assert!(a.message.contains("exceeded quota"));
        // A condition that is no longer True does not fail it.
        let obj = replica_set(json!({"replicas": 0, "conditions": [
            {"type": "ReplicaFailure", "status": "False"},
        ]}));
        assert_health(&obj, Health::InProgress, "ReplicasNotLabeled");
    }

    // ---- Job ----

    fn job(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "spec": spec, "status": status})
    }

    #[test]
    fn job_failed_complete_suspended_running() {
        let failed = job(
            json!({}),
            json!({"failed": 7, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"},
            ]}),
        );
        assert_message(
            &failed,
            Health::Failed,
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        );

        let complete = job(
            json!({}),
            json!({"succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ]}),
        );
        assert_health(&complete, Health::Current, "Complete");

        let suspended = job(json!({"suspend": true}), json!({}));
        assert_health(&suspended, Health::Current, "Suspended");
        let resumed = job(json!({"suspend": false}), json!({}));
        assert_health(&resumed, Health::InProgress, "JobRunning");

        let running = job(json!({}), json!({"active": 2, "succeeded": 1}));
        assert_message(
            &running,
            Health::InProgress,
            "JobRunning",
            "2 active, 1 succeeded",
        );
        // A Failed condition that is False is not a failure.
        let not_failed = job(
            json!({}),
            json!({"active": 1, "conditions": [{"type": "Failed", "status": "False"}]}),
        );
        assert_health(&not_failed, Health::InProgress, "JobRunning");
    }

    // ---- Pod ----

    fn pod(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec,
               "status": status})
    }

    fn ready(status: &str) -> Value {
        json!([{"type": "Ready", "status": status}])
    }

    #[test]
    fn pod_phases() {
        assert_health(
            &pod(json!({}), json!({"phase": "Succeeded"})),
            Health::Current,
            "Succeeded",
        );
        assert_message(
            &pod(
                json!({}),
                json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}),
            ),
            Health::Failed,
            "Evicted",
            "low on memory",
        );
        assert_health(
            &pod(json!({}), json!({"phase": "Failed"})),
            Health::Failed,
            "PodFailed",
        );
        assert_health(
            &pod(json!({}), json!({"phase": "Unknown"})),
            Health::Unknown,
            "PodPhaseUnknown",
        );
        assert_message(
            &pod(
                json!({}),
                json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available"},
                ]}),
            ),
            Health::InProgress,
            "PodPending",
            "0/3 nodes are available",
        );
        assert_health(&pod(json!({}), json!({})), Health::InProgress, "PodPending");
    }

    #[test]
    fn running_pod_is_current_when_ready() {
        assert_health(
            &pod(
                json!({}),
                json!({"phase": "Running", "conditions": ready("True")}),
            ),
            Health::Current,
            "Current",
        );
        assert_health(
            &pod(
                json!({}),
                json!({"phase": "Running", "conditions": ready("False")}),
            ),
            Health::InProgress,
            "PodNotReady",
        );
        assert_health(
            &pod(json!({}), json!({"phase": "Running"})),
            Health::InProgress,
            "PodNotReady",
        );
    }

    #[test]
    fn running_pod_meant_to_finish_is_in_progress() {
        for policy in ["Never", "OnFailure"] {
            assert_health(
                &pod(
                    json!({"restartPolicy": policy}),
                    json!({"phase": "Running", "conditions": ready("True")}),
                ),
                Health::InProgress,
                "PodRunning",
            );
        }
        assert_health(
            &pod(
                json!({"restartPolicy": "Always"}),
                json!({"phase": "Running", "conditions": ready("True")}),
            ),
            Health::Current,
            "Current",
        );
    }

    #[test]
    fn pod_with_stuck_container_is_failed() {
        for reason in FAILED_WAITING_REASONS {
            let obj = pod(
                json!({}),
                json!({"phase": "Running", "conditions": ready("False"), "containerStatuses": [
                    {"name": "sidecar", "state": {"running": {}}},
                    {"name": "app", "state": {"waiting": {"reason": reason,
                                                          "message": "back-off 5m0s"}}},
                ]}),
            );
            let a = assert_health(&obj, Health::Failed, reason);
            assert!(a.message.contains("\"app\""), "{a:?}");
            assert!(a.message.contains("back-off 5m0s"), "{a:?}");
        }
        // Init containers too, while the pod is Pending.
        let obj = pod(
            json!({}),
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "migrate", "state": {"waiting": {"reason": "ErrImagePull"}}},
            ]}),
        );
        let a = assert_health(&obj, Health::Failed, "ErrImagePull");
        assert!(a.message.contains("\"migrate\""), "{a:?}");
        // A container still being created is just pending.
        let obj = pod(
            json!({}),
            json!({"phase": "Pending", "containerStatuses": [
                {"name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}},
            ]}),
        );
        assert_health(&obj, Health::InProgress, "PodPending");
    }

    // ---- PersistentVolumeClaim, Service, Namespace, CRD ----

    #[test]
    fn persistent_volume_claim_phases() {
        let pvc = |phase: Value| json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "status": {"phase": phase}});
        assert_health(&pvc(json!("Bound")), Health::Current, "Current");
        assert_health(&pvc(json!("Lost")), Health::Failed, "ClaimLost");
        assert_message(
            &pvc(json!("Pending")),
            Health::InProgress,
            "NotBound",
            "the claim is Pending",
        );
        assert_health(&pvc(json!(null)), Health::InProgress, "NotBound");
    }

    #[test]
    fn load_balancer_service_waits_for_ingress() {
        let svc = |kind: &str, status: Value| {
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": kind},
                   "status": status})
        };
        assert_health(
            &svc("LoadBalancer", json!({"loadBalancer": {}})),
            Health::InProgress,
            "LoadBalancerPending",
        );
        assert_health(
            &svc("LoadBalancer", json!({"loadBalancer": {"ingress": []}})),
            Health::InProgress,
            "LoadBalancerPending",
        );
        assert_health(
            &svc(
                "LoadBalancer",
                json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}),
            ),
            Health::Current,
            "Current",
        );
        assert_health(
            &svc("ClusterIP", json!({"loadBalancer": {}})),
            Health::Current,
            "Current",
        );
        let no_type = json!({"apiVersion": "v1", "kind": "Service", "spec": {}});
        assert_health(&no_type, Health::Current, "Current");
    }

    #[test]
    fn namespace_terminating_phase() {
        let ns = |phase: &str| json!({"apiVersion": "v1", "kind": "Namespace", "status": {"phase": phase}});
        assert_health(&ns("Terminating"), Health::InProgress, "Terminating");
        assert_health(&ns("Active"), Health::Current, "Current");
    }

    #[test]
    fn custom_resource_definition_conditions() {
        let crd = |conditions: Value| {
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "status": {"conditions": conditions}})
        };
        assert_health(
            &crd(json!([{"type": "NamesAccepted", "status": "True"},
                        {"type": "Established", "status": "True"}])),
            Health::Current,
            "Current",
        );
        let a = assert_health(
            &crd(
                json!([{"type": "NamesAccepted", "status": "False", "reason": "NameConflict",
                         "message": "\"widgets\" is already in use"},
                        {"type": "Established", "status": "False"}]),
            ),
            Health::Failed,
            "NameConflict",
        );
        assert!(a.message.contains("already in use"));
        assert_health(
            &crd(json!([{"type": "NamesAccepted", "status": "True"},
                        {"type": "Established", "status": "False"}])),
            Health::InProgress,
            "NotEstablished",
        );
        assert_health(&crd(json!([])), Health::InProgress, "NotEstablished");
    }

    // ---- Generic ----

    fn custom(conditions: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
               "status": {"conditions": conditions}})
    }

    /// Asserts how a custom resource with each case's conditions is assessed: its health,
    /// reason and message.
    fn assert_custom(cases: Vec<(Value, Health, &str, &str)>) {
        for (conditions, health, reason, message) in cases {
            let a = assert_health(&custom(conditions.clone()), health, reason);
            assert_eq!(a.message, message, "{conditions}");
        }
    }

    #[test]
    fn generic_ready_and_available() {
        use Health::*;
        #[rustfmt::skip]
        let cases = vec![
            (json!([{"type": "Ready", "status": "True", "message": "all good"}]),
             Current, "Current", "all good"),
            (json!([{"type": "Ready", "status": "False", "reason": "DependencyNotReady",
                     "message": "waiting for the database"}]),
             InProgress, "DependencyNotReady", "waiting for the database"),
            (json!([{"type": "Ready", "status": "False"}]),
             InProgress, "NotReady", "the Ready condition is False"),
            (json!([{"type": "Ready", "status": "Unknown"}]),
             InProgress, "ReadyUnknown", "the Ready condition is Unknown"),
            (json!([{"type": "Available", "status": "False"}]),
             InProgress, "NotAvailable", "the Available condition is False"),
            (json!([{"type": "Available", "status": "True"}]),
             Current, "Current", "the Available condition is True"),
            // Both present: either one not True holds it back.
            (json!([{"type": "Ready", "status": "True"}, {"type": "Available", "status": "False"}]),
             InProgress, "NotAvailable", "the Available condition is False"),
        ];
        assert_custom(cases);
    }

    #[test]
    fn generic_stalled_failed_and_reconciling() {
        use Health::*;
        #[rustfmt::skip]
        let cases = vec![
            (json!([{"type": "Stalled", "status": "True", "reason": "InvalidSpec",
                     "message": "spec.size must be positive"},
                    {"type": "Ready", "status": "False"}]),
             Failed, "InvalidSpec", "spec.size must be positive"),
            (json!([{"type": "Stalled", "status": "True"}]),
             Failed, "Stalled", "the Stalled condition is True"),
            (json!([{"type": "Failed", "status": "True"}, {"type": "Ready", "status": "True"}]),
             Failed, "Failed", "the Failed condition is True"),
            (json!([{"type": "Reconciling", "status": "True", "reason": "Progressing"},
                    {"type": "Ready", "status": "True"}]),
             InProgress, "Progressing", "the controller is reconciling the object"),
            // The same conditions False change nothing.
            (json!([{"type": "Stalled", "status": "False"}, {"type": "Failed", "status": "False"},
                    {"type": "Reconciling", "status": "False"}, {"type": "Ready", "status": "True"}]),
             Current, "Current", "the Ready condition is True"),
        ];
        assert_custom(cases);
    }

    #[test]
    fn generic_without_status_or_conditions_is_current() {
        let bare = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {}});
        assert_health(&bare, Health::Current, "Current");
        let no_conditions =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"size": 3}});
        assert_health(&no_conditions, Health::Current, "Current");
        let other = custom(json!([{"type": "Synced", "status": "False"}]));
        assert_health(&other, Health::Current, "Current");
    }

    #[test]
    fn statusless_kinds_are_current() {
        for (api_version, kind) in [
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ] {
            // Whatever odd status they carry is not theirs to report.
            let obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"},
                             "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
            assert_health(&obj, Health::Current, "Current");
        }
    }
}
