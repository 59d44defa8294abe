//! The results: one serializable record, printed as one table and optionally written as JSON.

use comfy_table::{ColumnConstraint, Table};
use flotilla_tests::bench::table::{align, mib, new_table, thousands_f64, verdict_cells};
use serde::Serialize;

use crate::delivery::{DeliveryReport, Rounds};
use crate::gitfetch::{FetchReport, Pair};
use crate::render::{RenderReport, Throughput};
use crate::repo::LargeRepo;

/// Every connected session holds the new bundle digest this soon after the webhook (p99).
pub const TARGET_MS: f64 = 1000.0;
/// The scale at which the target is judged.
pub const TARGET_SESSIONS: usize = 1000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub delivery: Option<DeliveryReport>,
    pub large_repo: Option<LargeRepo>,
    pub render: Option<RenderReport>,
    pub fetch: Option<FetchReport>,
    pub target: String,
    /// "PASS", "FAIL", "n/a …" or "INCOMPLETE …".
    pub verdict: String,
}

/// Wide enough for the values on one line; long notes wrap.
const TABLE_WIDTH: u16 = 150;

fn lat3(p50: f64, p99: f64, max: f64) -> String {
    format!("{p50:.0} / {p99:.0} / {max:.0} ms")
}

impl Report {
    /// Sets the verdict from the webhook rounds.
    pub fn finish(&mut self) {
        self.target = format!(
            "webhook → every connected session holds the new bundle digest in ≤ {:.0} s p99, at {TARGET_SESSIONS} sessions",
            TARGET_MS / 1000.0
        );
        self.verdict = match &self.delivery {
            None => "n/a (delivery not measured)".into(),
            Some(d) if d.webhook.rounds == 0 => "n/a (no webhook rounds)".into(),
            Some(d) if d.sessions_requested < TARGET_SESSIONS => format!(
                "n/a (judged at ≥ {TARGET_SESSIONS} sessions; here p99 {:.0} ms)",
                d.webhook.all_sessions.p99_ms
            ),
            Some(d) if d.webhook.all_sessions.p99_ms <= TARGET_MS => "PASS".into(),
            Some(_) => "FAIL".into(),
        };
    }

    pub fn passed(&self) -> bool {
        self.verdict != "FAIL"
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
        row("verdict", verdict, &why);
        align(&mut t, 3);
        t
    }
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
                 round ({} lines, one per cluster)",
                r.rounds_detail.first().map_or(0, |d| d.hub_writes)
            ),
        );
    }
    row(
        &format!("{name}: all sessions, per round"),
        r.rounds_detail
            .iter()
            .map(|d| format!("{:.0}", d.last_ms))
            .collect::<Vec<_>>()
            .join(", ")
            + " ms",
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
