//! File-backed [`Store`] implementation on the embedded redb database.
//!
//! Layout: `kv` maps a key to `create_revision (u64 LE) | mod_revision (u64 LE) | value`,
//! `meta` holds the current revision and the highest revision trimmed from the event log, and
//! `event_log` maps every revision to the event written at it, so watches can replay history.
//! Every write is one durable redb write transaction, committed before the call returns.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use ::redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{CasOp, KeyValue, Revision, Store, StoreError, WatchEvent, WatchStream, validate_key};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("event_log");

/// `meta` entry: the current store revision.
const META_REVISION: &str = "revision";
/// `meta` entry: the highest revision removed from the event log (0 = nothing removed).
const META_COMPACTED: &str = "compacted";

/// Number of events kept in the log by [`RedbStore::open`].
pub const DEFAULT_HISTORY: u64 = 100_000;
/// Bytes of events kept in the log by [`RedbStore::open`], whatever their number: a log of
/// large records (rollout records are tens of KiB) is bounded by this, not by its count.
pub const DEFAULT_HISTORY_BYTES: u64 = 64 << 20;
/// Memory redb may use to cache pages. Its default, 1 GiB, would be most of a hub's memory; the
/// hub keeps what it reads often in memory itself and the kernel's page cache holds the file,
/// so redb's cache mostly held pages just written (with 128 MiB, 1.5 KiB per enrolled cluster).
const CACHE_BYTES: usize = 16 << 20;
/// `meta` entry: bytes of the events in the log.
const META_LOG_BYTES: &str = "log_bytes";
/// Live events buffered per watcher before it lags and has to re-read the log.
const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
/// Events read from the log per blocking call while a watcher catches up.
const REPLAY_PAGE: usize = 1024;

const KV_HEADER: usize = 16;
const EVENT_PUT: u8 = 0;
const EVENT_DELETE: u8 = 1;

/// A [`Store`] persisted in a single redb file.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    history: History,
    /// Held across commit and broadcast so live events are sent in revision order.
    write_lock: Mutex<()>,
    events: broadcast::Sender<Arc<WatchEvent>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .field("history", &self.inner.history.events)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates, with its parent directories) the store file at `path`, keeping the
    /// last [`DEFAULT_HISTORY`] events for watch replay. Does blocking file I/O.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        Self::open_with_history(path, DEFAULT_HISTORY)
    }

    /// Like [`RedbStore::open`], keeping the last `history` events (at least 1) for watch replay.
    pub fn open_with_history(path: &Path, history: u64) -> Result<RedbStore, StoreError> {
        Self::open_with_options(
            path,
            history,
            DEFAULT_CHANNEL_CAPACITY,
            DEFAULT_HISTORY_BYTES,
        )
    }

    fn open_with_options(
        path: &Path,
        history: u64,
        channel_capacity: usize,
        history_bytes: u64,
    ) -> Result<RedbStore, StoreError> {
        let fail =
            |what: String, source: Box<dyn std::error::Error + Send + Sync>| StoreError::Backend {
                what: format!("redb open {}{what}", path.display()),
                source,
            };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!(": creating {}", parent.display()), e.into()))?;
        }
        let db = ::redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| fail(String::new(), e.into()))?;
        let history = History {
            events: history.max(1),
            bytes: history_bytes.max(1),
        };
        init_tables(&db, history).map_err(|e| fail(String::new(), e.into()))?;
        let (events, _) = broadcast::channel(channel_capacity.max(1));
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_owned(),
                history,
                write_lock: Mutex::new(()),
                events,
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool, naming `op` and `key` in any error.
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        f: impl FnOnce(&Inner) -> Result<T, ::redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        run_blocking(Arc::clone(&self.inner), op, key, f).await
    }

    async fn mutate(
        &self,
        op: &'static str,
        key: &str,
        condition: Condition,
        change: Change,
    ) -> Result<Outcome, StoreError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.run(op, key, move |inner| {
            inner.mutate(&owned, condition, change)
        })
        .await
    }
}

