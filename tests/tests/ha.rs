//! Several hub replicas on one etcd (started by the test): they share one operator CA, and what
//! one replica writes to the registry the others follow — a cluster joined on one replica opens
//! its session on another, a cluster added on one is listed by the other, and a cluster removed
//! on one is revoked on every replica: its live session there is closed and its certificate
//! refused in the handshake — and agents given every replica's endpoint in their join token move
//! to another replica when theirs goes away.

use std::path::Path;
use std::time::Instant;

use flotilla_agent::AgentError;
use flotilla_hub::server::{HubConfig, StoreKind};
use flotilla_hub::store::election::Role;
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::{Hello, RemoveClusterRequest};
use flotilla_tests::etcd::EtcdCluster;
use flotilla_tests::*;

/// Hub replicas on one etcd: the same operator CA, data dirs of their own, and every
/// replica's endpoint in their join tokens.
struct Replicas {
    configs: Vec<HubConfig>,
    listeners: Vec<Option<tokio::net::TcpListener>>,
    ports: Vec<u16>,
}

impl Replicas {
    async fn new(dir: &Path, etcd: &EtcdCluster, names: &[&str]) -> Self {
        let (_, ca, key) = operator_ca(dir);
        let mut listeners = Vec::new();
        for _ in names {
            listeners.push(Some(
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            ));
        }
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.as_ref().unwrap().local_addr().unwrap().port())
            .collect();
        let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let configs = names
            .iter()
            .map(|name| {
                let mut c = TestHub::config(&dir.join(name));
                c.store = StoreKind::Etcd(etcd.config("/fleet"));
                c.ca_files = Some((ca.clone(), key.clone()));
                c.endpoints.clone_from(&endpoints);
                c.replica_name = Some(name.to_string());
                c
            })
            .collect();
        Self {
            configs,
            listeners,
            ports,
        }
    }

    /// Starts replica `i`.
    async fn start(&mut self, i: usize) -> TestHub {
        let config = self.configs[i].clone();
        let listener = self.listeners[i].take().expect("started once");
        let hub = flotilla_hub::server::start(config.clone(), listener, None)
            .await
            .expect("replica starts");
        TestHub {
            hub: Some(hub),
            config,
            port: self.ports[i],
        }
    }
}

/// Two hub replicas on `etcd`, both started.
async fn replicas(dir: &Path, etcd: &EtcdCluster) -> (TestHub, TestHub) {
    let mut r = Replicas::new(dir, etcd, &["replica-a", "replica-b"]).await;
    let a = r.start(0).await;
    let b = r.start(1).await;
    (a, b)
}

/// The web app's repository (canary, then prod) and two replicas on `etcd`: replica a, which
/// leads and tracks the repository as source `fleet`, and replica b, started with the source
/// stored (it renders the same commits). Returns the repository, its first commit, a and b.
async fn fleet_on_replicas(
    dir: &Path,
    etcd: &EtcdCluster,
) -> (flotilla_tests::TestRepo, String, TestHub, TestHub) {
    use flotilla_tests::web_app;
    let (repo, c1) = web_app::repo(dir, &web_app::canary_then_prod("regions", ""), Some("1"));
    let mut r = Replicas::new(dir, etcd, &["replica-a", "replica-b"]).await;
    let a = r.start(0).await;
    eventually("replica a to lead", || async {
        a.running().role.borrow().is_leader().then_some(())
    })
    .await;
    add_fleet_source(&a, &repo.path).await;
    let b = r.start(1).await;
    (repo, c1, a, b)
}

fn hello(cluster: &str) -> Hello {
    Hello {
        cluster_id: cluster.into(),
        ..Default::default()
    }
}

type Creds = (String, String, String);

/// A session of `cluster` on `hub` with `creds`, once the replica knows the cluster (it may
/// learn of it from etcd a moment after the join through another replica): it must be
/// welcomed.
async fn welcomed_on(hub: &TestHub, (ca, chain, key): &Creds, cluster: &str) -> OpenedSessionOk {
    let opened = eventually(&format!("{} to welcome {cluster}", hub.addr()), || async {
        open_session(&hub.addr(), ca, chain, key, hello(cluster))
            .await
            .ok()
    })
    .await;
    assert!(
        matches!(opened.0.msg, Some(HubMsg::Welcome(_))),
        "expected a Welcome, got {:?}",
        opened.0
    );
    opened
}

