//! The rollout state machine, driven with explicit times and cluster reports (no clocks, no
//! sleeps): stage order, soak, pacing, approval, halt, rollback, pins, pause, supersede,
//! disconnected clusters, and what is not a new revision. `rollback.rs`: where a rollback
//! returns each cluster (what must never be deleted); `removal.rs`: staged removals;
//! `overlap.rs`: stages whose selectors overlap (the first stage owns a cluster).

mod overlap;
mod removal;
mod rollback;
mod scale;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::plan::*;
use crate::render::{
    Approval, ClusterInfo, CountOrPercent, DEFAULT_MAX_REMOVAL, LabelSelector, OnFailure,
    PipelineConfig, Stage,
};
use crate::state::desired::AppEntry;
use flotilla_proto::state::{Health, Phase};

const MIN: u64 = 60_000;

/// Names of the clusters by id, for [`cname`].
static NAMES: Mutex<Option<HashMap<ClusterId, String>>> = Mutex::new(None);

/// The id a test cluster gets: the same for a name in every test, ordered like the names
/// within one stem (`eu-1` < `eu-2`), as the registry's ids follow the order of joining.
fn cid(name: &str) -> ClusterId {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let n: u32 = name[stem.len()..].parse().unwrap_or(0);
    let h = stem.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ b as u32).wrapping_mul(16_777_619)
    });
    let id = (h % 4_000_000) * 1000 + n + 1;
    NAMES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id, name.to_string());
    id
}

fn cname(id: ClusterId) -> String {
    NAMES
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&id).cloned())
        .unwrap_or_else(|| format!("#{id}"))
}

/// The names of `set`, sorted.
fn names(set: &ClusterSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(cname).collect();
    v.sort();
    v
}

/// A test cluster with its labels.
fn info(name: &str, labels: &[(&str, &str)]) -> ClusterInfo {
    ClusterInfo::new(name, labels.iter().copied()).with_id(cid(name))
}

fn selector(key: &str, value: &str) -> LabelSelector {
    serde_json::from_value(serde_json::json!({"matchLabels": {key: value}})).unwrap()
}

fn stage(name: &str, region: &str) -> Stage {
    Stage {
        name: name.into(),
        selector: selector("region", region),
        soak: Duration::ZERO,
        max_parallel: CountOrPercent::Percent(100),
        approval: Approval::Auto,
    }
}

fn pipeline(stages: Vec<Stage>, on_failure: OnFailure) -> PipelineConfig {
    PipelineConfig {
        stages,
        health_timeout: Duration::from_secs(600),
        on_failure,
        failure_threshold: CountOrPercent::Count(1),
        max_removal: None,
    }
}

/// Clusters `<region>-<n>` labelled with their region.
fn fleet(regions: &[(&str, usize)]) -> Vec<ClusterInfo> {
    regions
        .iter()
        .flat_map(|(r, n)| (1..=*n).map(move |i| info(&format!("{r}-{i}"), &[("region", r)])))
        .collect()
}

fn render(rev: &str, clusters: &[ClusterInfo]) -> Render {
    render_content(rev, rev, clusters, |_| {})
}

/// A rendering known as `rev` with the content of `content`, each entry changed by `f`.
fn render_content(
    rev: &str,
    content: &str,
    clusters: &[ClusterInfo],
    f: impl Fn(&mut AppEntry),
) -> Render {
    Render::stamped(
        rev,
        clusters.iter().map(|c| {
            let mut e = AppEntry {
                app: "web".into(),
                revision: rev.into(),
                bundle_digest: format!("sha256:{content}"),
                bundle_size: 1,
                ..Default::default()
            };
            f(&mut e);
            (c.id, e)
        }),
    )
}

/// A rollout under test with the clusters' reports.
struct World {
    rec: AppRollout,
    clusters: Vec<ClusterInfo>,
    pipeline: PipelineConfig,
    views: BTreeMap<ClusterId, ClusterView>,
    now: u64,
}

