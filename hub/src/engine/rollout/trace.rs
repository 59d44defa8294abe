//! The spans of a revision's journey through the fleet (model in `docs/observability.md`):
//!
//! - `flotilla.sync` → `flotilla.fetch`, `flotilla.render`, `flotilla.offer` (one per app): the
//!   commit's trace (see `sources.rs`).
//! - `flotilla.stage`: one per stage while its clusters are being delivered. The first stage is
//!   a child of the offer, so the commit's trace runs down to the first clusters' applies;
//!   a later stage starts a new trace *linked* to the previous stage and to the offer, because
//!   a soak or an approval may keep it waiting for hours and a trace must not stay open that
//!   long.
//! - `flotilla.deliver`: one per cluster of a batch, child of its stage, from the desired state
//!   write until the cluster reports the revision applied and healthy (or failed). Its W3C
//!   context goes to the agent in `AppDesired.trace_context`, so the agent's apply and health
//!   wait are its children.
//!
//! Spans live in memory only: a hub restart ends the trace of a rollout in flight (the rollout
//! itself resumes from its record). Nothing here runs when traces are not exported.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use flotilla_proto::state::{AppState, Phase};
use flotilla_proto::telemetry::traces::{self, enabled};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::plan::{AppRollout, ClusterView, StageState};
use crate::render::ClusterId;

/// A cluster's name and labels, for span attributes (`cluster.id`, `cluster.label.<key>`).
pub type ClusterFacts<'a> = dyn Fn(ClusterId) -> Option<(String, BTreeMap<String, String>)> + 'a;

#[derive(Default)]
pub struct Traces {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per app: the revision whose rollout started, with its offer span.
    offers: HashMap<String, (String, SpanContext)>,
    /// The stage being delivered, per app.
    stages: HashMap<String, OpenStage>,
    /// The last stage span that ended, per app (linked from the next stage's span).
    previous: HashMap<String, (String, SpanContext)>,
    /// Deliveries in flight, per app and cluster.
    deliveries: HashMap<String, HashMap<ClusterId, Delivery>>,
}

struct OpenStage {
    revision: String,
    index: usize,
    span: tracing::Span,
}

struct Delivery {
    revision: String,
    traceparent: String,
    span: tracing::Span,
}

impl Traces {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A rollout of `revision` started from the offer `span`.
    pub fn offered(&self, app: &str, revision: &str, span: &tracing::Span) {
        if let Some(sc) = traces::span_context(span) {
            self.state()
                .offers
                .insert(app.to_string(), (revision.to_string(), sc));
        }
    }

    /// The `traceparent` to send with `app` at `revision` to `cluster` ("" when none).
    pub fn context_for(&self, app: &str, cluster: ClusterId, revision: &str) -> String {
        if !enabled() {
            return String::new();
        }
        self.state()
            .deliveries
            .get(app)
            .and_then(|ds| ds.get(&cluster))
            .filter(|d| d.revision == revision)
            .map(|d| d.traceparent.clone())
            .unwrap_or_default()
    }