type OpenedSessionOk = (
    flotilla_proto::v1::HubMessage,
    tokio::sync::mpsc::Sender<flotilla_proto::v1::AgentMessage>,
    tonic::Streaming<flotilla_proto::v1::HubMessage>,
);

#[tokio::test]
async fn a_hub_on_etcd_without_the_shared_ca_does_not_start() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let mut config = TestHub::config(dir.path());
    config.store = StoreKind::Etcd(etcd.config("/fleet"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(err) = flotilla_hub::server::start(config, listener, None).await else {
        panic!("a hub on etcd without --ca-cert/--ca-key started");
    };
    assert_contains(&err.to_string(), "--ca-cert and --ca-key");
}

#[tokio::test]
async fn a_cluster_joined_on_one_replica_opens_its_session_on_another() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = replicas(dir.path(), &etcd).await;
    let creds = a.enroll(dir.path(), "edge-1").await;

    // Replica b learns of the cluster from etcd and welcomes its session.
    let _session = welcomed_on(&b, &creds, "edge-1").await;
    assert_eq!(b.cluster("edge-1").await.state, "connected");

    // A cluster added on b is listed by a, and can join through a.
    b.add_cluster("edge-2", &[("region", "eu")]).await;
    let listed = eventually("replica a to list edge-2", || async {
        a.clusters().await.into_iter().find(|c| c.name == "edge-2")
    })
    .await;
    assert_eq!(listed.labels.get("region").map(String::as_str), Some("eu"));
}

#[tokio::test]
async fn removing_a_cluster_on_one_replica_revokes_it_on_every_replica() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = replicas(dir.path(), &etcd).await;
    let agent = a.join(dir.path(), "gone").await;
    let state = dir.path().join("gone");
    let (ca, chain, key) = agent_credentials(&state);
    // Replica b knows the cluster before it is removed there.
    eventually("replica b to know gone", || async {
        b.clusters().await.into_iter().find(|c| c.name == "gone")
    })
    .await;

    let removed = Instant::now();
    b.admin()
        .await
        .remove_cluster(RemoveClusterRequest {
            name: "gone".into(),
        })
        .await
        .unwrap();
    // The session held by replica a is closed as revoked...
    let err = agent.ended().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Disconnected { reason, .. } if reason == "revoked"),
        "{err}"
    );
    // ...and replica a refuses the certificate in the handshake.
    let refused = eventually("replica a to refuse the revoked certificate", || {
        let (addr, ca, chain, key) = (a.addr(), ca.clone(), chain.clone(), key.clone());
        async move {
            open_session(&addr, &ca, &chain, &key, hello("gone"))
                .await
                .err()
        }
    })
    .await;
    eprintln!(
        "revocation on replica b reached replica a's verifier after {:?}",
        removed.elapsed()
    );
    assert_contains(&refused, "CertificateRevoked");
    assert_eq!(a.cluster("gone").await.state, "revoked");
    assert!(a.running().sessions.get("gone").is_none());
}

#[tokio::test]
async fn an_agent_moves_to_another_replica_when_its_own_goes_away() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (mut a, b) = replicas(dir.path(), &etcd).await;
    let token = a.add_cluster("roamer", &[]).await;
    let decoded = flotilla_proto::token::JoinToken::decode(&token).unwrap();
    assert_eq!(
        decoded.endpoints(),
        [a.addr(), b.addr()],
        "the token names both replicas"
    );

    let state = dir.path().join("roamer");
    let mut agent = TestAgent::start(&state, Some(token));
    agent.connected().await;
    assert!(
        a.running().sessions.get("roamer").is_some(),
        "joined through the first"
    );
    // The saved state keeps both endpoints, for restarts without the token.
    let saved = std::fs::read_to_string(state.join("agent.yaml")).unwrap();
    assert_contains(&saved, &b.addr());

    // Replica a goes away: the agent's next session is on replica b.
    a.stop().await;
    eventually("the agent to re-attach to replica b", || async {
        b.running().sessions.get("roamer").map(drop)
    })
    .await;
    wait_status(&mut agent.status, "connected again", |s| s.connected).await;
    assert_eq!(b.cluster("roamer").await.state, "connected");
}