async fn run_blocking<T: Send + 'static>(
    inner: Arc<Inner>,
    op: &'static str,
    key: &str,
    f: impl FnOnce(&Inner) -> Result<T, ::redb::Error> + Send + 'static,
) -> Result<T, StoreError> {
    let what = if key.is_empty() {
        format!("redb {op}")
    } else {
        format!("redb {op} {key}")
    };
    match tokio::task::spawn_blocking(move || f(&inner)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError::Backend {
            what,
            source: e.into(),
        }),
        Err(e) => Err(StoreError::Backend {
            what: format!("{what}: blocking task failed"),
            source: e.into(),
        }),
    }
}

/// How much of the event log is kept: at most `events` events and `bytes` bytes of them.
#[derive(Debug, Clone, Copy)]
struct History {
    events: u64,
    bytes: u64,
}

/// Creates the tables (so read transactions never find them missing), counts the log's bytes
/// and trims it in case the file was written with a longer history.
fn init_tables(db: &Database, history: History) -> Result<(), ::redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(KV)?;
        let mut meta = txn.open_table(META)?;
        let mut log = txn.open_table(EVENT_LOG)?;
        let mut bytes = 0u64;
        for entry in log.iter()? {
            bytes += entry?.1.value().len() as u64;
        }
        meta.insert(META_LOG_BYTES, bytes)?;
        let revision = read_meta(&meta, META_REVISION)?;
        trim_log(&mut log, &mut meta, revision, history)?;
    }
    txn.commit()?;
    Ok(())
}

/// Appends the event written at `revision` to the log.
fn log_event(
    log: &mut Table<u64, &[u8]>,
    meta: &mut Table<&str, u64>,
    revision: Revision,
    event: &WatchEvent,
) -> Result<(), ::redb::Error> {
    let encoded = encode_event(event);
    log.insert(revision, encoded.as_slice())?;
    let bytes = read_meta(meta, META_LOG_BYTES)? + encoded.len() as u64;
    meta.insert(META_LOG_BYTES, bytes)?;
    Ok(())
}

