//! The status simulator: what the controllers and kubelets of a real cluster would write to
//! `.status`. At every write that moves an object's generation it sets the in-progress status;
//! after the configured delay it "settles" the object (ready, complete, bound, established),
//! unless the object is annotated `flotilla.io/simulate: fail`, which settles it into a failure
//! instead. The shapes follow the real controllers closely enough for kstatus-style rules.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::resources::{CRD_GROUP, ResourceType};

/// The annotation that makes an object fail instead of becoming ready.
pub const SIMULATE_ANNOTATION: &str = "flotilla.io/simulate";

/// Nodes a DaemonSet is scheduled on.
const NODES: i64 = 3;

/// Upper bound for a CRD becoming Established.
const CRD_DELAY: Duration = Duration::from_millis(100);

fn failing(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(SIMULATE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("fail")
}

fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn generation(obj: &Value) -> i64 {
    obj.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    })
}

/// Like `condition`, with the `lastUpdateTime` Deployments carry.
fn deployment_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let mut c = condition(type_, status, reason, message, now);
    c["lastUpdateTime"] = now.into();
    c
}

fn status_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = obj.as_object_mut().expect("objects are maps");
    let status = root
        .entry("status")
        .or_insert_with(|| Value::Object(Map::new()));
    if !status.is_object() {
        *status = Value::Object(Map::new());
    }
    status.as_object_mut().expect("a map")
}

fn set_status(obj: &mut Value, status: Value) {
    obj["status"] = status;
}

fn is_load_balancer(obj: &Value) -> bool {
    obj.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
}

/// How long after a write the object settles.
pub(crate) fn settle_delay(rt: &ResourceType, ready_delay: Duration) -> Duration {
    if rt.is(CRD_GROUP, "CustomResourceDefinition") {
        ready_delay.min(CRD_DELAY)
    } else {
        ready_delay
    }
}

/// Sets the in-progress status of a freshly written object (created, or its generation moved).
/// Returns whether the object settles later.
pub(crate) fn at_write(rt: &ResourceType, obj: &mut Value, now: &str) -> bool {
    let gen_ = generation(obj);
    let r = replicas(obj);
    let name = name(obj).to_string();
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => {
            let message = format!("ReplicaSet \"{name}-sim\" is progressing.");
            set_status(
                obj,
                json!({
                    "observedGeneration": gen_,
                    "replicas": r,
                    "updatedReplicas": 0,
                    "readyReplicas": 0,
                    "availableReplicas": 0,
                    "conditions": [deployment_condition("Progressing", "True", "ReplicaSetUpdated", &message, now)],
                }),
            );
            true
        }
        ("apps", "StatefulSet") => {
            let update = format!("{name}-{gen_}");
            let current = obj
                .pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .map_or_else(|| update.clone(), String::from);
            set_status(
                obj,
                json!({
                    "observedGeneration": gen_,
                    "replicas": r,
                    "readyReplicas": 0,
                    "currentReplicas": 0,
                    "updatedReplicas": 0,
                    "availableReplicas": 0,
                    "currentRevision": current,
                    "updateRevision": update,
                }),
            );
            true
        }
        ("apps", "DaemonSet") => {
            set_status(
                obj,
                json!({
                    "observedGeneration": gen_,
                    "desiredNumberScheduled": NODES,
                    "currentNumberScheduled": NODES,
                    "numberMisscheduled": 0,
                    "numberReady": 0,
                    "updatedNumberScheduled": 0,
                    "numberAvailable": 0,
                    "numberUnavailable": NODES,
                }),
            );
            true
        }
        ("apps", "ReplicaSet") => {
            set_status(
                obj,
                json!({"observedGeneration": gen_, "replicas": r, "readyReplicas": 0}),
            );
            true
        }
        ("batch", "Job") => {
            let status = status_mut(obj);
            status
                .entry("startTime")
                .or_insert_with(|| now.to_string().into());
            status.insert("active".into(), 1.into());
            true
        }
        ("", "Pod") => {
            set_status(
                obj,
                json!({
                    "phase": "Pending",
                    "conditions": [condition("PodScheduled", "True", "", "", now)],
                    "startTime": now,
                }),
            );
            true
        }
        ("", "PersistentVolumeClaim") => {
            set_status(obj, json!({"phase": "Pending"}));
            true
        }
        ("", "Service") => is_load_balancer(obj),
        ("", "Namespace") => {
            status_mut(obj).insert("phase".into(), "Active".into());
            false
        }
        (CRD_GROUP, "CustomResourceDefinition") => true,
        _ => rt.custom && rt.status && failing(obj),
    }
}

