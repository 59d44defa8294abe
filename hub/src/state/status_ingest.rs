//! Group commit of the agents' status reports. Every [`Statuses::record`] call queues its report
//! and waits. One writer task at a time (started by the call that finds none, ended when the
//! queue is empty) takes what is queued — at most [`Limits::batch_reports`] reports and
//! [`Limits::batch_bytes`] bytes of them —, merges each cluster's reports onto its record in the
//! order they were queued, and writes every record it changed in one all-or-nothing store batch
//! (one durable transaction; a compare-and-swap on each record's revision). Only then is every
//! caller of the batch answered; a failed write fails them all, so nothing is acknowledged that
//! is not durable. While one batch is written the next one gathers.
//!
//! The queue holds at most [`Limits::queue_bytes`] of reports (those being written included);
//! beyond that callers wait, in the order of their calls, and their sessions read nothing more
//! meanwhile — backpressure onto the agents' streams instead of memory.
//!
//! The records are kept in memory: the writer reads the whole table once, at its first batch,
//! and the cache follows every write, because only this hub writes `/status/`. Should another
//! writer have moved a record on anyway, the batch's compare-and-swap fails on it; the record is
//! read again and the batch merged and written again.
//!
//! [`Statuses::record`]: super::status::Statuses::record

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flotilla_proto::v1;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::state::error::HubError;
use crate::state::status::{STATUS, StatusRecord};
use crate::state::table::{CAS_RETRIES, Table};
use crate::store::{CasOp, KeyValue, Revision, SharedStore, StoreError};

/// Bounds of the group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most reports merged into one store write.
    pub batch_reports: usize,
    /// Most bytes of (encoded) reports merged into one store write; a larger report goes alone.
    pub batch_bytes: usize,
    /// Most bytes of reports queued or being written; further callers wait. A larger report
    /// counts as this much.
    pub queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            batch_reports: 4096,
            batch_bytes: 8 << 20,
            queue_bytes: 64 << 20,
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

/// A cluster's record as cached, with its store revision (`None`: nothing stored).
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

