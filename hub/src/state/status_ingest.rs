//! Group commit of the agents' status reports. Every [`Statuses::record`] call queues its report
//! and waits. One writer task at a time (started by the call that finds none, ended when the
//! queue is empty) takes what is queued — at most [`Limits::batch_reports`] reports and
//! [`Limits::batch_bytes`] bytes of them —, merges each cluster's reports onto its record in
//! memory in the order they were queued, and appends the batch's reports, as they came, to the
//! **status journal**: one store key (`/status-log/<seq>`) per batch, one durable write, however
//! many clusters the batch touched. Only then is every caller of the batch answered; a failed
//! write fails them all, so nothing is acknowledged that is not durable. While one batch is
//! written the next one gathers.
//!
//! The journal is folded into the records (`/status/<cluster>`) by a **checkpoint** once it holds
//! [`Limits::checkpoint_entries`] batches or [`Limits::checkpoint_bytes`]: every record changed
//! since the last checkpoint is written (a compare-and-swap on its revision, in chunks of at most
//! [`Limits::batch_bytes`]), and the journal's keys are deleted in the last chunk. A report thus
//! costs its share of one journal write, and a record is rewritten once per checkpoint however
//! many reports changed it, instead of once per report.
//!
//! Reading back (the first read or write after the hub starts) is: the records, then the
//! journal's batches in order merged onto them. Merging a batch again onto a record that already
//! holds it changes nothing (a report's apps replace theirs, a `replace` starts from nothing), so
//! a crash between a checkpoint's record writes and its journal deletes loses nothing and
//! duplicates nothing. A journal batch that does not decode is skipped with an error in the log
//! (and deleted by the next checkpoint); the records keep their last good state.
//!
//! The queue holds at most [`Limits::queue_bytes`] of reports (those being written included);
//! beyond that callers wait, in the order of their calls, and their sessions read nothing more
//! meanwhile — backpressure onto the agents' streams instead of memory.
//!
//! The records are kept in memory (only this hub writes `/status/`). Should another writer have
//! moved a record on anyway, the checkpoint's compare-and-swap fails on it; the record is read
//! again and this hub's journal merged onto it, as at a restart.
//!
//! [`Statuses::record`]: super::status::Statuses::record

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flotilla_proto::v1;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::state::error::{HubError, SharedError};
use crate::state::status::{OnDurable, STATUS, StatusRecord};
use crate::state::table::{CAS_RETRIES, Table};
use crate::store::{CasOp, KeyValue, Revision, SharedStore, StoreError};

/// How long a batch of status reports waits for an unavailable store before its callers fail
/// (and their sessions end).
const UNAVAILABLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// The status journal: one key per batch of reports, `/status-log/<seq>` (zero-padded, so that
/// key order is batch order); with several replicas sharing the store, each has its own,
/// `/status-log/<replica>/<seq>`.
pub const STATUS_LOG: &str = "/status-log/";

/// One batch of the journal, as stored (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
struct JournalBatch {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<JournalEntry>,
}

/// One report of a journal batch.
#[derive(Clone, PartialEq, prost::Message)]
struct JournalEntry {
    #[prost(string, tag = "1")]
    cluster: String,
    #[prost(message, optional, tag = "2")]
    report: Option<v1::StatusReport>,
}

/// Bounds of the group commit and of the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most reports merged into one store write.
    pub batch_reports: usize,
    /// Most bytes of (encoded) reports merged into one store write (a larger report goes
    /// alone), and of records per checkpoint write.
    pub batch_bytes: usize,
    /// Most bytes of reports queued or being written; further callers wait. A larger report
    /// counts as this much.
    pub queue_bytes: usize,
    /// Journal batches that start a checkpoint.
    pub checkpoint_entries: usize,
    /// Journal bytes that start a checkpoint.
    pub checkpoint_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            batch_reports: 4096,
            // Under etcd's request limit (1.5 MiB).
            batch_bytes: 1 << 20,
            queue_bytes: 64 << 20,
            // A checkpoint rewrites every record changed since the last one (a record holds
            // every app of its cluster): rare enough that many reports per record go into it.
            checkpoint_entries: 256,
            checkpoint_bytes: 64 << 20,
        }
    }
}

/// What the cache holds of one cluster.
#[derive(Debug, Clone)]
enum Slot {
    Record(Arc<StatusRecord>),
    /// Stored but not readable; a `replace` report overwrites it, anything else fails on it.
    Corrupt(KeyValue),
}