impl World {
    fn new(clusters: Vec<ClusterInfo>, pipeline: PipelineConfig) -> Self {
        let views = clusters
            .iter()
            .map(|c| {
                (
                    c.id,
                    ClusterView {
                        connected: true,
                        last_seen_ms: 0,
                        ..Default::default()
                    },
                )
            })
            .collect();
        Self {
            rec: AppRollout::new("web", "fleet"),
            clusters,
            pipeline,
            views,
            now: 1_000,
        }
    }

    fn commit(&mut self, rev: &str) -> Offer {
        self.offer(render(rev, &self.clusters))
    }

    /// Offers a rendering (labels from every cluster of the world).
    fn offer(&mut self, render: Render) -> Offer {
        self.rec.offer(
            render,
            &self.clusters,
            Some("regions".into()),
            self.pipeline.clone(),
            DEFAULT_MAX_REMOVAL,
            self.now,
        )
    }

    /// Advances as the engine does: a copy without the renderings, which are put back after;
    /// the names of the clusters touched.
    fn advance(&mut self) -> Vec<String> {
        let mut rec = self.rec.without_renders();
        let views = |c: ClusterId| self.views.get(&c).cloned().unwrap_or_default();
        let touched = rec.advance(&Inputs {
            now_ms: self.now,
            views: &views,
            names: &cname,
            grace_ms: MIN,
            due: Default::default(),
        });
        rec.renders = std::mem::take(&mut self.rec.renders);
        self.rec = rec;
        names(&touched)
    }

    fn view_mut(&mut self, cluster: &str) -> &mut ClusterView {
        self.views.get_mut(&cid(cluster)).unwrap()
    }

    fn desired_for(&self, cluster: &str) -> Option<AppEntry> {
        self.rec.desired_for(cid(cluster))
    }

    fn pin(&mut self, cluster: &str, revision: &str) -> Result<String, ActionError> {
        self.rec.pin(cid(cluster), cluster, revision)
    }

    /// Every cluster that desires a revision reports it applied and healthy (or as `outcome`
    /// says for the clusters named in `bad`).
    /// Clusters without an entry (or told to let go of the app) report it gone.
    fn agents_report(&mut self, bad: &[&str]) {
        for c in &self.clusters {
            let entry = self.rec.desired_for(c.id).filter(|e| !e.options.orphan);
            let v = self.views.get_mut(&c.id).unwrap();
            let Some(entry) = entry else {
                v.revision = "".into();
                v.phase = Phase::Unspecified;
                v.health = Health::Unknown;
                v.last_seen_ms = self.now;
                continue;
            };
            v.revision = entry.revision.as_str().into();
            if bad.contains(&c.name.as_str()) {
                v.phase = Phase::Failed;
                v.health = Health::Degraded;
                v.message = "Deployment web/web: ProgressDeadlineExceeded".into();
            } else {
                v.phase = Phase::Applied;
                v.health = Health::Healthy;
            }
            v.last_seen_ms = self.now;
        }
    }

    /// `cluster` reports `rev` applied with `health`.
    fn applied(&mut self, cluster: &str, rev: &str, health: Health) {
        let v = self.view_mut(cluster);
        v.revision = rev.into();
        v.phase = Phase::Applied;
        v.health = health;
    }

    /// One pass: the agents report (as [`Self::agents_report`]), then the rollout advances;
    /// the clusters it touched.
    fn round(&mut self, bad: &[&str]) -> Vec<String> {
        self.agents_report(bad);
        self.advance()
    }

    /// Commits `rev`, sends it to the first stage, lets its clusters report it healthy and
    /// advances once more.
    fn first_stage_healthy(&mut self, rev: &str) {
        self.commit(rev);
        self.advance();
        self.round(&[]);
    }

