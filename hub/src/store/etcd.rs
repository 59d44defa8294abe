//! The distributed store: [`Store`] on etcd's v3 API (through `etcd-client`), for several hub
//! replicas sharing one state. Redb stays the default embedded store.
//!
//! * **Keys** are the hub's keys behind an optional prefix (`etcd://h1:2379,h2:2379/fleet-a`
//!   keeps one fleet's state under `/fleet-a`), so several fleets can share one etcd.
//! * **Revisions** are etcd's own, one lower: a fresh etcd is at revision 1 before anything is
//!   written, the store contract says 0, so revision `r` here is etcd's `r + 1`. Both move by one
//!   per write; a batch ([`Store::compare_and_swap_many`], one etcd transaction) is committed at
//!   one revision for all its ops, as etcd does it.
//! * **Compare-and-swap** is a transaction comparing the key's `mod_revision` (or, for "must
//!   not exist", its `create_revision` against 0); when it fails the transaction reads the keys
//!   back in the same revision, which is how the failed key (and, for one key, its current value)
//!   is known.
//! * **Lists** are read in pages of [`LIST_PAGE`] keys, every page at the revision of the first,
//!   so a list is one consistent snapshot however large.
//! * **Watches** run in a task per watch: it reads etcd's watch stream and, when the stream
//!   breaks (a leader change, a member lost, the connection reset), opens it again from the
//!   revision after the last one delivered — no gap, no duplicate — backing off while etcd is
//!   unreachable. A start revision etcd has compacted away ends the stream with
//!   [`StoreError::Compacted`], which the hub's watchers answer by listing again.
//! * Every unary call has a deadline ([`CALL_TIMEOUT`]): without quorum etcd answers writes with
//!   an error or not at all, and the hub must say so instead of hanging.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{CasOp, KeyValue, Revision, Store, StoreError, WatchEvent, WatchStream, validate_key};

/// Keys per page of a list.
const LIST_PAGE: i64 = 1000;
/// How long one unary call may take before the store reports etcd as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to an etcd endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// The largest message read from etcd (a list page, a watch response): pages hold at most
/// [`LIST_PAGE`] values, each under the hub's own value limit.
const MAX_DECODE: usize = 256 << 20;
/// Watch events buffered per watch before the watch task waits for its reader.
const WATCH_BUFFER: usize = 1024;
/// Backoff between attempts of a call etcd did not take.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);
/// Backoff between attempts to reopen a broken watch.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(50);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// Where the etcd cluster is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member (or of a load balancer in front of them).
    pub endpoints: Vec<String>,
    /// Prepended to every key (empty, or starting with `/` and not ending with one).
    pub prefix: String,
    /// Client TLS: the CA that signed the members' certificates, and optionally this client's
    /// certificate and key (etcd's `--client-cert-auth`). `None`: plain HTTP/2.
    pub tls: Option<EtcdTls>,
    /// The members' `--max-txn-ops`: the most ops one batch may hold.
    pub max_txn_ops: usize,
}

/// Client TLS towards etcd (PEM contents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub identity: Option<(String, String)>,
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            format!("{url:?}: an etcd store is etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
        })?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "{url:?}: no etcd endpoint (etcd://HOST:PORT[,HOST:PORT...])"
            ));
        }
        for e in &endpoints {
            if flotilla_proto::tls::split_host_port(e).is_err() {
                return Err(format!("{url:?}: endpoint {e:?} is not HOST:PORT"));
            }
        }
        Ok(Self {
            endpoints,
            prefix: prefix.to_owned(),
            tls: None,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        })
    }
}

/// [`Store`] on etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    max_txn_ops: usize,
    /// The endpoints, for messages.
    endpoints: String,
    /// Every write also compares this (see [`EtcdStore::fenced_by`]).
    guard: Option<Guard>,
}

/// A condition every write of a fenced store carries: a key (an election's leader key, an
/// ownership key) still at the create revision it had when this replica took it.
#[derive(Debug, Clone)]
struct Guard {
    key: Vec<u8>,
    create_revision: i64,
    what: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("guard", &self.guard.as_ref().map(|g| &g.what))
            .finish()
    }
}

