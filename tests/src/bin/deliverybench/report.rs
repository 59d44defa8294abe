//! The results: one serializable record, printed as one table (with `--replicas`, a second one
//! puts the single hub and the replicas side by side) and optionally written as JSON.

use comfy_table::{CellAlignment, ColumnConstraint, Table, Width};
use flotilla_tests::bench::table::{align, mib, new_table, thousands_f64, verdict_cells};
use serde::Serialize;

use crate::delivery::{DeliveryReport, Rounds};
use crate::gitfetch::{FetchReport, Pair};
use crate::ha::HaReport;
use crate::kustomize::KustomizeReport;
use crate::render::{RenderReport, Throughput};
use crate::repo::LargeRepo;

/// Every connected session holds the new bundle digest this soon after the webhook (p99).
pub const TARGET_MS: f64 = 1000.0;
/// The scale at which the target is judged.
pub const TARGET_SESSIONS: usize = 1000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The single hub on its embedded store.
    pub delivery: Option<DeliveryReport>,
    /// The same rounds across hub replicas on etcd (`--replicas N`, N ≥ 3).
    pub delivery_ha: Option<HaReport>,
    pub large_repo: Option<LargeRepo>,
    pub render: Option<RenderReport>,
    pub fetch: Option<FetchReport>,
    /// Rendering Kustomize and Helm apps over a fleet (`--phases kustomize`).
    pub kustomize: Option<KustomizeReport>,
    pub target: String,
    /// Of the single hub: "PASS", "FAIL", "n/a …" or "INCOMPLETE …".
    pub verdict: String,
    /// Of the replicas, judged alike; `None` without `--replicas`.
    pub verdict_ha: Option<String>,
}

/// Wide enough for the values on one line; long notes wrap.
const TABLE_WIDTH: u16 = 150;
/// The narrowest the notes column of the side-by-side table gets.
const NOTES_MIN_WIDTH: u16 = 36;
/// Rounds listed on one line of a per-round cell: in the table of one hub, and in each figure
/// column of the side-by-side table. More go on further lines.
const ROUNDS_PER_LINE: usize = 8;
const ROUNDS_PER_LINE_SIDE_BY_SIDE: usize = 5;

fn lat3(p50: f64, p99: f64, max: f64) -> String {
    format!("{p50:.0} / {p99:.0} / {max:.0} ms")
}

impl Report {
    /// Sets the verdicts from the webhook rounds (of the single hub, and of the replicas when
    /// they ran).
    pub fn finish(&mut self) {
        self.target = format!(
            "webhook → every connected session holds the new bundle digest in ≤ {:.0} s p99, at {TARGET_SESSIONS} sessions",
            TARGET_MS / 1000.0
        );
        self.verdict = judge(self.delivery.as_ref());
        self.verdict_ha = self.delivery_ha.as_ref().map(|h| {
            let v = judge(Some(&h.delivery));
            if h.lead_stayed() || v.starts_with("n/a") {
                v
            } else {
                format!(
                    "{v} (but the lead moved from {} to {} during the rounds)",
                    h.leader,
                    h.leader_end.as_deref().unwrap_or("no single replica")
                )
            }
        });
    }

    /// Marks the run as failed: partial results.
    pub fn incomplete(&mut self) {
        self.verdict = "INCOMPLETE (the run failed; partial results)".into();
        if self.verdict_ha.is_some() {
            self.verdict_ha.clone_from(&Some(self.verdict.clone()));
        }
    }

    /// Neither the single hub nor the replicas missed the target.
    pub fn passed(&self) -> bool {
        !self.verdict.starts_with("FAIL")
            && !self
                .verdict_ha
                .as_deref()
                .is_some_and(|v| v.starts_with("FAIL"))
    }

