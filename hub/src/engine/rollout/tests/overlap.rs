//! Stages whose selectors overlap: the first stage of the pipeline that selects a cluster owns
//! it, for releases, rollbacks and removals alike. A cluster labelled `ring=canary` and
//! `region=eu` is canary's: it gets a revision once, in canary, and `eu` neither sends it one,
//! counts it nor waits for it. What must never happen: a cluster losing the app it runs
//! because two stages select it.

use super::*;

/// canary (`ring=canary`), eu (`region=eu`), us (`region=us`), rolling back on failure.
fn overlapping() -> PipelineConfig {
    pipeline(
        vec![
            Stage {
                selector: selector("ring", "canary"),
                ..stage("canary", "-")
            },
            stage("eu", "eu"),
            stage("us", "us"),
        ],
        OnFailure::Rollback,
    )
}

/// `both-1` (in eu, and the canary ring), `eu-1`, `eu-2`, `us-1`.
fn overlapping_fleet() -> Vec<ClusterInfo> {
    let mut clusters = vec![info("both-1", &[("region", "eu"), ("ring", "canary")])];
    clusters.extend(fleet(&[("eu", 2), ("us", 1)]));
    clusters
}

fn world() -> World {
    World::new(overlapping_fleet(), overlapping())
}

const ALL: [&str; 4] = ["both-1", "eu-1", "eu-2", "us-1"];

/// The stages (of the rollout) that hold `cluster`, by name.
fn stages_of(stages: &[StageRun], cluster: &str) -> Vec<String> {
    stages
        .iter()
        .filter(|s| s.clusters.contains(cid(cluster)))
        .map(|s| s.name.clone())
        .collect()
}

/// The stages that sent their change to `cluster`, by name.
fn sent_by(stages: &[StageRun], cluster: &str) -> Vec<String> {
    stages
        .iter()
        .filter(|s| s.updated.contains(cid(cluster)))
        .map(|s| s.name.clone())
        .collect()
}

fn rollout_stages(w: &World) -> &[StageRun] {
    &w.rec.rollout.as_ref().expect("a rollout").stages
}