/// A call's error: [`StoreError::Unavailable`] when etcd could not be reached or could not
/// decide (unreachable member, broken connection, no leader, deadline), else `Backend`.
fn backend(what: impl Into<String>, e: etcd_client::Error) -> StoreError {
    let unavailable = match &e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) || (s.code() == tonic::Code::Unknown && s.message().contains("transport error"))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable {
            what: what.into(),
            source: Box::new(e),
        }
    } else {
        StoreError::Backend {
            what: what.into(),
            source: Box::new(e),
        }
    }
}

/// etcd's revision of the store revision `r`.
fn to_etcd(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX - 1) + 1
}

/// The store revision of etcd's revision `r` (etcd's revisions start at 1).
fn from_etcd(r: i64) -> Revision {
    u64::try_from(r - 1).unwrap_or(0)
}

/// The end of the key range holding every key that starts with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented, `\0` for all keys).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, StoreError> {
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let urls: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // Without a leader a request fails at once instead of waiting (and a watch is
            // cancelled, then reopened by its task once there is one again).
            .with_require_leader(true);
        if let Some(tls) = &cfg.tls {
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(t);
        }
        let endpoints = cfg.endpoints.join(",");
        let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(&urls, Some(opts)))
            .await
            .map_err(|_| StoreError::Backend {
                what: format!("connect to etcd at {endpoints}"),
                source: format!("no answer within {CALL_TIMEOUT:?}").into(),
            })?
            .map_err(|e| backend(format!("connect to etcd at {endpoints}"), e))?;
        let store = Self {
            client,
            prefix: cfg.prefix.clone(),
            max_txn_ops: cfg.max_txn_ops.max(1),
            endpoints,
            guard: None,
        };
        store.revision().await?;
        Ok(store)
    }

    /// Drops etcd's history before `revision` (what etcd's `--auto-compaction-*` does on its
    /// own): watches from an older revision then end with [`StoreError::Compacted`].
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.kv_call(
            || format!("compact at {revision}"),
            |mut kv| async move { kv.compact(to_etcd(revision), None).await },
        )
        .await
        .map(drop)
    }

    /// The same store, with every write made conditional on `key` still being the one created
    /// at `create_revision` (an election's leader key, held with this replica's lease): once
    /// the lease is lost and etcd deletes the key, or another replica takes it, this store's
    /// writes fail with [`StoreError::Fenced`] — a stale owner cannot write, whatever it still
    /// believes. `what` names the ownership in that error.
    pub fn fenced_by(&self, key: &str, create_revision: Revision, what: &str) -> EtcdStore {
        EtcdStore {
            guard: Some(Guard {
                key: self.full(key),
                create_revision: to_etcd(create_revision),
                what: what.to_owned(),
            }),
            ..self.clone()
        }
    }

    /// One transaction, fenced when the store is: `when` → `then`, else `reads`. A guard that
    /// no longer holds is [`StoreError::Fenced`]; otherwise `Ok(Err(reads' responses))`.
    async fn txn(
        &self,
        what: impl Fn() -> String,
        mut when: Vec<Compare>,
        then: Vec<TxnOp>,
        mut reads: Vec<TxnOp>,
    ) -> Result<Result<etcd_client::TxnResponse, Vec<TxnOpResponse>>, StoreError> {
        if let Some(g) = &self.guard {
            when.insert(
                0,
                Compare::create_revision(g.key.clone(), CompareOp::Equal, g.create_revision),
            );
            reads.insert(0, TxnOp::get(g.key.clone(), None));
        }
        let txn = Txn::new().when(when).and_then(then).or_else(reads);
        let resp = self.kv_call(&what, txn_call(&txn)).await?;
        if resp.succeeded() {
            return Ok(Ok(resp));
        }
        let mut responses = resp.op_responses();
        if let Some(g) = &self.guard {
            let held = match responses.first() {
                Some(TxnOpResponse::Get(r)) => r
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == g.create_revision),
                _ => false,
            };
            if !held {
                return Err(StoreError::Fenced {
                    what: format!("etcd {}", what()),
                    held: g.what.clone(),
                });
            }
            responses.remove(0);
        }
        Ok(Err(responses))
    }

    /// Grants a lease of `ttl` (whole seconds, at least one): keys written with it are deleted
    /// by etcd once it is neither kept alive nor revoked within its time.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = self
            .client_call(
                || format!("grant a {secs} s lease"),
                |mut c| async move { c.lease_grant(secs, None).await },
            )
            .await?;
        Ok(resp.id())
    }

    /// Renews `lease` for its full time; `false` when it had already expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let resp = self
            .client_call(
                || format!("keep lease {lease:x} alive"),
                |mut c| async move {
                    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    answers.message().await
                },
            )
            .await?;
        Ok(resp.is_some_and(|r| r.ttl() > 0))
    }

    /// Ends `lease` now: the keys written with it are deleted at once.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.client_call(
            || format!("revoke lease {lease:x}"),
            |mut c| async move { c.lease_revoke(lease).await },
        )
        .await
        .map(drop)
    }

    /// Writes `key` with `lease` (it goes when the lease does); unconditional.
    pub async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Revision, StoreError> {
        self.put_with(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
    }

    /// Creates `key` with `lease` unless it exists: `Ok(Ok(revision))` when created,
    /// `Ok(Err(current))` with whoever holds it.
    pub async fn create_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        self.swap_with(key, None, value, Some(PutOptions::new().with_lease(lease)))
            .await
    }

    /// [`Store::put`], with etcd's put options (a lease).
    async fn put_with(
        &self,
        key: &str,
        value: Vec<u8>,
        options: Option<PutOptions>,
    ) -> Result<Revision, StoreError> {
        validate_key(key)?;
        let then = vec![TxnOp::put(self.full(key), value, options)];
        let resp = self
            .txn(|| format!("put {key}"), vec![], then, vec![])
            .await?
            .map_err(|_| StoreError::Inconsistent(format!("etcd put {key}: refused")))?;
        header_revision(resp.header(), || format!("put {key}"))
    }

    /// [`Store::compare_and_swap`], with etcd's put options (a lease).
    async fn swap_with(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        options: Option<PutOptions>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        validate_key(key)?;
        let outcome = self
            .txn(
                || format!("compare-and-swap {key}"),
                vec![self.condition(key, expected)],
                vec![TxnOp::put(self.full(key), value, options)],
                vec![TxnOp::get(self.full(key), None)],
            )
            .await?;
        match outcome {
            Ok(resp) => {
                header_revision(resp.header(), || format!("compare-and-swap {key}")).map(Ok)
            }
            Err(reads) => Ok(Err(self.read_back(reads.into_iter().next())?)),
        }
    }

    /// The key a transaction's failure branch read (`None`: absent).
    fn read_back(&self, read: Option<TxnOpResponse>) -> Result<Option<KeyValue>, StoreError> {
        match read {
            Some(TxnOpResponse::Get(mut g)) => g
                .take_kvs()
                .into_iter()
                .next()
                .map(|kv| self.key_value(kv))
                .transpose(),
            _ => Ok(None),
        }
    }

    /// The key range of `prefix` as etcd takes it: its first key (`\0`, the first key there
    /// is, for all keys: etcd takes no empty key) and the end of the range.
    fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let start = if start.is_empty() { vec![0] } else { start };
        (start, end)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// Runs one call with the deadline, naming `what` in errors.
    async fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(backend(format!("etcd {} ({})", what(), self.endpoints), e)),
            Err(_) => Err(self.no_answer(what)),
        }
    }

    fn no_answer(&self, what: impl FnOnce() -> String) -> StoreError {
        StoreError::Unavailable {
            what: format!("etcd {} ({})", what(), self.endpoints),
            source: format!("no answer within {CALL_TIMEOUT:?}").into(),
        }
    }

    /// Runs a key-value call with the deadline, trying again (on whichever member the client
    /// picks next) while etcd says the request was not taken: a member that cannot be
    /// reached, or no leader for now (an election under way). Anything else is answered.
    async fn kv_call<T, F, Fut>(
        &self,
        what: impl Fn() -> String,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.client_call(what, |c| {
            op(c.kv_client().max_decoding_message_size(MAX_DECODE))
        })
        .await
    }

    /// [`Self::kv_call`] for any of the client's services (leases).
    async fn client_call<T, F, Fut>(
        &self,
        what: impl Fn() -> String,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut backoff = RETRY_MIN;
        loop {
            match tokio::time::timeout_at(deadline, op(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if not_taken(&e) && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %e, "etcd {}: not taken; trying again", what());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Ok(Err(e)) => {
                    return Err(backend(format!("etcd {} ({})", what(), self.endpoints), e));
                }
                Err(_) => return Err(self.no_answer(what)),
            }
        }
    }

    /// The store's view of an etcd key-value (its key without the prefix).
    fn key_value(&self, kv: etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let (create, modified) = (kv.create_revision(), kv.mod_revision());
        let (key, value) = kv.into_key_value();
        Ok(KeyValue {
            key: self.strip(key)?,
            value,
            create_revision: from_etcd(create),
            mod_revision: from_etcd(modified),
        })
    }

    fn strip(&self, key: Vec<u8>) -> Result<String, StoreError> {
        let key = String::from_utf8(key)
            .map_err(|e| StoreError::Inconsistent(format!("etcd key is not UTF-8: {e}")))?;
        key.strip_prefix(self.prefix.as_str())
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Inconsistent(format!("etcd key {key:?} outside the prefix")))
    }

    /// The condition of `op` as an etcd comparison.
    fn condition(&self, key: &str, expected: Option<Revision>) -> Compare {
        match expected {
            None => Compare::create_revision(self.full(key), CompareOp::Equal, 0),
            Some(r) => Compare::mod_revision(self.full(key), CompareOp::Equal, to_etcd(r)),
        }
    }
}

