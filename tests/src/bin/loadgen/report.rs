//! The results: one serializable record, printed as a table and optionally written as JSON.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use flotilla_tests::bench::hub::ProcSample;
use flotilla_tests::bench::stats::Latency;
use serde::Serialize;

/// Hub memory allowed per held session at the target scale.
pub const TARGET_KIB_PER_SESSION: f64 = 64.0;
/// The scale at which the target is judged.
pub const TARGET_SESSIONS: usize = 10_000;

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub sessions_requested: usize,
    pub sources: usize,
    pub concurrency: usize,
    pub heartbeat_rounds: u32,
    pub nofile_limit: u64,
    pub hub_pid: u32,

    pub enrolled: usize,
    pub enroll_failed: usize,
    pub enroll_secs: f64,
    pub enroll_per_sec: f64,

    pub sessions_opened: usize,
    pub open_failed: usize,
    pub handshake_secs: f64,
    pub handshakes_per_sec: f64,
    /// Dial to Welcome, per session, under the phase's concurrency.
    pub open_latency: Latency,
    /// `flotilla_hub_tls_handshakes_total{result="ok"}` after the handshake phase.
    pub hub_tls_handshakes_ok: Option<f64>,
    pub hub_tls_handshakes_failed: Option<f64>,

    /// `flotilla_hub_sessions_connected` once all sessions were open.
    pub sessions_held: usize,
    /// The same gauge after the heartbeat rounds.
    pub sessions_held_end: usize,
    /// Sessions the clients still held at the end.
    pub sessions_alive_client: usize,
    pub sessions_ended_early: usize,
    pub ended_examples: Vec<String>,
    pub errors_examples: Vec<String>,

    pub hub_baseline: ProcSample,
    pub hub_enrolled: ProcSample,
    pub hub_held: ProcSample,
    pub hub_after_heartbeats: Option<ProcSample>,
    /// (max(held, after heartbeats) − baseline) / sessions held.
    pub rss_per_session_kib: f64,
    /// (max(held, after heartbeats) − after enrollment) / sessions held: connections and
    /// sessions only, without the registry records and store cache that enrollment added.
    pub rss_per_session_sessions_only_kib: f64,
    pub hub_cpu_ms_per_handshake: f64,

    pub heartbeat: Latency,
    pub heartbeat_lost: usize,
    pub heartbeat_round_secs: Vec<f64>,

    /// "PASS", "FAIL" or "n/a (needs ≥ 10000 sessions)".
    pub verdict: String,
    pub target: String,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl Report {
    /// Fills in the derived numbers and the verdict.
    pub fn finish(&mut self) {
        let held = self.sessions_held.max(1) as f64;
        let top = self
            .hub_after_heartbeats
            .map_or(self.hub_held.rss_kib, |a| {
                a.rss_kib.max(self.hub_held.rss_kib)
            });
        self.rss_per_session_kib = top.saturating_sub(self.hub_baseline.rss_kib) as f64 / held;
        self.rss_per_session_sessions_only_kib =
            top.saturating_sub(self.hub_enrolled.rss_kib) as f64 / held;
        self.target = format!(
            "≤ {TARGET_KIB_PER_SESSION:.0} KiB hub RSS per session at {TARGET_SESSIONS} sessions"
        );
        self.verdict = if self.sessions_requested >= TARGET_SESSIONS {
            if self.sessions_held >= TARGET_SESSIONS
                && self.rss_per_session_kib <= TARGET_KIB_PER_SESSION
            {
                "PASS".into()
            } else {
                "FAIL".into()
            }
        } else {
            format!(
                "n/a (target: ≤ {TARGET_KIB_PER_SESSION:.0} KiB/session, judged at ≥ {TARGET_SESSIONS} sessions)"
            )
        };
    }

    pub fn passed(&self) -> bool {
        self.verdict != "FAIL"
    }

    pub fn table(&self) -> Table {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec!["metric", "value"]);
        let mut row = |k: &str, v: String| {
            t.add_row(vec![k.to_string(), v]);
        };
        row("sessions requested", self.sessions_requested.to_string());
        row(
            "sessions held (hub gauge)",
            format!(
                "{} after open, {} after heartbeats",
                self.sessions_held, self.sessions_held_end
            ),
        );
        row(
            "failures",
            format!(
                "{} enroll, {} open, {} ended early",
                self.enroll_failed, self.open_failed, self.sessions_ended_early
            ),
        );
        row(
            "loopback sources / concurrency",
            format!("{} / {}", self.sources, self.concurrency),
        );
        row(
            "enroll (AddCluster + Join)",
            format!(
                "{:.0} joins/s ({} in {:.1} s)",
                self.enroll_per_sec, self.enrolled, self.enroll_secs
            ),
        );
        row(
            "full mTLS handshakes (dial → Welcome)",
            format!(
                "{:.0} /s ({} in {:.1} s)",
                self.handshakes_per_sec, self.sessions_opened, self.handshake_secs
            ),
        );
        row(
            "session open latency p50 / p99",
            format!(
                "{:.1} / {:.1} ms",
                self.open_latency.p50_ms, self.open_latency.p99_ms
            ),
        );
        row(
            "hub CPU per handshake",
            format!("{:.2} ms", self.hub_cpu_ms_per_handshake),
        );
        row(
            "hub RSS baseline / enrolled (MiB)",
            format!(
                "{} / {}",
                mib(self.hub_baseline.rss_kib),
                mib(self.hub_enrolled.rss_kib)
            ),
        );
        row(
            "hub RSS held / after heartbeats (MiB)",
            format!(
                "{} / {}",
                mib(self.hub_held.rss_kib),
                self.hub_after_heartbeats
                    .map_or("-".to_string(), |s| mib(s.rss_kib))
            ),
        );
        row("hub threads (held)", self.hub_held.threads.to_string());
        row(
            "hub RSS per session",
            format!("{:.1} KiB", self.rss_per_session_kib),
        );
        row(
            "  of which sessions only (excl. enrollment)",
            format!("{:.1} KiB", self.rss_per_session_sessions_only_kib),
        );
        row(
            "heartbeat RTT p50 / p99 / max",
            if self.heartbeat.samples == 0 {
                "-".into()
            } else {
                format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    self.heartbeat.p50_ms, self.heartbeat.p99_ms, self.heartbeat.max_ms
                )
            },
        );
        row(
            "heartbeat samples / lost",
            format!("{} / {}", self.heartbeat.samples, self.heartbeat_lost),
        );
        row(
            "heartbeat round duration",
            if self.heartbeat_round_secs.is_empty() {
                "-".into()
            } else {
                self.heartbeat_round_secs
                    .iter()
                    .map(|s| format!("{:.0} ms", s * 1000.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        row("target", self.target.clone());
        row("verdict", self.verdict.clone());
        if let Some(col) = t.column_mut(1) {
            col.set_cell_alignment(CellAlignment::Left);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The percentiles are `Latency::of`'s, tested with it in `flotilla_tests::bench::stats`.

    #[test]
    fn verdict_only_at_scale() {
        let mut r = Report {
            sessions_requested: 10_000,
            sessions_held: 10_000,
            ..Default::default()
        };
        r.hub_baseline.rss_kib = 10_000;
        r.hub_held.rss_kib = 10_000 + 10_000 * 60;
        r.finish();
        assert_eq!(r.verdict, "PASS");
        r.hub_held.rss_kib = 10_000 + 10_000 * 70;
        r.finish();
        assert_eq!(r.verdict, "FAIL");
        r.sessions_requested = 100;
        r.finish();
        assert!(r.verdict.starts_with("n/a"));
    }
}
