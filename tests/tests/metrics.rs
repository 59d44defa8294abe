//! The hub's and the agents' `/metrics`, scraped over HTTP and parsed strictly as Prometheus
//! text while a real fleet works: a hub with its HTTP side port, a git source whose app goes
//! through a two-stage pipeline, and three agents on simulated clusters in two regions, each
//! serving its own metrics port.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_tests::bench::hub::http_get;
use flotilla_tests::prom::Exposition;
use flotilla_tests::web_app::{self, settings};
use flotilla_tests::*;
use tokio::io::AsyncWriteExt;

/// Name, region, ring.
const CLUSTERS: [(&str, &str, &str); 3] = [
    ("eu-1", "eu", "canary"),
    ("eu-2", "eu", "prod"),
    ("us-1", "us", "prod"),
];

/// Scrapes `addr` and parses the answer strictly.
async fn scrape(addr: SocketAddr) -> Exposition {
    let (code, body) = http_get(addr, "/metrics").await.expect("scrape");
    assert_eq!(code, 200, "{body}");
    Exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// Scrapes until `check` holds on the exposition; returns the last one.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> Exposition {
    eventually(what, || async {
        let e = scrape(addr).await;
        check(&e).then_some(e)
    })
    .await
}

/// Scrapes until the hub counts `n` connected sessions.
async fn scrape_sessions(addr: SocketAddr, n: u32) -> Exposition {
    scrape_until(addr, &format!("{n} sessions"), |e| {
        e.value("flotilla_hub_sessions_connected", &[]) == Some(f64::from(n))
    })
    .await
}

/// The hub's count of clusters in `region` in `state`.
fn clusters(e: &Exposition, region: &str, state: &str) -> Option<f64> {
    e.value(
        "flotilla_hub_clusters",
        &[("region", region), ("state", state)],
    )
}

const APP: &str = "flotilla_hub_app_clusters";

fn app_clusters(e: &Exposition, state: &str) -> f64 {
    e.sum(APP, &[("app", "web"), ("state", state)])
}

