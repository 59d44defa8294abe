//! Bundle downloads run beside the agent's session: a download that takes many heartbeat
//! intervals (the hub paces it with its bundle rate limit) keeps the session up, and a download
//! that stalls resumes where it stopped instead of starting over.

use std::time::Duration;

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
/// closed after three missed ones), with one agent on a simulated cluster, and the repository of
/// the big app (not yet a source).
struct Fleet {
    hub: TestHub,
    agent: TestAgent,
    repo: TestRepo,
    _sim: SimCluster,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(rate: u64, chunk_timeout: Duration) -> Self {
        let dir = test_dir();
        let repo = big_repo(dir.path());
        let mut config = TestHub::config(dir.path());
        config.heartbeat_interval = Duration::from_millis(200);
        config.bundle_rate = Some(rate);
        let hub = TestHub::start(config).await;
        let sim = sim_cluster(Duration::from_millis(20));
        let agent = hub
            .join_sim(dir.path(), "eu-1", &[("region", "eu")], &sim, |cfg| {
                cfg.bundle_chunk_timeout = chunk_timeout;
            })
            .await;
        Self {
            hub,
            agent,
            repo,
            _sim: sim,
            _dir: dir,
        }
    }

    /// Adds the repository as the source and syncs it; returns the digest of the bundle the
    /// agent then holds.
    async fn deliver(&mut self) -> String {
        add_fleet_source(&self.hub, &self.repo.path).await;
        cli_json(&self.hub, &["source", "sync", "fleet"]).await;
        held_bundle(&mut self.agent).await
    }
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
    // 512 KiB/s: the bundle takes over two seconds, more than ten heartbeat intervals.
    let mut f = Fleet::start(512 << 10, Duration::from_secs(30)).await;
    let acked_before = f.agent.status.borrow().heartbeats_acked;
    let digest = f.deliver().await;

    let app = cli_json(&f.hub, &["app", "get", "big"]).await;
    assert_eq!(app["clusters"][0]["bundle_digest"], digest.as_str());
    let size = app_bundle_size(&f.hub, &digest).await;
    assert!(
        size > 1 << 20,
        "the bundle is {size} bytes, not large enough to matter"
    );
    let s = f.agent.status.borrow().clone();
    assert_eq!(s.sessions_opened, 1, "the session never dropped: {s:?}");
    assert!(s.connected);
    assert!(
        s.heartbeats_acked >= acked_before + 5,
        "heartbeats went on during the download: {} → {}",
        acked_before,
        s.heartbeats_acked
    );
    assert_eq!(s.bundle_resumes, 0);
    assert_eq!(f.hub.cluster("eu-1").await.state, "connected");
    f.agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_stalled_download_resumes_where_it_stopped() {
    // 256 KiB/s with 256 KiB chunks: after each chunk the hub pauses a second, longer than the
    // agent's 300 ms chunk timeout, so every attempt takes one chunk and stalls.
    let mut f = Fleet::start(256 << 10, Duration::from_millis(300)).await;
    let digest = f.deliver().await;
    let s = f.agent.status.borrow().clone();
    let size = app_bundle_size(&f.hub, &digest).await;
    let chunks = size.div_ceil(256 << 10);
    assert_eq!(
        s.bundle_resumes,
        chunks - 1,
        "one resume per chunk after the first ({size} bytes): each attempt continued where the last stopped"
    );
    assert_eq!(s.sessions_opened, 1, "{s:?}");
    f.agent.stop().await.unwrap();
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
