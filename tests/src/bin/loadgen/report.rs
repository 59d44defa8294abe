//! The results: one serializable record, printed as a table and optionally written as JSON.
//! In HA mode (`--replicas`), two of them (one hub on redb, the replicas on etcd with their
//! figures summed), what only the replicas have ([`HaReport`]: each replica's share, etcd's
//! own cost, the failover after a kill -9), and a table of every figure side by side with the
//! ratio HA / redb ([`comparison_table`]).

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use flotilla_tests::bench::hub::ProcSample;
use flotilla_tests::bench::stats::Latency;
use flotilla_tests::bench::table::thousands;
use serde::Serialize;

/// Hub memory allowed per held session at the target scale.
pub const TARGET_KIB_PER_SESSION: f64 = 40.0;
/// Hub memory per session allowed against the floor's per connection (with `--floor`).
pub const TARGET_FLOOR_RATIO: f64 = 1.5;
/// Hub CPU allowed per full handshake (dial → Welcome).
pub const TARGET_CPU_MS_PER_HANDSHAKE: f64 = 0.4;
/// How long the reconnect storm may take, from the drop until every session is re-attached.
pub const TARGET_STORM_SECS: f64 = 30.0;
/// Hub RSS after the storm, against before it, that still counts as "back to its level".
pub const TARGET_STORM_RSS_RATIO: f64 = 1.10;
/// The scale at which the targets are judged.
pub const TARGET_SESSIONS: usize = 10_000;

/// The reconnect storm (see `storm.rs`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Storm {
    pub dropped: usize,
    /// From the drop until the hub's gauge read 0.
    pub close_secs: f64,
    /// Hub CPU from the drop until it was idle again, per session closed.
    pub hub_cpu_ms_per_close: f64,
    /// From the first reconnect until the hub's gauge counted them all.
    pub reopen_secs: f64,
    /// `close_secs` + `reopen_secs` (the hub is let finish the closes in between).
    pub total_secs: f64,
    pub reopened: usize,
    pub failed: usize,
    /// The hub's gauge at the end.
    pub reattached: usize,
    /// Reconnects the hub admitted as resumed TLS sessions.
    pub resumed: usize,
    /// Dial to Welcome, per reconnect.
    pub open_latency: Latency,
    pub hub_cpu_ms_per_handshake: f64,
    pub hub_before: ProcSample,
    pub hub_after: ProcSample,
}

/// The floor (`--floor`, see `floor.rs`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Floor {
    pub connections: usize,
    pub failed: usize,
    pub handshakes_per_sec: f64,
    pub open_latency: Latency,
    pub cpu_ms_per_handshake: f64,
    pub baseline: ProcSample,
    pub held: ProcSample,
    /// (held − baseline) / connections.
    pub rss_per_connection_kib: f64,
    pub storm_reopened: usize,
    pub storm_failed: usize,
    pub storm_resumed: usize,
    pub storm_reopen_secs: f64,
    pub storm_open_latency: Latency,
    pub cpu_ms_per_resumed_handshake: f64,
    pub after_storm: ProcSample,
}