    /// Advances and lets agents report until nothing moves; returns the rollout state.
    fn settle(&mut self, bad: &[&str]) -> RolloutState {
        for _ in 0..50 {
            let before = self.rec.clone();
            self.round(bad);
            if self.rec == before {
                break;
            }
        }
        self.state()
    }

    fn state(&self) -> RolloutState {
        self.rec.rollout.as_ref().unwrap().state
    }

    fn stage(&self, name: &str) -> &StageRun {
        self.rec
            .rollout
            .as_ref()
            .unwrap()
            .stages
            .iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    fn revision_of(&self, cluster: &str) -> Option<String> {
        self.desired_for(cluster).map(|e| e.revision)
    }
}

/// canary-1, eu-1, eu-2, us-1, us-2.
fn three_region_fleet() -> Vec<ClusterInfo> {
    fleet(&[("canary", 1), ("eu", 2), ("us", 2)])
}

/// The three-region fleet promoted region by region (canary, eu, us), rolling back on failure.
/// A test that wants another pipeline changes `w.pipeline` before its first commit.
fn three_regions() -> World {
    let p = pipeline(
        vec![
            stage("canary", "canary"),
            stage("eu", "eu"),
            stage("us", "us"),
        ],
        OnFailure::Rollback,
    );
    World::new(three_region_fleet(), p)
}

/// [`three_regions`] with `r1` rolled out everywhere.
fn settled() -> World {
    let mut w = three_regions();
    w.commit("r1");
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    w
}

/// What an offer that changes nothing returns.
fn nothing() -> Offer {
    Offer {
        started: false,
        touched: ClusterSet::new(),
    }
}

#[test]
fn a_revision_goes_stage_by_stage_and_becomes_the_last_good_one() {
    let mut w = three_regions();
    assert!(w.commit("r1").started);
    let touched = w.advance();
    assert_eq!(touched, ["canary-1"], "only the first stage moves first");
    assert_eq!(w.revision_of("canary-1").as_deref(), Some("r1"));
    assert_eq!(w.revision_of("eu-1"), None, "the first revision waits too");
    assert_eq!(w.stage("eu").state, StageState::Pending);
    w.round(&[]);
    // canary healthy (soak 0) → succeeded; eu sent.
    assert_eq!(w.stage("canary").state, StageState::Succeeded);
    assert_eq!(w.revision_of("eu-2").as_deref(), Some("r1"));
    assert_eq!(w.revision_of("us-1"), None);
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    assert_eq!(w.rec.last_good.as_deref(), Some("r1"));
    for c in ["canary-1", "eu-1", "eu-2", "us-1", "us-2"] {
        assert_eq!(w.revision_of(c).as_deref(), Some("r1"), "{c}");
    }
}

#[test]
fn a_stage_soaks_healthy_before_the_next_one_starts() {
    let mut w = three_regions();
    w.pipeline.stages[0].soak = Duration::from_secs(600);
    w.first_stage_healthy("r1");
    let canary = w.stage("canary");
    assert_eq!(canary.state, StageState::Soaking);
    assert_eq!(canary.soak_until_ms, Some(w.now + 600_000));
    w.now += 599_000;
    w.advance();
    assert_eq!(w.stage("eu").state, StageState::Pending, "still soaking");
    w.now += 1_000;
    w.advance();
    assert_eq!(w.stage("canary").state, StageState::Succeeded);
    assert_eq!(w.stage("eu").state, StageState::Progressing);
}

#[test]
fn failing_during_the_soak_fails_the_stage() {
    let mut w = three_regions();
    w.pipeline.stages[0].soak = Duration::from_secs(600);
    w.commit("r0");
    w.settle(&[]);
    w.now += 600_000;
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    // A second revision soaks in canary, then canary degrades.
    w.first_stage_healthy("r1");
    assert_eq!(w.stage("canary").state, StageState::Soaking);
    w.round(&["canary-1"]);
    assert_eq!(w.stage("canary").state, StageState::Failed);
    assert_eq!(w.state(), RolloutState::RolledBack);
    assert_eq!(w.revision_of("canary-1").as_deref(), Some("r0"));
}

#[test]
fn max_parallel_paces_a_stage_in_batches() {
    let clusters = fleet(&[("eu", 5)]);
    let mut s = stage("eu", "eu");
    s.max_parallel = CountOrPercent::Count(2);
    let mut w = World::new(clusters, pipeline(vec![s], OnFailure::Halt));
    w.commit("r1");
    assert_eq!(w.advance(), ["eu-1", "eu-2"]);
    assert_eq!(
        w.advance(),
        Vec::<String>::new(),
        "the batch is not healthy yet"
    );
    // One of the batch healthy is not enough.
    w.applied("eu-1", "r1", Health::Healthy);
    assert!(w.advance().is_empty());
    assert_eq!(w.round(&[]), ["eu-3", "eu-4"]);
    assert_eq!(w.round(&[]), ["eu-5"]);
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
}

#[test]
fn a_manual_stage_waits_for_approval() {
    let mut w = three_regions();
    w.pipeline.stages[1].approval = Approval::Manual;
    w.commit("r1");
    assert_eq!(w.settle(&[]), RolloutState::WaitingApproval);
    assert_eq!(w.stage("eu").state, StageState::WaitingApproval);
    assert_eq!(w.revision_of("eu-1"), None);
    let e = w.rec.approve("us", "admin").unwrap_err();
    assert!(e.to_string().contains("needs no approval"), "{e}");
    w.rec
        .approve("eu", "spiffe://t/admin/alice")
        .expect("approve");
    assert_eq!(
        w.stage("eu").approved_by.as_deref(),
        Some("spiffe://t/admin/alice")
    );
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    assert!(
        w.rec.approve("eu", "admin").is_err(),
        "nothing to approve any more"
    );
}

#[test]
fn halt_stops_where_it_fails() {
    let p = pipeline(
        vec![stage("canary", "canary"), stage("eu", "eu")],
        OnFailure::Halt,
    );
    let mut w = World::new(three_region_fleet(), p);
    w.commit("r1");
    w.settle(&[]);
    w.commit("r2");
    assert_eq!(w.settle(&["eu-1"]), RolloutState::Failed);
    let r = w.rec.rollout.as_ref().unwrap();
    assert!(r.message.contains("stage eu failed"), "{}", r.message);
    assert!(
        r.message.contains("eu-1: failed: Deployment"),
        "{}",
        r.message
    );
    // Halt: the clusters keep what they got; the unstaged ones never see r2.
    assert_eq!(w.revision_of("canary-1").as_deref(), Some("r2"));
    assert_eq!(w.revision_of("eu-1").as_deref(), Some("r2"));
    assert_eq!(w.revision_of("us-1").as_deref(), Some("r1"));
    assert_eq!(w.stage(UNSTAGED).state, StageState::Pending);
    assert!(w.rec.failed_revisions.contains(&"r2".to_string()));
}

#[test]
fn rollback_puts_every_updated_cluster_back_and_the_revision_is_not_retried() {
    let mut w = settled();
    w.commit("r2");
    assert_eq!(w.settle(&["eu-2"]), RolloutState::RolledBack);
    for c in ["canary-1", "eu-1", "eu-2", "us-1"] {
        assert_eq!(w.revision_of(c).as_deref(), Some("r1"), "{c}");
    }
    assert_eq!(
        w.stage("us").state,
        StageState::Pending,
        "no later stage started"
    );
    // The same content again (another commit touching other apps) is not retried.
    let again = render_content("r3", "r2", &w.clusters, |_| {});
    assert_eq!(w.offer(again), nothing());
    // A new commit starts afresh.
    assert!(w.commit("r4").started);
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    assert_eq!(w.rec.last_good.as_deref(), Some("r4"));
}

#[test]
fn a_failed_first_revision_rolls_back_to_nothing() {
    let mut w = three_regions();
    w.commit("r1");
    assert_eq!(w.settle(&["canary-1"]), RolloutState::RolledBack);
    assert_eq!(w.revision_of("canary-1"), None);
}

#[test]
fn not_healthy_within_the_health_timeout_fails_the_cluster() {
    let mut w = three_regions();
    w.pipeline.health_timeout = Duration::from_secs(300);
    w.commit("r1");
    w.advance();
    // canary-1 reports the revision applied but progressing, forever.
    w.applied("canary-1", "r1", Health::Progressing);
    w.now += 299_000;
    w.advance();
    assert_eq!(w.state(), RolloutState::Progressing);
    w.now += 1_000;
    w.advance();
    assert_eq!(w.state(), RolloutState::RolledBack);
    let f = &w.stage("canary").failures[&cid("canary-1")];
    assert!(
        f.starts_with("not healthy within 5m (applied, progressing)"),
        "{f}"
    );
}

#[test]
fn a_disconnected_cluster_fails_its_stage_after_the_grace_period() {
    let mut w = three_regions();
    w.first_stage_healthy("r1");
    // eu-1 goes away as the eu stage starts.
    let now = w.now;
    let v = w.view_mut("eu-1");
    v.connected = false;
    v.last_seen_ms = now;
    w.now += MIN - 1;
    w.advance();
    assert_eq!(
        w.state(),
        RolloutState::Progressing,
        "within the grace period"
    );
    w.now += 1;
    w.advance();
    assert_eq!(w.state(), RolloutState::RolledBack);
    assert!(w.stage("eu").failures[&cid("eu-1")].starts_with("disconnected for more than 1m"));
}

#[test]
fn a_failure_threshold_tolerates_fewer_failures() {
    let clusters = fleet(&[("eu", 4)]);
    let mut p = pipeline(vec![stage("eu", "eu")], OnFailure::Halt);
    p.failure_threshold = CountOrPercent::Percent(50);
    let mut w = World::new(clusters, p);
    w.commit("r1");
    assert_eq!(w.settle(&["eu-1"]), RolloutState::Succeeded, "1 of 4 < 50%");
    let mut w2 = World::new(fleet(&[("eu", 4)]), w.pipeline.clone());
    w2.commit("r1");
    assert_eq!(w2.settle(&["eu-1", "eu-2"]), RolloutState::Failed);
}

#[test]
fn a_paused_rollout_does_not_move_until_resumed() {
    let mut w = three_regions();
    w.commit("r1");
    w.advance();
    w.agents_report(&[]);
    w.rec.paused = true;
    assert!(w.advance().is_empty());
    assert_eq!(w.stage("canary").state, StageState::Progressing);
    w.rec.paused = false;
    w.advance();
    assert_eq!(w.stage("canary").state, StageState::Succeeded);
}

#[test]
fn pinned_clusters_keep_their_revision_and_are_skipped() {
    let mut w = settled();
    assert_eq!(w.pin("eu-1", "r1").unwrap(), "r1");
    w.commit("r2");
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    assert!(!w.stage("eu").clusters.contains(cid("eu-1")));
    assert_eq!(w.revision_of("eu-1").as_deref(), Some("r1"));
    assert_eq!(w.revision_of("eu-2").as_deref(), Some("r2"));
    w.rec.pins.remove(&cid("eu-1"));
    assert_eq!(
        w.revision_of("eu-1").as_deref(),
        Some("r2"),
        "unpinned: the current revision"
    );
    let e = w.pin("eu-1", "nope").unwrap_err();
    assert!(
        e.to_string().contains("not among the kept renderings"),
        "{e}"
    );
}

#[test]
fn a_newer_revision_supersedes_and_older_ones_are_held_until_it_arrives() {
    let mut w = settled();
    // r2 gets through canary and into eu.
    w.first_stage_healthy("r2");
    assert_eq!(w.revision_of("eu-1").as_deref(), Some("r2"));
    // r3 arrives: it starts from canary; eu keeps r2 (no going back to r1) until r3 gets there.
    assert!(w.commit("r3").started);
    assert_eq!(w.revision_of("eu-1").as_deref(), Some("r2"));
    assert_eq!(w.revision_of("us-1").as_deref(), Some("r1"));
    let touched = w.advance();
    assert_eq!(touched, ["canary-1"]);
    assert_eq!(w.revision_of("canary-1").as_deref(), Some("r3"));
    assert_eq!(w.settle(&[]), RolloutState::Succeeded);
    for c in ["canary-1", "eu-1", "eu-2", "us-1", "us-2"] {
        assert_eq!(w.revision_of(c).as_deref(), Some("r3"), "{c}");
    }
    // Held compactly: when r3 started most clusters ran r2 (canary and eu), us ran r1.
    let r = w.rec.rollout.as_ref().unwrap();
    assert_eq!(r.base.as_deref(), Some("r2"));
    let held: BTreeMap<String, Option<String>> = r
        .held
        .iter()
        .map(|(c, rev)| (cname(c), rev.map(str::to_string)))
        .collect();
    assert_eq!(
        held,
        BTreeMap::from([
            ("us-1".to_string(), Some("r1".to_string())),
            ("us-2".to_string(), Some("r1".to_string()))
        ])
    );
}

#[test]
fn unchanged_content_new_clusters_and_operator_rollback() {
    let mut w = settled();
    // A commit that does not change this app: no rollout, the revision keeps its name.
    let same = render_content("r1b", "r1", &w.clusters, |_| {});
    assert_eq!(w.offer(same), nothing());
    assert_eq!(w.rec.effective_revision(), Some("r1"));
    // A new cluster gets the current revision at once.
    w.clusters.push(info("eu-3", &[("region", "eu")]));
    let out = w.offer(render("r1", &w.clusters.clone()));
    assert!(!out.started);
    assert_eq!(names(&out.touched), ["eu-3"]);
    assert_eq!(w.revision_of("eu-3").as_deref(), Some("r1"));
    // Operator rollback to a kept revision.
    w.views.insert(cid("eu-3"), ClusterView::default());
    w.commit("r2");
    w.settle(&[]);
    let touched = w.rec.rollback(Some("r1"), w.now).unwrap();
    assert!(touched.contains(cid("us-2")));
    assert_eq!(w.revision_of("us-2").as_deref(), Some("r1"));
    assert!(w.rec.rollback(Some("zzz"), w.now).is_err());
}

#[test]
fn saves_split_into_chunks_that_cover_every_record_once_within_both_bounds() {
    use super::save_chunks;
    const MIB: usize = 1 << 20;
    let sizes = [600 << 10, 600 << 10, 600 << 10, 10, 10, 2 * MIB, 5];
    assert_eq!(
        save_chunks(&sizes, 2, MIB),
        vec![0..1, 1..2, 2..4, 4..5, 5..6, 6..7],
        "a record over the byte bound stands alone"
    );
    assert!(save_chunks(&[], 8, MIB).is_empty());
    // Many records of varied sizes (what failed at 10,000 clusters x 100 apps: the second
    // chunk onwards): consecutive, complete, and each within both bounds.
    let sizes: Vec<usize> = (0..1_000).map(|i| (i * 7_919) % 300_000 + 1).collect();
    for max_ops in [1, 3, 64, 10_000] {
        let chunks = save_chunks(&sizes, max_ops, MIB);
        let mut next = 0;
        for c in &chunks {
            assert_eq!(c.start, next);
            assert!(!c.is_empty() && c.len() <= max_ops);
            let bytes: usize = sizes[c.clone()].iter().sum();
            assert!(c.len() == 1 || bytes <= MIB, "{c:?}: {bytes} bytes");
            next = c.end;
        }
        assert_eq!(next, sizes.len());
    }
}
