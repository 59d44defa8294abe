//! Staged removals: clusters relabelled out of an app's targets, an app that left
//! `flotilla.yaml`, a removed source. Each goes stage by stage; a large one waits for approval;
//! `prune: false` and keep-resources delete nothing; a cluster targeted again keeps the app.

use super::*;

impl World {
    /// Offers `rev` rendered for the clusters `keep` only (the others are no longer targeted).
    fn commit_for(&mut self, rev: &str, keep: &[&str]) -> Offer {
        let targets: Vec<ClusterInfo> = self
            .clusters
            .iter()
            .filter(|c| keep.contains(&c.name.as_str()))
            .cloned()
            .collect();
        self.offer(render(rev, &targets))
    }

    /// Retires the app from every cluster of the world for `cause`; the clusters touched at once.
    fn retire(&mut self, cause: Cause<'_>) -> Vec<String> {
        let clusters = self.clusters.clone();
        names(&self.rec.retire(cause, &clusters, self.now))
    }

    fn removal(&self) -> &Removal {
        self.rec.removal.as_ref().expect("a removal")
    }

    fn running(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter(|c| self.rec.desired_for(c.id).is_some())
            .map(|c| c.name.clone())
            .collect()
    }

    /// Asserts that the app runs on no cluster any more and that its record is finished.
    fn assert_gone(&self) {
        assert_eq!(self.running(), Vec::<String>::new());
        assert!(self.rec.finished());
    }
}

fn cause<'a>(
    revision: &'a str,
    reason: &'a str,
    keep_resources: bool,
    approved_by: Option<&'a str>,
) -> Cause<'a> {
    Cause {
        revision,
        reason,
        keep_resources,
        approved_by,
    }
}

const ALL: [&str; 5] = ["canary-1", "eu-1", "eu-2", "us-1", "us-2"];

#[test]
fn one_cluster_relabelled_out_loses_the_app_through_its_stage() {
    let mut w = settled();
    // us-2 is no longer targeted (1 of 5 clusters: within maxRemoval 10%, no approval).
    let offer = w.commit_for("r1", &["canary-1", "eu-1", "eu-2", "us-1"]);
    assert_eq!(
        names(&offer.touched),
        Vec::<String>::new(),
        "nothing changes at once"
    );
    assert_eq!(w.revision_of("us-2").as_deref(), Some("r1"));
    let rm = w.removal();
    assert_eq!(rm.state, RolloutState::Progressing);
    assert!(rm.gate.is_none());
    let us = rm.stages.iter().find(|s| s.name == "us").unwrap();
    assert_eq!(names(&us.clusters), ["us-2"]);
    // Empty stages pass; the us stage sends the removal.
    assert_eq!(w.advance(), ["us-2"]);
    assert_eq!(w.revision_of("us-2"), None);
    w.settle(&[]);
    assert_eq!(w.removal().state, RolloutState::Succeeded);
    assert_eq!(w.running(), ["canary-1", "eu-1", "eu-2", "us-1"]);
    assert!(!w.rec.finished(), "the app itself stays");
    // The next sync of the same commit changes nothing.
    let again = w.commit_for("r1", &["canary-1", "eu-1", "eu-2", "us-1"]);
    assert!(again.touched.is_empty() && !again.started);
}

#[test]
fn a_removal_larger_than_max_removal_waits_for_approval_and_then_goes_stage_by_stage() {
    let mut w = settled();
    // A mistyped label: only canary-1 is still targeted, four clusters would lose the app.
    w.commit_for("r1", &["canary-1"]);
    assert_eq!(w.removal().state, RolloutState::WaitingApproval);
    let gate = w.removal().gate.clone().unwrap();
    assert!(
        gate.contains("from 4 of its 5 clusters") && gate.contains("maxRemoval 10%"),
        "{gate}"
    );
    // Nothing moves while it waits, however long.
    for _ in 0..3 {
        w.now += 60 * MIN;
        w.settle(&[]);
    }
    assert_eq!(w.running(), ALL);
    // Approved: eu first (both at once: maxParallel 100%), then us once eu let go.
    let what = w.rec.approve("", "spiffe://t/admin/alice").unwrap();
    assert!(what.contains("removal"), "{what}");
    assert_eq!(w.advance(), ["eu-1", "eu-2"]);
    assert_eq!(w.running(), ["canary-1", "us-1", "us-2"]);
    assert!(
        w.advance().is_empty(),
        "us waits until eu reports the app gone"
    );
    w.settle(&[]);
    assert_eq!(w.running(), ["canary-1"]);
    assert_eq!(
        w.removal().approved_by.as_deref(),
        Some("spiffe://t/admin/alice")
    );
}

#[test]
fn an_app_that_left_flotilla_yaml_is_removed_canary_first_and_its_record_goes() {
    let mut w = settled();
    let touched = w.retire(cause(
        "r2",
        "the app is no longer in flotilla.yaml",
        false,
        None,
    ));
    assert!(touched.is_empty(), "nothing removed before the approval");
    assert_eq!(w.running(), ALL);
    assert!(w.removal().gated());
    w.rec.approve("", "admin").unwrap();
    assert_eq!(w.advance(), ["canary-1"], "the canary loses it first");
    assert_eq!(w.running(), ["eu-1", "eu-2", "us-1", "us-2"]);
    w.settle(&[]);
    w.assert_gone();
}

