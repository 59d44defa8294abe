//! The status board: the newest status of every app the agent reconciles, and which of them the
//! hub has not heard yet. It is the agent's outbox: reconcile writes here whether or not a
//! session is up; the session sends what changed, and everything after a reconnect, in reports
//! of at most [`MAX_REPORT_BYTES`]. Newest wins per app, so the outbox is bounded by the number
//! of apps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use flotilla_proto::state::Phase;
use flotilla_proto::v1::{AppStatus, StatusReport};
use prost::Message;
use tokio::sync::watch;

/// The largest status report the agent sends.
pub const MAX_REPORT_BYTES: usize = 64 << 10;
/// Longest app message kept in a report.
pub const MAX_MESSAGE: usize = 1024;
/// Longest object message kept in a report.
pub const MAX_OBJECT_MESSAGE: usize = 256;

#[derive(Default)]
struct Board {
    generation: u64,
    apps: BTreeMap<String, AppStatus>,
    /// Apps whose newest status the hub has not been sent.
    unsent: BTreeSet<String>,
}

/// Shared between the reconciler (writer) and the session (reader).
#[derive(Clone)]
pub struct StatusBoard {
    board: Arc<Mutex<Board>>,
    changed: watch::Sender<u64>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            board: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max.saturating_sub(3);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str("...");
    }
}

fn same_except_time(a: &AppStatus, b: &AppStatus) -> bool {
    let mut a = a.clone();
    a.observed_unix_ms = b.observed_unix_ms;
    a == *b
}

impl StatusBoard {
    /// Sets the status of `app`; it goes out with the next report if it changed (the observation
    /// time alone is no change).
    pub fn set(&self, generation: u64, mut status: AppStatus) {
        truncate(&mut status.message, MAX_MESSAGE);
        for o in &mut status.worst {
            truncate(&mut o.message, MAX_OBJECT_MESSAGE);
        }
        let mut b = self.board.lock().expect("status board lock");
        let changed = b.generation != generation
            || !b
                .apps
                .get(&status.app)
                .is_some_and(|old| same_except_time(old, &status));
        b.generation = generation;
        if changed {
            b.unsent.insert(status.app.clone());
            b.apps.insert(status.app.clone(), status);
            drop(b);
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// The app is no longer reconciled: the hub is told once (`phase: removed`), then it is gone.
    pub fn remove(&self, generation: u64, app: &str) {
        let mut b = self.board.lock().expect("status board lock");
        if b.apps.get(app).is_some_and(|s| s.phase() == Phase::Removed) {
            return;
        }
        b.generation = generation;
        b.apps.insert(
            app.to_string(),
            AppStatus {
                app: app.to_string(),
                phase: Phase::Removed.into(),
                message: "no longer desired; objects pruned".into(),
                ..Default::default()
            },
        );
        b.unsent.insert(app.to_string());
        drop(b);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Wakes whoever waits for new status.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every app's newest status (without the removed ones).
    pub fn snapshot(&self) -> Vec<AppStatus> {
        let b = self.board.lock().expect("status board lock");
        b.apps
            .values()
            .filter(|s| s.phase() != Phase::Removed)
            .cloned()
            .collect()
    }

    pub fn get(&self, app: &str) -> Option<AppStatus> {
        self.board
            .lock()
            .expect("status board lock")
            .apps
            .get(app)
            .cloned()
    }

    /// Takes what the hub has not heard (`all`: everything, as after a reconnect; the first
    /// report then says `replace`) as reports of at most [`MAX_REPORT_BYTES`]. Removed apps leave
    /// the board once taken.
    pub fn take_reports(&self, all: bool) -> Vec<StatusReport> {
        let mut b = self.board.lock().expect("status board lock");
        let names: Vec<String> = if all {
            b.apps.keys().cloned().collect()
        } else {
            b.unsent.iter().cloned().collect()
        };
        b.unsent.clear();
        let generation = b.generation;
        let mut reports = Vec::new();
        let mut current = StatusReport {
            generation,
            apps: Vec::new(),
            replace: all,
        };
        for name in names {
            let Some(status) = b.apps.get(&name).cloned() else {
                continue;
            };
            if status.phase() == Phase::Removed {
                b.apps.remove(&name);
                if all {
                    // After a reconnect the replacing report already leaves it out.
                    continue;
                }
            }
            let grown = current.encoded_len() + status.encoded_len() + 8;
            if grown > MAX_REPORT_BYTES && !current.apps.is_empty() {
                reports.push(std::mem::replace(
                    &mut current,
                    StatusReport {
                        generation,
                        apps: Vec::new(),
                        replace: false,
                    },
                ));
            }
            current.apps.push(status);
        }
        if !current.apps.is_empty() || current.replace {
            reports.push(current);
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::v1::ObjectStatus;

    fn status(app: &str, phase: Phase) -> AppStatus {
        AppStatus {
            app: app.into(),
            revision: "r1".into(),
            phase: phase.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_changes_go_out_and_newest_wins() {
        let b = StatusBoard::default();
        b.set(1, status("a", Phase::Applying));
        b.set(1, status("a", Phase::Applied));
        b.set(1, status("b", Phase::Applied));
        let r = b.take_reports(false);
        assert_eq!(r.len(), 1);
        assert!(!r[0].replace);
        let phases: Vec<_> = r[0].apps.iter().map(|a| a.phase()).collect();
        assert_eq!(phases, [Phase::Applied, Phase::Applied]);
        let mut again = status("a", Phase::Applied);
        again.observed_unix_ms = 99;
        b.set(1, again);
        assert!(
            b.take_reports(false).is_empty(),
            "a new time alone is no change"
        );
        let all = b.take_reports(true);
        assert!(all[0].replace);
        assert_eq!(all[0].apps.len(), 2);
    }

    #[test]
    fn removed_apps_are_reported_once_then_forgotten() {
        let b = StatusBoard::default();
        b.set(1, status("a", Phase::Applied));
        b.take_reports(false);
        b.remove(2, "a");
        let r = b.take_reports(false);
        assert_eq!(r[0].apps[0].phase(), Phase::Removed);
        assert!(b.get("a").is_none());
        assert!(b.take_reports(true)[0].apps.is_empty());
    }

    #[test]
    fn reports_are_bounded_and_messages_truncated() {
        let b = StatusBoard::default();
        for i in 0..200 {
            let mut s = status(&format!("app-{i:03}"), Phase::Failed);
            s.message = "x".repeat(5000);
            s.worst = (0..5)
                .map(|j| ObjectStatus {
                    name: format!("o{j}"),
                    message: "é".repeat(400),
                    ..Default::default()
                })
                .collect();
            b.set(1, s);
        }
        let reports = b.take_reports(true);
        assert!(reports.len() > 1);
        assert!(reports.iter().all(|r| r.encoded_len() <= MAX_REPORT_BYTES));
        assert_eq!(reports.iter().map(|r| r.apps.len()).sum::<usize>(), 200);
        assert!(reports[0].replace && !reports[1].replace);
        let a = &reports[0].apps[0];
        assert!(a.message.len() <= MAX_MESSAGE && a.message.ends_with("..."));
        assert!(a.worst[0].message.len() <= MAX_OBJECT_MESSAGE);
    }
}
