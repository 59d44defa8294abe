//! The fleet both scenarios run on: N clusters enrolled and connected as lightweight sessions,
//! then labelled into the pipeline's stages. Labels go on before any source exists (labelling
//! re-renders every source), and only on clusters whose session the hub shows connected: a
//! targeted cluster without a session would fail its stage after the hub's disconnect grace.
//!
//! Cluster `i` goes to `canary` when `i % 100 == 0`, to `wave1` when `i % 100` is 1–33, else to
//! `wave2` (1% / 33% / 66%, for any multiple of 100 of the first clusters too). The first
//! `--apps-sessions` clusters also get `many: "yes"` when the 100-app scenario runs on fewer
//! clusters than the whole fleet.
//!
//! With several hub replicas (`--replicas`), cluster `i` is enrolled through replica `i % N`,
//! opens its session there and is labelled through it; each replica's gauge counts its own
//! sessions (held = the sum), and the labels wait until the replica asked lists every opened
//! session's cluster connected (sessions on other replicas show through the shared registry).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::{LabelClusterRequest, ListClustersRequest};
use flotilla_tests::bench::client::{Fleet, Session, cluster_name};
use flotilla_tests::bench::fleet::{PROGRESS_EVERY, enroll, enroll_spread};
use flotilla_tests::bench::hub::ProcSample;
use flotilla_tests::bench::prog;
use flotilla_tests::bench::replicas::{HubSet, sum};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::agent::{Counters, Event, handler};
use crate::repo::{RING, STAGES, Targets};

/// How long the hub may take to count every opened session.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The label of the clusters of the 100-app scenario when it runs on part of the fleet.
pub const MANY_LABEL: &str = "many";

/// What the fleet needs from the command line.
pub struct Options {
    pub sessions: usize,
    pub apps_sessions: usize,
    pub sources: usize,
    pub concurrency: usize,
    pub fetch: bool,
}

/// How the fleet came up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupReport {
    pub sessions_requested: usize,
    pub enrolled: usize,
    pub enroll_failed: usize,
    pub enroll_per_sec: f64,
    pub opened: usize,
    pub open_failed: usize,
    pub handshakes_per_sec: f64,
    /// `flotilla_hub_sessions_connected` once every session was open.
    pub held: usize,
    /// Clusters labelled (those the hub showed connected) and the time it took.
    pub labelled: usize,
    pub label_secs: f64,
    /// Clusters per stage, in stage order.
    pub stage_sizes: Vec<usize>,
    pub fetch: bool,
    pub hub_baseline: ProcSample,
    pub hub_held: ProcSample,
    /// With replicas: each one's gauge once every session was open, and its samples.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replica_sessions: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replica_baseline: Vec<ProcSample>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replica_held: Vec<ProcSample>,
}

/// The fleet: its sessions (held open until dropped), their events, and which clusters each
/// scenario targets.
pub struct Setup {
    pub sessions: Vec<Session>,
    pub fleet: Arc<Fleet>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub counters: Arc<Counters>,
    pub scopes: Scopes,
}

/// Which clusters each scenario targets.
pub struct Scopes {
    /// Every labelled cluster (the single-app scenario's).
    pub all: HashSet<String>,
    /// The many-app scenario's clusters, and how its apps select them.
    pub many: HashSet<String>,
    pub many_targets: Targets,
}

/// The stage of cluster `i`.
pub fn ring_of(i: usize) -> &'static str {
    match i % 100 {
        0 => STAGES[0],
        1..=33 => STAGES[1],
        _ => STAGES[2],
    }
}