/// One target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

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

    pub storm: Storm,
    pub floor: Option<Floor>,
    /// Hub RSS per session / floor RSS per connection.
    pub floor_rss_ratio: Option<f64>,
    /// Hub CPU per full handshake / the floor's.
    pub floor_cpu_ratio: Option<f64>,
    /// Hub CPU per resumed handshake / the floor's.
    pub floor_resumed_cpu_ratio: Option<f64>,

    pub targets: Vec<Target>,
    /// "PASS", "FAIL" or "n/a (judged at ≥ 10000 sessions)".
    pub verdict: String,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl Report {
    /// Fills in the derived numbers, the targets and the verdict.
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
        if let Some(f) = &self.floor {
            let ratio = |hub: f64, floor: f64| (floor > 0.0).then(|| hub / floor);
            self.floor_rss_ratio = ratio(self.rss_per_session_kib, f.rss_per_connection_kib);
            self.floor_cpu_ratio = ratio(self.hub_cpu_ms_per_handshake, f.cpu_ms_per_handshake);
            self.floor_resumed_cpu_ratio = ratio(
                self.storm.hub_cpu_ms_per_handshake,
                f.cpu_ms_per_resumed_handshake,
            );
        }
        self.targets = self.judge();
        self.verdict = if self.sessions_requested < TARGET_SESSIONS {
            format!("n/a (targets judged at ≥ {TARGET_SESSIONS} sessions)")
        } else if self.sessions_held >= TARGET_SESSIONS && self.targets.iter().all(|t| t.met) {
            "PASS".into()
        } else {
            "FAIL".into()
        };
    }

    /// The targets of issue 14 against this run's figures.
    fn judge(&self) -> Vec<Target> {
        let storm = &self.storm;
        let mut t = vec![
            Target {
                what: format!("hub RSS per idle session ≤ {TARGET_KIB_PER_SESSION:.0} KiB"),
                measured: format!("{:.1} KiB", self.rss_per_session_kib),
                met: self.rss_per_session_kib <= TARGET_KIB_PER_SESSION,
            },
            Target {
                what: format!("hub CPU per full handshake ≤ {TARGET_CPU_MS_PER_HANDSHAKE} ms"),
                measured: format!("{:.2} ms", self.hub_cpu_ms_per_handshake),
                met: self.hub_cpu_ms_per_handshake <= TARGET_CPU_MS_PER_HANDSHAKE,
            },
            Target {
                what: "hub CPU per resumed handshake < per full handshake".into(),
                measured: format!(
                    "{:.2} ms ({} of {} resumed)",
                    storm.hub_cpu_ms_per_handshake, storm.resumed, storm.reopened
                ),
                met: storm.resumed > 0
                    && storm.hub_cpu_ms_per_handshake < self.hub_cpu_ms_per_handshake,
            },
            Target {
                what: format!("reconnect storm: all re-attached within {TARGET_STORM_SECS:.0} s"),
                measured: format!(
                    "{}/{} in {:.1} s",
                    storm.reattached, storm.dropped, storm.total_secs
                ),
                met: storm.dropped > 0
                    && storm.reattached >= storm.dropped
                    && storm.total_secs <= TARGET_STORM_SECS,
            },
            Target {
                what: format!("hub RSS after the storm ≤ {TARGET_STORM_RSS_RATIO:.2}× before it"),
                measured: format!(
                    "{} → {} MiB",
                    mib(storm.hub_before.rss_kib),
                    mib(storm.hub_after.rss_kib)
                ),
                met: storm.hub_after.rss_kib as f64
                    <= storm.hub_before.rss_kib as f64 * TARGET_STORM_RSS_RATIO,
            },
        ];
        if let Some(r) = self.floor_rss_ratio {
            t.push(Target {
                what: format!("hub RSS per session ≤ {TARGET_FLOOR_RATIO}× the floor's"),
                measured: format!("{r:.2}×"),
                met: r <= TARGET_FLOOR_RATIO,
            });
        }
        t
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
        let storm = &self.storm;
        row(
            "storm: re-attached / total time",
            format!(
                "{}/{} in {:.1} s (close {:.1} s, reopen {:.1} s)",
                storm.reattached,
                storm.dropped,
                storm.total_secs,
                storm.close_secs,
                storm.reopen_secs
            ),
        );
        row(
            "storm: resumed TLS sessions / failed",
            format!("{} / {}", storm.resumed, storm.failed),
        );
        row(
            "storm: reconnect latency p50 / p99",
            format!(
                "{:.1} / {:.1} ms",
                storm.open_latency.p50_ms, storm.open_latency.p99_ms
            ),
        );
        row(
            "hub CPU per resumed handshake / per close",
            format!(
                "{:.2} ms / {:.2} ms",
                storm.hub_cpu_ms_per_handshake, storm.hub_cpu_ms_per_close
            ),
        );
        row(
            "hub RSS before / after storm (MiB)",
            format!(
                "{} / {} ({} threads after)",
                mib(storm.hub_before.rss_kib),
                mib(storm.hub_after.rss_kib),
                storm.hub_after.threads
            ),
        );
        if let Some(f) = &self.floor {
            let x = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}×"));
            row(
                "floor: connections held / failed",
                format!("{} / {}", f.connections, f.failed),
            );
            row(
                "floor: RSS per connection (hub/floor)",
                format!(
                    "{:.1} KiB ({})",
                    f.rss_per_connection_kib,
                    x(self.floor_rss_ratio)
                ),
            );
            row(
                "floor: CPU per full handshake (hub/floor)",
                format!(
                    "{:.2} ms ({})",
                    f.cpu_ms_per_handshake,
                    x(self.floor_cpu_ratio)
                ),
            );
            row(
                "floor: CPU per resumed handshake (hub/floor)",
                format!(
                    "{:.2} ms ({}; {} of {} resumed)",
                    f.cpu_ms_per_resumed_handshake,
                    x(self.floor_resumed_cpu_ratio),
                    f.storm_resumed,
                    f.storm_reopened
                ),
            );
            row(
                "floor: handshakes/s full, open p50 / p99",
                format!(
                    "{:.0} /s, {:.1} / {:.1} ms",
                    f.handshakes_per_sec, f.open_latency.p50_ms, f.open_latency.p99_ms
                ),
            );
            row(
                "floor: RSS baseline / held / after storm (MiB)",
                format!(
                    "{} / {} / {} ({} threads)",
                    mib(f.baseline.rss_kib),
                    mib(f.held.rss_kib),
                    mib(f.after_storm.rss_kib),
                    f.held.threads
                ),
            );
        }
        for target in &self.targets {
            row(
                &format!("target: {}", target.what),
                format!(
                    "{} — {}",
                    target.measured,
                    if target.met { "met" } else { "missed" }
                ),
            );
        }
        row("verdict", self.verdict.clone());
        if let Some(col) = t.column_mut(1) {
            col.set_cell_alignment(CellAlignment::Left);
        }
        t
    }
}

