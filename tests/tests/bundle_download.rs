//! Bundle downloads run beside the agent's session: a download that takes many heartbeat
//! intervals (the hub paces it with its bundle rate limit) keeps the session up, and a download
//! that stalls resumes where it stopped instead of starting over.

use std::time::Duration;

use flotilla_agent::cluster::SimConfig;
use flotilla_agent::sim::SimCluster;
use flotilla_tests::*;

const FLEET: &str = "apps:\n  big:\n    path: apps/big\n    namespace: big\n    targets: {}\n";

/// A repository whose one app renders to a bundle of about 1.3 MiB compressed: three
/// ConfigMaps of 900 kB of pseudo-random hex each (hex compresses to about half).
fn big_repo(dir: &std::path::Path) -> TestRepo {
    let repo = TestRepo::init(&dir.join("repo"));
    repo.write("flotilla.yaml", FLEET);
    repo.write(
        "apps/big/namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n",
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..3 {
        let mut blob = String::with_capacity(900_000);
        while blob.len() < 900_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            blob.push_str(&format!("{x:016x}"));
        }
        repo.write(
            &format!("apps/big/blob-{i}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: blob-{i}\ndata:\n  blob: {blob}\n"
            ),
        );
    }
    repo.commit("a big app");
    repo
}

/// A hub that sends bundles at `rate` bytes/s and expects heartbeats every 200 ms (a session is
/// closed after three missed ones), with one agent on a simulated cluster.
async fn fleet(
    dir: &std::path::Path,
    rate: u64,
    chunk_timeout: Duration,
) -> (TestHub, TestAgent, SimCluster) {
    let mut config = TestHub::config(dir);
    config.heartbeat_interval = Duration::from_millis(200);
    config.bundle_rate = Some(rate);
    let hub = TestHub::start(config).await;
    let sim = SimCluster::new(SimConfig {
        ready_delay: Duration::from_millis(20),
        ..SimConfig::default()
    });
    let token = hub.add_cluster("eu-1", &[("region", "eu")]).await;
    let mut cfg = sim_agent_config(&dir.join("agent"), token, &sim);
    cfg.bundle_chunk_timeout = chunk_timeout;
    let mut agent = TestAgent::start_with(cfg);
    agent.connected().await;
    (hub, agent, sim)
}

/// Waits until the agent holds a desired state with one bundle; returns its digest.
async fn held_bundle(agent: &mut TestAgent) -> String {
    let s = wait_status(&mut agent.status, "the bundle to be held", |s| {
        s.desired_generation > 0 && s.bundles.len() == 1
    })
    .await;
    s.bundles[0].clone()
}

#[tokio::test]
async fn a_download_longer_than_three_heartbeats_keeps_the_session_up() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let repo = big_repo(dir.path());
    // 512 KiB/s: the bundle takes over two seconds, more than ten heartbeat intervals.
    let (hub, mut agent, _sim) = fleet(dir.path(), 512 << 10, Duration::from_secs(30)).await;
    let acked_before = agent.status.borrow().heartbeats_acked;
    add_fleet_source(&hub, &repo.path).await;
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let digest = held_bundle(&mut agent).await;

    let app = cli_json(&hub, &["app", "get", "big"]).await;
    assert_eq!(app["clusters"][0]["bundle_digest"], digest.as_str());
    let size = app_bundle_size(&hub, &digest).await;
    assert!(
        size > 1 << 20,
        "the bundle is {size} bytes, not large enough to matter"
    );
    let s = agent.status.borrow().clone();
    assert_eq!(s.sessions_opened, 1, "the session never dropped: {s:?}");
    assert!(s.connected);
    assert!(
        s.heartbeats_acked >= acked_before + 5,
        "heartbeats went on during the download: {} → {}",
        acked_before,
        s.heartbeats_acked
    );
    assert_eq!(s.bundle_resumes, 0);
    assert_eq!(hub.cluster("eu-1").await.state, "connected");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_stalled_download_resumes_where_it_stopped() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let repo = big_repo(dir.path());
    // 256 KiB/s with 256 KiB chunks: after each chunk the hub pauses a second, longer than the
    // agent's 300 ms chunk timeout, so every attempt takes one chunk and stalls.
    let (hub, mut agent, _sim) = fleet(dir.path(), 256 << 10, Duration::from_millis(300)).await;
    add_fleet_source(&hub, &repo.path).await;
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let digest = held_bundle(&mut agent).await;
    let s = agent.status.borrow().clone();
    let size = app_bundle_size(&hub, &digest).await;
    let chunks = size.div_ceil(256 << 10);
    assert_eq!(
        s.bundle_resumes,
        chunks - 1,
        "one resume per chunk after the first ({size} bytes): each attempt continued where the last stopped"
    );
    assert_eq!(s.sessions_opened, 1, "{s:?}");
    agent.stop().await.unwrap();
}

/// The compressed size of a bundle in the hub's cache.
async fn app_bundle_size(hub: &TestHub, digest: &str) -> u64 {
    let file = hub
        .running()
        .bundles
        .open_compressed(digest)
        .unwrap()
        .expect("in the hub's cache");
    file.metadata().unwrap().len()
}
