//! Following a prefix of a store that other hub replicas write too: list it, hand the list
//! over, then hand over every change from the revision after the list on; when the watch fails
//! (its start compacted away, the store unreachable) list again after a backoff.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::{KeyValue, Store, WatchEvent};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Follows `prefix` of `store` until `shutdown`: `on_list` gets every key under it (at the
/// start, and again after a failed watch), `on_event` each change after that. `what` names the
/// records in the log.
pub async fn follow(
    store: &dyn Store,
    prefix: &str,
    what: &str,
    mut shutdown: watch::Receiver<bool>,
    mut on_list: impl FnMut(Vec<KeyValue>),
    mut on_event: impl FnMut(WatchEvent),
) {
    let mut backoff = RETRY_MIN;
    loop {
        let failure = match store.list(prefix).await {
            Err(e) => e.to_string(),
            Ok((items, at)) => {
                on_list(items);
                match store.watch(prefix, at + 1).await {
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
                }
            }
        };
        tracing::warn!(error = %failure, "following {what} other replicas write; listing them again");
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}
