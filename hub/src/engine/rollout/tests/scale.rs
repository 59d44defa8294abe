//! The size of what the hub stores at fleet scale: 10,000 clusters × 100 apps, each app with a
//! full history (ten kept renderings that differ per region, a rollout superseded half-way, a
//! stage with hundreds of failed clusters, a staged removal, pins). Every value is written to a
//! real store and the largest one read back must stay under 512 KiB (etcd takes 1.5 MiB per
//! request): records grow with distinct renderings and with the clusters whose state differs,
//! not with clusters × revisions.

use std::sync::Arc;

use super::*;
use crate::state::desired::{AppReport, StatusRecord};
use crate::state::table::Table;
use crate::store::Store;
use crate::store::redb::RedbStore;

const CLUSTERS: u32 = 10_000;
const APPS: usize = 100;
const LIMIT: usize = 512 * 1024;

/// Clusters 1..=10,000 with regions interleaved (the worst case for ranges: every third id).
fn big_fleet() -> Vec<ClusterInfo> {
    let regions = ["canary", "eu", "us"];
    (1..=CLUSTERS)
        .map(|id| {
            let region = if id <= 30 {
                "canary"
            } else {
                regions[1 + (id as usize % 2)]
            };
            ClusterInfo::new(format!("cluster-{id:05}"), [("region", region)]).with_id(id)
        })
        .collect()
}

/// Revision `rev`: one bundle per region (overlays), so each kept rendering has three groups.
fn regional(rev: &str, clusters: &[ClusterInfo]) -> Render {
    Render::stamped(
        rev,
        clusters.iter().map(|c| {
            (
                c.id,
                AppEntry {
                    app: "web".into(),
                    bundle_digest: format!("sha256:{rev}-{}", c.labels["region"]),
                    bundle_size: 4096,
                    depends_on: vec!["db".into()],
                    ..Default::default()
                },
            )
        }),
    )
}

/// One app's record through a long history at 10,000 clusters.
fn history() -> AppRollout {
    let clusters = big_fleet();
    let mut p = pipeline(
        vec![
            stage("canary", "canary"),
            stage("eu", "eu"),
            stage("us", "us"),
        ],
        OnFailure::Halt,
    );
    p.failure_threshold = CountOrPercent::Percent(100);
    for s in &mut p.stages {
        s.max_parallel = CountOrPercent::Percent(25);
    }
    let mut rec = AppRollout::new("web", "fleet");
    let mut views: BTreeMap<ClusterId, ClusterView> = BTreeMap::new();
    let mut now = 1_000;
    let offer = |rec: &mut AppRollout, render: Render, clusters: &[ClusterInfo], now| {
        rec.offer(
            render,
            clusters,
            Some("regions".into()),
            p.clone(),
            DEFAULT_MAX_REMOVAL,
            now,
        )
    };
    // Advances until nothing moves; clusters in `bad` report the revision failed.
    let settle = |rec: &mut AppRollout,
                  views: &mut BTreeMap<ClusterId, ClusterView>,
                  now: u64,
                  bad: &dyn Fn(ClusterId) -> bool,
                  rounds: usize| {
        for _ in 0..rounds {
            for c in &clusters {
                let v = views.entry(c.id).or_default();
                v.connected = true;
                v.last_seen_ms = now;
                if let Some(e) = rec.desired_for(c.id) {
                    v.revision = e.revision.into();
                    let failed = bad(c.id);
                    v.phase = if failed {
                        Phase::Failed
                    } else {
                        Phase::Applied
                    };
                    v.health = if failed {
                        Health::Degraded
                    } else {
                        Health::Healthy
                    };
                    v.message = if failed {
                        format!("Deployment web/web: ProgressDeadlineExceeded on {}", c.name).into()
                    } else {
                        "".into()
                    };
                }
            }
            let view = |c: ClusterId| views.get(&c).cloned().unwrap_or_default();
            let name = |c: ClusterId| format!("cluster-{c:05}");
            rec.advance(&Inputs {
                now_ms: now,
                views: &view,
                names: &name,
                grace_ms: MIN,
                due: Default::default(),
            });
        }
    };
    let none = |_: ClusterId| false;
    // Ten revisions rolled out everywhere (each kept: ten renderings of three groups).
    for i in 0..10 {
        offer(
            &mut rec,
            regional(&format!("r{i:02}"), &clusters),
            &clusters,
            now,
        );
        settle(&mut rec, &mut views, now, &none, 20);
        now += MIN;
    }
    assert_eq!(rec.rollout.as_ref().unwrap().state, RolloutState::Succeeded);
    // r10 gets half-way through eu, r11 supersedes it (clusters held on r10 or r09).
    offer(&mut rec, regional("r10", &clusters), &clusters, now);
    settle(&mut rec, &mut views, now, &none, 3);
    offer(&mut rec, regional("r11", &clusters), &clusters, now);
    // r11 fails on about 700 clusters of eu (a threshold of 100% lets them all fail).
    let bad = |c: ClusterId| c > 30 && c.is_multiple_of(7);
    settle(&mut rec, &mut views, now, &bad, 8);
    // A fifth of the fleet is relabelled out: a staged removal waiting for approval.
    let kept: Vec<ClusterInfo> = clusters
        .iter()
        .filter(|c| !c.id.is_multiple_of(5))
        .cloned()
        .collect();
    offer(&mut rec, regional("r11", &kept), &clusters, now);
    // A few pins.
    for c in [31, 32, 33] {
        rec.pin(c, &format!("cluster-{c:05}"), "r09").unwrap();
    }
    rec
}