#[tokio::test]
async fn one_replica_leads_and_a_clean_stop_hands_the_lead_over() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = replicas(dir.path(), &etcd).await;
    let mut hubs = [a, b];
    let leader = eventually("one replica to lead, the other to follow", || async {
        let roles: Vec<Role> = hubs
            .iter()
            .map(|h| h.running().role.borrow().clone())
            .collect();
        match &roles[..] {
            [Role::Leader { .. }, Role::Follower { .. }] => Some(0),
            [Role::Follower { .. }, Role::Leader { .. }] => Some(1),
            _ => None,
        }
    })
    .await;
    let other = 1 - leader;
    assert_eq!(hubs[leader].running().metrics.leader.get(), 1);
    assert_eq!(hubs[other].running().metrics.leader.get(), 0);
    assert_eq!(hubs[leader].running().metrics.leader_terms.get(), 1);
    assert_eq!(hubs[other].running().metrics.leader_terms.get(), 0);
    eventually("each replica to count both", || async {
        hubs.iter()
            .all(|h| h.running().metrics.replicas.get() == 2)
            .then_some(())
    })
    .await;
    // `flotilla hub status` asked of the follower names both, and the leader.
    let names = ["replica-a", "replica-b"];
    let st = cli_json(&hubs[other], &["hub", "status"]).await;
    assert_eq!(st["store"], "etcd");
    assert_eq!(st["answered_by"], names[other]);
    assert_eq!(st["role"], "follower");
    let replicas: Vec<(String, String)> = st["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().into(),
                r["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut want = vec![
        (names[leader].to_string(), "leader".to_string()),
        (names[other].to_string(), "follower".to_string()),
    ];
    want.sort();
    assert_eq!(replicas, want);
    let table = cli(&hubs[other], &["hub", "status"]).await.unwrap();
    assert_contains(&table, &format!("answered by {} (follower)", names[other]));
    hubs[leader].stop().await;
    eventually(
        "the other replica to lead once the leader stopped",
        || async {
            hubs[other]
                .running()
                .role
                .borrow()
                .is_leader()
                .then_some(())
        },
    )
    .await;
    assert_eq!(hubs[other].running().metrics.leader.get(), 1);
    assert_eq!(hubs[other].running().metrics.leader_terms.get(), 1);
    let st = cli_json(&hubs[other], &["hub", "status"]).await;
    assert_eq!(st["role"], "leader");
    assert_eq!(
        st["replicas"].as_array().unwrap().len(),
        1,
        "the stopped one is gone: {st}"
    );
}