/// The clusters of the world that run the app (any entry that is not a let-go).
fn running(w: &World) -> Vec<String> {
    w.clusters
        .iter()
        .filter(|c| w.rec.desired_for(c.id).is_some_and(|e| !e.options.orphan))
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn the_first_stage_that_selects_a_cluster_owns_it() {
    let mut w = world();
    assert!(w.commit("r1").started, "overlapping stages are no error");
    let stages = rollout_stages(&w);
    let by_stage: Vec<(String, Vec<String>)> = stages
        .iter()
        .map(|s| (s.name.clone(), names(&s.clusters)))
        .collect();
    assert_eq!(
        by_stage,
        [
            ("canary".to_string(), vec!["both-1".to_string()]),
            ("eu".into(), vec!["eu-1".into(), "eu-2".into()]),
            ("us".into(), vec!["us-1".into()]),
        ],
        "canary, not eu; and no unstaged stage"
    );
    // Canary first, and only the canary.
    assert_eq!(w.advance(), ["both-1"]);
    assert_eq!(w.revision_of("both-1").as_deref(), Some("r1"));
    assert_eq!(w.revision_of("eu-1"), None);
    // Canary healthy: eu sends to its own two clusters, not to both-1 again.
    assert_eq!(w.round(&[]), ["eu-1", "eu-2"]);
    assert_eq!(names(&w.stage("eu").batch), ["eu-1", "eu-2"]);
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    for c in ALL {
        assert_eq!(w.revision_of(c).as_deref(), Some("r1"), "{c}");
        assert_eq!(sent_by(rollout_stages(&w), c).len(), 1, "{c} got r1 once");
    }
    assert_eq!(sent_by(rollout_stages(&w), "both-1"), ["canary"]);
    assert_eq!(w.stage("eu").updated.len(), 2);
}

#[test]
fn pipeline_order_not_name_order_decides() {
    // The same selectors listed eu first: both-1 is eu's now.
    let p = pipeline(
        vec![
            stage("eu", "eu"),
            Stage {
                selector: selector("ring", "canary"),
                ..stage("canary", "-")
            },
        ],
        OnFailure::Halt,
    );
    let mut w = World::new(overlapping_fleet(), p);
    w.commit("r1");
    assert_eq!(stages_of(rollout_stages(&w), "both-1"), ["eu"]);
    assert!(w.stage("canary").clusters.is_empty());
    assert_eq!(w.advance(), ["both-1", "eu-1", "eu-2"]);
}

#[test]
fn later_stages_neither_count_nor_wait_for_a_cluster_an_earlier_stage_owns() {
    let mut w = world();
    // One failure fails a stage: were both-1 counted in eu, its failure would fail eu.
    w.commit("r1");
    w.advance();
    assert_eq!(w.round(&[]), ["eu-1", "eu-2"], "canary passed");
    // both-1 degrades after canary passed, and stays so; eu and us still pass.
    assert_eq!(w.settle(&["both-1"]), RolloutState::Succeeded);
    assert!(w.stage("eu").failures.is_empty());
    assert!(w.stage("us").failures.is_empty());
    assert_eq!(names(&w.stage("eu").updated.all()), ["eu-1", "eu-2"]);

    // Nor does eu wait for it: both-1 passes canary with r2, then goes away for good.
    w.commit("r2");
    assert_eq!(w.advance(), ["both-1"]);
    assert_eq!(w.round(&[]), ["eu-1", "eu-2"], "canary passed");
    w.view_mut("both-1").connected = false;
    w.view_mut("both-1").health = Health::Unknown;
    w.view_mut("both-1").phase = Phase::Applying;
    // Reports from the others only: both-1's view stays as set above.
    for _ in 0..10 {
        for c in ["eu-1", "eu-2", "us-1"] {
            if let Some(e) = w.desired_for(c) {
                w.applied(c, &e.revision, Health::Healthy);
            }
        }
        w.advance();
    }
    assert_eq!(w.state(), RolloutState::Succeeded);
    for c in ALL {
        assert_eq!(w.revision_of(c).as_deref(), Some("r2"), "{c}");
    }
}

#[test]
fn a_failure_in_the_owning_stage_rolls_back_without_touching_later_stages() {
    let mut w = world();
    w.commit("r1");
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    w.commit("r2");
    w.advance();
    // both-1 fails r2 in canary: the rollout rolls back before eu gets anything.
    w.round(&["both-1"]);
    assert_eq!(w.state(), RolloutState::RolledBack);
    assert_eq!(w.revision_of("both-1").as_deref(), Some("r1"));
    for c in ["eu-1", "eu-2", "us-1"] {
        assert_eq!(w.revision_of(c).as_deref(), Some("r1"), "{c}");
    }
    assert!(w.stage("eu").updated.is_empty());
}

#[test]
fn a_removal_follows_the_same_ownership() {
    let mut w = world();
    w.commit("r1");
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    let clusters = w.clusters.clone();
    let cause = Cause {
        revision: "r2",
        reason: "the app is no longer in flotilla.yaml",
        keep_resources: false,
        approved_by: Some("admin"),
    };
    assert!(w.rec.retire(cause, &clusters, w.now).is_empty());
    let rm = w.rec.removal.as_ref().expect("a removal");
    assert_eq!(stages_of(&rm.stages, "both-1"), ["canary"]);
    assert_eq!(names(&rm.stages[1].clusters), ["eu-1", "eu-2"]);
    // The canary loses it first, alone.
    assert_eq!(w.advance(), ["both-1"]);
    assert_eq!(running(&w), ["eu-1", "eu-2", "us-1"]);
    assert_eq!(w.round(&[]), ["eu-1", "eu-2"]);
    w.settle(&[]);
    let rm = w.rec.removal.as_ref().expect("a removal");
    assert_eq!(rm.state, RolloutState::Succeeded);
    assert_eq!(sent_by(&rm.stages, "both-1"), ["canary"], "removed once");
    assert!(running(&w).is_empty());
}

#[test]
fn a_removal_that_fails_in_the_owning_stage_leaves_the_later_stages_alone() {
    let mut w = world();
    w.commit("r1");
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    let clusters = w.clusters.clone();
    let cause = Cause {
        revision: "r2",
        reason: "gone",
        keep_resources: false,
        approved_by: Some("admin"),
    };
    w.rec.retire(cause, &clusters, w.now);
    assert_eq!(w.advance(), ["both-1"]);
    // both-1 still reports the app after the health timeout: the removal halts in canary.
    w.now += 11 * MIN;
    w.advance();
    assert_eq!(
        w.rec.removal.as_ref().map(|r| r.state),
        Some(RolloutState::Failed)
    );
    assert_eq!(running(&w), ["eu-1", "eu-2", "us-1"]);
    w.settle(&[]);
    assert_eq!(running(&w), ["eu-1", "eu-2", "us-1"], "halted in canary");
}

/// What must never be deleted: through releases, a failed release's rollback, a relabel that
/// makes a running cluster's stages overlap, and a removal of another cluster, a cluster that
/// two stages select keeps the app it runs at every step, and no removal ever names it.
#[test]
fn a_cluster_selected_by_two_stages_never_loses_the_app_it_runs() {
    let mut w = world();
    // Before any stage overlaps: both-1 is only in eu.
    w.clusters[0] = info("both-1", &[("region", "eu")]);
    w.commit("r1");
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    let check = |w: &World, step: &str| {
        assert_eq!(running(w), ALL, "every cluster runs the app: {step}");
        let removing = w
            .rec
            .removal
            .as_ref()
            .is_some_and(|rm| rm.from.clusters().contains(cid("both-1")));
        assert!(!removing, "no removal names both-1: {step}");
    };
    check(&w, "r1 settled");

    // both-1 joins the canary ring while running r1: an offer of the same content moves
    // nothing, and it keeps r1.
    w.clusters[0] = info("both-1", &[("region", "eu"), ("ring", "canary")]);
    let same = render_content("r1b", "r1", &w.clusters, |_| {});
    assert_eq!(w.offer(same), nothing());
    check(&w, "relabelled into two stages");
    assert_eq!(w.revision_of("both-1").as_deref(), Some("r1"));

    // r2 goes out through canary (both-1) and fails in eu: rolled back everywhere, and
    // every cluster keeps an entry at every step.
    w.commit("r2");
    check(&w, "r2 offered");
    for bad in [&[][..], &[], &["eu-1"], &["eu-1"], &["eu-1"]] {
        w.round(bad);
        check(&w, "r2 rolling out");
    }
    assert_eq!(w.state(), RolloutState::RolledBack);
    assert_eq!(w.revision_of("both-1").as_deref(), Some("r1"));
    assert_eq!(sent_by(rollout_stages(&w), "both-1"), ["canary"]);

    // r3 succeeds; then us-1 is no longer targeted: its removal never names both-1.
    w.commit("r3");
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    check(&w, "r3 settled");
    let keep: Vec<ClusterInfo> = w
        .clusters
        .iter()
        .filter(|c| c.name != "us-1")
        .cloned()
        .collect();
    w.offer(render("r3", &keep));
    let rm = w.rec.removal.clone().expect("us-1 is removed");
    assert_eq!(names(&rm.from.clusters()), ["us-1"]);
    for _ in 0..5 {
        w.round(&[]);
        assert_eq!(w.revision_of("both-1").as_deref(), Some("r3"));
    }
    assert_eq!(running(&w), ["both-1", "eu-1", "eu-2"]);
}
