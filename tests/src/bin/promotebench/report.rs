//! The results: one serializable record, printed as tables (the fleet, each scenario's rounds,
//! where the time went per stage, the verdict) and optionally written as JSON. In HA mode
//! (`--replicas`), two of them (one hub on redb; the replicas on etcd, hub figures summed), what
//! only the replicas have ([`HaExtra`]: each replica's memory and CPU, etcd's, and the bytes
//! etcd holds by key family), a table of the figures side by side with the ratio HA / redb
//! ([`comparison_table`]) and one of etcd's bytes ([`etcd_table`]).

use std::collections::BTreeMap;

use comfy_table::Table;
use flotilla_tests::bench::hub::ProcSample;
use flotilla_tests::bench::replicas::EtcdBytes;
use flotilla_tests::bench::table::{self, align, mib, verdict_cells};
use serde::Serialize;

use crate::measure::{RoundTimes, short};
use crate::scenarios::ScenarioReport;
use crate::setup::SetupReport;

/// A single-app 3-stage promotion completes this soon after the commit is synced (median of
/// rounds)…
pub const TARGET_SECS: f64 = 10.0;
/// …and every one of [`TARGET_APPS`] apps promoted at once this soon (median of the measured
/// commits, the first revision not counted)…
pub const TARGET_MANY_SECS: f64 = 60.0;
pub const TARGET_APPS: usize = 100;
/// …with the hub's peak RSS at most this…
pub const TARGET_RSS_KIB: u64 = 1024 * 1024;
/// …at this many sessions.
pub const TARGET_SESSIONS: usize = 10_000;

/// One judged target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Judged {
    pub measure: String,
    pub target: String,
    pub value: String,
    /// "PASS", "FAIL" or "n/a (why)".
    pub verdict: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub setup: SetupReport,
    pub single: Option<ScenarioReport>,
    pub many: Option<ScenarioReport>,
    pub sessions_ended_early: usize,
    pub ended_examples: Vec<String>,
    pub bundle_failures: usize,
    pub failure_examples: Vec<String>,
    pub hub_end: ProcSample,
    /// With `--otlp`: the spans the hub exported, by name.
    pub spans: Option<BTreeMap<String, u64>>,
    pub wall_secs: f64,
    pub judged: Vec<Judged>,
    /// "PASS", "FAIL" (a judged target missed), "n/a …" or "INCOMPLETE …".
    pub verdict: String,
}

fn secs(ms: f64) -> String {
    format!("{:.2} s", ms / 1000.0)
}

/// Wide enough for the rounds' columns; long notes wrap.
const TABLE_WIDTH: u16 = 160;

fn thousands(n: usize) -> String {
    table::thousands(n as u64)
}

fn new_table(header: Vec<&str>) -> Table {
    table::new_table(header, TABLE_WIDTH)
}