/// The settled status: ready (or failed, when annotated to fail).
pub(crate) fn settle(rt: &ResourceType, obj: &mut Value, now: &str, load_balancers: &mut u32) {
    let fail = failing(obj);
    let r = replicas(obj);
    let name = name(obj).to_string();
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => {
            let status = status_mut(obj);
            if fail {
                let message = format!(
                    "ReplicaSet \"{name}-sim\" has timed out progressing (simulated failure)"
                );
                status.insert(
                    "conditions".into(),
                    json!([
                        deployment_condition(
                            "Available",
                            "False",
                            "MinimumReplicasUnavailable",
                            "Deployment does not have minimum availability.",
                            now
                        ),
                        deployment_condition(
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            &message,
                            now
                        ),
                    ]),
                );
                status.insert("unavailableReplicas".into(), r.into());
            } else {
                for k in ["updatedReplicas", "readyReplicas", "availableReplicas"] {
                    status.insert(k.into(), r.into());
                }
                let message = format!("ReplicaSet \"{name}-sim\" has successfully progressed.");
                status.insert(
                    "conditions".into(),
                    json!([
                        deployment_condition(
                            "Available",
                            "True",
                            "MinimumReplicasAvailable",
                            "Deployment has minimum availability.",
                            now
                        ),
                        deployment_condition(
                            "Progressing",
                            "True",
                            "NewReplicaSetAvailable",
                            &message,
                            now
                        ),
                    ]),
                );
            }
        }
        ("apps", "StatefulSet") if !fail => {
            let status = status_mut(obj);
            for k in [
                "readyReplicas",
                "availableReplicas",
                "currentReplicas",
                "updatedReplicas",
            ] {
                status.insert(k.into(), r.into());
            }
            if let Some(update) = status.get("updateRevision").cloned() {
                status.insert("currentRevision".into(), update);
            }
        }
        ("apps", "DaemonSet") if !fail => {
            let status = status_mut(obj);
            for k in ["numberReady", "updatedNumberScheduled", "numberAvailable"] {
                status.insert(k.into(), NODES.into());
            }
            status.insert("numberUnavailable".into(), 0.into());
        }
        ("apps", "ReplicaSet") if !fail => {
            let status = status_mut(obj);
            for k in ["readyReplicas", "availableReplicas", "fullyLabeledReplicas"] {
                status.insert(k.into(), r.into());
            }
        }
        ("batch", "Job") => {
            let completions = obj
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let status = status_mut(obj);
            status.insert("active".into(), 0.into());
            if fail {
                status.insert("failed".into(), 1.into());
                let message = "Job has reached the specified backoff limit";
                status.insert(
                    "conditions".into(),
                    json!([
                        condition(
                            "FailureTarget",
                            "True",
                            "BackoffLimitExceeded",
                            message,
                            now
                        ),
                        condition("Failed", "True", "BackoffLimitExceeded", message, now),
                    ]),
                );
            } else {
                status.insert("succeeded".into(), completions.into());
                status.insert("completionTime".into(), now.into());
                let message = "Reached expected number of succeeded pods";
                status.insert(
                    "conditions".into(),
                    json!([
                        condition(
                            "SuccessCriteriaMet",
                            "True",
                            "CompletionsReached",
                            message,
                            now
                        ),
                        condition("Complete", "True", "CompletionsReached", message, now),
                    ]),
                );
            }
        }
        ("", "Pod") => settle_pod(obj, fail, now),
        ("", "PersistentVolumeClaim") if !fail => {
            let capacity = obj.pointer("/spec/resources/requests").cloned();
            let modes = obj.pointer("/spec/accessModes").cloned();
            let status = status_mut(obj);
            status.insert("phase".into(), "Bound".into());
            if let Some(c) = capacity {
                status.insert("capacity".into(), c);
            }
            if let Some(m) = modes {
                status.insert("accessModes".into(), m);
            }
        }
        ("", "Service") if !fail && is_load_balancer(obj) => {
            *load_balancers = load_balancers.wrapping_add(1);
            let ip = format!("203.0.113.{}", (*load_balancers - 1) % 254 + 1);
            status_mut(obj).insert("loadBalancer".into(), json!({"ingress": [{"ip": ip}]}));
        }
        (CRD_GROUP, "CustomResourceDefinition") => {
            let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let stored: Vec<Value> = obj
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect();
            let status = status_mut(obj);
            status.insert("acceptedNames".into(), names);
            status.insert(
                "conditions".into(),
                json!([
                    condition(
                        "NamesAccepted",
                        "True",
                        "NoConflicts",
                        "no conflicts found",
                        now
                    ),
                    condition(
                        "Established",
                        "True",
                        "InitialNamesAccepted",
                        "the initial names have been accepted",
                        now
                    ),
                ]),
            );
            status.insert("storedVersions".into(), stored.into());
        }
        _ if rt.custom && rt.status && fail => {
            status_mut(obj).insert(
                "conditions".into(),
                json!([condition(
                    "Ready",
                    "False",
                    "SimulatedFailure",
                    "simulated failure (flotilla.io/simulate: fail)",
                    now
                )]),
            );
        }
        _ => {}
    }
}

fn settle_pod(obj: &mut Value, fail: bool, now: &str) {
    let containers: Vec<(String, String)> = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let field = |k| {
                c.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (field("name"), field("image"))
        })
        .collect();
    let ready = if fail { "False" } else { "True" };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, image)| {
            let state = if fail {
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container (simulated failure)"}})
            } else {
                json!({"running": {"startedAt": now}})
            };
            json!({
                "name": name,
                "image": image,
                "imageID": "",
                "ready": !fail,
                "started": !fail,
                "restartCount": if fail { 5 } else { 0 },
                "state": state,
            })
        })
        .collect();
    let reason = if fail { "ContainersNotReady" } else { "" };
    let status = status_mut(obj);
    status.insert("phase".into(), "Running".into());
    status.insert(
        "conditions".into(),
        json!([
            condition("PodScheduled", "True", "", "", now),
            condition("Initialized", "True", "", "", now),
            condition("ContainersReady", ready, reason, "", now),
            condition("Ready", ready, reason, "", now),
        ]),
    );
    status.insert("containerStatuses".into(), statuses.into());
}
