//! The status board: the newest status of every app the agent reconciles, which of them the hub
//! has not been sent, and which it has been sent but not yet confirmed durable. It is the agent's
//! outbox: reconcile writes here whether or not a session is up; the session sends what changed,
//! and everything after a reconnect, in reports of at most [`MAX_REPORT_BYTES`], each numbered
//! (`seq`). The hub acknowledges a report once it is persisted ([`StatusBoard::ack`]); until then
//! the board keeps what it carried — an app reported `removed` stays on the board until that
//! report is acknowledged —, so nothing the hub may have lost is forgotten here: a reconnect
//! sends every app again. Newest wins per app, so the outbox is bounded by the number of apps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use flotilla_proto::state::Phase;
use flotilla_proto::v1::{AppStatus, StatusReport};
use tokio::sync::watch;

pub use flotilla_proto::limits::MAX_REPORT_BYTES;
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
    /// Apps whose newest status was sent but not acknowledged, with the `seq` of the report
    /// that carried it.
    unacked: BTreeMap<String, u64>,
    /// The `seq` of the last report taken (0: none yet).
    seq: u64,
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

    /// The app is no longer reconciled: the hub is told once (`phase: removed`), then it is gone
    /// (once the hub acknowledged that report, or a reconnect replaced everything).
    pub fn remove(&self, generation: u64, app: &str) {
        self.remove_saying(generation, app, "no longer desired; objects pruned".into());
    }

    /// [`Self::remove`] with its own message (e.g. why a namespace was kept).
    pub fn remove_saying(&self, generation: u64, app: &str, message: String) {
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
                message,
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

    /// How many apps have a status the hub has not confirmed durable (not sent, or sent and not
    /// acknowledged).
    pub fn unconfirmed(&self) -> usize {
        let b = self.board.lock().expect("status board lock");
        let sent_only = b.unacked.keys().filter(|a| !b.unsent.contains(*a)).count();
        b.unsent.len() + sent_only
    }

    /// Takes what the hub has not heard (`all`: everything, as after a reconnect; the first
    /// report then says `replace`) as reports of at most [`MAX_REPORT_BYTES`], each with the
    /// next `seq`. What they carry stays unacknowledged until [`StatusBoard::ack`].
    pub fn take_reports(&self, all: bool) -> Vec<StatusReport> {
        let mut b = self.board.lock().expect("status board lock");
        let names: Vec<String> = if all {
            // A replacing report supersedes every earlier one, acknowledged or not, and leaves
            // removed apps out: the hub forgets them with it.
            b.unacked.clear();
            b.apps.retain(|_, s| s.phase() != Phase::Removed);
            b.apps.keys().cloned().collect()
        } else {
            b.unsent.iter().cloned().collect()
        };
        b.unsent.clear();
        let statuses: Vec<AppStatus> = names
            .iter()
            .filter_map(|name| b.apps.get(name).cloned())
            .collect();
        let mut reports = StatusReport::split(b.generation, all, statuses);
        for r in &mut reports {
            b.seq += 1;
            r.seq = b.seq;
            for a in &r.apps {
                b.unacked.insert(a.app.clone(), r.seq);
            }
        }
        reports
    }

    /// The hub persisted every report up to `seq` (it acknowledges a session's reports in
    /// order): what they carried is confirmed, and removed apps reported there leave the board.
    pub fn ack(&self, seq: u64) {
        let mut b = self.board.lock().expect("status board lock");
        let b = &mut *b;
        let confirmed: Vec<String> = b
            .unacked
            .iter()
            .filter(|(_, s)| **s <= seq)
            .map(|(app, _)| app.clone())
            .collect();
        for app in confirmed {
            b.unacked.remove(&app);
            let removed = b
                .apps
                .get(&app)
                .is_some_and(|s| s.phase() == Phase::Removed);
            if removed && !b.unsent.contains(&app) {
                b.apps.remove(&app);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::v1::ObjectStatus;
    use prost::Message;

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
    fn removed_apps_are_reported_once_then_forgotten_when_acknowledged() {
        let b = StatusBoard::default();
        b.set(1, status("a", Phase::Applied));
        b.take_reports(false);
        b.remove(2, "a");
        b.remove(2, "a");
        let r = b.take_reports(false);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].apps[0].phase(), Phase::Removed);
        assert!(b.take_reports(false).is_empty(), "reported once");
        assert!(b.get("a").is_some(), "kept until the hub has it");
        b.ack(r[0].seq);
        assert!(b.get("a").is_none());
        assert_eq!(b.unconfirmed(), 0);
        assert!(b.take_reports(true)[0].apps.is_empty());
    }

    #[test]
    fn what_was_not_acknowledged_is_sent_again_after_a_reconnect() {
        let b = StatusBoard::default();
        b.set(1, status("a", Phase::Applying));
        b.set(1, status("b", Phase::Applying));
        let first = b.take_reports(true);
        b.ack(first[0].seq);
        assert_eq!(b.unconfirmed(), 0);

        // Sent, never acknowledged (the hub died before persisting them).
        b.set(1, status("a", Phase::Applied));
        b.remove(1, "b");
        let lost = b.take_reports(false);
        assert!(lost[0].seq > first[0].seq, "numbered in order");
        assert_eq!(b.unconfirmed(), 2);
        assert!(b.get("b").is_some(), "an unacknowledged removal stays");

        // The next session: everything again, the newest of each app, removed ones left out.
        let again = b.take_reports(true);
        assert_eq!(again.len(), 1);
        assert!(again[0].replace && again[0].seq > lost[0].seq);
        let apps: Vec<_> = again[0]
            .apps
            .iter()
            .map(|a| (a.app.as_str(), a.phase()))
            .collect();
        assert_eq!(apps, [("a", Phase::Applied)]);
        // A late ack of the lost report does not confirm the re-sent one.
        b.ack(lost[0].seq);
        assert_eq!(b.unconfirmed(), 1);
        b.ack(again[0].seq);
        assert_eq!(b.unconfirmed(), 0);
    }

    #[test]
    fn a_change_after_sending_is_not_confirmed_by_the_older_ack() {
        let b = StatusBoard::default();
        b.set(1, status("a", Phase::Applying));
        let r = b.take_reports(false);
        b.set(1, status("a", Phase::Applied));
        b.ack(r[0].seq);
        assert_eq!(b.unconfirmed(), 1, "the newer status is not sent yet");
        let r = b.take_reports(false);
        assert_eq!(r[0].apps[0].phase(), Phase::Applied);
        b.ack(r[0].seq);
        assert_eq!(b.unconfirmed(), 0);
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
