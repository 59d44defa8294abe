//! What a change of a rollout record means for the rollout metrics: stages and rollouts that
//! ended (with their durations and results), rollouts that started, and when the share of a
//! rollout's clusters that run it applied and healthy first crossed each threshold.

use flotilla_proto::state::StageState;

use super::plan::Rollout;
use crate::telemetry::metrics::{
    FractionLabel, HEALTHY_FRACTIONS, Metrics, ResultLabel, StageLabels,
};

/// Observes what one change of an app's rollout record finished: stages that ended (duration by
/// stage and result), a rollout that ended or was superseded, one that started. Call after the
/// change is persisted.
pub fn observe_rollout(m: &Metrics, before: Option<&Rollout>, after: Option<&Rollout>) {
    let same = |b: &Rollout, a: &Rollout| b.revision == a.revision && b.started_ms == a.started_ms;
    match (before, after) {
        (Some(b), Some(a)) if same(b, a) => {
            let done = |s: StageState| matches!(s, StageState::Succeeded | StageState::Failed);
            for (sb, sa) in b.stages.iter().zip(&a.stages) {
                if done(sb.state) || !done(sa.state) {
                    continue;
                }
                if let (Some(start), Some(end)) = (sa.started_ms, sa.finished_ms) {
                    m.rollout_stage_duration
                        .get_or_create(&StageLabels {
                            stage: sa.name.clone(),
                            result: sa.state.as_str().into(),
                        })
                        .observe(end.saturating_sub(start) as f64 / 1000.0);
                }
            }
            if b.state.in_flight() && !a.state.in_flight() {
                count_rollout_finished(m, a.state.as_str());
            }
        }
        (b, a) => {
            if b.is_some_and(|b| b.state.in_flight()) {
                count_rollout_finished(m, "superseded");
            }
            if a.is_some_and(|a| a.state.in_flight()) {
                m.rollouts_started.inc();
            }
        }
    }
}

/// Observes the time from a rollout's offer until the share of its clusters that run its revision
/// applied and healthy (`healthy` of `total`) first reaches each of [`HEALTHY_FRACTIONS`].
/// Crossings are remembered per app in memory only: a rollout that began before `since_ms` (this
/// process's start) does not observe the thresholds it had already crossed when first seen, only
/// the later ones.
pub fn observe_healthy_fraction(
    m: &Metrics,
    app: &str,
    rollout: &Rollout,
    healthy: usize,
    total: usize,
    now_ms: u64,
    since_ms: u64,
) {
    if total == 0 {
        return;
    }
    let reached = HEALTHY_FRACTIONS
        .iter()
        .take_while(|(f, _)| healthy as f64 >= f * total as f64 - 1e-9)
        .count();
    let mut crossed = m.healthy_crossed.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = crossed
        .get(app)
        .is_none_or(|(rev, started, _)| *rev != rollout.revision || *started != rollout.started_ms);
    if fresh {
        let already = if rollout.started_ms < since_ms {
            reached
        } else {
            0
        };
        crossed.insert(
            app.to_string(),
            (rollout.revision.clone(), rollout.started_ms, already),
        );
    }
    let entry = crossed.get_mut(app).expect("inserted above");
    while entry.2 < reached {
        let (_, label) = HEALTHY_FRACTIONS[entry.2];
        m.rollout_healthy_fraction
            .get_or_create(&FractionLabel {
                fraction: label.into(),
            })
            .observe(now_ms.saturating_sub(rollout.started_ms) as f64 / 1000.0);
        entry.2 += 1;
    }
}

