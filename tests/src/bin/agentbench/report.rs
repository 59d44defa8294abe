//! The results: one serializable record, printed as tables (idle footprint, apply time) and
//! optionally written as JSON.

use comfy_table::Table;
use flotilla_tests::bench::table::{align, mib, new_table, thousands_f64 as thousands};
use serde::Serialize;

use crate::apply::ScenarioResult;
use crate::idle::{AgentResult, IdleReport};

/// Idle RSS targets: (apps on the cluster, MiB).
pub const RSS_TARGETS_MIB: [(usize, f64); 2] = [(0, 20.0), (100, 40.0)];

/// Wide enough for the values on one line; long notes wrap.
const TABLE_WIDTH: u16 = 150;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub idle: Option<IdleReport>,
    pub apply: Option<Vec<ScenarioResult>>,
    /// Per judged agent: "PASS"/"FAIL" with the figures.
    pub verdicts: Vec<String>,
}

fn target_of(apps: usize) -> Option<f64> {
    RSS_TARGETS_MIB
        .iter()
        .find(|(a, _)| *a == apps)
        .map(|(_, t)| *t)
}

fn table(header: Vec<&str>) -> Table {
    new_table(header, TABLE_WIDTH)
}

impl Report {
    /// Judges each agent whose app count has a target by its VmRSS at the end of the window.
    pub fn finish(&mut self) {
        self.verdicts.clear();
        let Some(idle) = &self.idle else { return };
        for a in &idle.agents {
            if let Some(t) = target_of(a.apps) {
                let rss = a.end.rss_kib as f64 / 1024.0;
                let v = if rss <= t { "PASS" } else { "FAIL" };
                self.verdicts.push(format!(
                    "{v}: {} apps idle RSS {rss:.1} MiB (target ≤ {t:.0} MiB)",
                    a.apps
                ));
            }
        }
    }

    pub fn passed(&self) -> bool {
        !self.verdicts.iter().any(|v| v.starts_with("FAIL"))
    }

    /// Every table and note, ready to print.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(i) = &self.idle {
            out.push_str(&idle_text(i));
        }
        if let Some(a) = &self.apply {
            out.push_str(&apply_text(a));
        }
        if !self.verdicts.is_empty() {
            out.push_str("\nIdle RSS targets:\n");
            for v in &self.verdicts {
                out.push_str(&format!("  {v}\n"));
            }
        }
        out
    }
}

fn idle_text(i: &IdleReport) -> String {
    let mut header = vec!["measure".to_string()];
    header.extend(
        i.agents
            .iter()
            .map(|a| format!("{} ({} apps)", a.cluster, a.apps)),
    );
    let mut t = table(header.iter().map(String::as_str).collect());
    let mut row = |name: &str, f: &dyn Fn(&AgentResult) -> String| {
        let mut r = vec![name.to_string()];
        r.extend(i.agents.iter().map(f));
        t.add_row(r);
    };
    row("objects", &|a| {
        format!(
            "{} × {} = {}",
            a.apps,
            i.objects_per_app,
            thousands(a.objects as f64)
        )
    });
    row("start → connected", &|a| {
        format!("{:.0} ms", a.connected_ms)
    });
    row("start → every app healthy", &|a| {
        format!("{:.0} ms", a.healthy_ms)
    });
    row("RSS when healthy", &|a| mib(a.at_healthy.rss_kib));
    row("RSS after idle window", &|a| mib(a.end.rss_kib));
    row("  of which anon / file", &|a| {
        format!("{} / {}", mib(a.end.anon_kib), mib(a.end.file_kib))
    });
    row("peak RSS (VmHWM)", &|a| mib(a.hwm_kib));
    row("CPU, idle window average", &|a| {
        format!("{:.2} %", a.cpu_percent)
    });
    row("CPU, busiest 1 s of window", &|a| {
        format!("{:.0} %", a.max_interval_cpu_percent)
    });
    row("threads", &|a| a.threads.to_string());
    row("after the window", &|a| {
        format!(
            "{}; {} drifted, {} healed",
            if a.still_healthy {
                "all healthy"
            } else {
                "NOT all healthy"
            },
            a.drifted,
            a.healed
        )
    });
    row("idle RSS target", &|a| match target_of(a.apps) {
        Some(t) => {
            let ok = a.end.rss_kib as f64 / 1024.0 <= t;
            format!("≤ {t:.0} MiB: {}", if ok { "PASS" } else { "FAIL" })
        }
        None => "—".into(),
    });
    align(&mut t, 1);
    let drift = if i.drift_check_in_window {
        "long enough for at least one drift check per agent (the busiest 1 s shows it)"
    } else {
        "shorter than the drift interval, so it may hold no drift check"
    };
    let env = if i.agent_env.is_empty() {
        String::new()
    } else {
        format!("\n  Agent environment: {}.", i.agent_env.join(" "))
    };
    format!(
        "\nAgent idle footprint (real flotilla-agent child processes, --cluster simulated --sim-ready-delay 0s)\n{t}\n\
         NOTE: the simulated cluster — an in-memory Kubernetes API server holding every applied object —\n  \
         runs INSIDE the agent process, so its memory is included in the agent's RSS above; against a real\n  \
         cluster those objects live in the API server, not in the agent.\n  \
         anon = RssAnon (heap, stacks); file = RssFile (pages of the executable, shared and clean).\n  \
         Idle window: {:.1} s, all agents at once, sampled every second; drift interval {:.0} s ±10%:\n  {drift}.\n  \
         CPU is (utime + stime) over the window as % of one core. Hub heartbeat interval {}.\n  \
         Start → healthy: agent start → join (key, CSR) → session → bundles fetched → applied → the hub's\n  \
         GetCluster shows every app applied and healthy (polled every {} ms); agents started one at a time.{env}\n",
        i.window_secs,
        i.drift_interval_secs,
        i.hub_heartbeat_interval,
        crate::idle::POLL.as_millis()
    )
}

fn apply_text(results: &[ScenarioResult]) -> String {
    let mut t = table(vec![
        "scenario",
        "objects",
        "→ all applied, min / median",
        "→ all healthy, min / median",
        "objects/s → applied",
        "objects/s → healthy",
        "runs",
    ]);
    for r in results {
        t.add_row(vec![
            r.scenario.name.clone(),
            thousands(r.objects as f64),
            format!("{:.0} / {:.0} ms", r.applied.min_ms, r.applied.median_ms),
            format!("{:.0} / {:.0} ms", r.healthy.min_ms, r.healthy.median_ms),
            thousands(r.applied_objects_per_sec),
            thousands(r.healthy_objects_per_sec),
            r.runs.to_string(),
        ]);
    }
    align(&mut t, 1);
    format!(
        "\nApply on the simulated backend (in-process: Reconciler → kube::Client → SimCluster, ready delay 0, health poll 50 ms)\n{t}\n  \
         Timed from sending the DesiredState (bundles already in the agent's bundle store) to every app reported\n  \
         `applied` (every object accepted by server-side apply, inventories written) and to every app `healthy`.\n  \
         objects/s from the medians. With ready delay 0 the simulator makes workloads ready at the write, and\n  \
         the reconciler publishes once per pass over all apps, so both moments usually coincide. Each run uses\n  \
         a fresh simulated cluster; objects are 1 Namespace per app plus Deployments, ClusterIP Services and\n  \
         ConfigMaps in about equal parts.\n"
    )
}
