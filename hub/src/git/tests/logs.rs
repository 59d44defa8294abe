//! What the module logs: everything a fetch records (spans, events, their fields) is captured
//! and searched for the secrets it was given.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use super::https::{GitHttpsServer, served};
use super::*;
use crate::git::{Auth, GitError};

/// A subscriber that writes every span and event, with all fields, into one string.
#[derive(Clone, Default)]
struct Capture {
    text: Arc<Mutex<String>>,
    next_id: Arc<AtomicU64>,
}

impl Capture {
    fn text(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn append(&self, name: &str, visit: impl FnOnce(&mut dyn Visit)) {
        let mut line = Line(format!("{name}:"));
        visit(&mut line);
        if let Ok(mut text) = self.text.lock() {
            text.push_str(&line.0);
            text.push('\n');
        }
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.append(span.metadata().name(), |v| span.record(v));
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        self.append("record", |v| values.record(v));
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        self.append(event.metadata().name(), |v| event.record(v));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn mirror_for(data: &DataDir, server: &GitHttpsServer, spec: &SourceSpec) -> Mirror {
    Mirror::open_or_init(data.path(), spec)
        .expect("mirror")
        .with_options(server.options())
}

/// The capture installed as this test process's global subscriber (once): it sees every
/// thread's spans and events, this test's fetches among them.
fn global_capture() -> &'static Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.clone())
            .expect("no other global subscriber in the hub's unit tests");
        capture
    })
}

#[test]
fn fetch_logs_never_contain_secrets() {
    const SECRET: &str = "l0gged-secret-token";
    let (_up, _root, server) = served(Some(SECRET));
    let data = DataDir::new();
    // The process-wide subscriber: a scoped one (`with_default`) races with the other tests,
    // whose threads register the same callsites while nothing listens and may leave them off.
    let capture = global_capture();
    {
        let mut good = spec("logs", &server.url("fleet.git"), "main");
        good.auth = Some(Auth::Token(SECRET.into()));
        mirror_for(&data, &server, &good)
            .fetch(&good)
            .expect("fetch");

        let in_url = format!("https://x-access-token:{SECRET}@127.0.0.1:1/x.git");
        let refused = spec("logs-refused", &in_url, "main");
        let err = mirror_for(&data, &server, &refused)
            .fetch(&refused)
            .expect_err("refused");
        assert!(matches!(err, GitError::Fetch { .. }), "{err:?}");
        tracing::error!(error = %err, spec = ?refused, "as the hub would log it");
    }
    let text = capture.text();
    assert!(text.contains("fetched"), "nothing captured: {text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}
