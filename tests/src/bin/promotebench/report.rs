//! The results: one serializable record, printed as tables (the fleet, each scenario's rounds,
//! where the time went per stage, the verdict) and optionally written as JSON.

use std::collections::BTreeMap;

use comfy_table::Table;
use flotilla_tests::bench::hub::ProcSample;
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
