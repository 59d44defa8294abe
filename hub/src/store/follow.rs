//! Following a prefix of a store that other hub replicas write too: list it, hand the list
//! over, then hand over every change from the revision after the list on; when the watch fails
//! (its start compacted away, the store unreachable) list again after a backoff.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::{KeyValue, Revision, Store, WatchEvent};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Follows `prefix` of `store` until `shutdown`: `on_list` gets every key under it and the
/// revision they were read at (at the start, and again after a failed watch), `on_event` each
/// change after that. `loaded_at`: the
/// caller has read the prefix at that revision already, so the first list is skipped and the
/// watch starts after it. `what` names the records in the log.
pub async fn follow(
    store: &dyn Store,
    prefix: &str,
    what: &str,
    loaded_at: Option<Revision>,
    mut shutdown: watch::Receiver<bool>,
    mut on_list: impl FnMut(Vec<KeyValue>, Revision),
    mut on_event: impl FnMut(WatchEvent),
) {
    let mut backoff = RETRY_MIN;
    let mut loaded_at = loaded_at;
    loop {
        let listed = match loaded_at.take() {
            Some(at) => Ok(at),
            None => store.list(prefix).await.map(|(items, at)| {
                on_list(items, at);
                at
            }),
        };
        let failure = match listed {
            Err(e) => e.to_string(),
            Ok(at) => match store.watch(prefix, at + 1).await {
                Err(e) => e.to_string(),
                Ok(mut events) => loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        ev = events.next() => match ev {
                            Some(Ok(ev)) => {
                                on_event(ev);
                                backoff = RETRY_MIN;
                            }
                            Some(Err(e)) => break e.to_string(),
                            None => break "the watch ended".to_string(),
                        },
                    }
                },
            },
        };
        tracing::warn!(error = %failure, "following {what} other replicas write; listing them again");
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}
