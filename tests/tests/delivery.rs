//! Delivery of desired state: generation-numbered DesiredState pushed over the session, bundles
//! fetched with `FetchBundle` (chunked, resumable, digest-verified), acknowledged and reported
//! back; catch-up after being offline; isolation between clusters.

use flotilla_agent::bundles::{BundleError, BundleStore};
use flotilla_hub::engine::rollout::AppOffer;
use flotilla_hub::engine::rollout::plan::Render;
use flotilla_hub::render::{CountOrPercent, OnFailure, PipelineConfig};
use flotilla_hub::state::desired::AppEntry;
use flotilla_proto::state::Phase;
use flotilla_proto::tls::{TlsDialer, mtls_client_config};
use flotilla_proto::v1::FetchBundleRequest;
use flotilla_proto::v1::agent_session_client::AgentSessionClient;
use flotilla_tests::*;
use tonic::Code;

fn bundle(name: &str) -> Vec<u8> {
    format!(r#"[{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default"}}}}]"#)
        .into_bytes()
}

/// Puts a bundle into the hub's cache and offers it as `app`'s revision `revision` for
/// `cluster` alone (no pipeline: the one implicit stage sends it at once). Returns its digest
/// once the cluster's derived desired state holds it.
async fn desire(hub: &TestHub, cluster: &str, app: &str, revision: &str, content: &[u8]) -> String {
    let r = hub.running().bundles.put(content).unwrap();
    let infos = hub.running().registry.cluster_infos();
    let id = infos.iter().find(|c| c.name == cluster).unwrap().id;
    let entry = AppEntry {
        app: app.into(),
        bundle_digest: r.digest.clone(),
        bundle_size: r.size,
        ..Default::default()
    };
    let offer = AppOffer {
        app: app.into(),
        render: Render::stamped(revision, [(id, entry)]),
        pipeline_name: None,
        pipeline: PipelineConfig {
            stages: Vec::new(),
            health_timeout: std::time::Duration::from_secs(600),
            on_failure: OnFailure::Halt,
            failure_threshold: CountOrPercent::Count(1),
            max_removal: None,
        },
        max_removal: CountOrPercent::Percent(100),
    };
    let out = hub
        .running()
        .rollouts
        .offer("test", vec![offer], &infos)
        .await;
    assert_eq!(out[app], Ok(()));
    eventually("the desired state to hold the revision", || async {
        let d = hub.running().rollouts.desired_of(cluster).await.unwrap();
        d.wants(&r.digest).then_some(())
    })
    .await;
    r.digest
}

/// The generation of `cluster`'s desired state now.
async fn generation(hub: &TestHub, cluster: &str) -> u64 {
    hub.running()
        .rollouts
        .desired_of(cluster)
        .await
        .unwrap()
        .generation
}

/// A session client of the hub with a cluster's `(ca, chain, key)`.
async fn session_client(
    hub: &TestHub,
    (ca, chain, key): &(String, String, String),
) -> AgentSessionClient<tonic::transport::Channel> {
    let ch = TlsDialer::new(mtls_client_config(ca, chain, key).unwrap())
        .channel(&hub.addr())
        .await
        .unwrap();
    AgentSessionClient::new(ch)
}

#[tokio::test]
async fn desired_state_is_delivered_verified_acknowledged_and_reported() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let state = dir.path().join("eu-1");
    let mut agent = hub.join(dir.path(), "eu-1").await;

    let d1 = desire(&hub, "eu-1", "web", "c1", &bundle("one")).await;
    let g1 = generation(&hub, "eu-1").await;
    let st = wait_status(&mut agent.status, "the first generation held", |s| {
        s.desired_generation == g1
    })
    .await;
    assert_eq!(st.bundles, vec![d1.clone()]);
    assert_eq!(
        BundleStore::new(state.join("bundles")).read(&d1).unwrap(),
        bundle("one"),
        "the agent holds exactly the hub's bytes"
    );
    let report = eventually("the hub to record the status", || async {
        let s = hub.running().desired.status("eu-1").await.unwrap();
        (s.generation == g1).then_some(s)
    })
    .await;
    assert_eq!(&*report.apps[0].app, "web");
    assert_eq!(&*report.apps[0].revision, "c1");
    assert_eq!(*report.apps[0].bundle_digest, *d1);
    assert_eq!(report.apps[0].phase, Phase::Applied);

    // A new revision: a new digest is delivered.
    let d2 = desire(&hub, "eu-1", "web", "c2", &bundle("two")).await;
    assert_ne!(d1, d2);
    let g2 = generation(&hub, "eu-1").await;
    assert_ne!(g1, g2);
    let st = wait_status(&mut agent.status, "the second generation held", |s| {
        s.desired_generation == g2
    })
    .await;
    assert_eq!(st.bundles, vec![d2.clone()]);
    // Offering the same content again is not a new generation.
    assert_eq!(desire(&hub, "eu-1", "web", "c3", &bundle("two")).await, d2);
    assert_eq!(generation(&hub, "eu-1").await, g2);
}