fn count_rollout_finished(m: &Metrics, result: &str) {
    m.rollouts_finished
        .get_or_create(&ResultLabel {
            result: result.into(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use flotilla_proto::state::RolloutState;

    use super::*;

    /// The value of one sample line `name{labels} value` of an exposition.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn rollout(
        stages: &[(&str, StageState, Option<u64>, Option<u64>)],
        state: RolloutState,
    ) -> Rollout {
        Rollout {
            revision: "r1".into(),
            state,
            stages: stages
                .iter()
                .map(
                    |(name, st, start, end)| crate::engine::rollout::plan::StageRun {
                        name: (*name).into(),
                        state: *st,
                        approval: false,
                        soak_ms: 0,
                        max_parallel: crate::render::CountOrPercent::Percent(100),
                        clusters: std::iter::once(1).collect(),
                        updated: Default::default(),
                        batch: Default::default(),
                        soak_until_ms: None,
                        approved_by: None,
                        started_ms: *start,
                        finished_ms: *end,
                        failures: Default::default(),
                    },
                )
                .collect(),
            current: 0,
            started_ms: 1_000,
            finished_ms: None,
            message: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn stage_durations_and_results_are_observed_once() {
        let m = Metrics::new();
        let started = rollout(
            &[
                ("canary", StageState::Pending, None, None),
                ("prod", StageState::Pending, None, None),
            ],
            RolloutState::Progressing,
        );
        observe_rollout(&m, None, Some(&started));
        let canary_done = rollout(
            &[
                ("canary", StageState::Succeeded, Some(2_000), Some(4_500)),
                ("prod", StageState::Progressing, Some(4_500), None),
            ],
            RolloutState::Progressing,
        );
        observe_rollout(&m, Some(&started), Some(&canary_done));
        // The same record again: nothing new ended.
        observe_rollout(&m, Some(&canary_done), Some(&canary_done));
        let all_done = rollout(
            &[
                ("canary", StageState::Succeeded, Some(2_000), Some(4_500)),
                ("prod", StageState::Failed, Some(4_500), Some(10_500)),
            ],
            RolloutState::RolledBack,
        );
        observe_rollout(&m, Some(&canary_done), Some(&all_done));
        // A newer revision replacing one in flight supersedes it.
        let mut newer = started.clone();
        newer.revision = "r2".into();
        observe_rollout(&m, Some(&canary_done), Some(&newer));
        let text = m.encode();
        let h = "flotilla_hub_rollout_stage_duration_seconds";
        assert_eq!(
            sample(
                &text,
                &format!("{h}_count{{stage=\"canary\",result=\"succeeded\"}}")
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("{h}_sum{{stage=\"canary\",result=\"succeeded\"}}")
            ),
            Some(2.5)
        );
        assert_eq!(
            sample(
                &text,
                &format!("{h}_sum{{stage=\"prod\",result=\"failed\"}}")
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(&text, "flotilla_hub_rollouts_started_total"),
            Some(2.0)
        );
        for (result, n) in [("rolled_back", 1.0), ("superseded", 1.0)] {
            assert_eq!(
                sample(
                    &text,
                    &format!("flotilla_hub_rollouts_finished_total{{result=\"{result}\"}}")
                ),
                Some(n),
                "{text}"
            );
        }
    }

    #[test]
    fn healthy_fractions_are_observed_when_first_crossed() {
        let m = Metrics::new();
        let r = rollout(&[], RolloutState::Progressing); // offered at 1 s
        let count = |m: &Metrics, f: &str| {
            sample(
                &m.encode(),
                &format!("flotilla_hub_rollout_healthy_fraction_seconds_count{{fraction=\"{f}\"}}"),
            )
            .unwrap_or(0.0)
        };
        observe_healthy_fraction(&m, "web", &r, 0, 4, 2_000, 0);
        observe_healthy_fraction(&m, "web", &r, 2, 4, 3_000, 0);
        assert_eq!(count(&m, "0.5"), 1.0);
        // Falling back and crossing again is not a new crossing.
        observe_healthy_fraction(&m, "web", &r, 1, 4, 4_000, 0);
        observe_healthy_fraction(&m, "web", &r, 2, 4, 5_000, 0);
        assert_eq!(count(&m, "0.5"), 1.0);
        assert_eq!(count(&m, "0.95"), 0.0);
        observe_healthy_fraction(&m, "web", &r, 4, 4, 11_000, 0);
        assert_eq!((count(&m, "0.95"), count(&m, "1")), (1.0, 1.0));
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "flotilla_hub_rollout_healthy_fraction_seconds_sum{fraction=\"1\"}"
            ),
            Some(10.0)
        );

        // A rollout that began before this process: what it had already crossed is not
        // observed (its time is unknown), later crossings are.
        let m = Metrics::new();
        observe_healthy_fraction(&m, "web", &r, 3, 4, 20_000, 10_000);
        assert_eq!(count(&m, "0.5"), 0.0);
        observe_healthy_fraction(&m, "web", &r, 4, 4, 30_000, 10_000);
        assert_eq!((count(&m, "0.95"), count(&m, "1")), (1.0, 1.0));
    }
}
