//! The results: one serializable record, printed as a table and optionally written as JSON.

use comfy_table::Table;
use flotilla_tests::bench::stats::Latency;
use flotilla_tests::bench::table::{align, mib, new_table, thousands, thousands_f64};
use serde::Serialize;

/// Durable reports per second the hub must ingest.
pub const TARGET_REPORTS_PER_SEC: f64 = 50_000.0;

/// What the store's batches carried in the measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchFigures {
    /// Durable store transactions (`compare_and_swap_many` calls).
    pub transactions: u64,
    /// Status reports received per transaction.
    pub reports_per_transaction: f64,
    /// Records (one per cluster) written per transaction: mean, and the histogram bucket
    /// bounds under which half and 99% of the transactions fell.
    pub records_per_transaction: f64,
    pub records_p50: f64,
    pub records_p99: f64,
    /// Mean time of one transaction (the store call, fsync included).
    pub commit_ms: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub sessions: usize,
    pub apps: usize,
    pub window: usize,
    pub warmup_secs: f64,
    pub enrolled: usize,

    pub window_secs: f64,
    /// Reports acknowledged (durable) within the measured window, and in the whole run.
    pub acked_measured: u64,
    pub acked_total: u64,
    pub reports_per_sec: f64,
    /// Send to `StatusAck`, of the reports acknowledged in the window.
    pub latency: Latency,
    pub batches: BatchFigures,
    /// Hub CPU time per second of the window.
    pub hub_cpu_cores: f64,
    pub hub_rss_kib: u64,

    /// (cluster, app) statuses checked after the run, and those older than acknowledged.
    pub checked: usize,
    pub missing_acked: usize,
    pub ended_early: usize,
    pub errors: Vec<String>,

    /// `--in-process`: the group commit alone.
    pub in_process: Option<crate::in_process::InProcess>,

    pub target: String,
    /// "PASS" or "FAIL".
    pub verdict: String,
}

impl Report {
    /// Fills in the derived numbers and the verdict.
    pub fn finish(&mut self) {
        if self.window_secs > 0.0 {
            self.reports_per_sec = self.acked_measured as f64 / self.window_secs;
        }
        self.target = format!(
            "≥ {} durable reports/s",
            thousands_f64(TARGET_REPORTS_PER_SEC)
        );
        self.verdict = if self.reports_per_sec >= TARGET_REPORTS_PER_SEC {
            "PASS".into()
        } else {
            "FAIL".into()
        };
    }

    pub fn passed(&self) -> bool {
        self.verdict == "PASS"
    }

    pub fn table(&self) -> Table {
        let mut t = new_table(vec!["statusbench", "value"], 100);
        let mut row = |k: &str, v: String| {
            t.add_row(vec![k.to_string(), v]);
        };
        row(
            "sessions × apps, window",
            format!(
                "{} × {}, {} reports in flight per session",
                thousands(self.sessions as u64),
                self.apps,
                self.window
            ),
        );
        row(
            "measured",
            format!(
                "{:.1} s after {:.0} s warm-up",
                self.window_secs, self.warmup_secs
            ),
        );
        row(
            "durable reports/s (acknowledged)",
            format!(
                "{} ({} in the window)",
                thousands_f64(self.reports_per_sec),
                thousands(self.acked_measured)
            ),
        );
        row(
            "send → ack p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms
            ),
        );
        let b = &self.batches;
        row(
            "store transactions (group commits)",
            format!("{} ({:.1} ms each)", thousands(b.transactions), b.commit_ms),
        );
        row(
            "reports per transaction",
            format!("{:.0}", b.reports_per_transaction),
        );
        row(
            "records per transaction mean / p50 / p99",
            format!(
                "{:.0} / ≤ {} / ≤ {}",
                b.records_per_transaction, b.records_p50, b.records_p99
            ),
        );
        row(
            "hub CPU, RSS",
            format!("{:.2} cores, {}", self.hub_cpu_cores, mib(self.hub_rss_kib)),
        );
        row(
            "acknowledged statuses found after the run",
            format!(
                "{}/{}",
                self.checked - self.missing_acked.min(self.checked),
                self.checked
            ),
        );
        row("sessions ended early", self.ended_early.to_string());
        if let Some(p) = &self.in_process {
            row(
                "in process (no TLS/gRPC): reports/s",
                format!(
                    "{} ({} callers)",
                    thousands_f64(p.reports_per_sec),
                    thousands(p.callers as u64)
                ),
            );
            row(
                "in process: record p50 / p99",
                format!("{:.1} / {:.1} ms", p.latency.p50_ms, p.latency.p99_ms),
            );
            row(
                "in process: transactions, reports each",
                format!(
                    "{} ({:.1} ms each), {:.0}",
                    thousands(p.transactions),
                    p.commit_ms,
                    p.reports_per_transaction
                ),
            );
        }
        row(
            "verdict",
            format!("{} (target {})", self.verdict, self.target),
        );
        align(&mut t, 1);
        t
    }
}
