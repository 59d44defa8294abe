//! The reconnect storm: every held session dropped at once, then every cluster reconnecting with
//! the TLS configuration it connected with before (so with the hub's session ticket), as agents
//! do after a network cut. Measures the time until the hub holds them all again, the hub's CPU
//! per resumed handshake, and the hub's RSS once they are back against before. The reconnects
//! start once the hub has finished the work the closes left it (recording each session's end),
//! so that the CPU per resumed handshake is the reconnect's alone; the storm's time is the
//! close plus the reconnect, without that wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_tests::bench::client::{Fleet, Session};
use flotilla_tests::bench::fleet::{Enrollment, close_all};
use flotilla_tests::bench::hub::{HubProcess, metric, metrics, wait_for_gauge};
use flotilla_tests::bench::stats::Latency;

use crate::report::{Report, Storm};
use crate::{GAUGE_TIMEOUT, SETTLE};

/// Hub CPU per [`IDLE_PERIOD`] below which it counts as idle.
const IDLE_CPU: f64 = 0.02;
const IDLE_PERIOD: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The hub's count of admitted resumed handshakes.
async fn resumed_handshakes(hub: &HubProcess) -> Result<f64> {
    let text = metrics(hub).await?;
    Ok(metric(&text, "flotilla_hub_tls_resumed_handshakes_total").unwrap_or(0.0))
}

/// Waits until the hub's CPU time stops moving (less than [`IDLE_CPU`] per [`IDLE_PERIOD`]),
/// for at most [`IDLE_TIMEOUT`]; returns its CPU time then.
async fn quiesce(hub: &HubProcess) -> Result<f64> {
    let deadline = Instant::now() + IDLE_TIMEOUT;
    let mut last = hub.sample()?.cpu_secs;
    loop {
        tokio::time::sleep(IDLE_PERIOD).await;
        let now = hub.sample()?.cpu_secs;
        if now - last < IDLE_CPU || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Drops `sessions` at once and reopens one per enrolled cluster; returns the new sessions.
pub async fn run(
    hub: &HubProcess,
    enr: &Enrollment,
    fleet: &Arc<Fleet>,
    sessions: Vec<Session>,
    rep: &mut Report,
) -> Result<Vec<Session>> {
    tokio::time::sleep(SETTLE).await;
    let before = hub.sample()?;
    rep.hub_after_heartbeats = Some(before);
    let resumed_before = resumed_handshakes(hub).await?;
    let dropped = sessions.len();
    println!("loadgen: reconnect storm: dropping {dropped} sessions at once");

    let t0 = Instant::now();
    let cpu_drop = hub.sample()?.cpu_secs;
    close_all(sessions).await;
    wait_for_gauge(hub, 0, GAUGE_TIMEOUT).await?;
    let close_secs = t0.elapsed().as_secs_f64();
    // The hub finishes what closing left it (it records every session's end) before the
    // reconnects start, so that their CPU time is theirs alone.
    let cpu_before = quiesce(hub).await?;
    let close_cpu_ms = (cpu_before - cpu_drop) * 1000.0 / dropped.max(1) as f64;
    let reopen_start = Instant::now();
    let mut opened = enr.open_all(hub.addr.as_str(), fleet, None).await;
    let cpu_after = hub.sample()?.cpu_secs;
    let reattached = wait_for_gauge(hub, opened.sessions.len(), GAUGE_TIMEOUT).await?;
    let reopen_secs = reopen_start.elapsed().as_secs_f64();
    let total_secs = close_secs + reopen_secs;
    let resumed = (resumed_handshakes(hub).await? - resumed_before).max(0.0) as usize;
    for e in &opened.errors {
        eprintln!("loadgen:   reconnect error: {e}");
    }
    tokio::time::sleep(SETTLE).await;
    let after = hub.sample()?;
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
    Ok(opened.sessions)
}