    /// Brings the spans of `rec` in line with its rollout after a change: ends the stage and
    /// deliveries that are over, starts the ones that began. `views` are the clusters'
    /// reports (none when the change came from an operator, not from reports).
    pub fn observe(
        &self,
        rec: &AppRollout,
        views: &dyn Fn(ClusterId) -> ClusterView,
        facts: &ClusterFacts<'_>,
    ) {
        if !enabled() {
            return;
        }
        let mut st = self.state();
        let app = rec.app.as_str();
        let rollout = rec.rollout.as_ref();

        // Deliveries: end those whose cluster reported, or whose rollout moved on.
        let revision = rollout.map(|r| r.revision.as_str()).unwrap_or("");
        let in_flight = rollout.is_some_and(|r| r.state.in_flight());
        // Whether a delivery stays open; the ones that end get their closing event first.
        let still_open = |cluster: &ClusterId, d: &mut Delivery| {
            if let Some(v) = Some(views(*cluster)).filter(|v| *v.revision == *d.revision) {
                if v.healthy_at(&d.revision) {
                    d.span.add_event("healthy", Vec::new());
                    return false;
                }
                if v.phase == Phase::Failed {
                    traces::error(&d.span, format!("failed: {}", v.message));
                    return false;
                }
            }
            if !in_flight || d.revision != revision {
                d.span.add_event(
                    "abandoned",
                    vec![KeyValue::new(
                        "rollout.state",
                        rollout.map(|r| r.state.as_str()).unwrap_or("none"),
                    )],
                );
                return false;
            }
            true
        };
        if let Some(ds) = st.deliveries.get_mut(app) {
            ds.retain(still_open);
        }

        // The stage being delivered now, if any.
        let current = rollout.filter(|r| r.state.in_flight()).and_then(|r| {
            r.stages
                .get(r.current)
                .filter(|s| s.state == StageState::Progressing)
                .map(|s| (r, r.current, s))
        });
        let keep = match (&current, st.stages.get(app)) {
            (Some((r, i, _)), Some(open)) => open.revision == r.revision && open.index == *i,
            _ => false,
        };
        if !keep && let Some(open) = st.stages.remove(app) {
            let ended = rollout
                .filter(|r| r.revision == open.revision)
                .and_then(|r| r.stages.get(open.index));
            match ended.map(|s| s.state) {
                Some(StageState::Failed) => {
                    let why = rollout.map(|r| r.message.clone()).unwrap_or_default();
                    traces::error(&open.span, why);
                }
                Some(s) => open
                    .span
                    .add_event("delivered", vec![KeyValue::new("stage.state", s.as_str())]),
                None => open.span.add_event("superseded", Vec::new()),
            }
            if let Some(sc) = traces::span_context(&open.span) {
                st.previous
                    .insert(app.to_string(), (open.revision.clone(), sc));
            }
        }
        if let Some((r, index, stage)) = current {
            if !st.stages.contains_key(app) {
                let span = tracing::info_span!(
                    parent: None,
                    "flotilla.stage",
                    app = %app,
                    revision = %r.revision,
                    stage = %stage.name,
                    stage.index = index,
                    stage.clusters = stage.clusters.len(),
                );
                let offer = st
                    .offers
                    .get(app)
                    .filter(|(rev, _)| rev == &r.revision)
                    .map(|(_, sc)| sc.clone());
                let previous = st
                    .previous
                    .get(app)
                    .filter(|(rev, _)| rev == &r.revision)
                    .map(|(_, sc)| sc.clone());
                match (&previous, &offer) {
                    // The first stage continues the commit's trace.
                    (None, Some(offer)) => {
                        let _ = span.set_parent(
                            opentelemetry::Context::new().with_remote_span_context(offer.clone()),
                        );
                    }
                    // A later stage: a new trace, linked to what led to it.
                    _ => {
                        if let Some(p) = &previous {
                            span.add_link_with_attributes(
                                p.clone(),
                                vec![KeyValue::new("link.reason", "previous stage")],
                            );
                        }
                        if let Some(o) = &offer {
                            span.add_link_with_attributes(
                                o.clone(),
                                vec![KeyValue::new("link.reason", "offer")],
                            );
                        }
                    }
                }
                if let Some(by) = &stage.approved_by {
                    span.add_event("approved", vec![KeyValue::new("approved.by", by.clone())]);
                }
                st.stages.insert(
                    app.to_string(),
                    OpenStage {
                        revision: r.revision.clone(),
                        index,
                        span,
                    },
                );
            }
            // Deliveries of the batch in flight.
            let parent = st.stages[app].span.clone();
            let deliveries = st.deliveries.entry(app.to_string()).or_default();
            for cluster in &stage.batch {
                if deliveries
                    .get(&cluster)
                    .is_some_and(|d| d.revision == r.revision)
                {
                    continue;
                }
                let (name, labels) =
                    facts(cluster).unwrap_or_else(|| (format!("#{cluster}"), BTreeMap::new()));
                let span = tracing::info_span!(
                    parent: &parent,
                    "flotilla.deliver",
                    cluster.id = %name,
                    app = %app,
                    revision = %r.revision,
                    stage = %stage.name,
                );
                for (k, v) in labels {
                    traces::attribute(&span, format!("cluster.label.{k}"), v);
                }
                let traceparent = traces::traceparent(&span);
                deliveries.insert(
                    cluster,
                    Delivery {
                        revision: r.revision.clone(),
                        traceparent,
                        span,
                    },
                );
            }
        }
        if rollout.is_none_or(|r| !r.state.in_flight()) {
            // Every delivery of the app ended above (its rollout is over).
            st.deliveries.remove(app);
            st.previous.remove(app);
            st.offers.remove(app);
        }
    }
}