    pub fn table(&self) -> Table {
        let mut t = new_table(vec!["measure", "value", "notes"], TABLE_WIDTH);
        // The measure and value columns keep their width; notes wrap.
        t.set_constraints(vec![
            ColumnConstraint::ContentWidth,
            ColumnConstraint::ContentWidth,
        ]);
        let mut row = |k: &str, v: String, note: &str| {
            t.add_row(vec![k.to_string(), v, note.to_string()]);
        };
        if let Some(d) = &self.delivery {
            delivery_rows(d, &mut row);
        }
        if let Some(r) = &self.large_repo {
            row(
                "large repository",
                format!(
                    "{} objects, {} apps, {} files",
                    r.objects, r.apps, r.manifest_files
                ),
                &format!(
                    "{:.1} MiB of YAML; {} commits, {} git objects, {:.1} MiB pack; built in {:.1} s",
                    r.manifest_bytes as f64 / (1024.0 * 1024.0),
                    r.commits,
                    r.git_objects,
                    r.pack_kib as f64 / 1024.0,
                    r.build_secs
                ),
            );
        }
        if let Some(r) = &self.render {
            let th = |x: &Throughput| {
                format!(
                    "{} objects/s (median {})",
                    thousands_f64(x.best_objects_per_sec),
                    thousands_f64(x.median_objects_per_sec)
                )
            };
            let note = |x: &Throughput, what: &str| {
                format!(
                    "best of {} passes: {:.0} ms (median {:.0} ms); {what}",
                    x.timing.reps, x.timing.best_ms, x.timing.median_ms
                )
            };
            row(
                "render, DirTree",
                th(&r.dir_tree),
                &note(
                    &r.dir_tree,
                    &format!(
                        "load_config + AppManifests::load + render, {} apps for 1 cluster, \
                         {:.1} MiB canonical JSON",
                        r.apps,
                        r.canonical_bytes as f64 / (1024.0 * 1024.0)
                    ),
                ),
            );
            if let Some(c) = &r.commit_tree {
                row(
                    "render, git CommitTree",
                    th(c),
                    &note(c, "the same over a commit of a gix Mirror"),
                );
            }
        }
        if let Some(f) = &self.fetch {
            let pair = |p: &Pair| {
                format!(
                    "gix {:.0} ms | git {:.0} ms | gix/git {:.2}",
                    p.gix.median_ms, p.git.median_ms, p.ratio_median
                )
            };
            let note = |p: &Pair, what: &str| {
                format!(
                    "medians of {}; best: gix {:.0} | git {:.0} ms = {:.2}; {what}",
                    p.gix.reps, p.gix.best_ms, p.git.best_ms, p.ratio_best
                )
            };
            row(
                "fetch into a fresh bare repo",
                pair(&f.initial),
                &note(
                    &f.initial,
                    "Mirror::open_or_init + fetch | git init --bare + git fetch",
                ),
            );
            row(
                "fetch of 1 new commit",
                pair(&f.incremental),
                &note(&f.incremental, "Mirror::fetch | git fetch"),
            );
        }
        row("target", format!("≤ {TARGET_MS:.0} ms"), &self.target);
        let (verdict, why) = verdict_cells(&self.verdict);
        if let (Some(v), Some(h)) = (&self.verdict_ha, &self.delivery_ha) {
            row("verdict, single hub", verdict, &why);
            let (verdict, why) = verdict_cells(v);
            row(&format!("verdict, {} replicas", h.replicas), verdict, &why);
        } else {
            row("verdict", verdict, &why);
        }
        align(&mut t, 3);
        t
    }