#[derive(Debug, Default)]
struct Cache {
    records: HashMap<String, Cached>,
    /// Every stored record was read: a cluster that is not in `records` has none.
    complete: bool,
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

/// The group commit of the status table, and its cache.
pub(crate) struct Ingest {
    table: Table<StatusRecord>,
    limits: Limits,
    cache: Mutex<Cache>,
    queue: Arc<Mutex<Queue>>,
    /// Taken while waiting for room, so that reports are queued in the order of the calls.
    turn: tokio::sync::Mutex<()>,
    /// Bytes of queue left.
    room: Arc<Semaphore>,
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

/// One error per caller of a failed batch: the same cause, shared.
#[derive(Debug)]
struct SharedCause(Arc<HubError>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

fn batch_error(cause: &Arc<HubError>, reports: usize) -> HubError {
    HubError::Store(StoreError::Backend {
        what: format!("writing a batch of {reports} status reports"),
        source: Box::new(SharedCause(cause.clone())),
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

impl Ingest {
    pub(crate) fn new(store: SharedStore, limits: Limits) -> Self {
        let limits = Limits {
            batch_reports: limits.batch_reports.max(1),
            batch_bytes: limits.batch_bytes.max(1),
            queue_bytes: limits.queue_bytes.clamp(1, u32::MAX as usize),
        };
        Self {
            table: Table::new(store, STATUS),
            limits,
            cache: Mutex::default(),
            queue: Arc::default(),
            turn: tokio::sync::Mutex::new(()),
            room: Arc::new(Semaphore::new(limits.queue_bytes)),
        }
    }

    /// Queues `report` and waits until it is durable (or its batch failed).
    pub(crate) async fn record(
        self: &Arc<Self>,
        cluster: &str,
        report: &v1::StatusReport,
    ) -> Result<(), HubError> {
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
        answer
            .await
            .unwrap_or(Err(HubError::Store(StoreError::Closed)))
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
            let outcomes = self.commit(&batch).await;
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

    /// Merges and writes one batch; the outcome of each of its reports, in order.
    async fn commit(&self, batch: &[Pending]) -> Vec<Result<(), HubError>> {
        let mut outcomes: Vec<Option<Result<(), HubError>>> = batch.iter().map(|_| None).collect();
        // Each cluster's reports, in queue order.
        let mut clusters: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in batch.iter().enumerate() {
            clusters.entry(p.cluster.as_str()).or_default().push(i);
        }
        let fail_all = |outcomes: &mut [Option<Result<(), HubError>>], e: HubError| {
            let cause = Arc::new(e);
            for o in outcomes.iter_mut().filter(|o| o.is_none()) {
                *o = Some(Err(batch_error(&cause, batch.len())));
            }
        };
        if let Err(e) = self.load_all().await {
            fail_all(&mut outcomes, e);
            return outcomes.into_iter().map(|o| o.expect("answered")).collect();
        }
        let mut attempts = 0;
        loop {
            let mut ops = Vec::with_capacity(clusters.len());
            let mut written = Vec::with_capacity(clusters.len());
            for (cluster, reports) in &clusters {
                if outcomes[reports[0]].is_some() {
                    continue;
                }
                match self.merged(cluster, reports.iter().map(|i| &batch[*i].report)) {
                    Ok((expected, record)) => {
                        ops.push(CasOp {
                            key: self.table.key(cluster),
                            expected,
                            value: Table::encode(&record),
                        });
                        written.push((*cluster, record));
                    }
                    Err(unreadable) => {
                        for i in reports {
                            outcomes[*i] = Some(Err(self.corrupt(&unreadable)));
                        }
                    }
                }
            }
            if ops.is_empty() {
                break;
            }
            let n = ops.len();
            match self.table.store().compare_and_swap_many(ops).await {
                Ok(Ok(last)) => {
                    // Each key of the batch got the next revision, in order.
                    let first = last + 1 - n as u64;
                    let mut cache = lock(&self.cache);
                    for (i, (cluster, record)) in written.into_iter().enumerate() {
                        cache.records.insert(
                            cluster.to_string(),
                            Cached {
                                revision: Some(first + i as u64),
                                slot: Slot::Record(Arc::new(record)),
                            },
                        );
                    }
                    for o in outcomes.iter_mut().filter(|o| o.is_none()) {
                        *o = Some(Ok(()));
                    }
                    break;
                }
                Ok(Err(key)) => {
                    attempts += 1;
                    let cluster = key.strip_prefix(STATUS).unwrap_or(&key).to_string();
                    tracing::warn!(cluster.id = %cluster, "status record changed behind the hub's back; merging again");
                    if attempts >= CAS_RETRIES {
                        fail_all(&mut outcomes, HubError::Contention(key));
                        break;
                    }
                    if let Err(e) = self.reload(&cluster).await {
                        fail_all(&mut outcomes, e);
                        break;
                    }
                }
                Err(e) => {
                    fail_all(&mut outcomes, e.into());
                    break;
                }
            }
        }
        tracing::debug!(
            reports = batch.len(),
            clusters = clusters.len(),
            "status batch written"
        );
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(HubError::Store(StoreError::Inconsistent(
                        "a status report of a batch was left unanswered".into(),
                    )))
                })
            })
            .collect()
    }

    /// The cluster's record with `reports` merged in order, and the revision it must still be
    /// at for the write; the stored record when it is unreadable and the reports do not start
    /// by replacing it.
    fn merged<'r>(
        &self,
        cluster: &str,
        mut reports: impl Iterator<Item = &'r v1::StatusReport>,
    ) -> Result<(Option<Revision>, StatusRecord), KeyValue> {
        let base = lock(&self.cache)
            .records
            .get(cluster)
            .cloned()
            .unwrap_or_else(Cached::absent);
        let first = reports.next().expect("a cluster of the batch has reports");
        let mut record = match (&base.slot, first.replace) {
            (_, true) => StatusRecord::default(),
            (Slot::Record(r), false) => r.as_ref().clone(),
            (Slot::Corrupt(kv), false) => return Err(kv.clone()),
        };
        record.merge(first);
        for r in reports {
            record.merge(r);
        }
        Ok((base.revision, record))
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

    /// Reads every stored record into the cache, once.
    async fn load_all(&self) -> Result<(), HubError> {
        if lock(&self.cache).complete {
            return Ok(());
        }
        let (items, _) = self.table.store().list(STATUS).await?;
        let mut cache = lock(&self.cache);
        for kv in items {
            let cluster = kv.key[STATUS.len()..].to_string();
            let entry = self.entry(kv);
            remember(&mut cache, cluster, entry);
        }
        cache.complete = true;
        Ok(())
    }

    /// Reads one cluster's record again, whatever the cache holds.
    async fn reload(&self, cluster: &str) -> Result<(), HubError> {
        let entry = match self.table.store().get(&self.table.key(cluster)).await? {
            Some(kv) => self.entry(kv),
            None => Cached::absent(),
        };
        lock(&self.cache).records.insert(cluster.to_string(), entry);
        Ok(())
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
        let cached = {
            let cache = lock(&self.cache);
            match cache.records.get(cluster) {
                Some(c) => Some(c.clone()),
                None if cache.complete => Some(Cached::absent()),
                None => None,
            }
        };
        let cached = match cached {
            Some(c) => c,
            None => {
                let entry = match self.table.store().get(&self.table.key(cluster)).await? {
                    Some(kv) => self.entry(kv),
                    None => Cached::absent(),
                };
                remember(&mut lock(&self.cache), cluster.to_string(), entry)
            }
        };
        match cached.slot {
            Slot::Record(r) => Ok(r),
            Slot::Corrupt(kv) => Err(self.corrupt(&kv)),
        }
    }

    /// Reports queued and not yet taken by the writer.
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.queue).items.len()
    }
}

/// Caches `entry` unless the cache already holds the record at the same or a later revision (a
/// read that raced with a write must not bring back the older record); returns what is cached.
fn remember(cache: &mut Cache, cluster: String, entry: Cached) -> Cached {
    match cache.records.get(&cluster) {
        Some(have) if have.revision >= entry.revision => have.clone(),
        _ => {
            cache.records.insert(cluster, entry.clone());
            entry
        }
    }
}

#[cfg(test)]
mod tests;