/// One hub replica's share of an HA run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaFigures {
    pub name: String,
    pub pid: u32,
    /// Whether it led (`flotilla_hub_leader`) once the sessions were held.
    pub led: bool,
    /// Its own `flotilla_hub_sessions_connected` once the sessions were held.
    pub sessions_held: usize,
    pub baseline: ProcSample,
    pub enrolled: ProcSample,
    pub held: ProcSample,
    pub after_heartbeats: ProcSample,
    /// (max(held, after heartbeats) − baseline) / its sessions held.
    pub rss_per_session_kib: f64,
    /// (max(held, after heartbeats) − after enrollment) / its sessions held.
    pub rss_per_session_sessions_only_kib: f64,
}

/// The kill -9 of one replica holding its share of the sessions, and their move to the others.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Failover {
    pub victim: String,
    pub victim_led: bool,
    /// Sessions held by every replica (the sum of their gauges) just before the kill.
    pub total_before: usize,
    /// Sessions the killed replica held (its clients, which then reconnected elsewhere).
    pub dropped: usize,
    pub reattached: usize,
    pub failed: usize,
    /// From the kill until the remaining replicas' gauges summed to the total again (less the
    /// clients that failed); `None` when that did not happen within the deadline.
    pub reattach_secs: Option<f64>,
    /// From the kill until the last dropped client had its Welcome from another replica.
    pub last_welcome_secs: f64,
    /// From the kill until the last dropped client saw its session end.
    pub noticed_max_secs: f64,
    /// The reconnect's dial → Welcome, per re-attached client (its successful attempt).
    pub reconnect_latency: Latency,
    /// Attempts of the client that needed the most, and how many needed more than one.
    pub attempts_max: u32,
    pub retried: usize,
    /// Reconnects the remaining replicas admitted as resumed TLS sessions.
    pub resumed: usize,
    /// The remaining replicas' CPU from the kill until every session was back, per re-attach.
    pub survivors_cpu_ms_per_reattach: f64,
    /// Each remaining replica: name, its gauge and its RSS once the sessions were back.
    pub survivors: Vec<(String, usize, ProcSample)>,
    /// Who leads after the kill.
    pub leader_after: String,
    /// When the killed replica led: from the kill until another one led.
    pub lead_moved_secs: Option<f64>,
    pub errors: Vec<String>,
}