/// A cluster's record as cached, with the store revision of the stored record (`None`: nothing
/// stored). The cached record is ahead of the stored one by the journal.
#[derive(Debug, Clone)]
struct Cached {
    revision: Option<Revision>,
    slot: Slot,
}

impl Cached {
    fn absent() -> Self {
        Self {
            revision: None,
            slot: Slot::Record(Arc::default()),
        }
    }
}

/// A journal batch not yet folded into the records.
#[derive(Debug, Clone)]
struct Logged {
    key: String,
    revision: Revision,
    bytes: usize,
}

impl Logged {
    fn of(kv: &KeyValue) -> Self {
        Self {
            key: kv.key.clone(),
            revision: kv.mod_revision,
            bytes: kv.value.len(),
        }
    }
}

/// The sequence number after the last of the journal batches `items` under `own`.
fn next_seq(own: &str, items: &[KeyValue]) -> u64 {
    items
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(own)?.parse::<u64>().ok())
        .max()
        .map_or(0, |s| s + 1)
}

#[derive(Debug, Default)]
struct Cache {
    records: HashMap<String, Cached>,
    /// Every stored record was read and the journal merged: a cluster that is not in `records`
    /// has none.
    complete: bool,
    /// Clusters whose cached record is ahead of the stored one.
    dirty: BTreeSet<String>,
    /// The journal, oldest first.
    journal: Vec<Logged>,
    journal_bytes: usize,
    /// The sequence number of the next journal batch.
    next_seq: u64,
    /// The store revision the journal was read at when the cache was filled.
    loaded_at: Revision,
}

/// A queued report and its caller.
struct Pending {
    cluster: String,
    report: v1::StatusReport,
    bytes: usize,
    done: oneshot::Sender<Result<(), HubError>>,
    /// Its share of the queue, given back when it is answered.
    _room: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Pending>,
    /// A writer task is running (and will take what is queued).
    writing: bool,
}