/// Enrolls and connects the fleet and labels it; fills `rep` as it goes. `hubs` and `admins`:
/// the hub and its Admin API, or each replica and its own.
pub async fn bring_up(
    opts: &Options,
    hubs: HubSet<'_>,
    admins: &[AdminClient<Channel>],
    rep: &mut SetupReport,
) -> Result<Setup> {
    let n = opts.sessions;
    let replicas = hubs.0.len() > 1;
    rep.sessions_requested = n;
    rep.fetch = opts.fetch;
    let each = hubs.samples()?;
    rep.hub_baseline = sum(&each);
    if replicas {
        rep.replica_baseline = each;
    }
    let enr = if replicas {
        let targets: Vec<_> = admins.iter().cloned().zip(hubs.addrs()).collect();
        enroll_spread(&targets, n, opts.sources, opts.concurrency).await?
    } else {
        enroll(&admins[0], n, opts.sources, opts.concurrency).await?
    };
    rep.enrolled = enr.enrolled.len();
    rep.enroll_failed = enr.failed;
    rep.enroll_per_sec = enr.per_sec();
    ensure_any(enr.enrolled.len(), "no cluster enrolled", &enr.errors)?;

    let fleet = Arc::new(Fleet::default());
    let (tx, events) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    println!(
        "{}: opening {} sessions from {} loopback sources",
        prog(),
        enr.enrolled.len(),
        opts.sources
    );
    let opened = enr
        .open_spread(
            &hubs.addrs(),
            &fleet,
            Some(handler(tx, opts.fetch, counters.clone())),
        )
        .await;
    drop(enr);
    rep.opened = opened.sessions.len();
    rep.open_failed = opened.failed;
    rep.handshakes_per_sec = opened.per_sec();
    ensure_any(opened.sessions.len(), "no session opened", &opened.errors)?;
    let mut want = vec![0; hubs.0.len()];
    for h in &opened.hub_of {
        want[*h] += 1;
    }
    let held = hubs.wait_for_gauges(&want, GAUGE_TIMEOUT).await?;
    rep.held = held.iter().sum();
    let each = hubs.samples()?;
    rep.hub_held = sum(&each);
    if replicas {
        rep.replica_sessions = held;
        rep.replica_held = each;
    }
    let admin = &admins[0];

    // --- Labels, on the clusters the hub shows connected ------------------------------------
    let mut connected = connected_clusters(admin).await?;
    // A replica learns of the sessions the others hold through the registry it follows: wait
    // (bounded) until it lists every opened session's cluster connected.
    let deadline = Instant::now() + GAUGE_TIMEOUT;
    while replicas && connected.len() < rep.opened && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        connected = connected_clusters(admin).await?;
    }
    let partial = opts.apps_sessions < connected.len();
    let mut labels: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut many = HashSet::new();
    let mut stage_sizes = vec![0usize; STAGES.len()];
    for i in 0..n {
        let name = cluster_name(i);
        if !connected.contains(&name) {
            continue;
        }
        let ring = ring_of(i);
        stage_sizes[STAGES.iter().position(|s| *s == ring).expect("a stage")] += 1;
        let mut set = BTreeMap::from([(RING.to_string(), ring.to_string())]);
        if many.len() < opts.apps_sessions {
            many.insert(name.clone());
            if partial {
                set.insert(MANY_LABEL.to_string(), "yes".to_string());
            }
        }
        labels.push((name, set));
    }
    println!(
        "{}: labelling {} connected clusters ({} canary, {} wave1, {} wave2)",
        prog(),
        labels.len(),
        stage_sizes[0],
        stage_sizes[1],
        stage_sizes[2]
    );
    let started = Instant::now();
    let total = labels.len();
    let mut s = futures::stream::iter(labels.into_iter().enumerate())
        .map(|(i, (name, set))| {
            let mut admin = admins[i % admins.len()].clone();
            async move {
                admin
                    .label_cluster(LabelClusterRequest {
                        name: name.clone(),
                        set: set.into_iter().collect(),
                        remove: Vec::new(),
                    })
                    .await
                    .map_err(|s| anyhow!("LabelCluster {name}: {:?}: {}", s.code(), s.message()))
                    .map(|_| name)
            }
        })
        .buffer_unordered(opts.concurrency);
    let mut all = HashSet::with_capacity(total);
    let mut last = Instant::now();
    while let Some(r) = s.next().await {
        all.insert(r?);
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            println!("{}:   labelled {}/{total}", prog(), all.len());
        }
    }
    rep.labelled = all.len();
    rep.label_secs = started.elapsed().as_secs_f64();
    rep.stage_sizes = stage_sizes;
    println!(
        "{}: labelled {} clusters in {:.1} s; hub RSS {:.1} MiB",
        prog(),
        rep.labelled,
        rep.label_secs,
        hubs.sample()?.rss_kib as f64 / 1024.0
    );
    Ok(Setup {
        sessions: opened.sessions,
        fleet,
        events,
        counters,
        scopes: Scopes {
            all,
            many,
            many_targets: if partial {
                Targets::Labelled(MANY_LABEL)
            } else {
                Targets::Staged
            },
        },
    })
}

/// The clusters `admin`'s hub lists as connected.
async fn connected_clusters(admin: &AdminClient<Channel>) -> Result<HashSet<String>> {
    Ok(admin
        .clone()
        .list_clusters(ListClustersRequest::default())
        .await
        .map_err(|s| anyhow!("ListClusters: {:?}: {}", s.code(), s.message()))?
        .into_inner()
        .clusters
        .into_iter()
        .filter(|c| c.state == "connected")
        .map(|c| c.name)
        .collect())
}

/// Fails with `none` and the first `errors` when a bulk phase did nothing (`done` is 0).
fn ensure_any(done: usize, none: &str, errors: &[String]) -> Result<()> {
    if done == 0 {
        bail!("{none}; first errors:\n  {}", errors.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_one_and_thirty_three_percent() {
        let mut sizes = BTreeMap::new();
        for i in 0..1000 {
            *sizes.entry(ring_of(i)).or_insert(0) += 1;
        }
        assert_eq!(sizes["canary"], 10);
        assert_eq!(sizes["wave1"], 330);
        assert_eq!(sizes["wave2"], 660);
    }
}
