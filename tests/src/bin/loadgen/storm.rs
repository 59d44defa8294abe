//! The reconnect storm: every held session dropped at once, then every cluster reconnecting with
//! the TLS configuration it connected with before (so with the hub's session ticket), as agents
//! do after a network cut. Measures the time until the hub holds them all again, the hub's CPU
//! per resumed handshake, and the hub's RSS once they are back against before. The reconnects
//! start once the hub has finished the work the closes left it (recording each session's end),
//! so that the CPU per resumed handshake is the reconnect's alone; the storm's time is the
//! close plus the reconnect, without that wait. With several hub replicas (`--replicas`) every
//! cluster reconnects to the replica it was on (whose ticket it holds), and the figures are
//! summed over the replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_tests::bench::client::{Fleet, Session};
use flotilla_tests::bench::fleet::{Enrollment, Opened, close_all};
use flotilla_tests::bench::hub::ProcSample;
use flotilla_tests::bench::replicas::HubSet;
use flotilla_tests::bench::stats::Latency;

use crate::report::{Report, Storm};
use crate::{GAUGE_TIMEOUT, SETTLE};

/// Hub CPU per [`IDLE_PERIOD`] below which it counts as idle (per hub replica).
const IDLE_CPU: f64 = 0.02;
const IDLE_PERIOD: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The hubs' count of admitted resumed handshakes.
async fn resumed_handshakes(hubs: HubSet<'_>) -> Result<f64> {
    Ok(hubs
        .metric_sum("flotilla_hub_tls_resumed_handshakes_total")
        .await?
        .unwrap_or(0.0))
}

/// Waits until the hubs' CPU time stops moving (less than [`IDLE_CPU`] per hub per
/// [`IDLE_PERIOD`]), for at most [`IDLE_TIMEOUT`]; returns their CPU time then.
async fn quiesce(hubs: HubSet<'_>) -> Result<f64> {
    let deadline = Instant::now() + IDLE_TIMEOUT;
    let idle = IDLE_CPU * hubs.0.len() as f64;
    let mut last = hubs.sample()?.cpu_secs;
    loop {
        tokio::time::sleep(IDLE_PERIOD).await;
        let now = hubs.sample()?.cpu_secs;
        if now - last < idle || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// How many of `opened`'s sessions went to each of `hubs` hubs.
pub fn per_hub(opened: &Opened, hubs: usize) -> Vec<usize> {
    let mut n = vec![0; hubs];
    for h in &opened.hub_of {
        n[*h] += 1;
    }
    n
}

/// Drops `sessions` at once and reopens one per enrolled cluster (each to the hub of `hubs` it
/// was on before); returns the new sessions. `before_each`: each hub's sample before the drop.
pub async fn run(
    hubs: HubSet<'_>,
    enr: &Enrollment,
    fleet: &Arc<Fleet>,
    sessions: Vec<Session>,
    rep: &mut Report,
    before_each: &mut Vec<ProcSample>,
) -> Result<Opened> {
    tokio::time::sleep(SETTLE).await;
    *before_each = hubs.samples()?;
    let before = flotilla_tests::bench::replicas::sum(before_each);
    rep.hub_after_heartbeats = Some(before);
    let resumed_before = resumed_handshakes(hubs).await?;
    let dropped = sessions.len();
    println!("loadgen: reconnect storm: dropping {dropped} sessions at once");

    let t0 = Instant::now();
    let cpu_drop = hubs.sample()?.cpu_secs;
    close_all(sessions).await;
    hubs.wait_for_gauges(&vec![0; hubs.0.len()], GAUGE_TIMEOUT)
        .await?;
    let close_secs = t0.elapsed().as_secs_f64();
    // The hub finishes what closing left it (it records every session's end) before the
    // reconnects start, so that their CPU time is theirs alone.
    let cpu_before = quiesce(hubs).await?;
    let close_cpu_ms = (cpu_before - cpu_drop) * 1000.0 / dropped.max(1) as f64;
    let reopen_start = Instant::now();
    let mut opened = enr.open_spread(&hubs.addrs(), fleet, None).await;
    let cpu_after = hubs.sample()?.cpu_secs;
    let reattached: usize = hubs
        .wait_for_gauges(&per_hub(&opened, hubs.0.len()), GAUGE_TIMEOUT)
        .await?
        .iter()
        .sum();
    let reopen_secs = reopen_start.elapsed().as_secs_f64();
    let total_secs = close_secs + reopen_secs;
    let resumed = (resumed_handshakes(hubs).await? - resumed_before).max(0.0) as usize;
    for e in &opened.errors {
        eprintln!("loadgen:   reconnect error: {e}");
    }
    tokio::time::sleep(SETTLE).await;
    let after = hubs.sample()?;
    rep.storm = Storm {
        dropped,
        close_secs,
        hub_cpu_ms_per_close: close_cpu_ms,
        reopen_secs,
        total_secs,
        reopened: opened.sessions.len(),
        failed: opened.failed,
        reattached,
        resumed,
        open_latency: Latency::of(&mut opened.latencies),
        hub_cpu_ms_per_handshake: (cpu_after - cpu_before) * 1000.0
            / opened.sessions.len().max(1) as f64,
        hub_before: before,
        hub_after: after,
    };
    println!(
        "loadgen: reconnect storm: {reattached}/{dropped} re-attached {total_secs:.1} s after the \
         drop ({resumed} resumed TLS sessions); hub RSS {:.1} → {:.1} MiB",
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0
    );
    opened.check(rep.enroll_failed, rep.sessions_requested)?;
    Ok(opened)
}