#[tokio::test]
async fn an_offline_agent_catches_up_on_reconnect_and_a_restart_keeps_what_it_holds() {
    let dir = test_dir();
    let mut hub = TestHub::start_in(dir.path()).await;
    hub.join(dir.path(), "edge").await.stop().await.unwrap();
    let state = dir.path().join("edge");

    let digest = desire(&hub, "edge", "app", "r1", &bundle("offline")).await;
    let g = generation(&hub, "edge").await;
    hub.restart().await; // the desired state survives a hub restart too
    assert_eq!(
        generation(&hub, "edge").await,
        g,
        "derived alike after a restart"
    );
    let mut agent = TestAgent::start(&state, None);
    let st = wait_status(&mut agent.status, "catch-up", |s| s.desired_generation == g).await;
    assert_eq!(st.bundles, vec![digest.clone()]);
    agent.stop().await.unwrap();

    // Restarted, the agent reports what it holds before talking to the hub.
    let mut again = TestAgent::start(&state, None);
    let st = again.connected().await;
    assert_eq!(st.desired_generation, g);
    assert_eq!(st.bundles, vec![digest]);
}

#[tokio::test]
async fn a_cluster_cannot_fetch_another_clusters_bundle() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let a_credentials = hub.enroll(dir.path(), "a").await;
    let b_credentials = hub.enroll(dir.path(), "b").await;
    let digest = desire(&hub, "a", "secret-app", "r1", &bundle("only-for-a")).await;
    let mut b = session_client(&hub, &b_credentials).await;
    let e = b
        .fetch_bundle(FetchBundleRequest {
            digest: digest.clone(),
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, "not desired for cluster \"b\"");
    let mut a = session_client(&hub, &a_credentials).await;
    assert!(
        a.fetch_bundle(FetchBundleRequest { digest, offset: 0 })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_cut_fetch_resumes_and_a_corrupt_one_is_refused() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let credentials = hub.enroll(dir.path(), "c").await;

    // A bundle big enough to span several chunks.
    // Pseudo-random (xorshift) bytes, so compression cannot shrink them below a few chunks.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let digest = desire(&hub, "c", "big", "r1", &big).await;
    let compressed = std::fs::read(hub.running().bundles.path_of(&digest).unwrap()).unwrap();
    assert!(compressed.len() > 2 * flotilla_proto::limits::BUNDLE_CHUNK_BYTES);

    // Cut halfway: the first half is on disk as a partial download.
    let store = BundleStore::new(dir.path().join("cache"));
    std::fs::create_dir_all(store.dir().join("sha256")).unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let half = compressed.len() / 2;
    std::fs::write(
        store.dir().join(format!("sha256/{hex}.partial")),
        &compressed[..half],
    )
    .unwrap();
    assert_eq!(store.partial_len(&digest), half as u64);
    let mut client = session_client(&hub, &credentials).await;
    store
        .fetch(&mut client, &digest, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        store.read(&digest).unwrap(),
        big,
        "resumed download is complete and verified"
    );

    // A partial download with wrong bytes: refused by the digest check and discarded.
    let other = BundleStore::new(dir.path().join("cache2"));
    std::fs::create_dir_all(other.dir().join("sha256")).unwrap();
    let mut bad = compressed[..half].to_vec();
    bad[half / 2] ^= 0xff;
    std::fs::write(other.dir().join(format!("sha256/{hex}.partial")), &bad).unwrap();
    let e = other
        .fetch(&mut client, &digest, std::time::Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::DigestMismatch { .. } | BundleError::Undecodable { .. }
        ),
        "{e}"
    );
    assert!(!other.has(&digest));
    assert_eq!(
        other.partial_len(&digest),
        0,
        "the bad partial file is discarded"
    );
    other
        .fetch(&mut client, &digest, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(other.read(&digest).unwrap(), big);
}

/// A hub whose desired-state hold lasts an hour: during a test only the agent's ack (or a
/// report on the state) ends it.
async fn hub_holding_until_acked(dir: &std::path::Path) -> TestHub {
    let mut config = TestHub::config(dir);
    config.desired_hold = std::time::Duration::from_secs(3600);
    TestHub::start(config).await
}

/// The next `DesiredState` on a raw session stream (other hub messages are skipped).
async fn next_desired(
    inbound: &mut tonic::Streaming<flotilla_proto::v1::HubMessage>,
) -> flotilla_proto::v1::DesiredState {
    use flotilla_proto::v1::hub_message::Msg;
    loop {
        match inbound.message().await.unwrap() {
            Some(flotilla_proto::v1::HubMessage {
                msg: Some(Msg::Desired(d)),
            }) => return d,
            Some(_) => continue,
            None => panic!("the session ended before a desired state came"),
        }
    }
}

#[tokio::test]
async fn newer_desired_states_wait_for_the_agents_ack_and_go_together() {
    use flotilla_proto::v1::agent_message::Msg;
    use flotilla_proto::v1::{Ack, AgentMessage, Heartbeat, HeartbeatAck, hub_message};
    let dir = test_dir();
    let hub = hub_holding_until_acked(dir.path()).await;
    let (ca, chain, key) = hub.enroll(dir.path(), "held").await;
    desire(&hub, "held", "web", "c1", &bundle("web-1")).await;
    let g1 = generation(&hub, "held").await;
    let (welcome, tx, mut inbound) =
        open_session(&hub.addr(), &ca, &chain, &key, Default::default())
            .await
            .unwrap();
    assert!(matches!(welcome.msg, Some(hub_message::Msg::Welcome(_))));
    assert_eq!(next_desired(&mut inbound).await.generation, g1);

    // Two changes while the first state is unacknowledged.
    desire(&hub, "held", "web", "c2", &bundle("web-2")).await;
    let g2 = generation(&hub, "held").await;
    let api = desire(&hub, "held", "api", "c2", &bundle("api-2")).await;
    let g3 = generation(&hub, "held").await;
    assert!(g1 != g2 && g2 != g3);
    // A heartbeat round trip: the session is alive and sent nothing new in between.
    tx.send(AgentMessage {
        msg: Some(Msg::Heartbeat(Heartbeat {
            seq: 7,
            sent_unix_ms: 0,
        })),
    })
    .await
    .unwrap();
    match inbound.message().await.unwrap().and_then(|m| m.msg) {
        Some(hub_message::Msg::HeartbeatAck(HeartbeatAck { seq: 7, .. })) => {}
        other => panic!("expected the heartbeat's ack and nothing before it, got {other:?}"),
    }
    // An ack of an older generation than the one sent does not end the hold.
    tx.send(AgentMessage {
        msg: Some(Msg::Ack(Ack { generation: g2 })),
    })
    .await
    .unwrap();
    tx.send(AgentMessage {
        msg: Some(Msg::Heartbeat(Heartbeat {
            seq: 8,
            sent_unix_ms: 0,
        })),
    })
    .await
    .unwrap();
    match inbound.message().await.unwrap().and_then(|m| m.msg) {
        Some(hub_message::Msg::HeartbeatAck(HeartbeatAck { seq: 8, .. })) => {}
        other => panic!("a stale ack released the hold: got {other:?}"),
    }
    // Acknowledged: the newest state comes at once, both changes in it, the middle one never.
    tx.send(AgentMessage {
        msg: Some(Msg::Ack(Ack { generation: g1 })),
    })
    .await
    .unwrap();
    let d = next_desired(&mut inbound).await;
    assert_eq!(d.generation, g3, "the newest state, not {g2}");
    assert_eq!(d.apps.len(), 2);
    assert!(d.apps.iter().any(|a| a.bundle_digest == api));
}

#[tokio::test]
async fn several_bundles_come_in_one_call_and_only_a_clusters_own() {
    use flotilla_proto::v1::FetchBundlesRequest;
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let credentials = hub.enroll(dir.path(), "many").await;
    let other = hub.enroll(dir.path(), "other").await;
    let a = desire(&hub, "many", "a", "r1", &bundle("bundle-a")).await;
    let b = desire(&hub, "many", "b", "r1", &bundle("bundle-b")).await;
    let not_ours = desire(&hub, "other", "c", "r1", &bundle("bundle-c")).await;
    let mut client = session_client(&hub, &credentials).await;
    let request = FetchBundlesRequest::from_start;

    // Both bundles, in the order asked, every chunk naming its bundle.
    let mut stream = client
        .fetch_bundles(request(&[&b, &a]))
        .await
        .unwrap()
        .into_inner();
    let mut order = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        let compressed =
            std::fs::read(hub.running().bundles.path_of(&chunk.digest).unwrap()).unwrap();
        assert_eq!(
            chunk.data, compressed,
            "one chunk holds a small bundle whole"
        );
        order.push(chunk.digest);
    }
    assert_eq!(order, vec![b.clone(), a.clone()]);

    // Refused as a whole when one bundle is another cluster's.
    let e = client
        .fetch_bundles(request(&[&a, &not_ours]))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::PermissionDenied,
        "not desired for cluster \"many\"",
    );
    let mut theirs = session_client(&hub, &other).await;
    assert!(theirs.fetch_bundles(request(&[&not_ours])).await.is_ok());
    // Too many at once.
    let many: Vec<&str> = std::iter::repeat_n(
        a.as_str(),
        flotilla_proto::limits::MAX_BUNDLES_PER_FETCH + 1,
    )
    .collect();
    let e = client.fetch_bundles(request(&many)).await.unwrap_err();
    assert_status(&e, Code::InvalidArgument, "at most");

    // The agent's store takes what it misses in one call, resuming a partial one, and keeps
    // only verified bundles.
    let store = BundleStore::new(dir.path().join("store"));
    std::fs::create_dir_all(store.dir().join("sha256")).unwrap();
    let compressed_b = std::fs::read(hub.running().bundles.path_of(&b).unwrap()).unwrap();
    let hex = b.strip_prefix("sha256:").unwrap();
    std::fs::write(
        store.dir().join(format!("sha256/{hex}.partial")),
        &compressed_b[..compressed_b.len() / 2],
    )
    .unwrap();
    let taken = store
        .fetch_many(
            &mut client,
            &[&a, &b, &a],
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(taken, 2);
    assert_eq!(store.read(&a).unwrap(), bundle("bundle-a"));
    assert_eq!(store.read(&b).unwrap(), bundle("bundle-b"));
    assert_eq!(
        store
            .fetch_many(&mut client, &[&a, &b], std::time::Duration::from_secs(30))
            .await
            .unwrap(),
        0,
        "nothing asked for what is held"
    );
    // A refused call takes nothing and says why.
    let e = store
        .fetch_many(
            &mut client,
            &[&not_ours],
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not desired"), "{e}");
    assert!(!store.has(&not_ours));
}

/// Offers `n` apps to `cluster`, each with a bundle of its own; returns their digests.
async fn desire_many(hub: &TestHub, cluster: &str, n: usize) -> Vec<String> {
    let mut digests = Vec::new();
    for i in 0..n {
        let app = format!("app-{i:02}");
        digests.push(
            desire(
                hub,
                cluster,
                &app,
                "c1",
                &bundle(&format!("{cluster}-{app}")),
            )
            .await,
        );
    }
    digests
}

#[tokio::test]
async fn a_large_desired_state_is_announced_and_fetched_by_its_own_session_only() {
    use flotilla_proto::limits::INLINE_DESIRED_BYTES;
    use flotilla_proto::v1::agent_message::Msg;
    use flotilla_proto::v1::{Ack, AgentMessage, FetchDesiredStateRequest, Hello, hub_message};
    use prost::Message;
    let dir = test_dir();
    let hub = hub_holding_until_acked(dir.path()).await;
    let credentials = hub.enroll(dir.path(), "big").await;
    let other = hub.enroll(dir.path(), "other").await;
    desire_many(&hub, "big", 12).await;
    desire(&hub, "other", "web", "c1", &bundle("other-web")).await;
    let g = generation(&hub, "big").await;
    let whole = hub
        .running()
        .rollouts
        .desired_of("big")
        .await
        .unwrap()
        .to_wire();
    assert!(
        whole.encoded_len() > INLINE_DESIRED_BYTES,
        "large enough to wait at the hub"
    );

    // An agent that can fetch is told it waits, and is not sent it.
    let (ca, chain, key) = &credentials;
    let fetching = Hello {
        fetches_desired: true,
        ..Default::default()
    };
    let (welcome, tx, mut inbound) = open_session(&hub.addr(), ca, chain, key, fetching.clone())
        .await
        .unwrap();
    let Some(hub_message::Msg::Welcome(welcome)) = welcome.msg else {
        panic!("no Welcome")
    };
    match inbound.message().await.unwrap().and_then(|m| m.msg) {
        Some(hub_message::Msg::DesiredReady(r)) => assert_eq!(r.generation, g),
        other => panic!("expected DesiredStateReady, got {other:?}"),
    }
    let request = |session_id: &str, generation| FetchDesiredStateRequest {
        session_id: session_id.to_string(),
        generation,
    };
    // Not another cluster's, not another session's, not another generation's.
    let mut theirs = session_client(&hub, &other).await;
    let e = theirs
        .fetch_desired_state(request(&welcome.session_id, g))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::FailedPrecondition,
        "not cluster \"other\"'s live session",
    );
    let mut client = session_client(&hub, &credentials).await;
    let e = client
        .fetch_desired_state(request("999999", g))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, "live session");
    let e = client
        .fetch_desired_state(request(&welcome.session_id, g + 1))
        .await
        .unwrap_err();
    assert_status(
        &e,
        Code::FailedPrecondition,
        "is not the one last announced",
    );
    // Its own session's: exactly the state (again if asked again).
    for _ in 0..2 {
        let got = client
            .fetch_desired_state(request(&welcome.session_id, g))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, whole);
    }
    // The state changes before the agent takes it: the fetch hands the newest, and the
    // agent's ack of that one ends the hold, so the next change is announced at once.
    desire(&hub, "big", "late", "c1", &bundle("big-late")).await;
    let g2 = generation(&hub, "big").await;
    let got = client
        .fetch_desired_state(request(&welcome.session_id, g))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.generation, g2);
    tx.send(AgentMessage {
        msg: Some(Msg::Ack(Ack { generation: g2 })),
    })
    .await
    .unwrap();
    desire(&hub, "big", "later", "c1", &bundle("big-later")).await;
    let g3 = generation(&hub, "big").await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), inbound.message())
        .await
        .expect("the next change announced without waiting for the hold")
        .unwrap()
        .and_then(|m| m.msg);
    match next {
        Some(hub_message::Msg::DesiredReady(r)) => assert_eq!(r.generation, g3),
        other => panic!("expected DesiredStateReady for {g3}, got {other:?}"),
    }

    // An agent that does not fetch gets it inline; a small state goes inline to any agent.
    let (_, _tx2, mut inline) = open_session(&hub.addr(), ca, chain, key, Hello::default())
        .await
        .unwrap();
    let now = hub.running().rollouts.desired_of("big").await.unwrap();
    assert_eq!(now.generation, g3);
    assert_eq!(next_desired(&mut inline).await, now.to_wire());
    let (ca, chain, key) = &other;
    let (_, _tx3, mut small) = open_session(&hub.addr(), ca, chain, key, fetching)
        .await
        .unwrap();
    assert_eq!(next_desired(&mut small).await.apps.len(), 1);
}