#[tokio::test]
async fn hub_and_agent_metrics_follow_the_fleet() {
    let dir = test_dir();
    let (repo, _) = web_app::repo(
        dir.path(),
        &web_app::canary_then_prod("rings", ""),
        Some("1"),
    );
    let (hub, http) = TestHub::start_with_http(TestHub::config(dir.path())).await;

    let first = scrape(http).await;
    assert_eq!(
        first.value("flotilla_hub_sessions_connected", &[]),
        Some(0.0)
    );
    assert_eq!(first.sum(APP, &[]), 0.0, "no app yet");
    assert_eq!(
        first
            .family("flotilla_hub_store_operation_duration_seconds")
            .unwrap()
            .unit,
        "seconds"
    );
    // Opening the store and the registry already went through the timed store.
    assert!(first.sum("flotilla_hub_store_operation_duration_seconds_count", &[]) > 0.0);

    // TLS handshakes that fail are counted by reason: a peer that hangs up, one that speaks
    // plain HTTP to the TLS port.
    let grpc: SocketAddr = hub.addr().parse().unwrap();
    drop(tokio::net::TcpStream::connect(grpc).await.unwrap());
    let mut garbage = tokio::net::TcpStream::connect(grpc).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .unwrap();
    let failures = "flotilla_hub_tls_handshake_failures_total";
    let e = scrape_until(http, "handshake failures by reason", |e| {
        e.sum(failures, &[("reason", "eof")]) >= 1.0
            && e.sum(failures, &[("reason", "protocol")]) >= 1.0
    })
    .await;
    assert!(
        e.sum("flotilla_hub_tls_handshakes_total", &[("result", "failed")]) >= 2.0,
        "the existing result series keeps counting"
    );
    drop(garbage);

    let mut agents = Vec::new();
    let mut sims = Vec::new();
    let mut agent_http = Vec::new();
    for (name, region, ring) in CLUSTERS {
        let sim = sim_cluster(Duration::from_millis(50));
        let labels = [("region", region), ("ring", ring)];
        let mut a = hub
            .join_sim(dir.path(), name, &labels, &sim, |cfg| {
                cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            })
            .await;
        let s = wait_status(&mut a.status, "the agent's metrics port", |s| {
            s.metrics_addr.is_some()
        })
        .await;
        agent_http.push(s.metrics_addr.unwrap());
        agents.push(a);
        sims.push(sim);
    }
    let e = scrape_sessions(http, 3).await;
    assert_eq!(clusters(&e, "eu", "connected"), Some(2.0));
    assert_eq!(e.sum("flotilla_hub_joins_total", &[("result", "ok")]), 3.0);

    // The agents' own endpoints.
    for addr in &agent_http {
        let (code, body) = http_get(*addr, "/healthz").await.unwrap();
        assert_eq!((code, body.trim()), (200, "ok"));
        let a = scrape(*addr).await;
        assert_eq!(
            a.value("flotilla_agent_session_state", &[("state", "connected")]),
            Some(1.0),
            "{a:?}"
        );
        assert_eq!(
            a.value("flotilla_agent_session_state", &[("state", "offline")]),
            Some(0.0)
        );
        assert!(a.value("flotilla_agent_certificate_expiry_timestamp_seconds", &[]) > Some(0.0));
    }

    // The first commit goes through both stages.
    let reports_before = e.value("flotilla_hub_status_reports_total", &[]).unwrap();
    add_fleet_source(&hub, &repo.path).await;
    let stage_count = "flotilla_hub_rollout_stage_duration_seconds_count";
    let e = scrape_until(http, "the first rollout to succeed everywhere", |e| {
        app_clusters(e, "healthy") == 3.0
            && e.sum(
                "flotilla_hub_rollouts_finished_total",
                &[("result", "succeeded")],
            ) == 1.0
    })
    .await;
    assert_eq!(e.family(APP).unwrap().kind, "gauge");
    for (region, n) in [("eu", 2.0), ("us", 1.0)] {
        for state in ["desired", "applied", "healthy"] {
            assert_eq!(
                e.value(APP, &[("app", "web"), ("region", region), ("state", state)]),
                Some(n),
                "{state} in {region}"
            );
        }
        assert_eq!(
            e.value(
                APP,
                &[("app", "web"), ("region", region), ("state", "failed")]
            ),
            Some(0.0)
        );
    }
    for stage in ["canary", "prod"] {
        assert_eq!(
            e.value(stage_count, &[("stage", stage), ("result", "succeeded")]),
            Some(1.0),
            "{stage}"
        );
    }
    assert_eq!(
        e.value("flotilla_hub_rollouts_started_total", &[]),
        Some(1.0)
    );
    let fraction = "flotilla_hub_rollout_healthy_fraction_seconds_count";
    for f in ["0.5", "0.95", "1"] {
        assert_eq!(e.value(fraction, &[("fraction", f)]), Some(1.0), "{f}");
    }
    let reports = e.value("flotilla_hub_status_reports_total", &[]).unwrap();
    assert!(reports > reports_before, "{reports} > {reports_before}");
    assert!(e.value("flotilla_hub_status_report_apps_total", &[]) >= Some(3.0));
    let store = "flotilla_hub_store_operation_duration_seconds_count";
    for op in ["get", "compare_and_swap", "compare_and_swap_many", "list"] {
        assert!(e.value(store, &[("op", op)]) > Some(0.0), "store op {op}");
    }

    // Each agent applied the app and knows its objects are current.
    for addr in &agent_http {
        let a = scrape_until(*addr, "the agent's objects to be current", |a| {
            a.value("flotilla_agent_objects", &[("health", "current")]) == Some(3.0)
                && a.value(
                    "flotilla_agent_last_reconcile_success_timestamp_seconds",
                    &[],
                ) > Some(0.0)
        })
        .await;
        assert!(a.value("flotilla_agent_apply_duration_seconds_count", &[]) >= Some(1.0));
        assert!(a.value("flotilla_agent_applies_total", &[("result", "ok")]) >= Some(1.0));
        assert_eq!(
            a.value("flotilla_agent_apps", &[("phase", "applied")]),
            Some(1.0)
        );
        assert_eq!(
            a.value("flotilla_agent_objects", &[("health", "failed")]),
            Some(0.0)
        );
        assert!(
            a.value("flotilla_agent_seconds_since_last_reconcile", &[])
                .is_some()
        );
    }

    // A second commit: the series move again.
    repo.write("apps/web/config.yaml", &settings("2"));
    repo.commit("web 2");
    cli_json(&hub, &["source", "sync", "fleet"]).await;
    let e = scrape_until(http, "the second rollout to succeed everywhere", |e| {
        e.sum(
            "flotilla_hub_rollouts_finished_total",
            &[("result", "succeeded")],
        ) == 2.0
            && app_clusters(e, "healthy") == 3.0
    })
    .await;
    assert_eq!(
        e.value("flotilla_hub_rollouts_started_total", &[]),
        Some(2.0)
    );
    assert_eq!(e.sum(stage_count, &[]), 4.0);
    assert_eq!(app_clusters(&e, "desired"), 3.0);
    assert_eq!(app_clusters(&e, "applied"), 3.0);
    assert!(e.value("flotilla_hub_status_reports_total", &[]) > Some(reports));
    assert_eq!(e.value(fraction, &[("fraction", "1")]), Some(2.0));
    for addr in &agent_http {
        scrape_until(*addr, "a second apply", |a| {
            a.value("flotilla_agent_apply_duration_seconds_count", &[]) >= Some(2.0)
        })
        .await;
    }

    // An agent that stops: the hub sees one session fewer and a disconnected cluster.
    let last = agents.pop().unwrap();
    last.stop().await.unwrap();
    let e = scrape_sessions(http, 2).await;
    assert_eq!(clusters(&e, "us", "disconnected"), Some(1.0));
    for a in agents {
        a.stop().await.unwrap();
    }
}