fn read_meta(
    meta: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, ::redb::Error> {
    Ok(meta.get(name)?.map_or(0, |v| v.value()))
}

/// Drops log entries so that at most `history.events` revisions up to `current` remain, and
/// when the log holds more than `history.bytes`, the oldest until it holds a quarter less (so
/// that a log of large events is not trimmed on every write). The newest event always stays.
fn trim_log(
    log: &mut Table<u64, &[u8]>,
    meta: &mut Table<&str, u64>,
    current: Revision,
    history: History,
) -> Result<(), ::redb::Error> {
    let compacted = read_meta(meta, META_COMPACTED)?;
    let mut bytes = read_meta(meta, META_LOG_BYTES)?;
    let mut drop_through = current.saturating_sub(history.events).max(compacted);
    if bytes > history.bytes {
        let target = history.bytes - history.bytes / 4;
        let mut left = bytes;
        for entry in log.iter()? {
            let (k, v) = entry?;
            let k = k.value();
            if k >= current {
                break;
            }
            if k > drop_through && left <= target {
                break;
            }
            left = left.saturating_sub(v.value().len() as u64);
            drop_through = drop_through.max(k);
        }
    }
    if drop_through > compacted {
        let mut dropped = 0u64;
        log.retain_in(..=drop_through, |_, v| {
            dropped += v.len() as u64;
            false
        })?;
        bytes = bytes.saturating_sub(dropped);
        meta.insert(META_COMPACTED, drop_through)?;
        meta.insert(META_LOG_BYTES, bytes)?;
    }
    Ok(())
}

fn encode_kv(create_revision: Revision, mod_revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(KV_HEADER + value.len());
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn read_u64(raw: &[u8], at: usize) -> Option<u64> {
    let bytes = raw.get(at..at + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue, ::redb::Error> {
    match (read_u64(raw, 0), read_u64(raw, 8)) {
        (Some(create_revision), Some(mod_revision)) => Ok(KeyValue {
            key: key.to_owned(),
            value: raw[KV_HEADER..].to_vec(),
            create_revision,
            mod_revision,
        }),
        _ => Err(::redb::Error::Corrupted(format!(
            "kv record for {key} is {} bytes, shorter than its header",
            raw.len()
        ))),
    }
}

/// Log record: `EVENT_PUT | create_revision | key_len (u64 LE) | key | value` or
/// `EVENT_DELETE | key`; the revision is the log key.
fn encode_event(event: &WatchEvent) -> Vec<u8> {
    match event {
        WatchEvent::Put(kv) => {
            let mut out = Vec::with_capacity(17 + kv.key.len() + kv.value.len());
            out.push(EVENT_PUT);
            out.extend_from_slice(&kv.create_revision.to_le_bytes());
            out.extend_from_slice(&(kv.key.len() as u64).to_le_bytes());
            out.extend_from_slice(kv.key.as_bytes());
            out.extend_from_slice(&kv.value);
            out
        }
        WatchEvent::Delete { key, .. } => {
            let mut out = Vec::with_capacity(1 + key.len());
            out.push(EVENT_DELETE);
            out.extend_from_slice(key.as_bytes());
            out
        }
    }
}

/// Decodes a log record, returning None without copying the value if its key is not under
/// `prefix`.
fn decode_event(
    revision: Revision,
    raw: &[u8],
    prefix: &str,
) -> Result<Option<WatchEvent>, ::redb::Error> {
    let corrupt = || ::redb::Error::Corrupted(format!("event log record {revision} is malformed"));
    match raw.first() {
        Some(&EVENT_PUT) => {
            let create_revision = read_u64(raw, 1).ok_or_else(corrupt)?;
            let key_len = read_u64(raw, 9).ok_or_else(corrupt)?;
            let key_end = usize::try_from(key_len)
                .ok()
                .and_then(|len| len.checked_add(17))
                .filter(|end| *end <= raw.len())
                .ok_or_else(corrupt)?;
            let key = std::str::from_utf8(&raw[17..key_end]).map_err(|_| corrupt())?;
            if !key.starts_with(prefix) {
                return Ok(None);
            }
            Ok(Some(WatchEvent::Put(KeyValue {
                key: key.to_owned(),
                value: raw[key_end..].to_vec(),
                create_revision,
                mod_revision: revision,
            })))
        }
        Some(&EVENT_DELETE) => {
            let key = std::str::from_utf8(&raw[1..]).map_err(|_| corrupt())?;
            if !key.starts_with(prefix) {
                return Ok(None);
            }
            Ok(Some(WatchEvent::Delete {
                key: key.to_owned(),
                mod_revision: revision,
            }))
        }
        _ => Err(corrupt()),
    }
}

/// What must hold for a write to apply.
#[derive(Debug, Clone, Copy)]
enum Condition {
    Always,
    Absent,
    ModRevision(Revision),
}

#[derive(Debug)]
enum Change {
    Put(Vec<u8>),
    Delete,
}

#[derive(Debug)]
enum Outcome {
    Applied(Revision),
    /// The condition did not hold; carries the key's current state.
    Conflict(Option<KeyValue>),
    /// Delete of a key that does not exist.
    Missing,
}

/// One page of the event log, read for a catching-up watcher.
enum LogPage {
    Compacted {
        oldest: Revision,
    },
    Events {
        /// Events under the watcher's prefix.
        events: Vec<WatchEvent>,
        /// Highest revision read, whether or not it matched the prefix.
        last: Option<Revision>,
        /// The page reached the end of the log.
        complete: bool,
    },
}

impl Inner {
    /// A write transaction, with the write lock held until the returned guard is dropped
    /// (after the commit and the broadcast of its events).
    fn begin_write(&self) -> Result<(MutexGuard<'_, ()>, WriteTransaction), ::redb::Error> {
        let guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok((guard, self.db.begin_write()?))
    }

    fn mutate(
        &self,
        key: &str,
        condition: Condition,
        change: Change,
    ) -> Result<Outcome, ::redb::Error> {
        let (_guard, txn) = self.begin_write()?;
        let (revision, event) = {
            let mut kv = txn.open_table(KV)?;
            let current = match kv.get(key)? {
                Some(raw) => Some(decode_kv(key, raw.value())?),
                None => None,
            };
            let holds = match (condition, &current) {
                (Condition::Always, _) | (Condition::Absent, None) => true,
                (Condition::ModRevision(expected), Some(kv)) => kv.mod_revision == expected,
                _ => false,
            };
            if !holds {
                drop(kv);
                txn.abort()?;
                return Ok(Outcome::Conflict(current));
            }
            let mut meta = txn.open_table(META)?;
            let revision = read_meta(&meta, META_REVISION)? + 1;
            let event = match change {
                Change::Put(value) => {
                    let create_revision = current.map_or(revision, |kv| kv.create_revision);
                    kv.insert(key, encode_kv(create_revision, revision, &value).as_slice())?;
                    WatchEvent::Put(KeyValue {
                        key: key.to_owned(),
                        value,
                        create_revision,
                        mod_revision: revision,
                    })
                }
                Change::Delete => {
                    if current.is_none() {
                        drop((kv, meta));
                        txn.abort()?;
                        return Ok(Outcome::Missing);
                    }
                    kv.remove(key)?;
                    WatchEvent::Delete {
                        key: key.to_owned(),
                        mod_revision: revision,
                    }
                }
            };
            meta.insert(META_REVISION, revision)?;
            let mut log = txn.open_table(EVENT_LOG)?;
            log_event(&mut log, &mut meta, revision, &event)?;
            trim_log(&mut log, &mut meta, revision, self.history)?;
            (revision, event)
        };
        txn.commit()?;
        // An error only means that nobody is watching right now.
        let _ = self.events.send(Arc::new(event));
        Ok(Outcome::Applied(revision))
    }

    /// All-or-nothing batch of compare-and-swaps in one write transaction.
    fn cas_many(&self, ops: Vec<CasOp>) -> Result<Result<Vec<Revision>, String>, ::redb::Error> {
        let (_guard, txn) = self.begin_write()?;
        let (last, events) = {
            let mut kv = txn.open_table(KV)?;
            let mut meta = txn.open_table(META)?;
            let mut revision = read_meta(&meta, META_REVISION)?;
            if ops.is_empty() {
                drop((kv, meta));
                txn.abort()?;
                return Ok(Ok(Vec::new()));
            }
            let mut log = txn.open_table(EVENT_LOG)?;
            let mut events = Vec::with_capacity(ops.len());
            for op in ops {
                let current = match kv.get(op.key.as_str())? {
                    Some(raw) => Some(decode_kv(&op.key, raw.value())?),
                    None => None,
                };
                let holds = match (op.expected, &current) {
                    (None, None) => true,
                    (Some(expected), Some(c)) => c.mod_revision == expected,
                    _ => false,
                };
                if !holds {
                    drop((kv, meta, log));
                    txn.abort()?;
                    return Ok(Err(op.key));
                }
                revision += 1;
                let event = match (op.value, current) {
                    (Some(value), current) => {
                        let create_revision = current.map_or(revision, |c| c.create_revision);
                        kv.insert(
                            op.key.as_str(),
                            encode_kv(create_revision, revision, &value).as_slice(),
                        )?;
                        WatchEvent::Put(KeyValue {
                            key: op.key,
                            value,
                            create_revision,
                            mod_revision: revision,
                        })
                    }
                    (None, _) => {
                        kv.remove(op.key.as_str())?;
                        WatchEvent::Delete {
                            key: op.key,
                            mod_revision: revision,
                        }
                    }
                };
                log_event(&mut log, &mut meta, revision, &event)?;
                events.push(event);
            }
            meta.insert(META_REVISION, revision)?;
            trim_log(&mut log, &mut meta, revision, self.history)?;
            (revision, events)
        };
        txn.commit()?;
        // Each op got the next revision.
        let revisions = (last + 1 - events.len() as u64..=last).collect();
        for event in events {
            // An error only means that nobody is watching right now.
            let _ = self.events.send(Arc::new(event));
        }
        Ok(Ok(revisions))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, ::redb::Error> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        match kv.get(key)? {
            Some(raw) => Ok(Some(decode_kv(key, raw.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), ::redb::Error> {
        let txn = self.db.begin_read()?;
        let revision = read_meta(&txn.open_table(META)?, META_REVISION)?;
        let kv = txn.open_table(KV)?;
        let mut out = Vec::new();
        for entry in kv.range(prefix..)? {
            let (key, raw) = entry?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode_kv(key, raw.value())?);
        }
        Ok((out, revision))
    }

    /// Returns (current revision, highest compacted revision).
    fn revisions(&self) -> Result<(Revision, Revision), ::redb::Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok((
            read_meta(&meta, META_REVISION)?,
            read_meta(&meta, META_COMPACTED)?,
        ))
    }

    /// Reads up to `limit` log events with revision > `after`.
    fn read_log_page(
        &self,
        prefix: &str,
        after: Revision,
        limit: usize,
    ) -> Result<LogPage, ::redb::Error> {
        let txn = self.db.begin_read()?;
        let compacted = read_meta(&txn.open_table(META)?, META_COMPACTED)?;
        if after < compacted {
            return Ok(LogPage::Compacted {
                oldest: compacted + 1,
            });
        }
        let log = txn.open_table(EVENT_LOG)?;
        let mut events = Vec::new();
        let mut last = None;
        let mut read = 0;
        for entry in log.range((after + 1)..)? {
            let (revision, raw) = entry?;
            let revision = revision.value();
            read += 1;
            last = Some(revision);
            if let Some(event) = decode_event(revision, raw.value(), prefix)? {
                events.push(event);
            }
            if read == limit {
                break;
            }
        }
        Ok(LogPage::Events {
            events,
            last,
            complete: read < limit,
        })
    }
}

/// State of one watch stream. It holds the store only weakly, so an open watch neither keeps
/// the database file open nor a task alive; dropping the stream drops everything.
struct Watcher {
    inner: Weak<Inner>,
    live: broadcast::Receiver<Arc<WatchEvent>>,
    prefix: String,
    /// Every revision <= `seen` has been delivered or filtered out.
    seen: Revision,
    /// Reading history from the log instead of the live channel.
    catching_up: bool,
    pending: VecDeque<WatchEvent>,
    finished: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if self.catching_up {
                if let Err(e) = self.read_page().await {
                    self.finished = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) => {
                    let revision = event.revision();
                    if revision <= self.seen {
                        // Already replayed from the log.
                        continue;
                    }
                    if revision > self.seen + 1 {
                        // Cannot happen while subscribed before reading, but the log is the
                        // source of truth, so fill any gap from it rather than skip events.
                        self.catching_up = true;
                        continue;
                    }
                    self.seen = revision;
                    if event.key().starts_with(&self.prefix) {
                        return Some(Ok(WatchEvent::clone(&event)));
                    }
                }
                // Missed live events are still in the log (unless trimmed meanwhile).
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => {
                    self.finished = true;
                    return Some(Err(StoreError::Closed));
                }
            }
        }
    }

    async fn read_page(&mut self) -> Result<(), StoreError> {
        let inner = self.inner.upgrade().ok_or(StoreError::Closed)?;
        let prefix = self.prefix.clone();
        let after = self.seen;
        let page = run_blocking(inner, "watch", &self.prefix, move |inner| {
            inner.read_log_page(&prefix, after, REPLAY_PAGE)
        })
        .await?;
        match page {
            LogPage::Compacted { oldest } => Err(StoreError::Compacted {
                requested: after + 1,
                oldest,
            }),
            LogPage::Events {
                events,
                last,
                complete,
            } => {
                self.pending.extend(events);
                if let Some(last) = last {
                    self.seen = last;
                }
                if complete {
                    self.catching_up = false;
                }
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.run("get", key, move |inner| inner.get(&owned)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        match self
            .mutate("put", key, Condition::Always, Change::Put(value))
            .await?
        {
            Outcome::Applied(revision) => Ok(revision),
            other => Err(unexpected("put", key, &other)),
        }
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        let condition = expected.map_or(Condition::Absent, Condition::ModRevision);
        match self
            .mutate("compare_and_swap", key, condition, Change::Put(value))
            .await?
        {
            Outcome::Applied(revision) => Ok(Ok(revision)),
            Outcome::Conflict(current) => Ok(Err(current)),
            other => Err(unexpected("compare_and_swap", key, &other)),
        }
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        match self
            .mutate("delete", key, Condition::Always, Change::Delete)
            .await?
        {
            Outcome::Applied(revision) => Ok(Some(revision)),
            Outcome::Missing => Ok(None),
            other => Err(unexpected("delete", key, &other)),
        }
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        let outcome = self
            .mutate(
                "compare_and_delete",
                key,
                Condition::ModRevision(expected),
                Change::Delete,
            )
            .await?;
        Ok(matches!(outcome, Outcome::Applied(_)))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let owned = prefix.to_owned();
        self.run("list", prefix, move |inner| inner.list(&owned))
            .await
    }

    async fn compare_and_swap_many(
        &self,
        ops: Vec<CasOp>,
    ) -> Result<Result<Vec<Revision>, String>, StoreError> {
        for op in &ops {
            validate_key(&op.key)?;
        }
        let first = ops.first().map(|o| o.key.clone()).unwrap_or_default();
        self.run("compare_and_swap_many", &first, move |inner| {
            inner.cas_many(ops)
        })
        .await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.run("revision", "", |inner| Ok(inner.revisions()?.0))
            .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the revision: every event committed after that read is then
        // guaranteed to arrive on the channel (or be reported as lag).
        let live = self.inner.events.subscribe();
        let (current, compacted) = self.run("watch", prefix, |inner| inner.revisions()).await?;
        let (seen, catching_up) = if from == 0 {
            (current, false)
        } else if from <= compacted {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: compacted + 1,
            });
        } else {
            (from - 1, from <= current)
        };
        let watcher = Watcher {
            inner: Arc::downgrade(&self.inner),
            live,
            prefix: prefix.to_owned(),
            seen,
            catching_up,
            pending: VecDeque::new(),
            finished: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            watcher,
            |mut watcher| async move {
                let item = watcher.next().await?;
                Some((item, watcher))
            },
        )))
    }
}

fn unexpected(op: &str, key: &str, outcome: &Outcome) -> StoreError {
    StoreError::Inconsistent(format!("redb {op} {key}: unexpected outcome {outcome:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SharedStore, conformance};
    use futures::StreamExt;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    fn temp_store(dir: &tempfile::TempDir) -> RedbStore {
        RedbStore::open(&dir.path().join("store.redb")).expect("open store")
    }

    async fn next_item(stream: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("timed out waiting for a watch item")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: SharedStore = Arc::new(temp_store(&dir));
        conformance::run_all(store).await;
    }

    #[tokio::test]
    async fn reopen_preserves_data_revision_and_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/dirs/store.redb");
        let (before, revision, a_created) = {
            let store = RedbStore::open(&path).expect("open");
            let a_created = store.put("/r/a", b"1".to_vec()).await.expect("put");
            store.put("/r/b", b"2".to_vec()).await.expect("put");
            store.put("/r/a", b"3".to_vec()).await.expect("put");
            store.put("/r/c", b"4".to_vec()).await.expect("put");
            store.delete("/r/c").await.expect("delete");
            let (before, revision) = store.list("/r/").await.expect("list");
            (before, revision, a_created)
        };
        assert_eq!(revision, 5);

        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(store.revision().await.expect("revision"), revision);
        let (after, after_revision) = store.list("/r/").await.expect("list");
        assert_eq!(after, before);
        assert_eq!(after_revision, revision);
        let a = store.get("/r/a").await.expect("get").expect("a exists");
        assert_eq!(a.value, b"3");
        assert_eq!(a.create_revision, a_created);
        assert_eq!(a.mod_revision, 3);
        assert_eq!(store.get("/r/c").await.expect("get"), None);

        // The revision counter continues and the event log survived the restart.
        assert_eq!(
            store.put("/r/d", Vec::new()).await.expect("put"),
            revision + 1
        );
        let mut watch = store.watch("/r/", 1).await.expect("watch");
        let mut revisions = Vec::new();
        for _ in 0..6 {
            let event = next_item(&mut watch).await.expect("item").expect("event");
            revisions.push(event.revision());
        }
        assert_eq!(revisions, vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn watch_before_retained_history_is_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open_with_history(&dir.path().join("s.redb"), 5).expect("open");
        for i in 0..20u32 {
            store
                .put("/h/k", i.to_string().into_bytes())
                .await
                .expect("put");
        }
        for from in [1, 15] {
            match store.watch("/h/", from).await {
                Err(StoreError::Compacted { requested, oldest }) => {
                    assert_eq!((requested, oldest), (from, 16));
                }
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("watch from {from} should be compacted"),
            }
        }
        conformance::assert_watch_compacted(&store, "/h/", 3).await;

        let mut watch = store.watch("/h/", 16).await.expect("watch oldest retained");
        for expected in 16..=20 {
            let event = next_item(&mut watch).await.expect("item").expect("event");
            assert_eq!(event.revision(), expected);
        }
    }

    #[tokio::test]
    async fn the_log_is_bounded_by_bytes_too_and_keeps_the_newest_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        // Room for about ten 1 KiB events.
        let store = RedbStore::open_with_options(&path, 1000, 16, 10 * 1024).expect("open");
        for i in 0..40u32 {
            store.put("/t/k", vec![b'x'; 1024]).await.expect("put");
            assert!(store.get("/t/k").await.unwrap().is_some(), "{i}");
        }
        let oldest_kept = |store: &RedbStore| {
            let txn = store.inner.db.begin_read().unwrap();
            let log = txn.open_table(EVENT_LOG).unwrap();
            let meta = txn.open_table(META).unwrap();
            let first = log.first().unwrap().map(|(k, _)| k.value());
            (first, read_meta(&meta, META_LOG_BYTES).unwrap())
        };
        let (first, bytes) = oldest_kept(&store);
        let first = first.expect("the newest event stays");
        assert!(
            (30..=40).contains(&first),
            "old events dropped by size: {first}"
        );
        assert!(bytes <= 10 * 1024, "{bytes}");
        match store.watch("/t/", 2).await {
            Err(StoreError::Compacted { oldest, .. }) => assert_eq!(oldest, first),
            other => panic!("expected compacted, got {:?}", other.map(|_| "stream")),
        }
        let mut watch = store.watch("/t/", first).await.expect("watch");
        let event = next_item(&mut watch).await.expect("item").expect("event");
        assert_eq!(event.revision(), first);
        // Reopened, the byte count is read again from the log.
        drop((watch, store));
        let store = RedbStore::open_with_options(&path, 1000, 16, 10 * 1024).expect("reopen");
        assert_eq!(oldest_kept(&store), (Some(first), bytes));

        // One event larger than the bound stays (it is the newest).
        store.put("/t/big", vec![b'y'; 20 * 1024]).await.unwrap();
        let (first, _) = oldest_kept(&store);
        assert_eq!(first, Some(store.revision().await.unwrap()));
    }

    #[tokio::test]
    async fn reopening_with_shorter_history_trims_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            for i in 0..10u32 {
                store
                    .put("/t/k", i.to_string().into_bytes())
                    .await
                    .expect("put");
            }
        }
        let store = RedbStore::open_with_history(&path, 3).expect("reopen");
        match store.watch("/t/", 7).await {
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (7, 8))
            }
            other => panic!("expected compacted, got {:?}", other.map(|_| "stream")),
        }
        let mut watch = store.watch("/t/", 8).await.expect("watch");
        let event = next_item(&mut watch).await.expect("item").expect("event");
        assert_eq!(event.revision(), 8);
    }

    #[tokio::test]
    async fn lagged_watcher_recovers_from_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open_with_options(
            &dir.path().join("s.redb"),
            1000,
            4,
            DEFAULT_HISTORY_BYTES,
        )
        .expect("open");
        let mut watch = store.watch("/lag/", 0).await.expect("watch");
        let mut written = Vec::new();
        // Far more writes than the channel holds while nobody polls the stream.
        for i in 0..50u32 {
            let key = if i % 3 == 0 { "/other/k" } else { "/lag/k" };
            let revision = store
                .put(key, i.to_string().into_bytes())
                .await
                .expect("put");
            if key.starts_with("/lag/") {
                written.push((revision, i.to_string().into_bytes()));
            }
        }
        for (revision, value) in &written {
            match next_item(&mut watch).await.expect("item").expect("event") {
                WatchEvent::Put(kv) => {
                    assert_eq!((kv.mod_revision, &kv.value), (*revision, value));
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        // Back on the live channel without duplicates.
        let revision = store.put("/lag/k", b"live".to_vec()).await.expect("put");
        let event = next_item(&mut watch).await.expect("item").expect("event");
        assert_eq!(event.revision(), revision);
    }

    #[tokio::test]
    async fn lagged_watcher_past_history_reports_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            RedbStore::open_with_options(&dir.path().join("s.redb"), 5, 2, DEFAULT_HISTORY_BYTES)
                .expect("open");
        let mut watch = store.watch("/lc/", 0).await.expect("watch");
        for i in 0..20u32 {
            store
                .put("/lc/k", i.to_string().into_bytes())
                .await
                .expect("put");
        }
        match next_item(&mut watch).await {
            Some(Err(StoreError::Compacted { requested, oldest })) => {
                assert_eq!((requested, oldest), (1, 16));
            }
            other => panic!("expected compacted error, got {other:?}"),
        }
        assert!(
            next_item(&mut watch).await.is_none(),
            "stream ends after an error"
        );
    }

    #[tokio::test]
    async fn watch_does_not_keep_database_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let store = RedbStore::open(&path).expect("open");
        let mut watch = store.watch("/w/", 0).await.expect("watch");
        let revision = store.put("/w/k", b"v".to_vec()).await.expect("put");
        drop(store);

        // The buffered event is still delivered, then the stream reports the closed store.
        let event = next_item(&mut watch).await.expect("item").expect("event");
        assert_eq!(event.revision(), revision);
        assert!(matches!(
            next_item(&mut watch).await,
            Some(Err(StoreError::Closed))
        ));
        assert!(next_item(&mut watch).await.is_none());

        let reopened = RedbStore::open(&path).expect("reopen while a stream exists");
        assert_eq!(reopened.revision().await.expect("revision"), revision);
        drop(watch);
    }

    #[tokio::test]
    async fn dropped_watch_stream_is_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = temp_store(&dir);
        let watch = store.watch("/d/", 0).await.expect("watch");
        assert_eq!(store.inner.events.receiver_count(), 1);
        drop(watch);
        assert_eq!(store.inner.events.receiver_count(), 0);
        store
            .put("/d/k", b"v".to_vec())
            .await
            .expect("put without watchers");
    }

    #[tokio::test]
    async fn empty_key_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = temp_store(&dir);
        assert!(matches!(
            store.put("", b"v".to_vec()).await,
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            store.get("").await,
            Err(StoreError::InvalidKey { .. })
        ));
        assert_eq!(store.revision().await.expect("revision"), 0);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(decode_kv("/k", &[1, 2, 3]).is_err());
        assert!(decode_event(1, &[], "").is_err());
        assert!(decode_event(1, &[EVENT_PUT, 0, 0], "").is_err());
        let mut huge_key_len = vec![EVENT_PUT];
        huge_key_len.extend_from_slice(&1u64.to_le_bytes());
        huge_key_len.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_event(1, &huge_key_len, "").is_err());

        let event = WatchEvent::Put(KeyValue {
            key: "/k".into(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 7,
        });
        let decoded = decode_event(7, &encode_event(&event), "/").expect("decode");
        assert_eq!(decoded, Some(event.clone()));
        assert_eq!(
            decode_event(7, &encode_event(&event), "/x").expect("decode"),
            None
        );
    }
}
