//! `--in-process`: the group commit alone, without TLS, gRPC or sessions — N tasks call
//! `Statuses::record` on a real redb store in a temporary directory, each as soon as its last
//! report is durable, so the figures are the ceiling that the store and the batching put on
//! ingest, beside what the whole hub achieves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_hub::state::status::Statuses;
use flotilla_hub::store::redb::RedbStore;
use flotilla_hub::store::timed::TimedStore;
use flotilla_hub::telemetry::metrics::Metrics;
use flotilla_proto::v1::StatusReport;
use flotilla_tests::bench::hub::metric;
use flotilla_tests::bench::reporter::app_status;
use flotilla_tests::bench::stats::Latency;
use serde::Serialize;

/// What the in-process run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InProcess {
    pub callers: usize,
    pub reports_per_sec: f64,
    pub latency: Latency,
    pub transactions: u64,
    pub reports_per_transaction: f64,
    pub commit_ms: f64,
}

pub async fn run(
    callers: usize,
    apps: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<InProcess> {
    let dir = tempfile::tempdir()?;
    let metrics = Metrics::new();
    let store = TimedStore::shared(
        Arc::new(RedbStore::open(&dir.path().join("store.redb"))?),
        &metrics,
    );
    let statuses = Statuses::new(store);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (statuses, measuring, stop) = (statuses.clone(), measuring.clone(), stop.clone());
            tokio::spawn(async move {
                let cluster = format!("load-{c:05}");
                let mut done = 0u64;
                let mut latencies = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let report = StatusReport {
                        generation: 1,
                        replace: seq == 1,
                        apps: if seq == 1 {
                            (0..apps).map(|i| app_status(i, seq)).collect()
                        } else {
                            vec![app_status((seq % apps as u64) as usize, seq)]
                        },
                        seq,
                    };
                    let sent = Instant::now();
                    statuses.record(&cluster, &report).await?;
                    if measuring.load(Ordering::Relaxed) {
                        done += 1;
                        latencies.push(sent.elapsed());
                    }
                }
                Ok::<_, anyhow::Error>((done, latencies))
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    let before = metrics.encode();
    measuring.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::SeqCst);
    let window = t0.elapsed();
    let after = metrics.encode();
    stop.store(true, Ordering::SeqCst);
    let mut done = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (d, mut l) = t.await??;
        done += d;
        latencies.append(&mut l);
    }
    let delta =
        |name: &str| metric(&after, name).unwrap_or(0.0) - metric(&before, name).unwrap_or(0.0);
    let transactions = delta("flotilla_hub_store_batch_writes_count");
    let commit =
        delta("flotilla_hub_store_operation_duration_seconds_sum{op=\"compare_and_swap_many\"}");
    Ok(InProcess {
        callers,
        reports_per_sec: done as f64 / window.as_secs_f64(),
        latency: Latency::of(&mut latencies),
        transactions: transactions as u64,
        reports_per_transaction: done as f64 / transactions.max(1.0),
        commit_ms: commit * 1000.0 / transactions.max(1.0),
    })
}