    /// The kustomize phase: one row per (app, fleet size, cold/warm).
    pub fn kustomize_table(&self) -> Option<Table> {
        let k = self.kustomize.as_ref()?;
        let mut t = new_table(
            vec![
                "app",
                "renderer",
                "clusters",
                "sync",
                "ms (median)",
                "ms (best)",
                "µs/cluster",
                "tool runs",
                "renders",
                "bundles",
                "objects/bundle",
            ],
            TABLE_WIDTH,
        );
        for r in &k.rows {
            let objects: Vec<String> = r.objects_per_bundle.iter().map(|n| n.to_string()).collect();
            t.add_row(vec![
                r.app.clone(),
                r.renderer.clone(),
                thousands_f64(r.clusters as f64),
                r.sync.clone(),
                format!("{:.1}", r.timing.median_ms),
                format!("{:.1}", r.timing.best_ms),
                format!("{:.1}", r.per_cluster_us),
                r.tool_runs.to_string(),
                r.renders.to_string(),
                r.bundles.to_string(),
                objects.join(" / "),
            ]);
        }
        align(&mut t, 4);
        Some(t)
    }

    /// With replicas: the single hub and the replicas side by side, with the ratio of their
    /// figures.
    pub fn comparison(&self) -> Option<Table> {
        let h = self.delivery_ha.as_ref()?;
        let empty = DeliveryReport::default();
        let s = self.delivery.as_ref().unwrap_or(&empty);
        let r = &h.delivery;
        let ha_col = format!("{} replicas on etcd", h.replicas);
        let mut t = new_table(
            vec!["measure", "single hub", &ha_col, "HA / single", "notes"],
            TABLE_WIDTH + 20,
        );
        // Measures and ratios keep their width; the figures wrap only when they must (long
        // per-round lists), and the notes keep a readable width.
        for (i, c) in [
            (0, ColumnConstraint::ContentWidth),
            (3, ColumnConstraint::ContentWidth),
            (
                4,
                ColumnConstraint::LowerBoundary(Width::Fixed(NOTES_MIN_WIDTH)),
            ),
        ] {
            if let Some(col) = t.column_mut(i) {
                col.set_constraint(c);
            }
        }
        let mut row = |k: &str, a: String, b: String, ratio: String, note: &str| {
            t.add_row(vec![k.to_string(), a, b, ratio, note.to_string()]);
        };
        row(
            "hubs",
            "1 hub, embedded store (redb)".into(),
            format!("{} replicas, {}-member etcd", h.replicas, h.etcd_members),
            String::new(),
            &format!(
                "{} leads ({:.0} ms after the last replica was ready; at the end: {}); \
                 sessions on {}; source and webhooks through {}: a change crosses replicas \
                 twice (webhook replica → leader → session replica)",
                h.leader,
                h.leader_elected_ms,
                h.leader_end.as_deref().unwrap_or("no single replica"),
                h.session_replica,
                h.webhook_replica
            ),
        );
        row(
            "sessions requested / held",
            format!("{} / {}", s.sessions_requested, s.sessions_held),
            format!("{} / {}", r.sessions_requested, r.sessions_held),
            String::new(),
            &format!(
                "held = the session hub's gauge; replicas' gauges {:?} ({:?}); failures \
                 (single | HA): {} | {} enroll, {} | {} open, {} | {} ended early, {} | {} \
                 bundle fetch/verify",
                r.sessions_by_hub,
                h.names,
                s.enroll_failed,
                r.enroll_failed,
                s.open_failed,
                r.open_failed,
                s.sessions_ended_early,
                r.sessions_ended_early,
                s.delivery_failures,
                r.delivery_failures
            ),
        );
        ms_row(
            &mut row,
            "first sync: all sessions hold it",
            s.initial_ms,
            r.initial_ms,
            "from AddSource (HA: through the webhook replica)",
        );
        row(
            "webhook rounds",
            s.webhook.rounds.to_string(),
            r.webhook.rounds.to_string(),
            String::new(),
            "",
        );
        let (sw, rw) = (&s.webhook, &r.webhook);
        ms_row(
            &mut row,
            "webhook: all sessions hold it, p50",
            sw.all_sessions.p50_ms,
            rw.all_sessions.p50_ms,
            "t0 = just before the signed POST; per round, the last session",
        );
        ms_row(
            &mut row,
            "webhook: all sessions hold it, p99",
            sw.all_sessions.p99_ms,
            rw.all_sessions.p99_ms,
            &format!(
                "the judged figure (target ≤ {TARGET_MS:.0} ms at ≥ {TARGET_SESSIONS} \
                 sessions){}",
                if rw.rounds < 100 && sw.rounds < 100 {
                    "; under 100 rounds the p99 is the worst round"
                } else {
                    ""
                }
            ),
        );
        ms_row(
            &mut row,
            "webhook: all sessions hold it, max",
            sw.all_sessions.max_ms,
            rw.all_sessions.max_ms,
            "",
        );
        ms_row(
            &mut row,
            "webhook: each session, p50",
            sw.per_session.p50_ms,
            rw.per_session.p50_ms,
            &format!(
                "{} | {} samples (every session, every round)",
                sw.per_session.samples, rw.per_session.samples
            ),
        );
        ms_row(
            &mut row,
            "webhook: each session, p99",
            sw.per_session.p99_ms,
            rw.per_session.p99_ms,
            "",
        );
        ms_row(
            &mut row,
            "webhook: first session, p50",
            sw.first_session.p50_ms,
            rw.first_session.p50_ms,
            "fetch + render + rollout write + (HA: two store hops) + the first fetch and verify",
        );
        if rw.leader_asked.samples > 0 {
            row(
                "webhook: leader saw the request, p50 / max",
                "—".into(),
                pair_or_dash(&rw.leader_asked),
                String::new(),
                "first hop: t0 → the leader's log line \"sync asked through another replica\" \
                 (the webhook replica counted the request in the source's etcd record)",
            );
        }
        if rw.leader_write.samples > 0 {
            row(
                "webhook: leader wrote the rollout, p50 / max",
                "—".into(),
                pair_or_dash(&rw.leader_write),
                String::new(),
                "t0 → the leader's first \"desired state changed\" line (fetch, render, offer, \
                 rollout record saved)",
            );
        }
        if sw.hub_first_write.samples > 0 || rw.hub_first_write.samples > 0 {
            row(
                "webhook: session hub woke its sessions, p50 / max",
                pair_or_dash(&sw.hub_first_write),
                pair_or_dash(&rw.hub_first_write),
                ratio(sw.hub_first_write.p50_ms, rw.hub_first_write.p50_ms),
                "t0 → the session hub's first \"desired state changed\" line (HA: second hop, \
                 the session replica took the leader's record from its /rollouts/ watch)",
            );
        }
        row(
            "webhook: all sessions, per round",
            per_round(sw, ROUNDS_PER_LINE_SIDE_BY_SIDE),
            per_round(rw, ROUNDS_PER_LINE_SIDE_BY_SIDE),
            String::new(),
            "",
        );
        let (sp, rp) = (&s.poll, &r.poll);
        row(
            "polling rounds",
            sp.rounds.to_string(),
            rp.rounds.to_string(),
            String::new(),
            &format!(
                "interval {} s; t0 = commit, at a random phase of the polling cycle, so \
                 dominated by the interval",
                r.poll_interval_secs
            ),
        );
        if sp.rounds > 0 || rp.rounds > 0 {
            ms_row(
                &mut row,
                "polling: all sessions hold it, p50",
                sp.all_sessions.p50_ms,
                rp.all_sessions.p50_ms,
                "",
            );
            ms_row(
                &mut row,
                "polling: all sessions hold it, p99",
                sp.all_sessions.p99_ms,
                rp.all_sessions.p99_ms,
                "",
            );
            ms_row(
                &mut row,
                "polling: each session, p50",
                sp.per_session.p50_ms,
                rp.per_session.p50_ms,
                "",
            );
            ms_row(
                &mut row,
                "polling: each session, p99",
                sp.per_session.p99_ms,
                rp.per_session.p99_ms,
                "",
            );
            row(
                "polling: all sessions, per round",
                per_round(sp, ROUNDS_PER_LINE_SIDE_BY_SIDE),
                per_round(rp, ROUNDS_PER_LINE_SIDE_BY_SIDE),
                String::new(),
                "",
            );
        }
        row(
            "session hub RSS held / end",
            format!("{} / {}", mib(s.hub_held.rss_kib), mib(s.hub_end.rss_kib)),
            format!("{} / {}", mib(r.hub_held.rss_kib), mib(r.hub_end.rss_kib)),
            String::new(),
            &format!(
                "replicas at the end: {}",
                h.names
                    .iter()
                    .zip(&h.replicas_end)
                    .map(|(n, p)| if p.rss_kib == 0 {
                        format!("{n} not readable (exited)")
                    } else {
                        format!("{n} {} RSS, {:.1} s CPU", mib(p.rss_kib), p.cpu_secs)
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
        let (v1, why1) = verdict_cells(&self.verdict);
        let (v2, why2) = verdict_cells(self.verdict_ha.as_deref().unwrap_or("n/a"));
        let why = [("single hub", why1), ("replicas", why2)]
            .into_iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(who, w)| format!("{who}: {w}"))
            .collect::<Vec<_>>()
            .join("; ");
        row("verdict", v1, v2, String::new(), &why);
        // Measures and notes to the left, figures to the right.
        align(&mut t, 1);
        if let Some(col) = t.column_mut(4) {
            col.set_cell_alignment(CellAlignment::Left);
        }
        Some(t)
    }
}

/// The verdict of one delivery measurement against the target.
fn judge(d: Option<&DeliveryReport>) -> String {
    match d {
        None => "n/a (delivery not measured)".into(),
        Some(d) if d.webhook.rounds == 0 => "n/a (no webhook rounds)".into(),
        Some(d) if d.sessions_requested < TARGET_SESSIONS => format!(
            "n/a (judged at ≥ {TARGET_SESSIONS} sessions; here p99 {:.0} ms)",
            d.webhook.all_sessions.p99_ms
        ),
        Some(d) if d.webhook.all_sessions.p99_ms <= TARGET_MS => "PASS".into(),
        Some(_) => "FAIL".into(),
    }
}

/// A row of two latencies and their ratio.
fn ms_row(
    row: &mut dyn FnMut(&str, String, String, String, &str),
    measure: &str,
    single: f64,
    ha: f64,
    note: &str,
) {
    row(
        measure,
        ms_or_dash(single),
        ms_or_dash(ha),
        ratio(single, ha),
        note,
    );
}

/// A latency, or a dash when it was not measured (no rounds: 0).
fn ms_or_dash(v: f64) -> String {
    if v > 0.0 {
        format!("{v:.0} ms")
    } else {
        "—".into()
    }
}

/// A p50 / max pair, or a dash when it was not measured.
fn pair_or_dash(l: &flotilla_tests::bench::stats::Latency) -> String {
    if l.samples > 0 {
        format!("{:.0} / {:.0} ms", l.p50_ms, l.max_ms)
    } else {
        "—".into()
    }
}

/// `ha / single` as `1.23×`; a dash when the single figure is missing.
fn ratio(single: f64, ha: f64) -> String {
    if single > 0.0 && ha > 0.0 {
        format!("{:.2}×", ha / single)
    } else {
        "—".into()
    }
}

/// Per round, the last session's latency: `512, 498, … ms`, `per_line` rounds to a line.
fn per_round(r: &Rounds, per_line: usize) -> String {
    if r.rounds == 0 {
        return "—".into();
    }
    let figures: Vec<String> = r
        .rounds_detail
        .iter()
        .map(|d| format!("{:.0}", d.last_ms))
        .collect();
    figures
        .chunks(per_line.max(1))
        .map(|line| line.join(", "))
        .collect::<Vec<_>>()
        .join(",\n")
        + " ms"
}

fn rounds_rows(
    name: &str,
    r: &Rounds,
    note_all: &str,
    note_first: &str,
    row: &mut impl FnMut(&str, String, &str),
) {
    if r.rounds == 0 {
        return;
    }
    row(
        &format!("{name}: all sessions hold it p50/p99/max"),
        lat3(
            r.all_sessions.p50_ms,
            r.all_sessions.p99_ms,
            r.all_sessions.max_ms,
        ),
        note_all,
    );
    row(
        &format!("{name}: each session p50/p99/max"),
        lat3(
            r.per_session.p50_ms,
            r.per_session.p99_ms,
            r.per_session.max_ms,
        ),
        &format!(
            "{} samples (every session, every round)",
            r.per_session.samples
        ),
    );
    row(
        &format!("{name}: first session p50/max"),
        format!(
            "{:.0} / {:.0} ms",
            r.first_session.p50_ms, r.first_session.max_ms
        ),
        note_first,
    );
    if r.hub_last_write.samples > 0 {
        row(
            &format!("{name}: hub's last /desired/ write"),
            format!(
                "{:.0} / {:.0} ms",
                r.hub_last_write.p50_ms, r.hub_last_write.max_ms
            ),
            &format!(
                "p50 / max from t0 to the hub log's last \"desired state changed\" line of the \
                 round ({} lines, one per app whose rollout record moved)",
                r.rounds_detail.first().map_or(0, |d| d.hub_writes)
            ),
        );
    }
    row(
        &format!("{name}: all sessions, per round"),
        per_round(r, ROUNDS_PER_LINE),
        "",
    );
}

fn delivery_rows(d: &DeliveryReport, row: &mut impl FnMut(&str, String, &str)) {
    row(
        "sessions requested / held",
        format!(
            "{} / {} (end: {})",
            d.sessions_requested, d.sessions_held, d.sessions_held_end
        ),
        &format!(
            "held = the hub's sessions gauge; failures: {} enroll, {} open, {} ended early, {} \
             bundle fetch/verify",
            d.enroll_failed, d.open_failed, d.sessions_ended_early, d.delivery_failures
        ),
    );
    row(
        "enroll, handshakes",
        format!(
            "{:.0} joins/s, {:.0} handshakes/s",
            d.enroll_per_sec, d.handshakes_per_sec
        ),
        "",
    );
    row(
        "bundle",
        format!("{} B", d.bundle_bytes),
        if d.per_cluster_bundles {
            "uncompressed; one per cluster (${cluster.name} in a manifest)"
        } else {
            "uncompressed; one bundle shared by every cluster"
        },
    );
    row(
        "first sync: all sessions hold it",
        format!("{:.0} ms", d.initial_ms),
        "from AddSource",
    );
    let rounds = d.webhook.rounds;
    rounds_rows(
        "webhook",
        &d.webhook,
        &if rounds < 100 {
            format!(
                "t0 = just before the signed POST; per round, the last session; p99 of {rounds} \
                 rounds = the worst round"
            )
        } else {
            "t0 = just before the signed POST; per round, the last session".to_string()
        },
        "fetch + render + the first cluster's write + its session's fetch and verify",
        row,
    );
    rounds_rows(
        "polling",
        &d.poll,
        &format!(
            "interval {} s, so dominated by the interval: t0 = commit, at a random phase of the \
             polling cycle",
            d.poll_interval_secs
        ),
        "includes the wait for the next poll",
        row,
    );
    row(
        "hub RSS baseline / held / end",
        format!(
            "{} / {} / {}",
            mib(d.hub_baseline.rss_kib),
            mib(d.hub_held.rss_kib),
            mib(d.hub_end.rss_kib)
        ),
        &format!(
            "peak {}; held = all sessions open, end = after every round",
            mib(d.hub_end.hwm_kib)
        ),
    );
}