/// The group commit of the status table, its journal and its cache.
pub(crate) struct Ingest {
    table: Table<StatusRecord>,
    limits: Limits,
    /// This replica's journal: [`STATUS_LOG`] alone, or with several replicas sharing the
    /// store its own part of it (the other parts are followed, and folded by their writers).
    own_log: String,
    cache: Mutex<Cache>,
    /// Held by whoever reads the store into the cache (once) and by the writer, so that the two
    /// never interleave.
    loading: tokio::sync::Mutex<()>,
    queue: Arc<Mutex<Queue>>,
    /// Taken while waiting for room, so that reports are queued in the order of the calls.
    turn: tokio::sync::Mutex<()>,
    /// Bytes of queue left.
    room: Arc<Semaphore>,
    /// Told of each durable report ([`Ingest::on_durable`]).
    observer: std::sync::OnceLock<OnDurable>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn batch_error(cause: &Arc<HubError>, reports: usize) -> HubError {
    HubError::Store(StoreError::Backend {
        what: format!("writing a batch of {reports} status reports"),
        source: Box::new(SharedError(cause.clone())),
    })
}

/// Ends the writer's turn if its task ends early: a writer that panicked or was dropped with its
/// runtime leaves no `writing` flag behind (the next call starts another) and fails what was
/// queued (dropping a caller's answer fails it).
struct WriterTurn {
    queue: Arc<Mutex<Queue>>,
    armed: bool,
}

impl Drop for WriterTurn {
    fn drop(&mut self) {
        if self.armed {
            let mut q = lock(&self.queue);
            q.writing = false;
            q.items.clear();
        }
    }
}

fn answer(batch: Vec<Pending>, outcomes: Vec<Result<(), HubError>>) {
    for (p, outcome) in batch.into_iter().zip(outcomes) {
        // A caller that went away (its session ended) needs no answer.
        let _ = p.done.send(outcome);
    }
}

/// `record` with `report` merged; `None` when the record is unreadable and the report does not
/// replace it.
fn merge_onto(slot: &Slot, report: &v1::StatusReport) -> Option<StatusRecord> {
    let mut record = match (slot, report.replace) {
        (_, true) => StatusRecord::default(),
        (Slot::Record(r), false) => r.as_ref().clone(),
        (Slot::Corrupt(_), false) => return None,
    };
    record.merge(report);
    Some(record)
}

/// Whether a journal batch stored at `revision` is merged onto `slot`: not when the record
/// holds a newer batch already (one at the same revision merges again as a whole, which
/// changes nothing).
fn takes(slot: &Slot, revision: Revision) -> bool {
    match slot {
        Slot::Record(r) => revision >= r.through,
        Slot::Corrupt(_) => true,
    }
}

/// Merges the journal batch `kv` onto the records in `records` that take it; the clusters it
/// changed, with each report and the record it was merged into.
fn replay(
    records: &mut HashMap<String, Cached>,
    kv: &KeyValue,
) -> Vec<(String, v1::StatusReport, Arc<StatusRecord>)> {
    match decode_batch(kv) {
        Some(batch) => merge_entries(records, kv.mod_revision, batch.entries),
        None => Vec::new(),
    }
}

/// [`replay`] of the decoded `entries` of the batch stored at `revision`.
fn merge_entries(
    records: &mut HashMap<String, Cached>,
    revision: Revision,
    entries: Vec<JournalEntry>,
) -> Vec<(String, v1::StatusReport, Arc<StatusRecord>)> {
    let mut out = Vec::new();
    for e in entries {
        let Some(report) = e.report else { continue };
        let entry = records
            .entry(e.cluster.clone())
            .or_insert_with(Cached::absent);
        if !takes(&entry.slot, revision) {
            continue;
        }
        match merge_onto(&entry.slot, &report) {
            Some(mut record) => {
                record.through = revision;
                let record = Arc::new(record);
                entry.slot = Slot::Record(record.clone());
                out.push((e.cluster, report, record));
            }
            None => {
                tracing::warn!(cluster.id = %e.cluster, "a journaled status report does not apply to the unreadable stored record; skipped");
            }
        }
    }
    out
}

/// Journal batches in the order they were stored.
fn by_revision(mut items: Vec<KeyValue>) -> Vec<KeyValue> {
    items.sort_by_key(|kv| kv.mod_revision);
    items
}

impl Ingest {
    /// `replica`: this replica's name among several sharing the store (its journal is its own).
    pub(crate) fn new(store: SharedStore, limits: Limits, replica: Option<&str>) -> Self {
        let limits = Limits {
            batch_reports: limits.batch_reports.max(1),
            batch_bytes: limits.batch_bytes.max(1),
            queue_bytes: limits.queue_bytes.clamp(1, u32::MAX as usize),
            checkpoint_entries: limits.checkpoint_entries.max(1),
            checkpoint_bytes: limits.checkpoint_bytes.max(1),
        };
        Self {
            table: Table::new(store, STATUS),
            limits,
            own_log: match replica {
                Some(name) => format!("{STATUS_LOG}{name}/"),
                None => STATUS_LOG.to_string(),
            },
            cache: Mutex::default(),
            loading: tokio::sync::Mutex::new(()),
            queue: Arc::default(),
            turn: tokio::sync::Mutex::new(()),
            room: Arc::new(Semaphore::new(limits.queue_bytes)),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Queues `report` and waits until it is durable (or its batch failed).
    pub(crate) async fn record(
        self: &Arc<Self>,
        cluster: &str,
        report: &v1::StatusReport,
    ) -> Result<(), HubError> {
        self.submit(cluster, report).await.await
    }

    pub(crate) fn on_durable(&self, f: OnDurable) {
        let _ = self.observer.set(f);
    }

    /// Queues `report` (waiting for room) and returns what ends once it is durable.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        cluster: &str,
        report: &v1::StatusReport,
    ) -> impl std::future::Future<Output = Result<(), HubError>> + Send + 'static {
        let bytes = report.encoded_len();
        let cost = bytes.clamp(1, self.limits.queue_bytes) as u32;
        let answer = {
            // FIFO: a caller waiting for room holds the turn, later callers queue behind it.
            let _turn = self.turn.lock().await;
            let room = self
                .room
                .clone()
                .acquire_many_owned(cost)
                .await
                .expect("the queue's semaphore is never closed");
            let (done, answer) = oneshot::channel();
            let start = {
                let mut q = lock(&self.queue);
                q.items.push_back(Pending {
                    cluster: cluster.to_string(),
                    report: report.clone(),
                    bytes,
                    done,
                    _room: room,
                });
                !std::mem::replace(&mut q.writing, true)
            };
            if start {
                tokio::spawn(self.clone().write());
            }
            answer
        };
        async move {
            answer
                .await
                .unwrap_or(Err(HubError::Store(StoreError::Closed)))
        }
    }

