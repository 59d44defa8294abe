//! Where a rollback (or a halt) leaves each cluster, with steady commits that supersede each
//! other before any rollout succeeds: no cluster may lose an app it ran before the failed
//! revision, and a superseded revision counts for the clusters it proved itself on.

use super::*;

/// can1 → eu1 → us1, `us` behind a manual approval and a long soak, so no rollout succeeds
/// while the next commit arrives.
fn gated(on_failure: OnFailure) -> World {
    let clusters = vec![
        info("can1", &[("region", "canary")]),
        info("eu1", &[("region", "eu")]),
        info("us1", &[("region", "us")]),
    ];
    let us = Stage {
        approval: Approval::Manual,
        soak: Duration::from_secs(3600),
        ..stage("us", "us")
    };
    let p = pipeline(
        vec![stage("canary", "canary"), stage("eu", "eu"), us],
        on_failure,
    );
    World::new(clusters, p)
}

/// [`gated`], with v1 and then v2 walked to `us` (neither has succeeded).
fn two_unfinished(on_failure: OnFailure) -> World {
    let mut w = gated(on_failure);
    w.walk_to_us("v1");
    w.walk_to_us("v2");
    w
}

impl World {
    /// Commits `rev`, walks it to the approval of `us`, approves, and lets us1 apply it
    /// healthily; the `us` stage then soaks (the rollout has not succeeded).
    fn walk_to_us(&mut self, rev: &str) {
        assert!(self.commit(rev).started, "{rev} starts a rollout");
        assert_eq!(self.settle(&[]), RolloutState::WaitingApproval, "{rev}");
        self.rec.approve("us", "admin").unwrap();
        self.settle(&[]);
        assert_eq!(self.revision_of("us1").as_deref(), Some(rev));
        assert_eq!(self.stage("us").state, StageState::Soaking, "{rev}");
        assert_eq!(
            self.state(),
            RolloutState::Progressing,
            "{rev} not succeeded"
        );
    }

    /// Commits v3 and lets it fail in the canary; the rollout state afterwards.
    fn fail_v3_in_canary(&mut self) -> RolloutState {
        assert!(self.commit("v3").started, "v3 starts a rollout");
        self.settle(&["can1"])
    }

    fn everyone(&self) -> Vec<(String, Option<String>)> {
        self.clusters
            .iter()
            .map(|c| (c.name.clone(), self.revision_of(&c.name)))
            .collect()
    }

    /// Asserts what every cluster of the world runs: `want` lists each with its revision.
    fn assert_runs(&self, want: &[(&str, &str)], why: &str) {
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(c, r)| (c.to_string(), Some(r.to_string())))
            .collect();
        assert_eq!(self.everyone(), want, "{why}");
    }
}

#[test]
fn a_failed_canary_after_two_unfinished_rollouts_returns_every_cluster_to_what_it_ran() {
    // The sequence of issue 12: v1 and v2 each reach us1 but never succeed; v3 fails in canary.
    let mut w = two_unfinished(OnFailure::Rollback);
    assert_eq!(w.fail_v3_in_canary(), RolloutState::RolledBack);
    assert_eq!(w.rec.last_good, None, "no rollout ever succeeded");
    w.assert_runs(
        &[("can1", "v2"), ("eu1", "v2"), ("us1", "v2")],
        "the app stays on every cluster, on what each ran before v3",
    );
    assert!(w.rec.failed_revisions.contains(&"v3".to_string()));
    // The record stays on them across more passes.
    w.settle(&[]);
    assert_eq!(w.revision_of("can1").as_deref(), Some("v2"));
}

#[test]
fn halting_instead_leaves_the_failed_canary_where_it_is() {
    let mut w = two_unfinished(OnFailure::Halt);
    assert_eq!(w.fail_v3_in_canary(), RolloutState::Failed);
    w.assert_runs(
        &[("can1", "v3"), ("eu1", "v2"), ("us1", "v2")],
        "halted: the canary keeps v3",
    );
    // An operator rollback afterwards returns the canary to what it ran before v3.
    let touched = w.rec.rollback(None, w.now).unwrap();
    assert_eq!(names(&touched), ["can1"]);
    assert_eq!(w.state(), RolloutState::RolledBack);
    w.assert_runs(
        &[("can1", "v2"), ("eu1", "v2"), ("us1", "v2")],
        "the canary is back on v2",
    );
}