/// What only an HA run has: its replicas one by one, the etcd members' own cost, the failover.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HaReport {
    pub replicas: usize,
    pub etcd_members: usize,
    /// etcd member processes found (and sampled) by their client port.
    pub etcd_processes: usize,
    pub store: String,
    pub per_replica: Vec<ReplicaFigures>,
    pub etcd_baseline: ProcSample,
    pub etcd_held: ProcSample,
    /// The etcd members' CPU during the handshake phase, per session opened.
    pub etcd_cpu_ms_per_handshake: f64,
    pub failover: Failover,
}

impl HaReport {
    /// Fills in each replica's RSS per session.
    pub fn finish(&mut self) {
        for r in &mut self.per_replica {
            let held = r.sessions_held.max(1) as f64;
            let top = r.held.rss_kib.max(r.after_heartbeats.rss_kib);
            r.rss_per_session_kib = top.saturating_sub(r.baseline.rss_kib) as f64 / held;
            r.rss_per_session_sessions_only_kib =
                top.saturating_sub(r.enrolled.rss_kib) as f64 / held;
        }
    }
}

/// An HA run as JSON: the redb run, the HA run (hub figures summed over the replicas) and what
/// only the HA run has.
#[derive(Debug, Clone, Serialize)]
pub struct HaRun<'a> {
    pub redb: &'a Report,
    pub ha: &'a Report,
    pub replicas: &'a HaReport,
}

/// `ha / redb` as `1.23×`; `—` when either is missing or redb's is 0.
fn ratio(ha: Option<f64>, redb: Option<f64>) -> String {
    match (ha, redb) {
        (Some(h), Some(r)) if r != 0.0 && h.is_finite() && r.is_finite() => {
            format!("{:.2}×", h / r)
        }
        _ => "—".into(),
    }
}