#[tokio::test]
async fn the_agent_fetches_a_large_desired_state_and_holds_every_bundle() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let mut agent = hub.join(dir.path(), "many-apps").await;
    let digests = desire_many(&hub, "many-apps", 12).await;
    let whole = hub
        .running()
        .rollouts
        .desired_of("many-apps")
        .await
        .unwrap();
    assert!(
        prost::Message::encoded_len(&whole.to_wire())
            > flotilla_proto::limits::INLINE_DESIRED_BYTES,
        "large enough to wait at the hub"
    );
    let st = wait_status(&mut agent.status, "the large state held", |s| {
        s.desired_generation == whole.generation
    })
    .await;
    let mut held = st.bundles.clone();
    held.sort();
    let mut want = digests.clone();
    want.sort();
    assert_eq!(held, want);
    let store = BundleStore::new(dir.path().join("many-apps").join("bundles"));
    for d in &digests {
        assert!(store.read(d).is_ok(), "bundle {d} held and verified");
    }
    let report = eventually("the hub to record every app applied", || async {
        let s = hub.running().desired.status("many-apps").await.unwrap();
        (s.generation == whole.generation
            && s.apps.len() == 12
            && s.apps.iter().all(|a| a.phase == Phase::Applied))
        .then_some(s)
    })
    .await;
    assert_eq!(report.apps.len(), 12);
}

