//! How the Admin API shows rollout records and audit entries: the conversion from
//! [`AppRollout`] and [`crate::state::audit::AuditEntry`] to their wire messages. Pure, no I/O.

use flotilla_proto::v1 as pb;

use crate::engine::rollout::plan::{
    AppRollout, ByRevision, ClusterId, ClusterSet, RolloutState, StageRun, StageState,
};
use crate::state::audit::AuditEntry;

/// The state an operator sees: the rollout's own, except `Paused` while the app is paused and
/// its rollout is in flight; `None` when the app has had no rollout.
pub fn rollout_state(rec: &AppRollout) -> RolloutState {
    match &rec.rollout {
        Some(r) if rec.paused && r.state.in_flight() => RolloutState::Paused,
        Some(r) => r.state,
        None => RolloutState::None,
    }
}

/// A cluster's name, for the views (the records hold ids).
pub type Names<'a> = dyn Fn(ClusterId) -> String + 'a;

fn names_of(set: &ClusterSet, name: &Names<'_>) -> Vec<String> {
    set.iter().map(name).collect()
}

/// The view of one app's record at `now_ms` (for the soak time left), clusters by `name`.
pub fn rollout_view(rec: &AppRollout, now_ms: u64, name: &Names<'_>) -> pb::Rollout {
    let mut out = pb::Rollout {
        app: rec.app.clone(),
        source: rec.source.clone(),
        pipeline: rec.pipeline_name.clone().unwrap_or_default(),
        state: rollout_state(rec).into(),
        paused: rec.paused,
        last_good_revision: rec.last_good.clone().unwrap_or_default(),
        pins: rec
            .pins
            .iter()
            .map(|(c, r)| (name(*c), r.clone()))
            .collect(),
        failed_revisions: rec.failed_revisions.clone(),
        ..Default::default()
    };
    if let Some(r) = &rec.rollout {
        out.revision = r.revision.clone();
        out.message = r.message.clone();
        out.current_stage = r.current as u32;
        out.started_unix_ms = r.started_ms;
        out.finished_unix_ms = r.finished_ms.unwrap_or_default();
        let or_nothing = |m: &ByRevision| {
            m.iter()
                .map(|(c, rev)| (name(c), rev.unwrap_or_default().to_string()))
                .collect()
        };
        out.held_base = r.base.clone().unwrap_or_default();
        out.held = or_nothing(&r.held);
        out.prior = or_nothing(&r.prior);
        out.stages = r
            .stages
            .iter()
            .map(|s| stage_view(s, &r.revision, now_ms, name))
            .collect();
    }
    out.removal = rec.removal.as_ref().map(|rm| pb::RolloutRemoval {
        revision: rm.revision.clone(),
        reason: rm.reason.clone(),
        state: rm.state.into(),
        clusters: names_of(&rm.from.clusters(), name),
        stages: rm
            .stages
            .iter()
            .map(|s| stage_view(s, &rm.revision, now_ms, name))
            .collect(),
        gate: rm.gate.clone().unwrap_or_default(),
        approved_by: rm.approved_by.clone().unwrap_or_default(),
        keep_resources: rm.keep_resources,
        message: rm.message.clone(),
        started_unix_ms: rm.started_ms,
        finished_unix_ms: rm.finished_ms.unwrap_or_default(),
        note: rm.note(&rec.app),
    });
    out
}

fn stage_view(s: &StageRun, revision: &str, now_ms: u64, name: &Names<'_>) -> pb::RolloutStage {
    let soak_remaining_ms = match (s.state, s.soak_until_ms) {
        (StageState::Soaking, Some(until)) => until.saturating_sub(now_ms),
        _ => 0,
    };
    pb::RolloutStage {
        name: s.name.clone(),
        state: s.state.into(),
        revision: revision.to_string(),
        clusters: names_of(&s.clusters, name),
        updated: names_of(&s.updated.all(), name),
        batch: names_of(&s.batch, name),
        failures: s
            .failures
            .iter()
            .map(|(c, why)| (name(*c), why.clone()))
            .collect(),
        approval: s.approval,
        approved_by: s.approved_by.clone().unwrap_or_default(),
        soak_seconds: s.soak_ms / 1000,
        soak_remaining_seconds: soak_remaining_ms.div_ceil(1000),
        max_parallel: s.max_parallel.to_string(),
        started_unix_ms: s.started_ms.unwrap_or_default(),
        finished_unix_ms: s.finished_ms.unwrap_or_default(),
    }
}

pub fn audit_view(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        at_unix_ms: e.at_ms,
        who: e.who.clone(),
        action: e.action.clone(),
        app: e.app.clone(),
        cluster: e.cluster.clone(),
        stage: e.stage.clone(),
        revision: e.revision.clone(),
        detail: e.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::rollout::plan::{Rollout, RolloutState};
    use crate::render::CountOrPercent;

    fn stage(name: &str, state: StageState) -> StageRun {
        StageRun {
            name: name.into(),
            state,
            approval: false,
            soak_ms: 90_000,
            max_parallel: CountOrPercent::Percent(50),
            clusters: [1, 2].into_iter().collect(),
            updated: {
                let mut sent = crate::engine::rollout::stages::Sent::default();
                sent.add(5, &std::iter::once(1).collect());
                sent
            },
            batch: std::iter::once(1).collect(),
            soak_until_ms: Some(61_500),
            approved_by: None,
            started_ms: Some(1),
            finished_ms: None,
            failures: BTreeMap::new(),
        }
    }

    fn record(state: RolloutState, paused: bool) -> AppRollout {
        let mut rec = AppRollout::new("web", "fleet");
        rec.paused = paused;
        rec.pipeline_name = Some("regions".into());
        rec.rollout = Some(Rollout {
            revision: "r2".into(),
            state,
            stages: vec![
                stage("canary", StageState::Soaking),
                stage("prod", StageState::Pending),
            ],
            current: 0,
            started_ms: 1,
            finished_ms: None,
            message: String::new(),
            ..Default::default()
        });
        rec
    }

    #[test]
    fn paused_shows_only_while_in_flight() {
        use RolloutState::*;
        for (state, paused, shown) in [
            (Progressing, true, Paused),
            (WaitingApproval, true, Paused),
            (WaitingApproval, false, WaitingApproval),
            (Succeeded, true, Succeeded),
            (RolledBack, false, RolledBack),
        ] {
            let record = record(state, paused);
            assert_eq!(rollout_state(&record), shown, "{state} paused={paused}");
        }
        assert_eq!(
            rollout_state(&AppRollout::new("web", "fleet")),
            RolloutState::None
        );
    }

    #[test]
    fn stages_carry_the_revision_and_the_soak_left() {
        let names = |c: ClusterId| ["", "a", "b"][c as usize].to_string();
        let v = rollout_view(&record(RolloutState::Progressing, false), 60_000, &names);
        assert_eq!(v.pipeline, "regions");
        assert_eq!(v.revision, "r2");
        let canary = &v.stages[0];
        assert_eq!(canary.revision, "r2");
        assert_eq!(canary.state(), StageState::Soaking);
        assert_eq!(canary.updated, vec!["a".to_string()]);
        assert_eq!(canary.soak_seconds, 90);
        assert_eq!(canary.soak_remaining_seconds, 2, "1.5 s rounds up");
        assert_eq!(canary.max_parallel, "50%");
        assert_eq!(v.stages[1].soak_remaining_seconds, 0, "not soaking");
    }
}