/// Whether the request can be sent again: the member could not be reached (the request was
/// never sent), it has no leader (it refuses before proposing anything), or its leader changed
/// while the request waited (it may or may not have been applied: a conditional write applied
/// twice fails its comparison the second time, an unconditional put writes the same value
/// again, and a read is read again).
fn not_taken(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable
                && ["connect", "no leader", "leader changed"]
                    .iter()
                    .any(|m| s.message().contains(m))
        }
        _ => false,
    }
}

/// Whether `current` (a key's stored state) meets the condition `expected`.
fn holds(expected: Option<Revision>, current: Option<&KeyValue>) -> bool {
    match (expected, current) {
        (None, None) => true,
        (Some(r), Some(kv)) => kv.mod_revision == r,
        _ => false,
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let full = self.full(key);
        let mut resp = self
            .kv_call(
                || format!("get {key}"),
                |mut kv| {
                    let k = full.clone();
                    async move { kv.get(k, None).await }
                },
            )
            .await?;
        resp.take_kvs()
            .into_iter()
            .next()
            .map(|kv| self.key_value(kv))
            .transpose()
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.put_with(key, value, None).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
    ) -> Result<Result<Revision, Option<KeyValue>>, StoreError> {
        self.swap_with(key, expected, value, None).await
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        validate_key(key)?;
        let then = vec![TxnOp::delete(self.full(key), None::<DeleteOptions>)];
        let resp = self
            .txn(|| format!("delete {key}"), vec![], then, vec![])
            .await?
            .map_err(|_| StoreError::Inconsistent(format!("etcd delete {key}: refused")))?;
        let deleted = matches!(resp.op_responses().first(), Some(TxnOpResponse::Delete(d)) if d.deleted() > 0);
        if !deleted {
            return Ok(None);
        }
        header_revision(resp.header(), || format!("delete {key}")).map(Some)
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        validate_key(key)?;
        let outcome = self
            .txn(
                || format!("compare-and-delete {key}"),
                vec![self.condition(key, Some(expected))],
                vec![TxnOp::delete(self.full(key), None::<DeleteOptions>)],
                vec![],
            )
            .await?;
        Ok(outcome.is_ok())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let (mut from, end) = self.range(prefix);
        let mut out = Vec::new();
        let mut at: Option<i64> = None;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if let Some(r) = at {
                opts = opts.with_revision(r);
            }
            let mut resp = self
                .kv_call(
                    || format!("list {prefix}"),
                    |mut kv| {
                        let (k, o) = (from.clone(), opts.clone());
                        async move { kv.get(k, Some(o)).await }
                    },
                )
                .await?;
            let revision = match at {
                Some(r) => r,
                None => {
                    let r = resp.header().map(|h| h.revision()).ok_or_else(|| {
                        StoreError::Inconsistent(format!("etcd list {prefix}: no header"))
                    })?;
                    at = Some(r);
                    r
                }
            };
            let more = resp.more();
            let kvs = resp.take_kvs();
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            let page = kvs.len();
            for kv in kvs {
                out.push(self.key_value(kv)?);
            }
            if !more || page == 0 {
                return Ok((out, from_etcd(revision)));
            }
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        // Any read answers with the store's revision; counting one key reads nothing.
        let full = self.full("/");
        let resp = self
            .kv_call(
                || "revision".to_owned(),
                |mut kv| {
                    let k = full.clone();
                    async move { kv.get(k, Some(GetOptions::new().with_count_only())).await }
                },
            )
            .await?;
        header_revision(resp.header(), || "revision".to_owned())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        // From a concrete revision, so that a reopened watch knows where to go on.
        let start = if from == 0 {
            self.revision().await? + 1
        } else {
            from
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watch = Watch {
            store: self.clone(),
            prefix: prefix.to_owned(),
            next: start,
            tx,
        };
        // The first opening reports a compacted start (or a refusal) to the caller directly;
        // a member that cannot be reached is passed over as in `kv_call`.
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut backoff = RETRY_MIN;
        let stream = loop {
            match watch.open().await {
                Ok(s) => break s,
                Err(StoreError::Backend { what, source })
                    if tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(%what, error = %source, "opening an etcd watch failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        };
        tokio::spawn(watch.run(stream));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compare_and_swap_many(
        &self,
        ops: Vec<CasOp>,
    ) -> Result<Result<Vec<Revision>, String>, StoreError> {
        for op in &ops {
            validate_key(&op.key)?;
        }
        if ops.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        if ops.len() > self.max_batch_ops() {
            return Err(StoreError::Inconsistent(format!(
                "a batch of {} writes is more than etcd's --max-txn-ops ({}) allows{}",
                ops.len(),
                self.max_txn_ops,
                if self.guard.is_some() {
                    " beside the ownership check"
                } else {
                    ""
                }
            )));
        }
        let when: Vec<Compare> = ops
            .iter()
            .map(|op| self.condition(&op.key, op.expected))
            .collect();
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|op| match &op.value {
                Some(v) => TxnOp::put(self.full(&op.key), v.clone(), None),
                None => TxnOp::delete(self.full(&op.key), None::<DeleteOptions>),
            })
            .collect();
        let reads: Vec<TxnOp> = ops
            .iter()
            .map(|op| TxnOp::get(self.full(&op.key), None))
            .collect();
        let first = ops[0].key.clone();
        let n = ops.len();
        let outcome = self
            .txn(|| format!("batch of {n} from {first}"), when, then, reads)
            .await?;
        let reads = match outcome {
            Ok(resp) => {
                let r = header_revision(resp.header(), || format!("batch from {first}"))?;
                return Ok(Ok(vec![r; n]));
            }
            Err(reads) => reads,
        };
        // Read back in the same transaction: the first op whose condition does not hold.
        for (op, read) in ops.iter().zip(reads) {
            let current = self.read_back(Some(read))?;
            if !holds(op.expected, current.as_ref()) {
                return Ok(Err(op.key.clone()));
            }
        }
        Err(StoreError::Inconsistent(format!(
            "etcd refused the batch from {first} but every condition holds"
        )))
    }

    fn max_batch_ops(&self) -> usize {
        // A fenced transaction spends one comparison and one read on its guard.
        self.max_txn_ops - usize::from(self.guard.is_some())
    }
}

/// A transaction call, attempt after attempt.
fn txn_call(
    txn: &Txn,
) -> impl FnMut(
    KvClient,
) -> std::pin::Pin<
    Box<dyn Future<Output = Result<etcd_client::TxnResponse, etcd_client::Error>> + Send>,
> + '_ {
    move |mut kv| {
        let t = txn.clone();
        Box::pin(async move { kv.txn(t).await })
    }
}

fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
    what: impl FnOnce() -> String,
) -> Result<Revision, StoreError> {
    header
        .map(|h| from_etcd(h.revision()))
        .ok_or_else(|| StoreError::Inconsistent(format!("etcd {}: no response header", what())))
}

/// One watch: reads etcd's watch stream into the channel, reopening it after the last revision
/// delivered whenever it breaks.
struct Watch {
    store: EtcdStore,
    prefix: String,
    /// The next revision to deliver (at first, the one the caller asked for).
    next: Revision,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
}

/// What opening a watch gives: the etcd stream, already past its "created" response.
type EtcdWatch = etcd_client::WatchStream;

impl Watch {
    /// Opens etcd's watch from `self.next`.
    async fn open(&self) -> Result<EtcdWatch, StoreError> {
        let (key, end) = self.store.range(&self.prefix);
        let opts = WatchOptions::new()
            .with_range(end)
            .with_start_revision(to_etcd(self.next));
        let mut client = self
            .store
            .client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE);
        let what = || format!("watch {} from {}", self.prefix, self.next);
        let mut stream = self.store.call(what, client.watch(key, Some(opts))).await?;
        // The first response says whether the watch was created, or why not.
        let first = self
            .store
            .call(what, stream.message())
            .await?
            .ok_or_else(|| StoreError::Backend {
                what: format!("etcd {}", what()),
                source: "the watch stream closed at once".into(),
            })?;
        if first.compact_revision() > 0 {
            return Err(StoreError::Compacted {
                requested: self.next,
                oldest: from_etcd(first.compact_revision()),
            });
        }
        if first.canceled() {
            return Err(StoreError::Backend {
                what: format!("etcd {}", what()),
                source: format!("watch refused: {}", first.cancel_reason()).into(),
            });
        }
        if !first.events().is_empty() && !self.deliver(&first).await {
            return Err(StoreError::Closed);
        }
        Ok(stream)
    }

    /// Sends the events of one response; false when the reader is gone.
    async fn deliver(&self, resp: &etcd_client::WatchResponse) -> bool {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let item = match event.event_type() {
                EventType::Put => self.store.key_value(kv.clone()).map(WatchEvent::Put),
                EventType::Delete => {
                    self.store
                        .strip(kv.key().to_vec())
                        .map(|key| WatchEvent::Delete {
                            key,
                            mod_revision: from_etcd(kv.mod_revision()),
                        })
                }
            };
            if self.tx.send(item).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut stream: EtcdWatch) {
        let mut backoff = WATCH_RETRY_MIN;
        loop {
            let outcome = tokio::select! {
                m = stream.message() => m,
                () = self.tx.closed() => return,
            };
            match outcome {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        let _ = self
                            .tx
                            .send(Err(StoreError::Compacted {
                                requested: self.next,
                                oldest: from_etcd(resp.compact_revision()),
                            }))
                            .await;
                        return;
                    }
                    if !self.deliver(&resp).await {
                        return;
                    }
                    if let Some(last) = resp.events().iter().filter_map(|e| e.kv()).next_back() {
                        self.next = from_etcd(last.mod_revision()) + 1;
                    }
                    backoff = WATCH_RETRY_MIN;
                    if !resp.canceled() {
                        continue;
                    }
                    tracing::info!(prefix = %self.prefix, reason = %resp.cancel_reason(), "etcd cancelled a watch; reopening it");
                }
                Ok(None) => {
                    tracing::info!(prefix = %self.prefix, "etcd watch stream ended; reopening it")
                }
                Err(e) => {
                    tracing::info!(prefix = %self.prefix, error = %e, "etcd watch stream broke; reopening it")
                }
            }
            // Reopen from the revision after the last delivered, until it works or the reader
            // is gone.
            stream = loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = self.tx.closed() => return,
                }
                backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                match self.open().await {
                    Ok(s) => break s,
                    Err(e @ StoreError::Compacted { .. }) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                    Err(StoreError::Closed) => return,
                    Err(e) => {
                        tracing::warn!(prefix = %self.prefix, from = self.next, error = %e, "reopening an etcd watch failed; retrying");
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_endpoints_and_prefix() {
        let c = EtcdConfig::parse("etcd://h1:2379,h2:2379/fleet-a/").unwrap();
        assert_eq!(c.endpoints, vec!["h1:2379", "h2:2379"]);
        assert_eq!(c.prefix, "/fleet-a");
        let c = EtcdConfig::parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!((c.endpoints.len(), c.prefix.as_str()), (1, ""));
        for bad in [
            "redb://x",
            "etcd://",
            "etcd://host",
            "etcd://h:notaport",
            "etcd://:2379",
        ] {
            assert!(EtcdConfig::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn revisions_map_one_below_etcd() {
        assert_eq!(from_etcd(1), 0);
        assert_eq!(from_etcd(to_etcd(41)), 41);
    }
}