#[tokio::test]
async fn a_single_hub_on_redb_is_its_own_leader() {
    let dir = test_dir();
    let hub = TestHub::start_in(dir.path()).await;
    let st = cli_json(&hub, &["hub", "status"]).await;
    assert_eq!(st["store"], "redb");
    assert_eq!(st["role"], "leader");
    assert_eq!(st["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(st["replicas"][0]["role"], "leader");
    assert_eq!(hub.running().metrics.leader.get(), 1);
}

#[tokio::test]
async fn the_lead_moves_within_the_lease_time_after_a_kill_9_of_the_leading_hub() {
    use flotilla_tests::hub_process::{Hub, free_port, leads};
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (_, ca, key) = operator_ca(dir.path());
    let store = etcd.url("/fleet");
    let start = |name: &str| {
        let ports = (free_port(), free_port());
        let hub = Hub::start_replica(dir.path(), ports, &store, (&ca, &key), name, &[]);
        (hub, ports.1)
    };
    let (first, first_http) = start("replica-1");
    eventually("replica-1 to lead", || leads(first_http)).await;
    let (_second, second_http) = start("replica-2");
    eventually("replica-2 to answer, following", || async {
        (!leads(second_http).await?).then_some(())
    })
    .await;
    assert_eq!(leads(first_http).await, Some(true));

    first.kill9();
    let killed = Instant::now();
    eventually("replica-2 to lead after the kill -9", || async {
        leads(second_http).await?.then_some(())
    })
    .await;
    eprintln!(
        "the lead moved to replica-2 {:?} after a kill -9 of replica-1 (lease 3 s)",
        killed.elapsed()
    );
}

#[tokio::test]
async fn of_two_sessions_of_a_cluster_on_two_replicas_the_newer_wins() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (a, b) = replicas(dir.path(), &etcd).await;
    let creds = a.enroll(dir.path(), "split").await;
    let (_, _tx_a, mut on_a) = welcomed_on(&a, &creds, "split").await;
    // The same agent (after a partition, say) opens a second session on replica b.
    let _on_b = welcomed_on(&b, &creds, "split").await;

    // The older session, on replica a, is closed as replaced; the newer one stays.
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match on_a.message().await {
                Ok(Some(m)) => match m.msg {
                    Some(HubMsg::Disconnect(d)) => return Some(d),
                    _ => continue,
                },
                _ => return None,
            }
        }
    })
    .await
    .expect("replica a ends its session");
    let d = ended.expect("a Disconnect, not a bare end of stream");
    assert_eq!(d.reason, "replaced");
    assert_contains(&d.message, "replica-b");
    eventually("replica a to drop the session", || async {
        a.running().sessions.get("split").is_none().then_some(())
    })
    .await;
    assert!(b.running().sessions.get("split").is_some());
}

#[tokio::test]
async fn a_rollback_made_on_one_replica_reaches_the_sessions_held_by_another() {
    use flotilla_tests::web_app::settings;
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (repo, c1, a, b) = fleet_on_replicas(dir.path(), &etcd).await;
    let mut sims = Vec::new();
    let mut agents = Vec::new();
    for (name, ring) in [("canary-1", "canary"), ("prod-1", "prod")] {
        let sim = sim_cluster(std::time::Duration::from_millis(50));
        // Added on replica a, connected to replica b.
        let b_addr = b.addr();
        agents.push(
            a.join_sim(dir.path(), name, &[("ring", ring)], &sim, |c| {
                c.hub_override = vec![b_addr];
            })
            .await,
        );
        sims.push(sim);
    }
    assert!(b.running().sessions.get("canary-1").is_some());
    for c in ["canary-1", "prod-1"] {
        wait_runs(&b, c, "web", &c1).await;
    }
    repo.write("apps/web/config.yaml", &settings("2"));
    let c2 = repo.commit("web 2");
    cli_json(&b, &["source", "sync", "fleet"]).await;
    for c in ["canary-1", "prod-1"] {
        wait_runs(&b, c, "web", &c2).await;
    }

    // The rollback is written by replica a, which holds no session: replica b follows the
    // record and sends both clusters their old revision. (Should it meet the leader's write
    // of the record, the action reads the record again and is applied to it.)
    let out = cli(&a, &["rollout", "rollback", "web", "--to", &c1[..10]])
        .await
        .expect("the rollback is taken");
    assert_contains(&out, &format!("rolled back to {c1}"));
    for c in ["canary-1", "prod-1"] {
        wait_runs(&b, c, "web", &c1).await;
    }
    // Replica a, which holds no session, learned the clusters' reports from b's journal.
    assert!(a.running().metrics.followed_status_reports.get() > 0);
    for c in ["canary-1", "prod-1"] {
        eventually(
            "replica a to show b's clusters back on the kept revision",
            || async {
                app_on(&a, c, "web")
                    .await
                    .filter(|w| w["revision"] == c1.as_str())
            },
        )
        .await;
    }
    drop(agents);
}

