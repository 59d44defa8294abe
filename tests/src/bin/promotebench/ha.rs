//! HA mode (`--replicas N`, N > 1): the fleet and the scenarios against one hub on its embedded
//! redb store, then again against N hub replicas sharing a 3-member etcd
//! ([`flotilla_tests::bench::replicas::Replicas`]), in one run, so that every figure can be
//! given as a ratio HA / redb.
//!
//! Against the replicas, cluster `i` is enrolled through replica `i % N` (AddCluster and Join),
//! opens its session there and is labelled through it; the scenarios' admin calls (AddSource,
//! SyncSource, RemoveSource, GetRollout) go to one replica that does not lead, so that a sync
//! takes the way a load balancer would mostly give it (passed on to the leader through the
//! source's record). The hub's CPU and memory are the replicas' summed; each replica's, and the
//! etcd members', are given beside them. At the end, before the replicas stop, every key under
//! the run's prefix is listed through the hub's own etcd store and summed by key family.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use flotilla_tests::bench::hub::metric;
use flotilla_tests::bench::prog;
use flotilla_tests::bench::program::{
    keep_or_remove, verdict_status, within_max_duration, write_json,
};
use flotilla_tests::bench::replicas::{ETCD_MEMBERS, HubSet, Replicas, largest_batch_bound, sum};
use flotilla_tests::bench::table::thousands;
use tempfile::TempDir;

use crate::measure::Backend;
use crate::report::{HaExtra, HaRun, ReplicaEnd, Report, comparison_table, etcd_table};
use crate::{Args, measure, one_hub};

/// The replica the scenarios' admin calls go to: the first live one that does not lead (the
/// first one when every one says it leads or none answers).
pub async fn trigger_replica(r: &Replicas) -> usize {
    r.leaders()
        .await
        .into_iter()
        .find(|(_, l)| *l == Some(false))
        .map_or(0, |(i, _)| i)
}

/// `flotilla_hub_store_errors_total`, every op, in one replica's metrics.
fn store_errors(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("flotilla_hub_store_errors_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The HA run: one hub on redb, then the replicas, the comparison and etcd's bytes; the exit
/// status is the redb run's verdict (the HA figures are compared, not judged).
pub async fn run(args: &Args, hub_bin: &Path, tmp: TempDir) -> Result<ExitCode> {
    let n = args.replicas as usize;
    println!(
        "{}: HA mode: the run on one hub on redb, then on {n} hub replicas sharing a \
         {ETCD_MEMBERS}-member etcd",
        prog()
    );
    let redb_dir = tmp.path().join("redb");
    let (mut redb, outcome) = one_hub(args, hub_bin, &redb_dir).await?;
    redb.finish();
    if let Err(e) = outcome {
        redb.verdict = "INCOMPLETE (the run failed; partial results)".into();
        for (title, table) in redb.tables() {
            println!("\none hub on redb: {title}\n{table}");
        }
        write_json(args.json.as_deref(), &redb)?;
        keep_or_remove(tmp, true);
        return Err(e.context("the run on one hub on redb failed"));
    }

    // --- the replicas ------------------------------------------------------------------------
    let ha_dir = tmp.path().join("ha");
    let started = Instant::now();
    let replicas =
        match Replicas::start(hub_bin, &ha_dir, n, &args.hub_heartbeat_interval, &[]).await {
            Ok(r) => r,
            Err(e) => {
                keep_or_remove(tmp, true);
                return Err(e);
            }
        };
    replicas.announce();
    let mut ha = Report::default();
    let mut x = HaExtra {
        replicas: n,
        etcd_members: ETCD_MEMBERS,
        etcd_processes: replicas.etcd_processes(),
        store: replicas.etcd.url(&replicas.prefix),
        ..Default::default()
    };
    let backend = Backend::Etcd(&replicas);
    let live = replicas.live();
    let admin_at = trigger_replica(&replicas).await;
    x.admin_replica = replicas.names[admin_at].clone();
    let outcome = replicas
        .supervise(within_max_duration(
            args.max_duration,
            measure(args, HubSet(&live), &backend, admin_at, &ha_dir, &mut ha),
        ))
        .await;
    let each = HubSet(&live).samples().unwrap_or_default();
    ha.hub_end = sum(&each);
    ha.wall_secs = started.elapsed().as_secs_f64();
    let leads = replicas.leaders().await;
    x.per_replica = (0..n)
        .map(|i| ReplicaEnd {
            name: replicas.names[i].clone(),
            pid: replicas.hubs[i].pid,
            led: leads.iter().any(|(j, l)| *j == i && *l == Some(true)),
            sessions: ha.setup.replica_sessions.get(i).copied().unwrap_or(0),
            held: ha.setup.replica_held.get(i).copied().unwrap_or_default(),
            end: each.get(i).copied().unwrap_or_default(),
        })
        .collect();
    x.etcd_end = replicas.etcd_sample();
    if let Ok(texts) = replicas.metrics_texts().await {
        x.largest_batch_writes = largest_batch_bound(&texts);
        x.store_errors = texts.iter().map(|t| store_errors(t)).sum();
        if texts
            .iter()
            .all(|t| metric(t, "flotilla_hub_store_batch_writes_count").is_none())
        {
            eprintln!("{}: the replicas show no store batch histogram", prog());
        }
    }
    // What etcd holds, before the replicas (and with them etcd) stop.
    println!(
        "{}: listing every key under {} in etcd",
        prog(),
        replicas.prefix
    );
    match replicas.etcd_bytes().await {
        Ok(b) => x.etcd = Some(b),
        Err(e) => {
            eprintln!("{}: {e:#}", prog());
            x.etcd_error = Some(format!("{e:#}"));
        }
    }
    if outcome.is_err() {
        eprintln!(
            "{}: the replicas' logs:\n{}",
            prog(),
            replicas.log_tails(15)
        );
    }
    drop(live);
    replicas.shutdown().await;
    keep_or_remove(tmp, args.keep_dir || outcome.is_err());

    ha.finish();
    // The targets are the single hub's; the HA figures are compared with it instead.
    ha.judged.clear();
    ha.verdict = match &outcome {
        Ok(()) => "not judged (HA run: compared with redb)".into(),
        Err(_) => "INCOMPLETE (the run failed; partial results)".into(),
    };
    for (title, table) in redb.tables() {
        println!("\none hub on redb: {title}\n{table}");
    }
    for (title, table) in ha.tables() {
        if title == "verdict" {
            continue;
        }
        println!("\n{n} replicas on etcd (hub figures summed over the replicas): {title}\n{table}");
    }
    println!("\nHA against redb\n{}", comparison_table(&redb, &ha, &x));
    if let Some(e) = &x.etcd {
        println!(
            "\nbytes in etcd under {} at the end, by key family ({} clusters)\n{}",
            e.prefix,
            thousands(ha.setup.enrolled as u64),
            etcd_table(e, ha.setup.enrolled)
        );
    }
    println!(
        "\n{}: wall time {:.0} s on redb, {:.0} s on the replicas (setup and every scenario)",
        prog(),
        redb.wall_secs,
        ha.wall_secs
    );
    write_json(
        args.json.as_deref(),
        &HaRun {
            redb: &redb,
            ha: &ha,
            replicas: &x,
        },
    )?;
    outcome.map_err(|e| e.context(format!("the run on {n} replicas on etcd failed")))?;
    Ok(verdict_status(redb.passed()))
}