#[tokio::test]
async fn no_stored_value_exceeds_512_kib_at_10000_clusters_and_100_apps() {
    let rec = history();
    let r = rec.rollout.as_ref().unwrap();
    let counts: Vec<(&str, usize, usize)> = r
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.updated.len(), s.failures.len()))
        .collect();
    assert!(
        r.stages.iter().any(|s| s.failures.len() >= 400),
        "many failures: {counts:?} {}",
        r.state
    );
    assert!(!r.held.is_empty() || !r.prior.is_empty(), "held revisions");
    assert!(
        rec.removal
            .as_ref()
            .is_some_and(|rm| rm.from.len() == 2_000)
    );
    assert_eq!(rec.renders.len(), MAX_RENDERS);

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s")).unwrap());
    let rollouts: Table<AppRollout> = Table::new(store.clone(), super::super::ROLLOUTS);
    for i in 0..APPS {
        let mut app = rec.clone();
        app.app = format!("app-{i:03}");
        rollouts.put(&app.app, &app).await.unwrap();
    }
    // A cluster's statuses: one report per app, each with its worst objects.
    let statuses: Table<StatusRecord> = Table::new(store.clone(), crate::state::desired::STATUS);
    let status = StatusRecord {
        generation: 1,
        apps: (0..APPS)
            .map(|i| AppReport {
                app: format!("app-{i:03}").into(),
                revision: "a".repeat(40).into(),
                bundle_digest: format!("sha256:{}", "b".repeat(64)).into(),
                phase: Phase::Applied,
                message: "m".repeat(200).into(),
                observed_ms: 1,
                health: Health::Healthy,
                objects: Default::default(),
                drifted: 0,
                healed: 0,
                worst: Vec::new(),
            })
            .map(Arc::new)
            .collect(),
        through: 0,
    };
    statuses.put("cluster-00001", &status).await.unwrap();

    let (all, _) = store.list("/").await.unwrap();
    let (key, largest) = all
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.len()))
        .max_by_key(|(_, n)| *n)
        .unwrap();
    assert!(
        largest <= LIMIT,
        "{key} is {largest} bytes, more than 512 KiB"
    );
    // And the rollout record itself, to see it stays far below.
    let one = Table::<AppRollout>::encode(&rec).len();
    eprintln!("largest stored value: {key}, {largest} bytes (one app's record: {one} bytes)");
    assert!(one < 256 * 1024, "one app's record is {one} bytes");
    // Read back, it is the same record.
    let back = rollouts.get("app-000").await.unwrap().unwrap().value;
    assert_eq!(back.renders, rec.renders);
    assert_eq!(back.rollout, rec.rollout);
    assert_eq!(back.removal, rec.removal);
}