/// The median of `f` over `rounds` (the lower one of an even count).
fn median_of(rounds: &[RoundTimes], f: impl Fn(&RoundTimes) -> f64) -> f64 {
    let mut v: Vec<f64> = rounds.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

impl Report {
    /// The median over rounds of the single-app completion time.
    pub fn single_median_ms(&self) -> Option<f64> {
        let s = self.single.as_ref()?;
        if s.rounds.is_empty() {
            return None;
        }
        Some(median_of(&s.rounds, |r| r.done_ms))
    }

    /// The median over the measured commits of the many-app completion time (every app
    /// succeeded).
    pub fn many_median_ms(&self) -> Option<f64> {
        let m = self.many.as_ref()?;
        if m.rounds.is_empty() {
            return None;
        }
        Some(median_of(&m.rounds, |r| r.done_ms))
    }

    /// Judges the targets the run measured, and sets the overall verdict.
    pub fn finish(&mut self) {
        let at_scale = |sessions: usize| sessions >= TARGET_SESSIONS;
        let judge =
            |value: Option<f64>, limit: f64, sessions: usize, show: &dyn Fn(f64) -> String| {
                match value {
                    None => ("—".to_string(), "n/a (not measured)".to_string()),
                    Some(v) if !at_scale(sessions) => (
                        show(v),
                        format!(
                            "n/a (judged at {} sessions; here {})",
                            thousands(TARGET_SESSIONS),
                            thousands(sessions)
                        ),
                    ),
                    Some(v) if v <= limit => (show(v), "PASS".to_string()),
                    Some(v) => (show(v), "FAIL".to_string()),
                }
            };
        let single_sessions = self.single.as_ref().map_or(0, |s| s.sessions);
        let (many_apps, many_sessions) =
            self.many.as_ref().map_or((0, 0), |m| (m.apps, m.sessions));
        let many_sessions = if many_apps >= TARGET_APPS {
            many_sessions
        } else {
            0
        };
        let mut judged = Vec::new();
        let (value, verdict) = judge(
            self.single_median_ms(),
            TARGET_SECS * 1000.0,
            single_sessions,
            &secs,
        );
        judged.push(Judged {
            measure: "one app: median of rounds".into(),
            target: format!("≤ {TARGET_SECS:.0} s: one app, 3 stages, no soak, commit synced → rollout succeeded, at {} sessions", thousands(TARGET_SESSIONS)),
            value,
            verdict,
        });
        let (value, verdict) = judge(
            self.many_median_ms(),
            TARGET_MANY_SECS * 1000.0,
            many_sessions,
            &secs,
        );
        judged.push(Judged {
            measure: format!("{TARGET_APPS} apps: every app succeeded"),
            target: format!("≤ {TARGET_MANY_SECS:.0} s: {TARGET_APPS} apps at once, median of the commits after the first, at {} sessions", thousands(TARGET_SESSIONS)),
            value,
            verdict,
        });
        let rss = self.many.as_ref().map(|_| self.hub_end.hwm_kib as f64);
        let (value, verdict) = judge(
            rss,
            TARGET_RSS_KIB as f64,
            many_sessions,
            &|k| mib(k as u64),
        );
        judged.push(Judged {
            measure: "hub peak RSS".into(),
            target: format!(
                "≤ 1 GiB with {} sessions and {TARGET_APPS} apps",
                thousands(TARGET_SESSIONS)
            ),
            value,
            verdict,
        });
        self.verdict = if judged.iter().any(|j| j.verdict == "FAIL") {
            "FAIL".into()
        } else if judged.iter().any(|j| j.verdict == "PASS") {
            "PASS".into()
        } else {
            "n/a (no target measured at full scale)".into()
        };
        self.judged = judged;
    }

    pub fn passed(&self) -> bool {
        self.verdict != "FAIL"
    }

    /// Every table, in order.
    pub fn tables(&self) -> Vec<(String, Table)> {
        let mut out = vec![("fleet".to_string(), self.fleet_table())];
        if let Some(s) = self.single.as_ref().filter(|s| s.measured()) {
            out.push((
                format!(
                    "one app, 3 stages, {} sessions (times from t0 = just before AddSource / SyncSource)",
                    thousands(s.sessions)
                ),
                single_table(s),
            ));
            out.push((
                "one app: where the time goes, per stage (from t0)".to_string(),
                stages_table(s),
            ));
        }
        if let Some(m) = self.many.as_ref().filter(|m| m.measured()) {
            out.push((
                format!(
                    "{} apps at once, 3 stages, {} sessions (times from t0 = just before AddSource / SyncSource)",
                    m.apps,
                    thousands(m.sessions)
                ),
                many_table(m),
            ));
            out.push((
                format!(
                    "{} apps: where the time goes, per stage over every app (from t0)",
                    m.apps
                ),
                stages_table(m),
            ));
        }
        out.push(("verdict".to_string(), self.verdict_table()));
        out
    }

    fn fleet_table(&self) -> Table {
        let s = &self.setup;
        let mut t = new_table(vec!["measure", "value", "notes"]);
        t.add_row(vec![
            "hub traces".to_string(),
            match &self.spans {
                None => "off".to_string(),
                Some(c) => format!(
                    "{} spans exported",
                    thousands(c.values().sum::<u64>() as usize)
                ),
            },
            match &self.spans {
                None => "run with --otlp to export them to a receiver in this program".to_string(),
                Some(c) => c
                    .iter()
                    .map(|(name, n)| format!("{name} {}", thousands(*n as usize)))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        ]);
        t.add_row(vec![
            "sessions requested / held".to_string(),
            format!(
                "{} / {}",
                thousands(s.sessions_requested),
                thousands(s.held)
            ),
            format!(
                "held = the hub's sessions gauge; failures: {} enroll, {} open, {} ended early, \
                 {} bundle fetch/verify",
                s.enroll_failed, s.open_failed, self.sessions_ended_early, self.bundle_failures
            ),
        ]);
        t.add_row(vec![
            "enroll, handshakes".to_string(),
            format!(
                "{:.0} joins/s, {:.0} handshakes/s",
                s.enroll_per_sec, s.handshakes_per_sec
            ),
            String::new(),
        ]);
        t.add_row(vec![
            "stages (label ring)".to_string(),
            format!(
                "canary {} / wave1 {} / wave2 {}",
                thousands(s.stage_sizes.first().copied().unwrap_or(0)),
                thousands(s.stage_sizes.get(1).copied().unwrap_or(0)),
                thousands(s.stage_sizes.get(2).copied().unwrap_or(0)),
            ),
            format!(
                "{} clusters labelled through LabelCluster in {:.1} s, before any source",
                thousands(s.labelled),
                s.label_secs
            ),
        ]);
        t.add_row(vec![
            "session behaviour".to_string(),
            if s.fetch {
                "fetch + verify, ack, report".to_string()
            } else {
                "ack, report (no fetch)".to_string()
            },
            "each changed app reported applied + healthy at once (replace: false)".to_string(),
        ]);
        t.add_row(vec![
            "hub RSS baseline / held / end".to_string(),
            format!(
                "{} / {} / {}",
                mib(s.hub_baseline.rss_kib),
                mib(s.hub_held.rss_kib),
                mib(self.hub_end.rss_kib)
            ),
            format!(
                "peak {}; hub CPU {:.0} s over the whole run of {:.0} s",
                mib(self.hub_end.hwm_kib),
                self.hub_end.cpu_secs,
                self.wall_secs
            ),
        ]);
        align(&mut t, 3);
        t
    }

    fn verdict_table(&self) -> Table {
        let mut t = new_table(vec!["measure", "value", "verdict", "target"]);
        for j in &self.judged {
            let (verdict, why) = verdict_cells(&j.verdict);
            let verdict = if why.is_empty() {
                verdict
            } else {
                format!("{verdict} ({why})")
            };
            t.add_row(vec![
                j.measure.clone(),
                j.value.clone(),
                verdict,
                j.target.clone(),
            ]);
        }
        let (verdict, why) = verdict_cells(&self.verdict);
        t.add_row(vec!["overall".to_string(), String::new(), verdict, why]);
        align(&mut t, 4);
        t
    }
}

/// Desired states taken, bundle fetch calls made and status reports sent per session during
/// the round.
fn per_session(r: &RoundTimes) -> String {
    let n = r.sessions.max(1) as f64;
    format!(
        "{:.1} / {:.1} / {:.1}",
        r.sessions_did.desired as f64 / n,
        r.sessions_did.fetches as f64 / n,
        r.sessions_did.reports as f64 / n
    )
}

fn stage_ms(r: &RoundTimes, i: usize) -> f64 {
    r.stages
        .get(i)
        .map_or(0.0, |s| s.finished_ms - s.started_ms)
}

fn single_table(s: &ScenarioReport) -> Table {
    let names: Vec<String> = s
        .initial
        .iter()
        .chain(&s.rounds)
        .next()
        .map(|r| r.stages.iter().map(|st| st.name.clone()).collect())
        .unwrap_or_default();
    let mut header = vec![
        "round".to_string(),
        "commit".to_string(),
        "sync answered".to_string(),
        "first batch sent".to_string(),
    ];
    header.extend(names.iter().map(|n| format!("{n} stage")));
    header.extend(
        [
            "all sessions hold it",
            "rollout succeeded",
            "per session: desired states / fetch calls / reports",
            "hub CPU",
            "hub RSS",
            "store file",
        ]
        .map(String::from),
    );
    let mut t = new_table(header.iter().map(String::as_str).collect());
    let row = |r: &RoundTimes| {
        let mut cells = vec![
            r.label.clone(),
            short(&r.commit).to_string(),
            secs(r.trigger_ms),
            secs(r.started_ms),
        ];
        cells.extend((0..names.len()).map(|i| secs(stage_ms(r, i))));
        cells.extend([
            secs(r.all_hold_ms),
            secs(r.done_ms),
            per_session(r),
            format!("{:.1} s", r.hub_cpu_secs),
            mib(r.hub_rss_kib),
            mib(r.store_bytes / 1024),
        ]);
        cells
    };
    if let Some(r) = &s.initial {
        t.add_row(row(r));
    }
    for r in &s.rounds {
        t.add_row(row(r));
    }
    summary_rows(&mut t, &s.rounds, |r| {
        let mut v = vec![r.trigger_ms, r.started_ms];
        v.extend((0..names.len()).map(|i| stage_ms(r, i)));
        v.extend([r.all_hold_ms, r.done_ms]);
        v
    });
    align(&mut t, 2);
    t
}

/// "min" and "median" rows over `rounds`, one column per value of `values`.
fn summary_rows(t: &mut Table, rounds: &[RoundTimes], values: impl Fn(&RoundTimes) -> Vec<f64>) {
    let per_round: Vec<Vec<f64>> = rounds.iter().map(values).collect();
    let Some(first) = per_round.first() else {
        return;
    };
    let stats: Vec<(f64, f64)> = (0..first.len())
        .map(|k| {
            let mut col: Vec<f64> = per_round.iter().map(|v| v[k]).collect();
            col.sort_by(f64::total_cmp);
            (col[0], col[(col.len() - 1) / 2])
        })
        .collect();
    for (name, median) in [("min", false), ("median", true)] {
        let mut cells = vec![format!("{name} of {}", rounds.len()), String::new()];
        cells.extend(
            stats
                .iter()
                .map(|(lo, mid)| secs(if median { *mid } else { *lo })),
        );
        t.add_row(cells);
    }
}

/// One column per round, one row per measure (times from t0).
fn many_table(m: &ScenarioReport) -> Table {
    let rounds: Vec<&RoundTimes> = m.initial.iter().chain(&m.rounds).collect();
    let mut header = vec!["measure".to_string()];
    header.extend(rounds.iter().map(|r| r.label.clone()));
    let mut t = new_table(header.iter().map(String::as_str).collect());
    let mut row = |name: &str, f: &dyn Fn(&RoundTimes) -> String| {
        let mut cells = vec![name.to_string()];
        cells.extend(rounds.iter().map(|r| f(r)));
        t.add_row(cells);
    };
    row("commit", &|r| short(&r.commit).to_string());
    row("sync answered", &|r| secs(r.trigger_ms));
    row("first batch sent: first app / last app", &|r| {
        format!("{} / {}", secs(r.started_ms), secs(r.last_started_ms))
    });
    let stages = rounds.first().map_or(0, |r| r.stages.len());
    for i in 0..stages {
        let name = rounds[0].stages[i].name.clone();
        row(&format!("{name} stage (median app)"), &|r| {
            r.stages
                .get(i)
                .map_or_else(String::new, |s| secs(s.median_duration_ms))
        });
    }
    row("every session holds every app", &|r| secs(r.all_hold_ms));
    row("apps succeeded: first / median", &|r| {
        format!("{} / {}", secs(r.first_done_ms), secs(r.median_done_ms))
    });
    row("every app succeeded", &|r| secs(r.done_ms));
    row("desired writes (hub log)", &|r| thousands(r.desired_writes));
    row(
        "per session: desired states / fetch calls / reports",
        &per_session,
    );
    row("hub CPU / RSS / store file", &|r| {
        format!(
            "{:.0} s / {} / {}",
            r.hub_cpu_secs,
            mib(r.hub_rss_kib),
            mib(r.store_bytes / 1024)
        )
    });
    align(&mut t, 1);
    t
}

fn stages_table(s: &ScenarioReport) -> Table {
    let mut t = new_table(vec![
        "round",
        "stage",
        "clusters",
        "started (first app)",
        "desired written (last)",
        "sessions hold it (last)",
        "finished (last app)",
        "write → last session",
        "last session → finished",
    ]);
    let opt = |v: Option<f64>| v.map_or_else(|| "—".to_string(), secs);
    let gap = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => secs(b - a),
        _ => "—".to_string(),
    };
    for r in s.initial.iter().chain(&s.rounds) {
        for st in &r.stages {
            t.add_row(vec![
                r.label.clone(),
                st.name.clone(),
                thousands(st.clusters),
                secs(st.started_ms),
                opt(st.written_ms),
                opt(st.held_ms),
                secs(st.finished_ms),
                gap(st.written_ms, st.held_ms),
                gap(st.held_ms, Some(st.finished_ms)),
            ]);
        }
    }
    align(&mut t, 2);
    t
}

/// One replica of an HA run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaEnd {
    pub name: String,
    pub pid: u32,
    /// Whether it led at the end.
    pub led: bool,
    /// Its own sessions gauge once the fleet was up.
    pub sessions: usize,
    pub held: ProcSample,
    /// At the end of the run (before the sessions closed: the peak is `hwm_kib`).
    pub end: ProcSample,
}