#[test]
fn a_cluster_that_keeps_the_app_fails_the_removal_and_the_rest_keep_it() {
    let mut w = settled();
    w.retire(cause("r2", "gone", false, Some("admin")));
    assert_eq!(w.advance(), ["canary-1"]);
    // canary-1 still reports the app after the health timeout.
    w.now += 11 * MIN;
    w.advance();
    let rm = w.removal();
    assert_eq!(rm.state, RolloutState::Failed);
    assert!(rm.message.contains("still runs the app"), "{}", rm.message);
    assert_eq!(w.running(), ["eu-1", "eu-2", "us-1", "us-2"]);
    w.settle(&[]);
    assert_eq!(w.running(), ["eu-1", "eu-2", "us-1", "us-2"], "halted");
    assert!(!w.rec.finished());
    // Approving retries it.
    let what = w.rec.approve("", "admin").unwrap();
    assert!(what.contains("retry"), "{what}");
    w.settle(&[]);
    w.assert_gone();
}

#[test]
fn prune_false_apps_are_dropped_at_once_because_nothing_is_deleted() {
    let mut w = three_regions();
    let r1 = render_content("r1", "r1", &w.clusters, |e| e.options.disable_prune = true);
    w.offer(r1);
    w.settle(&[]);
    let touched = w.retire(cause("r2", "gone", false, None));
    assert_eq!(touched, ALL);
    assert!(w.rec.removal.is_none());
    assert!(w.rec.finished());
}

#[test]
fn keeping_resources_tells_each_agent_to_let_go_without_deleting() {
    let mut w = settled();
    w.retire(cause("", "source fleet was removed", true, Some("admin")));
    w.advance();
    let e = w.desired_for("canary-1").unwrap();
    assert!(e.options.orphan, "an orphan entry, not a deletion");
    assert!(!w.desired_for("eu-1").unwrap().options.orphan);
    w.settle(&[]);
    assert!(w.rec.finished());
}

#[test]
fn a_cluster_targeted_again_keeps_the_app_and_leaves_the_removal() {
    let mut w = settled();
    w.commit_for("r1", &["canary-1", "eu-1"]);
    assert!(w.removal().gated(), "3 of 5");
    // The label is fixed before anyone approves: us-1 and us-2 are targeted again.
    w.commit_for("r1", &["canary-1", "eu-1", "us-1", "us-2"]);
    let rm = w.removal();
    assert_eq!(names(&rm.from.clusters()), ["eu-2"]);
    assert!(!rm.gated(), "1 of 5 is within maxRemoval");
    w.settle(&[]);
    assert_eq!(w.running(), ["canary-1", "eu-1", "us-1", "us-2"]);
}

#[test]
fn a_new_revision_and_a_removal_move_side_by_side() {
    let mut w = settled();
    // r2 changes the content and drops us-2.
    let offer = w.commit_for("r2", &["canary-1", "eu-1", "eu-2", "us-1"]);
    assert!(offer.started);
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    for c in ["canary-1", "eu-1", "eu-2", "us-1"] {
        assert_eq!(w.revision_of(c).as_deref(), Some("r2"), "{c}");
    }
    assert_eq!(w.revision_of("us-2"), None);
    assert_eq!(w.removal().state, RolloutState::Succeeded);
}

#[test]
fn pinned_clusters_are_not_removed() {
    let mut w = settled();
    w.pin("us-2", "r1").unwrap();
    w.retire(cause("r2", "gone", false, Some("admin")));
    w.settle(&[]);
    assert_eq!(w.running(), ["us-2"]);
    assert!(!w.rec.finished(), "the pin keeps the record");
}

#[test]
fn a_cluster_the_hub_removed_is_dropped_at_once() {
    let mut w = settled();
    // us-1 and us-2 were removed from the hub (revoked): they are neither targeted nor known.
    w.clusters.retain(|c| !c.name.starts_with("us-"));
    let offer = w.commit_for("r1", &["canary-1", "eu-1", "eu-2"]);
    assert_eq!(names(&offer.touched), ["us-1", "us-2"]);
    assert!(w.rec.removal.is_none(), "nothing to stage or approve");
}

#[test]
fn a_waiting_removal_of_clusters_the_hub_then_removed_ends_without_approval() {
    let mut w = settled();
    w.commit_for("r1", &["canary-1", "eu-1"]);
    assert!(w.removal().gated(), "3 of 5");
    // The three clusters are removed from the hub before anyone approves.
    w.clusters
        .retain(|c| ["canary-1", "eu-1"].contains(&c.name.as_str()));
    w.commit_for("r1", &["canary-1", "eu-1"]);
    assert!(w.rec.removal.is_none(), "nothing left of it");
    for c in ["eu-2", "us-1", "us-2"] {
        assert_eq!(w.revision_of(c), None, "{c}");
    }
}