    /// The writer: batches until the queue is empty. It lets go of the store before it answers
    /// the last batch, so that once every caller has its answer nothing holds the store.
    async fn write(self: Arc<Self>) {
        let mut turn = WriterTurn {
            queue: self.queue.clone(),
            armed: true,
        };
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                break;
            }
            let outcomes = {
                let _loading = self.loading.lock().await;
                let outcomes = self.commit(&batch).await;
                // A failed checkpoint leaves the journal as it is; the next one tries again.
                if self.checkpoint_due()
                    && let Err(e) = self.checkpoint().await
                {
                    tracing::warn!(error = %e, "status checkpoint failed");
                }
                outcomes
            };
            if let Some(observe) = self.observer.get() {
                for (p, outcome) in batch.iter().zip(&outcomes) {
                    if outcome.is_err() {
                        continue;
                    }
                    // Taken out of the cache's lock before the observer runs.
                    let rec = match lock(&self.cache).records.get(&p.cluster) {
                        Some(Cached {
                            slot: Slot::Record(rec),
                            ..
                        }) => rec.clone(),
                        _ => continue,
                    };
                    observe(&p.cluster, &p.report, &rec);
                }
            }
            if !self.more_queued() {
                drop(self);
                answer(batch, outcomes);
                break;
            }
            answer(batch, outcomes);
        }
        turn.armed = false;
    }

    /// Whether reports wait; if not, the writer's turn ends (the next call starts another).
    fn more_queued(&self) -> bool {
        let mut q = lock(&self.queue);
        q.writing = !q.items.is_empty();
        q.writing
    }

    /// The next batch, in queue order; empty (and the writer's turn over) when nothing waits.
    fn take_batch(&self) -> Vec<Pending> {
        let mut q = lock(&self.queue);
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = q.items.front() {
            let full = batch.len() >= self.limits.batch_reports
                || bytes + next.bytes > self.limits.batch_bytes;
            if full && !batch.is_empty() {
                break;
            }
            bytes += next.bytes;
            batch.extend(q.items.pop_front());
        }
        if batch.is_empty() {
            q.writing = false;
        }
        batch
    }

    /// Merges one batch and appends it to the journal; the outcome of each of its reports, in
    /// order.
    async fn commit(&self, batch: &[Pending]) -> Vec<Result<(), HubError>> {
        let fail_all = |e: HubError| {
            let cause = Arc::new(e);
            batch
                .iter()
                .map(|_| Err(batch_error(&cause, batch.len())))
                .collect()
        };
        if let Err(e) = self.load_locked().await {
            return fail_all(e);
        }
        // Each report merged onto what the ones before it left, without touching the cache
        // until the batch is durable.
        let mut outcomes: Vec<Result<(), HubError>> = Vec::with_capacity(batch.len());
        let mut merged: BTreeMap<&str, Slot> = BTreeMap::new();
        let mut journal = Vec::new();
        {
            let cache = lock(&self.cache);
            for p in batch {
                let slot = merged.entry(p.cluster.as_str()).or_insert_with(|| {
                    cache
                        .records
                        .get(&p.cluster)
                        .map_or_else(|| Cached::absent().slot, |c| c.slot.clone())
                });
                match (&mut *slot, p.report.replace) {
                    (_, true) => {
                        let mut record = StatusRecord::default();
                        record.merge(&p.report);
                        *slot = Slot::Record(Arc::new(record));
                    }
                    // Copied once per cluster and batch (the cache holds the original), then
                    // merged in place.
                    (Slot::Record(r), false) => Arc::make_mut(r).merge(&p.report),
                    (Slot::Corrupt(kv), false) => {
                        outcomes.push(Err(self.corrupt(kv)));
                        continue;
                    }
                }
                journal_entry(&mut journal, &p.cluster, &p.report);
                outcomes.push(Ok(()));
            }
        }
        if journal.is_empty() {
            return outcomes;
        }
        let value = journal;
        let bytes = value.len();
        let mut conflicts = 0;
        let mut unavailable_since: Option<tokio::time::Instant> = None;
        let mut backoff = std::time::Duration::from_millis(100);
        while conflicts < CAS_RETRIES {
            let seq = lock(&self.cache).next_seq;
            let key = format!("{}{seq:020}", self.own_log);
            let op = CasOp::put(key.clone(), None, value.clone());
            match self.table.store().compare_and_swap_many(vec![op]).await {
                Ok(Ok(revisions)) => {
                    if let Some(t) = unavailable_since {
                        tracing::info!(waited = ?t.elapsed(), reports = batch.len(), "the store answers again; the waiting status reports are written");
                    }
                    let mut cache = lock(&self.cache);
                    cache.next_seq = seq + 1;
                    cache.journal.push(Logged {
                        key,
                        revision: revisions[0],
                        bytes,
                    });
                    cache.journal_bytes += bytes;
                    for (cluster, mut slot) in merged {
                        let Slot::Record(r) = &mut slot else {
                            continue;
                        };
                        Arc::make_mut(r).through = revisions[0];
                        let entry = cache
                            .records
                            .entry(cluster.to_string())
                            .or_insert_with(Cached::absent);
                        entry.slot = slot;
                        cache.dirty.insert(cluster.to_string());
                    }
                    tracing::debug!(reports = batch.len(), bytes, seq, "status batch journaled");
                    return outcomes;
                }
                Ok(Err(_)) => {
                    // Another writer took the sequence number: continue after the journal's end.
                    conflicts += 1;
                    tracing::warn!(key = %key, "status journal key taken; continuing after it");
                    match self.journal_end().await {
                        Ok(next) => lock(&self.cache).next_seq = next.max(seq + 1),
                        Err(e) => return fail_all(e),
                    }
                }
                // The store cannot decide now (etcd without quorum): the batch waits for it,
                // unacknowledged, and the sessions that sent it stay up (agents reconcile on
                // their own meanwhile); after UNAVAILABLE_PATIENCE its callers fail.
                Err(e @ StoreError::Unavailable { .. })
                    if unavailable_since.is_none_or(|t| t.elapsed() < UNAVAILABLE_PATIENCE) =>
                {
                    if unavailable_since.is_none() {
                        tracing::warn!(error = %e, reports = batch.len(), "the store is unavailable; status reports wait, unacknowledged, until it answers");
                        unavailable_since = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return fail_all(e.into()),
            }
        }
        fail_all(HubError::Contention(STATUS_LOG.to_string()))
    }

    /// The sequence number after the last stored journal batch.
    async fn journal_end(&self) -> Result<u64, HubError> {
        let (items, _) = self.table.store().list(&self.own_log).await?;
        Ok(next_seq(&self.own_log, &items))
    }

    fn checkpoint_due(&self) -> bool {
        let cache = lock(&self.cache);
        cache.journal.len() >= self.limits.checkpoint_entries
            || cache.journal_bytes >= self.limits.checkpoint_bytes
    }

    /// Folds the journal into the records: writes every record changed since the last
    /// checkpoint, then deletes the journal's keys (after the last record). Called by the writer
    /// (holding `loading`), so nothing changes the cache meanwhile.
    async fn checkpoint(&self) -> Result<(), HubError> {
        let mut attempts = 0;
        loop {
            // What to write, without encoding it yet: each chunk is encoded as it is written,
            // so a checkpoint of the whole fleet never holds every record encoded at once.
            let (dirty, journal) = {
                let cache = lock(&self.cache);
                let dirty: Vec<(String, Option<Revision>, Arc<StatusRecord>)> = cache
                    .dirty
                    .iter()
                    .filter_map(|cluster| match cache.records.get(cluster) {
                        Some(Cached {
                            revision,
                            slot: Slot::Record(r),
                        }) => Some((cluster.clone(), *revision, r.clone())),
                        _ => None,
                    })
                    .collect();
                (dirty, cache.journal.clone())
            };
            let mut deletes: Vec<CasOp> = journal
                .iter()
                .map(|l| CasOp::delete(l.key.clone(), l.revision))
                .collect();
            // Chunks of at most `batch_bytes` of records and as many ops as the store takes;
            // the deletes follow the last records (in the same chunk where they fit).
            let max_ops = self.table.store().max_batch_ops().max(1);
            let mut done = 0;
            let mut conflict = None;
            while done < dirty.len() || !deletes.is_empty() {
                let mut bytes = 0;
                let mut chunk = Vec::new();
                let mut end = done;
                while end < dirty.len() && chunk.len() < max_ops {
                    let (cluster, revision, record) = &dirty[end];
                    let value = Table::encode(record.as_ref());
                    bytes += value.len();
                    chunk.push(CasOp::put(self.table.key(cluster), *revision, value));
                    end += 1;
                    if bytes >= self.limits.batch_bytes {
                        break;
                    }
                }
                let mut deleted = 0;
                if end == dirty.len() {
                    deleted = deletes.len().min(max_ops - chunk.len());
                    chunk.extend(deletes.drain(..deleted));
                }
                match self.table.store().compare_and_swap_many(chunk).await? {
                    Ok(revisions) => {
                        let mut cache = lock(&self.cache);
                        for ((cluster, _, record), revision) in
                            dirty[done..end].iter().zip(revisions)
                        {
                            if let Some(c) = cache.records.get_mut(cluster) {
                                c.revision = Some(revision);
                                // Still what was written: nothing merged since.
                                if matches!(&c.slot, Slot::Record(r) if Arc::ptr_eq(r, record)) {
                                    cache.dirty.remove(cluster);
                                }
                            }
                        }
                        // The journal's oldest batches, deleted in this chunk.
                        let gone: usize = cache.journal.drain(..deleted).map(|l| l.bytes).sum();
                        cache.journal_bytes = cache.journal_bytes.saturating_sub(gone);
                        done = end;
                    }
                    Err(key) => {
                        conflict = Some(key);
                        break;
                    }
                }
            }
            let Some(key) = conflict else {
                return Ok(());
            };
            attempts += 1;
            if attempts >= CAS_RETRIES {
                return Err(HubError::Contention(key));
            }
            match key.strip_prefix(STATUS) {
                Some(cluster) => {
                    tracing::warn!(cluster.id = %cluster, "status record changed behind the hub's back; merging the journal onto it again");
                    self.reread(cluster).await?;
                }
                // A journal key changed behind the hub's back: read the journal again.
                None => self.reread_journal().await?,
            }
        }
    }

    /// Reads one cluster's record again and merges the journal onto it, as at a restart.
    async fn reread(&self, cluster: &str) -> Result<(), HubError> {
        let entry = match self.table.store().get(&self.table.key(cluster)).await? {
            Some(kv) => self.entry(kv),
            None => Cached::absent(),
        };
        let mut one = HashMap::from([(cluster.to_string(), entry)]);
        let (items, _) = self.table.store().list(STATUS_LOG).await?;
        for kv in &by_revision(items) {
            // Only this cluster's entries: the others stay as cached.
            if let Some(mut batch) = decode_batch(kv) {
                batch.entries.retain(|e| e.cluster == cluster);
                merge_entries(&mut one, kv.mod_revision, batch.entries);
            }
        }
        let entry = one.remove(cluster).unwrap_or_else(Cached::absent);
        let mut cache = lock(&self.cache);
        cache.records.insert(cluster.to_string(), entry);
        cache.dirty.insert(cluster.to_string());
        Ok(())
    }

    /// Reads the list of journal keys again (their revisions), keeping the merged records.
    async fn reread_journal(&self) -> Result<(), HubError> {
        let (items, _) = self.table.store().list(&self.own_log).await?;
        let mut cache = lock(&self.cache);
        cache.journal = items.iter().map(Logged::of).collect();
        cache.journal_bytes = cache.journal.iter().map(|l| l.bytes).sum();
        Ok(())
    }

    /// The decode error of an unreadable record (made again for each caller).
    fn corrupt(&self, kv: &KeyValue) -> HubError {
        match self.table.decode(kv) {
            Err(e) => e,
            Ok(_) => HubError::Store(StoreError::Inconsistent(format!(
                "{} was cached as unreadable but decodes",
                kv.key
            ))),
        }
    }

    /// Reads every stored record into the cache and merges the journal onto them, once.
    async fn load(&self) -> Result<(), HubError> {
        if lock(&self.cache).complete {
            return Ok(());
        }
        let _loading = self.loading.lock().await;
        self.load_locked().await
    }

    /// [`Self::load`] by a caller that holds `loading`.
    async fn load_locked(&self) -> Result<(), HubError> {
        if lock(&self.cache).complete {
            return Ok(());
        }
        let store = self.table.store();
        let (records, _) = store.list(STATUS).await?;
        let (journal, loaded_at) = store.list(STATUS_LOG).await?;
        let journal = by_revision(journal);
        let mut cache = lock(&self.cache);
        for kv in records {
            let cluster = kv.key[STATUS.len()..].to_string();
            let entry = self.entry(kv);
            cache.records.insert(cluster, entry);
        }
        // Every replica's batches, in the order they were stored; this replica folds (and
        // deletes) only its own.
        let mut replayed = 0usize;
        for kv in &journal {
            let merged = replay(&mut cache.records, kv);
            replayed += merged.len();
            if kv.key.starts_with(&self.own_log) {
                for (cluster, ..) in merged {
                    cache.dirty.insert(cluster);
                }
                cache.journal.push(Logged::of(kv));
                cache.journal_bytes += kv.value.len();
            }
        }
        cache.next_seq = next_seq(&self.own_log, &journal);
        cache.loaded_at = loaded_at;
        cache.complete = true;
        if !journal.is_empty() {
            tracing::info!(
                batches = journal.len(),
                reports = replayed,
                "status journal merged onto the stored records"
            );
        }
        Ok(())
    }

    /// Follows the journal batches the other replicas sharing the store write, until
    /// `shutdown`: each is merged into the cache (unless a record holds a newer batch) and the
    /// observer is told of its reports, as of this replica's own — so the replica that leads
    /// sees every cluster's reports, and every replica shows them. A failed watch lists the
    /// journal again (merging a batch twice changes nothing) and reads the records again for
    /// the batches other replicas folded and deleted meanwhile ([`Self::resync_records`]).
    pub(crate) async fn follow(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        followed: prometheus_client::metrics::counter::Counter,
    ) {
        let mut backoff = std::time::Duration::from_millis(100);
        while let Err(e) = self.load().await {
            tracing::warn!(error = %e, "reading the statuses failed; retrying");
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
        let loaded_at = lock(&self.cache).loaded_at;
        // The watch's callbacks cannot wait for the writer's turn: batches go to a task that can.
        // `None`: the journal is listed again after a failed watch.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<KeyValue>>();
        let store = self.table.store().clone();
        let watch = async move {
            crate::store::follow::follow(
                &*store,
                STATUS_LOG,
                "the status journal",
                Some(loaded_at),
                shutdown,
                |items, _| {
                    let _ = tx.send(None);
                    for kv in items {
                        let _ = tx.send(Some(kv));
                    }
                },
                |ev| {
                    if let crate::store::WatchEvent::Put(kv) = ev {
                        let _ = tx.send(Some(kv));
                    }
                },
            )
            .await;
        };
        let apply = async {
            while let Some(item) = rx.recv().await {
                let taken = match item {
                    Some(kv) => self.take_followed(&kv).await,
                    None => self.resync_records().await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "reading the status records again after a failed watch failed; a cluster's next report brings it up to date");
                        0
                    }),
                };
                followed.inc_by(taken as u64);
            }
        };
        tokio::join!(watch, apply);
    }

    /// After a failed watch on the journal: batches other replicas folded into the records and
    /// deleted meanwhile were never seen here, so the records are read again, and each one that
    /// holds a newer batch than the cached record (and is not ahead here, unwritten) replaces
    /// it; the observer is told of each as of a report replacing the cluster's statuses. How
    /// many records it took.
    pub(crate) async fn resync_records(&self) -> Result<usize, HubError> {
        let (items, _) = self.table.store().list(STATUS).await?;
        let mut told = Vec::new();
        {
            let _writer = self.loading.lock().await;
            let mut cache = lock(&self.cache);
            for kv in items {
                let cluster = kv.key[STATUS.len()..].to_string();
                if cache.dirty.contains(&cluster) {
                    continue;
                }
                let fresh = self.entry(kv);
                let Slot::Record(rec) = &fresh.slot else {
                    continue;
                };
                let newer = match cache.records.get(&cluster).map(|c| &c.slot) {
                    Some(Slot::Record(held)) => rec.through > held.through,
                    Some(Slot::Corrupt(_)) | None => true,
                };
                if newer {
                    let rec = rec.clone();
                    cache.records.insert(cluster.clone(), fresh);
                    told.push((cluster, rec));
                }
            }
        }
        let n = told.len();
        if let Some(observe) = self.observer.get() {
            for (cluster, rec) in told {
                let report = v1::StatusReport {
                    replace: true,
                    apps: rec
                        .apps
                        .iter()
                        .map(|a| v1::AppStatus {
                            app: a.app.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                observe(&cluster, &report, &rec);
            }
        }
        Ok(n)
    }

    /// Folds the journals of replicas that are gone (not in `live`, not this one), and any
    /// journal batch written without a replica's name (by a hub alone on the store before):
    /// their batches are merged here, taken into this replica's journal, and a checkpoint
    /// writes the records they changed and deletes them. The leader runs it when a replica's
    /// registration goes, so a replica that never comes back leaves no journal behind. How many
    /// batches it took.
    pub(crate) async fn adopt_orphans(
        &self,
        live: &std::collections::HashSet<String>,
    ) -> Result<usize, HubError> {
        let Some(me) = self
            .own_log
            .strip_prefix(STATUS_LOG)
            .and_then(|s| s.strip_suffix('/'))
        else {
            // Alone on the store: every batch is this hub's own already.
            return Ok(0);
        };
        self.load().await?;
        let _writer = self.loading.lock().await;
        let (items, _) = self.table.store().list(STATUS_LOG).await?;
        let orphans: Vec<KeyValue> = by_revision(items)
            .into_iter()
            .filter(|kv| match kv.key[STATUS_LOG.len()..].split_once('/') {
                Some((replica, _)) => replica != me && !live.contains(replica),
                None => true,
            })
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let mut told = Vec::new();
        {
            let mut cache = lock(&self.cache);
            let known: BTreeSet<String> = cache.journal.iter().map(|l| l.key.clone()).collect();
            for kv in orphans.iter().filter(|kv| !known.contains(&kv.key)) {
                let merged = replay(&mut cache.records, kv);
                for (cluster, ..) in &merged {
                    cache.dirty.insert(cluster.clone());
                }
                told.extend(merged);
                cache.journal.push(Logged::of(kv));
                cache.journal_bytes += kv.value.len();
            }
        }
        tracing::info!(
            batches = orphans.len(),
            "folding the status journals of hub replicas that are gone"
        );
        self.checkpoint().await?;
        if let Some(observe) = self.observer.get() {
            for (cluster, report, rec) in told {
                observe(&cluster, &report, &rec);
            }
        }
        Ok(orphans.len())
    }

    /// Merges a journal batch another replica wrote and tells the observer; how many reports
    /// it merged.
    async fn take_followed(&self, kv: &KeyValue) -> usize {
        if kv.key.starts_with(&self.own_log) {
            return 0;
        }
        let merged = {
            let _writer = self.loading.lock().await;
            replay(&mut lock(&self.cache).records, kv)
        };
        let n = merged.len();
        if let Some(observe) = self.observer.get() {
            for (cluster, report, rec) in merged {
                observe(&cluster, &report, &rec);
            }
        }
        n
    }

    fn entry(&self, kv: KeyValue) -> Cached {
        let revision = Some(kv.mod_revision);
        match self.table.decode(&kv) {
            Ok(v) => Cached {
                revision,
                slot: Slot::Record(Arc::new(v.value)),
            },
            Err(_) => Cached {
                revision,
                slot: Slot::Corrupt(kv),
            },
        }
    }

    /// The cluster's record (from memory after the first read).
    pub(crate) async fn get_shared(&self, cluster: &str) -> Result<Arc<StatusRecord>, HubError> {
        self.load().await?;
        let cached = lock(&self.cache)
            .records
            .get(cluster)
            .cloned()
            .unwrap_or_else(Cached::absent);
        match cached.slot {
            Slot::Record(r) => Ok(r),
            Slot::Corrupt(kv) => Err(self.corrupt(&kv)),
        }
    }

    /// Every cluster's record, by name; an unreadable one is an error naming its key.
    pub(crate) async fn all(&self) -> Result<Vec<(String, Arc<StatusRecord>)>, HubError> {
        self.load().await?;
        let cache = lock(&self.cache);
        let mut out = Vec::with_capacity(cache.records.len());
        for (cluster, c) in &cache.records {
            match &c.slot {
                Slot::Record(r) if c.revision.is_some() || !r.apps.is_empty() => {
                    out.push((cluster.clone(), r.clone()))
                }
                Slot::Record(_) => {}
                Slot::Corrupt(kv) => return Err(self.corrupt(kv)),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Reports queued and not yet taken by the writer.
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.queue).items.len()
    }

    /// Journal batches not yet folded into the records.
    #[cfg(test)]
    fn journaled(&self) -> usize {
        lock(&self.cache).journal.len()
    }
}

/// Appends one entry to an encoded [`JournalBatch`] (as `JournalEntry { cluster, report }` would
/// encode, without copying the report into one).
fn journal_entry(buf: &mut Vec<u8>, cluster: &str, report: &v1::StatusReport) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let entry_len = key_len(1)
        + encoded_len_varint(cluster.len() as u64)
        + cluster.len()
        + prost::encoding::message::encoded_len(2, report);
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(entry_len as u64, buf);
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(cluster.len() as u64, buf);
    buf.extend_from_slice(cluster.as_bytes());
    prost::encoding::message::encode(2, report, buf);
}

/// A journal batch; `None` (with an error in the log) when it does not decode.
fn decode_batch(kv: &KeyValue) -> Option<JournalBatch> {
    match JournalBatch::decode(kv.value.as_slice()) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "unreadable status journal batch skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests;