/// What only an HA run has.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HaExtra {
    pub replicas: usize,
    pub etcd_members: usize,
    /// etcd member processes found (and sampled) by their client port.
    pub etcd_processes: usize,
    pub store: String,
    /// The replica the scenarios' admin calls (AddSource, SyncSource, GetRollout) went to.
    pub admin_replica: String,
    pub per_replica: Vec<ReplicaEnd>,
    /// The etcd members at the end, summed (`hwm_kib`: their peaks summed).
    pub etcd_end: ProcSample,
    /// Every key under the run's prefix at the end, by family (`None`: could not be listed).
    pub etcd: Option<EtcdBytes>,
    pub etcd_error: Option<String>,
    /// The most writes one store batch carried on any replica (histogram bucket bound).
    pub largest_batch_writes: Option<f64>,
    /// `flotilla_hub_store_errors_total`, summed over the replicas and their ops.
    pub store_errors: f64,
}

impl HaExtra {
    /// The largest peak RSS of one replica.
    pub fn largest_peak_kib(&self) -> u64 {
        self.per_replica
            .iter()
            .map(|r| r.end.hwm_kib)
            .max()
            .unwrap_or(0)
    }
}

/// An HA run as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct HaRun<'a> {
    pub redb: &'a Report,
    pub ha: &'a Report,
    pub replicas: &'a HaExtra,
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