/// With a status acknowledgement delay, one `StatusAck` covers every report made durable
/// within it (an agent sending in bursts gets one answer per burst), and what it acknowledges
/// is in the hub's records when it comes.
#[tokio::test]
async fn one_status_ack_covers_the_reports_durable_within_the_delay() {
    use flotilla_proto::v1::agent_message::Msg;
    use flotilla_proto::v1::{AgentMessage, AppStatus, ListClustersRequest, StatusReport};
    use flotilla_proto::v1::{StatusAck, hub_message};
    let dir = test_dir();
    let mut config = TestHub::config(dir.path());
    // Far longer than a group commit takes, so that both reports are durable within it.
    config.status_ack_delay = std::time::Duration::from_secs(3);
    let hub = TestHub::start(config).await;
    let (ca, chain, key) = hub.enroll(dir.path(), "bursty").await;
    let (_welcome, tx, mut inbound) =
        open_session(&hub.addr(), &ca, &chain, &key, Default::default())
            .await
            .unwrap();
    let report = |seq: u64, app: &str, replace: bool| AgentMessage {
        msg: Some(Msg::Status(StatusReport {
            generation: 0,
            apps: vec![AppStatus {
                app: app.into(),
                phase: Phase::Applied.into(),
                message: format!("seq {seq}"),
                ..Default::default()
            }],
            replace,
            seq,
        })),
    };
    let stored = || async {
        let clusters = hub
            .admin()
            .await
            .list_clusters(ListClustersRequest { with_apps: true })
            .await
            .unwrap()
            .into_inner()
            .clusters;
        let c = clusters.into_iter().find(|c| c.name == "bursty").unwrap();
        let mut apps: Vec<(String, String)> =
            c.apps.into_iter().map(|a| (a.name, a.message)).collect();
        apps.sort();
        apps
    };
    // The second report goes once the hub holds the first: acknowledged at once, the first
    // would have its own acknowledgement.
    tx.send(report(1, "web", true)).await.unwrap();
    eventually("the first report in the hub's records", || async {
        (!stored().await.is_empty()).then_some(())
    })
    .await;
    tx.send(report(2, "api", false)).await.unwrap();
    let acked = loop {
        match inbound.message().await.unwrap().and_then(|m| m.msg) {
            Some(hub_message::Msg::StatusAck(StatusAck { seq })) => break seq,
            Some(_) => continue,
            None => panic!("the session ended before a status acknowledgement"),
        }
    };
    assert_eq!(
        acked, 2,
        "one acknowledgement for both reports, not one each"
    );
    let s = |a: &str, m: &str| (a.to_string(), m.to_string());
    assert_eq!(stored().await, [s("api", "seq 2"), s("web", "seq 1")]);
}