#[test]
fn a_pinned_cluster_keeps_its_pin_through_the_rollback() {
    let mut w = two_unfinished(OnFailure::Rollback);
    w.pin("eu1", "v1").unwrap();
    assert_eq!(w.fail_v3_in_canary(), RolloutState::RolledBack);
    w.assert_runs(
        &[("can1", "v2"), ("eu1", "v1"), ("us1", "v2")],
        "eu1 keeps its pin",
    );
}

#[test]
fn a_cluster_added_mid_rollout_loses_only_what_it_never_ran_before() {
    let mut w = gated(OnFailure::Rollback);
    w.walk_to_us("v1");
    // can2 joins while v2 rolls out: it runs nothing until a revision reaches it.
    w.commit("v2");
    w.clusters.push(info("can2", &[("region", "canary")]));
    w.views.insert(
        cid("can2"),
        ClusterView {
            connected: true,
            ..Default::default()
        },
    );
    let offer = w.offer(render("v2", &w.clusters.clone()));
    assert!(!offer.started, "same content: no new rollout");
    assert_eq!(w.revision_of("can2"), None);
    // v3 reaches can1 and can2 and fails: can1 returns to v2 (it proved itself there in the
    // canary stage), can2 never ran the app.
    w.settle(&[]);
    w.commit("v3");
    assert_eq!(w.settle(&["can1"]), RolloutState::RolledBack);
    assert_eq!(w.revision_of("can2"), None, "can2 had nothing before v3");
    assert_eq!(w.revision_of("can1").as_deref(), Some("v2"));
    assert_eq!(
        w.revision_of("us1").as_deref(),
        Some("v1"),
        "v2 never reached us1"
    );
}

#[test]
fn a_superseded_revision_counts_only_where_it_proved_itself() {
    let mut w = gated(OnFailure::Rollback);
    w.walk_to_us("v1");
    // v2 reaches us1, which never reports it healthy (still progressing) before v3 arrives.
    w.commit("v2");
    w.settle(&[]);
    w.rec.approve("us", "admin").unwrap();
    w.advance();
    assert_eq!(w.revision_of("us1").as_deref(), Some("v2"));
    w.applied("us1", "v2", Health::Progressing);
    w.advance();
    // v3 goes all the way to us1 and fails there.
    w.commit("v3");
    w.settle(&["us1"]);
    w.rec.approve("us", "admin").unwrap();
    assert_eq!(w.settle(&["us1"]), RolloutState::RolledBack);
    w.assert_runs(
        &[("can1", "v2"), ("eu1", "v2"), ("us1", "v1")],
        "v2 counts on can1 and eu1 (healthy there), not on us1",
    );
}

#[test]
fn nothing_is_ever_removed_by_a_rollback_from_a_cluster_that_ran_the_app() {
    // Every order of supersedes and failures over three commits: after a rollback, a cluster
    // that had any revision of the app before the failed one still has one.
    for fail_at in ["can1", "eu1", "us1"] {
        for approve_first in [false, true] {
            let mut w = gated(OnFailure::Rollback);
            w.walk_to_us("v1");
            w.commit("v2");
            w.settle(&[]);
            if approve_first {
                w.rec.approve("us", "admin").unwrap();
                w.settle(&[]);
            }
            let ran: Vec<String> = w
                .everyone()
                .into_iter()
                .filter(|(_, r)| r.is_some())
                .map(|(c, _)| c)
                .collect();
            w.commit("v3");
            w.settle(&[fail_at]);
            if w.state() == RolloutState::WaitingApproval {
                w.rec.approve("us", "admin").unwrap();
                w.settle(&[fail_at]);
            }
            assert_eq!(
                w.state(),
                RolloutState::RolledBack,
                "{fail_at} {approve_first}"
            );
            for c in &ran {
                let rev = w.revision_of(c);
                assert!(
                    matches!(rev.as_deref(), Some("v1" | "v2")),
                    "{c} runs {rev:?} after v3 failed at {fail_at} (approve first: {approve_first})"
                );
            }
        }
    }
}