/// The median over a scenario's measured rounds of `f`; `None` without rounds.
fn rounds_median(s: Option<&ScenarioReport>, f: impl Fn(&RoundTimes) -> f64) -> Option<f64> {
    let s = s?;
    if s.rounds.is_empty() {
        return None;
    }
    Some(median_of(&s.rounds, f))
}

/// The figures of the redb run beside the HA run's with the ratio HA / redb, then what only
/// the HA run has.
pub fn comparison_table(redb: &Report, ha: &Report, x: &HaExtra) -> Table {
    let mut t = new_table(vec![
        "measure",
        "redb (1 hub)",
        &format!(
            "HA ({} replicas, {}-member etcd)",
            x.replicas, x.etcd_members
        ),
        "HA / redb",
    ]);
    let n0 = |v: f64| thousands(v.round() as usize);
    let per_s = |v: f64| format!("{v:.0} /s");
    let s1 = |v: f64| format!("{v:.1} s");
    let kib = |v: f64| mib(v as u64);
    let (rs, hs) = (&redb.setup, &ha.setup);
    t.add_row(vec![
        "sessions held (hub gauges, summed)".to_string(),
        n0(rs.held as f64),
        format!(
            "{} ({})",
            n0(hs.held as f64),
            hs.replica_sessions
                .iter()
                .map(|n| thousands(*n))
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        ratio(Some(hs.held as f64), Some(rs.held as f64)),
    ]);
    let mut both = |k: &str, r: Option<f64>, h: Option<f64>, show: &dyn Fn(f64) -> String| {
        let cell = |v: Option<f64>| v.map_or_else(|| "—".to_string(), show);
        t.add_row(vec![k.to_string(), cell(r), cell(h), ratio(h, r)]);
    };
    both(
        "enroll (AddCluster + Join)",
        Some(rs.enroll_per_sec),
        Some(hs.enroll_per_sec),
        &per_s,
    );
    both(
        "full mTLS handshakes",
        Some(rs.handshakes_per_sec),
        Some(hs.handshakes_per_sec),
        &per_s,
    );
    both(
        "label every cluster (LabelCluster)",
        Some(rs.label_secs),
        Some(hs.label_secs),
        &s1,
    );
    for (name, r, h) in [
        ("one app", redb.single.as_ref(), ha.single.as_ref()),
        ("many apps", redb.many.as_ref(), ha.many.as_ref()),
    ] {
        let Some(shape) = r.or(h) else { continue };
        let name = format!(
            "{name} ({} app{}, {} sessions)",
            shape.apps,
            if shape.apps == 1 { "" } else { "s" },
            thousands(shape.sessions)
        );
        let initial = |s: Option<&ScenarioReport>| {
            s.and_then(|s| s.initial.as_ref())
                .map(|r| r.done_ms / 1000.0)
        };
        both(
            &format!("{name}: first revision, every rollout succeeded"),
            initial(r),
            initial(h),
            &secs_f,
        );
        let median = |s: Option<&ScenarioReport>, f: &dyn Fn(&RoundTimes) -> f64| {
            rounds_median(s, f).map(|v| v / 1000.0)
        };
        both(
            &format!("{name}: next commit, every rollout succeeded (median of rounds)"),
            median(r, &|x| x.done_ms),
            median(h, &|x| x.done_ms),
            &secs_f,
        );
        both(
            &format!("{name}: sync answered (median)"),
            median(r, &|x| x.trigger_ms),
            median(h, &|x| x.trigger_ms),
            &secs_f,
        );
        both(
            &format!("{name}: every session holds it (median)"),
            median(r, &|x| x.all_hold_ms),
            median(h, &|x| x.all_hold_ms),
            &secs_f,
        );
        let stages = shape
            .rounds
            .first()
            .or(shape.initial.as_ref())
            .map(|x| x.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
            .unwrap_or_default();
        for (i, stage) in stages.iter().enumerate() {
            both(
                &format!("{name}: {stage} stage (median of rounds)"),
                median(r, &|x| stage_ms(x, i)),
                median(h, &|x| stage_ms(x, i)),
                &secs_f,
            );
        }
        let cpu = |s: Option<&ScenarioReport>| rounds_median(s, |x| x.hub_cpu_secs);
        both(
            &format!("{name}: hub CPU per round, all replicas (median)"),
            cpu(r),
            cpu(h),
            &s1,
        );
        let per = |s: Option<&ScenarioReport>, f: &dyn Fn(&RoundTimes) -> u64| {
            rounds_median(s, |x| f(x) as f64 / x.sessions.max(1) as f64)
        };
        let d2 = |v: f64| format!("{v:.2}");
        both(
            &format!("{name}: desired states per session and round (median)"),
            per(r, &|x| x.sessions_did.desired),
            per(h, &|x| x.sessions_did.desired),
            &d2,
        );
        both(
            &format!("{name}: status reports per session and round (median)"),
            per(r, &|x| x.sessions_did.reports),
            per(h, &|x| x.sessions_did.reports),
            &d2,
        );
        if let Some(e) = rounds_median(h, |x| x.etcd_cpu_secs.unwrap_or(0.0)) {
            both(
                &format!("{name}: etcd CPU per round, all members (median)"),
                None,
                Some(e),
                &s1,
            );
        }
    }
    both(
        "hub RSS held (all replicas)",
        Some(rs.hub_held.rss_kib as f64),
        Some(hs.hub_held.rss_kib as f64),
        &kib,
    );
    both(
        "hub RSS at the end (all replicas)",
        Some(redb.hub_end.rss_kib as f64),
        Some(ha.hub_end.rss_kib as f64),
        &kib,
    );
    both(
        "hub peak RSS: the largest replica's",
        Some(redb.hub_end.hwm_kib as f64),
        Some(x.largest_peak_kib() as f64),
        &kib,
    );
    both(
        "hub peak RSS: the replicas' peaks summed",
        Some(redb.hub_end.hwm_kib as f64),
        Some(ha.hub_end.hwm_kib as f64),
        &kib,
    );
    both(
        "hub CPU over the whole run (all replicas)",
        Some(redb.hub_end.cpu_secs),
        Some(ha.hub_end.cpu_secs),
        &s1,
    );
    both(
        "wall time (setup and every scenario)",
        Some(redb.wall_secs),
        Some(ha.wall_secs),
        &s1,
    );
    let mut only = |k: &str, v: String| {
        t.add_row(vec![k.to_string(), "—".to_string(), v, "—".to_string()]);
    };
    for r in &x.per_replica {
        only(
            &format!(
                "{}{}",
                r.name,
                if r.led { " (leader at the end)" } else { "" }
            ),
            format!(
                "{} sessions; RSS held {} / end {} / peak {}; CPU {:.0} s",
                thousands(r.sessions),
                mib(r.held.rss_kib),
                mib(r.end.rss_kib),
                mib(r.end.hwm_kib),
                r.end.cpu_secs
            ),
        );
    }
    only(
        "etcd members (all): RSS at the end / peaks summed; CPU",
        format!(
            "{} / {}; {:.0} s ({} processes)",
            mib(x.etcd_end.rss_kib),
            mib(x.etcd_end.hwm_kib),
            x.etcd_end.cpu_secs,
            x.etcd_processes
        ),
    );
    only(
        "admin calls of the scenarios went to",
        x.admin_replica.clone(),
    );
    only(
        "largest store batch (writes in one transaction, any replica)",
        x.largest_batch_writes.map_or_else(
            || "—".into(),
            |b| format!("≤ {b:.0} (etcd's --max-txn-ops: 128)"),
        ),
    );
    only(
        "store errors (all replicas, all ops)",
        thousands(x.store_errors as usize),
    );
    align(&mut t, 1);
    t
}

fn secs_f(v: f64) -> String {
    format!("{v:.2} s")
}

/// What etcd holds under the run's prefix, by key family: per cluster for the families that
/// grow with the fleet, per app (per record) for `/rollouts/`.
pub fn etcd_table(e: &EtcdBytes, clusters: usize) -> Table {
    let mut t = new_table(vec![
        "key family",
        "keys",
        "key bytes",
        "value bytes",
        "key + value",
        "per cluster",
        "per app",
        "largest value (key)",
    ]);
    let b = |v: u64| thousands(v as usize);
    let per = |bytes: u64, n: usize| {
        if n == 0 {
            "—".to_string()
        } else {
            format!("{:.0} B", bytes as f64 / n as f64)
        }
    };
    for f in &e.families {
        let apps = f.family == "/rollouts/";
        t.add_row(vec![
            f.family.clone(),
            b(f.keys),
            b(f.key_bytes),
            b(f.value_bytes),
            b(f.bytes()),
            if apps {
                "—".into()
            } else {
                per(f.bytes(), clusters)
            },
            if apps {
                per(f.bytes(), f.keys as usize)
            } else {
                "—".into()
            },
            format!("{} ({})", b(f.largest_value), f.largest_key),
        ]);
    }
    let largest = e.families.iter().max_by_key(|f| f.largest_value);
    t.add_row(vec![
        "total".to_string(),
        b(e.keys),
        b(e.families.iter().map(|f| f.key_bytes).sum()),
        b(e.families.iter().map(|f| f.value_bytes).sum()),
        b(e.bytes),
        per(e.bytes, clusters),
        "—".into(),
        largest.map_or_else(String::new, |f| {
            format!(
                "{} ({:.1}% of etcd's 1.5 MiB request limit)",
                b(f.largest_value),
                100.0 * f.largest_value as f64 / (1.5 * 1024.0 * 1024.0)
            )
        }),
    ]);
    t.add_row(vec![
        "etcd database".to_string(),
        String::new(),
        String::new(),
        String::new(),
        e.db_size_bytes.map_or_else(|| "—".into(), b),
        String::new(),
        String::new(),
        format!(
            "file size (history not compacted included); in use {}; revision {}",
            e.db_size_in_use_bytes.map_or_else(|| "—".into(), b),
            b(e.revision)
        ),
    ]);
    align(&mut t, 1);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(done_ms: f64) -> RoundTimes {
        RoundTimes {
            done_ms,
            ..Default::default()
        }
    }

    #[test]
    fn verdict_is_judged_on_the_median_at_full_scale() {
        let mut rep = Report {
            single: Some(ScenarioReport {
                apps: 1,
                sessions: TARGET_SESSIONS,
                initial: None,
                rounds: vec![round(17_000.0), round(5_000.0), round(9_000.0)],
            }),
            ..Default::default()
        };
        rep.finish();
        assert_eq!(rep.verdict, "PASS");
        assert_eq!(rep.judged[0].verdict, "PASS");
        assert!(
            rep.judged[1].verdict.starts_with("n/a"),
            "many not measured"
        );
        assert_eq!(rep.single_median_ms(), Some(9_000.0));
        rep.single.as_mut().unwrap().sessions = 1000;
        rep.finish();
        assert!(rep.verdict.starts_with("n/a"));
        assert!(rep.passed());

        // 100 apps at full scale: slower than the target fails the run, and so does memory.
        rep.many = Some(ScenarioReport {
            apps: TARGET_APPS,
            sessions: TARGET_SESSIONS,
            initial: Some(round(10_000.0)),
            rounds: vec![round(70_000.0)],
        });
        rep.hub_end.hwm_kib = 900 * 1024;
        rep.finish();
        assert_eq!(rep.judged[1].verdict, "FAIL");
        assert_eq!(rep.judged[2].verdict, "PASS");
        assert!(!rep.passed());
        rep.many.as_mut().unwrap().rounds = vec![round(50_000.0)];
        rep.hub_end.hwm_kib = 2 * 1024 * 1024;
        rep.finish();
        assert_eq!(rep.judged[1].verdict, "PASS");
        assert_eq!(rep.judged[2].verdict, "FAIL");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