#[tokio::test]
async fn a_source_added_through_one_replica_is_rendered_by_the_other_until_removed() {
    use flotilla_proto::v1::RemoveSourceRequest;
    use flotilla_tests::web_app;
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (repo, _c1) = web_app::repo(
        dir.path(),
        &web_app::canary_then_prod("regions", ""),
        Some("1"),
    );
    let (a, b) = replicas(dir.path(), &etcd).await;
    a.add_cluster("canary-1", &[("ring", "canary")]).await;
    add_fleet_source(&a, &repo.path).await;
    // Replica b polls the source too, and renders the bundles its sessions would fetch.
    eventually("replica b to poll the source added through a", || async {
        b.running().sources.trigger("fleet").then_some(())
    })
    .await;
    // The bundles replica a rendered (which of the two promoted the revision first does not
    // matter: each renders every source itself).
    let bundles_of = |hub: &TestHub| -> Vec<String> {
        std::fs::read_dir(hub.running().bundles.dir().join("sha256"))
            .map(|d| {
                d.filter_map(|e| {
                    e.ok()?
                        .file_name()
                        .to_str()?
                        .strip_suffix(".gz")
                        .map(|h| format!("sha256:{h}"))
                })
                .collect()
            })
            .unwrap_or_default()
    };
    let rendered = eventually("replica a to render the app", || async {
        let b = bundles_of(&a);
        (!b.is_empty()).then_some(b)
    })
    .await;
    eventually("replica b to hold the same bundles", || async {
        rendered
            .iter()
            .all(|d| b.running().bundles.contains(d))
            .then_some(())
    })
    .await;

    a.admin()
        .await
        .remove_source(RemoveSourceRequest {
            name: "fleet".into(),
            keep_resources: true,
            dry_run: false,
        })
        .await
        .unwrap();
    eventually("replica b to stop polling the removed source", || async {
        (!b.running().sources.trigger("fleet")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_cluster_connected_to_one_replica_shows_connected_through_it_on_the_others() {
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let mut r = Replicas::new(dir.path(), &etcd, &["replica-a", "replica-b"]).await;
    let a = r.start(0).await;
    let mut b = r.start(1).await;
    let (b_addr, state) = (b.addr(), dir.path().join("edge"));
    let token = a.add_cluster("edge", &[]).await;
    let mut cfg = flotilla_agent::AgentConfig::new(&state);
    cfg.join_token = Some(token);
    cfg.hub_override = vec![b_addr];
    let mut agent = TestAgent::start_with(cfg);
    agent.connected().await;
    let on_a = eventually("replica a to show edge connected through b", || async {
        let c = cli_json(&a, &["cluster", "get", "edge"]).await;
        (c["state"] == "connected").then_some(c)
    })
    .await;
    assert_eq!(on_a["hub_replica"], "replica-b");
    let on_b = cli_json(&b, &["cluster", "get", "edge"]).await;
    assert_eq!(on_b["hub_replica"], "replica-b");

    // The session closes: disconnected everywhere.
    agent.stop().await.unwrap();
    eventually("replica a to show edge disconnected", || async {
        let c = cli_json(&a, &["cluster", "get", "edge"]).await;
        (c["state"] == "disconnected" && c.get("hub_replica").is_none()).then_some(())
    })
    .await;

    // Connected again through b, then b stops: a session it held no longer counts.
    let mut cfg = flotilla_agent::AgentConfig::new(&state);
    cfg.hub_override = vec![b.addr()];
    let mut agent = TestAgent::start_with(cfg);
    agent.connected().await;
    eventually("replica a to show edge connected again", || async {
        (cli_json(&a, &["cluster", "get", "edge"]).await["state"] == "connected").then_some(())
    })
    .await;
    b.stop().await;
    eventually(
        "replica a to show edge disconnected once b is gone",
        || async {
            (cli_json(&a, &["cluster", "get", "edge"]).await["state"] == "disconnected")
                .then_some(())
        },
    )
    .await;
    drop(agent);
}

/// One etcd member lost (its leader): writes go on. Without etcd's quorum: sessions stay up (heartbeats answered, nothing reconnects), the
/// agent keeps its cluster as desired (it heals a deleted object) while its report waits,
/// unacknowledged, and writes are refused naming the store; once quorum returns, writes work
/// again and the report that waited lands.
#[tokio::test]
async fn without_etcd_quorum_sessions_stay_agents_heal_and_writes_wait_for_it() {
    let dir = test_dir();
    let mut etcd = EtcdCluster::start(3).await;
    let (_repo, c1, a, b) = fleet_on_replicas(dir.path(), &etcd).await;
    let sim = sim_cluster(std::time::Duration::ZERO);
    let b_addr = b.addr();
    let mut agent = a
        .join_sim(dir.path(), "canary-1", &[("ring", "canary")], &sim, |c| {
            c.hub_override = vec![b_addr];
            c.drift_interval = std::time::Duration::from_millis(300);
        })
        .await;
    wait_runs(&b, "canary-1", "web", &c1).await;

    // One member lost (etcd's leader, even): the service goes on — writes too.
    let etcd_leader = etcd.leader().await;
    etcd.kill(etcd_leader);
    let out = cli(&a, &["cluster", "add", "early"])
        .await
        .expect("a write with one etcd member lost");
    assert_contains(&out, "flotilla-join:");
    // A second one: no quorum.
    let second = (etcd_leader + 1) % 3;
    etcd.kill(second);
    let err = eventually("a write refused without quorum", || async {
        cli(&a, &["cluster", "add", "late"]).await.err()
    })
    .await;
    assert_contains(&err, "store unavailable");
    let before = agent.status.borrow().clone();
    // Someone deletes the app's Deployment: the agent puts it back.
    let deployments: flotilla_agent::kube::Api<
        flotilla_agent::k8s_openapi::api::apps::v1::Deployment,
    > = flotilla_agent::kube::Api::namespaced(sim.client(), "shop");
    deployments
        .delete("web", &Default::default())
        .await
        .unwrap();
    wait_status(&mut agent.status, "the agent to heal its cluster", |s| {
        s.apps.iter().any(|a| a.app == "web" && a.healed >= 1)
    })
    .await;
    assert!(
        sim.object("apps/v1", "Deployment", Some("shop"), "web")
            .is_some()
    );
    // Its session outlives the three missed heartbeats that would end it, and two store calls'
    // deadlines (10 s each) for the report that waits.
    for more in [6, 12] {
        wait_status(&mut agent.status, "more heartbeats", |s| {
            s.heartbeats_acked >= before.heartbeats_acked + more
        })
        .await;
    }
    let st = agent.status.borrow().clone();
    assert!(st.connected);
    assert_eq!(st.sessions_opened, before.sessions_opened, "no reconnect");

    etcd.restart(etcd_leader);
    etcd.restart(second);
    eventually("writes to work again with quorum back", || async {
        cli(&a, &["cluster", "add", "late"]).await.ok()
    })
    .await;
    // The report that waited is recorded, and shown by the other replica too.
    for hub in [&b, &a] {
        eventually("the healed report to be recorded", || async {
            app_on(hub, "canary-1", "web")
                .await
                .filter(|w| w["healed"].as_u64() >= Some(1))
        })
        .await;
    }
    assert_eq!(
        agent.status.borrow().sessions_opened,
        before.sessions_opened
    );
}

/// A commit the leader syncs by itself (its own `source sync`, no request through the store)
/// reaches agents connected to a follower that polls only hourly: the follower renders the
/// new bundles as soon as it follows the leader's offer, instead of at its next poll.
#[tokio::test]
async fn a_rendering_the_leader_offered_is_rendered_by_the_replica_holding_the_sessions() {
    use flotilla_tests::web_app::settings;
    let dir = test_dir();
    let etcd = EtcdCluster::start(1).await;
    let (repo, c1, a, b) = fleet_on_replicas(dir.path(), &etcd).await;
    let sim = sim_cluster(std::time::Duration::ZERO);
    let b_addr = b.addr();
    let _agent = a
        .join_sim(dir.path(), "canary-1", &[("ring", "canary")], &sim, |c| {
            c.hub_override = vec![b_addr];
        })
        .await;
    wait_runs(&b, "canary-1", "web", &c1).await;

    repo.write("apps/web/config.yaml", &settings("2"));
    let c2 = repo.commit("web 2");
    // The leader syncs on its own: nothing asks replica b to sync.
    a.running().sources.sync_now("fleet").await.unwrap();
    wait_runs(&b, "canary-1", "web", &c2).await;
}