/// Every figure of the redb run beside the HA run's, with the ratio HA / redb, then what only
/// the HA run has (each replica's share, etcd, the failover).
pub fn comparison_table(redb: &Report, ha: &Report, x: &HaReport) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "measure".to_string(),
        "redb (1 hub)".to_string(),
        format!(
            "HA ({} replicas, {}-member etcd)",
            x.replicas, x.etcd_members
        ),
        "HA / redb".to_string(),
    ]);
    let n0 = |v: f64| thousands(v.round() as u64);
    let ms = |v: f64| format!("{v:.2} ms");
    let ms1 = |v: f64| format!("{v:.1} ms");
    let kib = |v: f64| format!("{v:.1} KiB");
    let mib_f = |v: f64| format!("{:.1} MiB", v / 1024.0);
    let s1 = |v: f64| format!("{v:.1} s");
    let per_s = |v: f64| format!("{v:.0} /s");
    // A figure of both runs: its value in each (shown with `show`) and the ratio.
    t.add_row(vec![
        "sessions held (hub gauges, summed)".to_string(),
        n0(redb.sessions_held as f64),
        format!(
            "{} ({})",
            n0(ha.sessions_held as f64),
            x.per_replica
                .iter()
                .map(|r| thousands(r.sessions_held as u64))
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        ratio(
            Some(ha.sessions_held as f64),
            Some(redb.sessions_held as f64),
        ),
    ]);
    let mut both = |k: &str, r: f64, h: f64, show: &dyn Fn(f64) -> String| {
        t.add_row(vec![
            k.to_string(),
            show(r),
            show(h),
            ratio(Some(h), Some(r)),
        ]);
    };
    both(
        "enroll (AddCluster + Join)",
        redb.enroll_per_sec,
        ha.enroll_per_sec,
        &per_s,
    );
    both(
        "full mTLS handshakes (dial → Welcome)",
        redb.handshakes_per_sec,
        ha.handshakes_per_sec,
        &per_s,
    );
    both(
        "session open latency p50",
        redb.open_latency.p50_ms,
        ha.open_latency.p50_ms,
        &ms1,
    );
    both(
        "session open latency p99",
        redb.open_latency.p99_ms,
        ha.open_latency.p99_ms,
        &ms1,
    );
    both(
        "hub CPU per full handshake (all replicas)",
        redb.hub_cpu_ms_per_handshake,
        ha.hub_cpu_ms_per_handshake,
        &ms,
    );
    both(
        "hub RSS per session (all replicas)",
        redb.rss_per_session_kib,
        ha.rss_per_session_kib,
        &kib,
    );
    both(
        "  of which sessions only (excl. enrollment)",
        redb.rss_per_session_sessions_only_kib,
        ha.rss_per_session_sessions_only_kib,
        &kib,
    );
    for r in &x.per_replica {
        both(
            &format!(
                "hub RSS per session, {}{} ({} sessions)",
                r.name,
                if r.led { ", leader" } else { "" },
                thousands(r.sessions_held as u64)
            ),
            redb.rss_per_session_kib,
            r.rss_per_session_kib,
            &kib,
        );
    }
    both(
        "hub RSS baseline (all replicas)",
        redb.hub_baseline.rss_kib as f64,
        ha.hub_baseline.rss_kib as f64,
        &mib_f,
    );
    both(
        "hub RSS held (all replicas)",
        redb.hub_held.rss_kib as f64,
        ha.hub_held.rss_kib as f64,
        &mib_f,
    );
    both(
        "hub threads held (all replicas)",
        redb.hub_held.threads as f64,
        ha.hub_held.threads as f64,
        &n0,
    );
    both(
        "heartbeat RTT p50",
        redb.heartbeat.p50_ms,
        ha.heartbeat.p50_ms,
        &ms,
    );
    both(
        "heartbeat RTT p99",
        redb.heartbeat.p99_ms,
        ha.heartbeat.p99_ms,
        &ms,
    );
    both(
        "heartbeat RTT max",
        redb.heartbeat.max_ms,
        ha.heartbeat.max_ms,
        &ms,
    );
    both(
        "heartbeats lost",
        redb.heartbeat_lost as f64,
        ha.heartbeat_lost as f64,
        &n0,
    );
    both(
        "storm: all re-attached",
        redb.storm.total_secs,
        ha.storm.total_secs,
        &s1,
    );
    both(
        "storm: close",
        redb.storm.close_secs,
        ha.storm.close_secs,
        &s1,
    );
    both(
        "storm: reopen",
        redb.storm.reopen_secs,
        ha.storm.reopen_secs,
        &s1,
    );
    both(
        "storm: resumed TLS sessions",
        redb.storm.resumed as f64,
        ha.storm.resumed as f64,
        &n0,
    );
    both(
        "storm: hub CPU per resumed handshake",
        redb.storm.hub_cpu_ms_per_handshake,
        ha.storm.hub_cpu_ms_per_handshake,
        &ms,
    );
    both(
        "storm: hub CPU per close",
        redb.storm.hub_cpu_ms_per_close,
        ha.storm.hub_cpu_ms_per_close,
        &ms,
    );
    both(
        "hub RSS after the storm (all replicas)",
        redb.storm.hub_after.rss_kib as f64,
        ha.storm.hub_after.rss_kib as f64,
        &mib_f,
    );
    // What only the HA run has.
    let mut only = |k: &str, v: String| {
        t.add_row(vec![k.to_string(), "—".to_string(), v, "—".to_string()]);
    };
    only(
        "etcd CPU per full handshake (all members)",
        format!("{:.2} ms", x.etcd_cpu_ms_per_handshake),
    );
    only(
        "etcd RSS baseline / held (all members)",
        format!(
            "{} / {} ({} processes)",
            mib_f(x.etcd_baseline.rss_kib as f64),
            mib_f(x.etcd_held.rss_kib as f64),
            x.etcd_processes
        ),
    );
    let f = &x.failover;
    only(
        "failover: replica killed (kill -9)",
        format!(
            "{} ({}), holding {} of {} sessions",
            f.victim,
            if f.victim_led {
                "leader"
            } else {
                "not leading"
            },
            thousands(f.dropped as u64),
            thousands(f.total_before as u64)
        ),
    );
    only(
        "failover: dropped sessions re-attached / failed",
        format!(
            "{} / {}",
            thousands(f.reattached as u64),
            thousands(f.failed as u64)
        ),
    );
    only(
        "failover: kill → all re-attached (remaining replicas' gauges)",
        match f.reattach_secs {
            Some(s) => format!("{s:.2} s"),
            None => "not within the deadline".into(),
        },
    );
    only(
        "failover: kill → last Welcome / last drop noticed (clients)",
        format!("{:.2} s / {:.2} s", f.last_welcome_secs, f.noticed_max_secs),
    );
    only(
        "failover: reconnect dial → Welcome p50 / p99",
        format!(
            "{:.1} / {:.1} ms",
            f.reconnect_latency.p50_ms, f.reconnect_latency.p99_ms
        ),
    );
    only(
        "failover: attempts (max; clients needing more than one)",
        format!("{}; {}", f.attempts_max, thousands(f.retried as u64)),
    );
    only(
        "failover: remaining replicas' CPU per re-attach; resumed",
        format!(
            "{:.2} ms; {} resumed TLS sessions",
            f.survivors_cpu_ms_per_reattach,
            thousands(f.resumed as u64)
        ),
    );
    only(
        "failover: remaining replicas after (sessions, RSS)",
        f.survivors
            .iter()
            .map(|(name, n, s)| {
                format!(
                    "{name} {} ({})",
                    thousands(*n as u64),
                    mib_f(s.rss_kib as f64)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    only(
        "failover: leader after",
        match f.lead_moved_secs {
            Some(s) => format!("{} (lead moved {s:.2} s after the kill)", f.leader_after),
            None => f.leader_after.clone(),
        },
    );
    if let Some(col) = t.column_mut(0) {
        col.set_cell_alignment(CellAlignment::Left);
    }
    for i in 1..4 {
        if let Some(col) = t.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    // The percentiles are `Latency::of`'s, tested with it in `flotilla_tests::bench::stats`.

    /// A 10,000-session run that meets every target.
    fn good_run() -> Report {
        let mut r = Report {
            sessions_requested: 10_000,
            sessions_held: 10_000,
            hub_cpu_ms_per_handshake: 0.3,
            ..Default::default()
        };
        r.hub_baseline.rss_kib = 10_000;
        r.hub_held.rss_kib = 10_000 + 10_000 * 35;
        r.storm = Storm {
            dropped: 10_000,
            reopened: 10_000,
            reattached: 10_000,
            resumed: 10_000,
            total_secs: 20.0,
            hub_cpu_ms_per_handshake: 0.2,
            ..Default::default()
        };
        r.storm.hub_before.rss_kib = r.hub_held.rss_kib;
        r.storm.hub_after.rss_kib = r.hub_held.rss_kib;
        r
    }

    #[test]
    fn verdict_only_at_scale() {
        let mut r = good_run();
        r.finish();
        assert_eq!(r.verdict, "PASS", "{:?}", r.targets);
        r.hub_held.rss_kib = 10_000 + 10_000 * 45;
        r.finish();
        assert_eq!(r.verdict, "FAIL");
        r.sessions_requested = 100;
        r.finish();
        assert!(r.verdict.starts_with("n/a"));
    }

    #[test]
    fn every_target_counts() {
        let misses: [fn(&mut Report); 5] = [
            |r| r.hub_cpu_ms_per_handshake = 0.5,
            |r| r.storm.hub_cpu_ms_per_handshake = 0.3,
            |r| r.storm.resumed = 0,
            |r| r.storm.total_secs = 31.0,
            |r| r.storm.hub_after.rss_kib = r.storm.hub_before.rss_kib * 2,
        ];
        for miss in misses {
            let mut r = good_run();
            miss(&mut r);
            r.finish();
            assert_eq!(r.verdict, "FAIL", "{:?}", r.targets);
        }
    }

    #[test]
    fn the_floor_ratio_is_a_target_with_the_floor() {
        let mut r = good_run();
        r.floor = Some(Floor {
            rss_per_connection_kib: 20.0,
            cpu_ms_per_handshake: 0.25,
            cpu_ms_per_resumed_handshake: 0.1,
            ..Default::default()
        });
        r.finish();
        assert_eq!(r.floor_rss_ratio, Some(35.0 / 20.0));
        assert_eq!(r.verdict, "FAIL", "35 KiB is 1.75× a 20 KiB floor");
        r.floor.as_mut().unwrap().rss_per_connection_kib = 25.0;
        r.finish();
        assert_eq!(r.verdict, "PASS", "{:?}", r.targets);
    }
}
