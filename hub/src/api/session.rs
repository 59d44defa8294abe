//! The hub half of the agent session: one bidirectional `Connect` stream per connected cluster.
//! The response stream itself drives the session (no extra task per session): it answers
//! heartbeats, signs renewals, watches liveness and certificate expiry, and obeys control
//! requests such as "disconnect, the cluster was revoked".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_proto::clock::{SharedClock, unix_ms};
use flotilla_proto::identity::Identity;
use flotilla_proto::limits::{BUNDLE_CHUNK_BYTES, INLINE_DESIRED_BYTES, MAX_BUNDLES_PER_FETCH};
use flotilla_proto::v1::agent_message::Msg as AgentMsg;
use flotilla_proto::v1::agent_session_server::AgentSession;
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::{
    AgentMessage, BundleChunk, DesiredState, DesiredStateReady, Disconnect, FetchBundleRequest,
    FetchBundlesRequest, FetchDesiredStateRequest, HeartbeatAck, HubMessage, RenewResponse,
    StatusAck, Welcome,
};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::api::auth::caller;
use crate::pki::Ca;
use crate::render::{BundleCache, Compressed};
use crate::state::desired::DesiredStates;
use crate::state::error::HubError;
use crate::state::registry::Registry;
use crate::state::sessions::{Control, SessionShared, Sessions};
use crate::telemetry::metrics::Metrics;

/// How long a new session may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the session service.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub heartbeat_interval: Duration,
    pub cert_lifetime: Duration,
    /// Bytes per second per bundle download (`None`: unlimited).
    pub bundle_rate: Option<u64>,
    /// How long a desired state sent and not acknowledged holds back newer ones (which then
    /// go as one, the newest); an acknowledgement, or a status report on it, ends the hold.
    pub desired_hold: Duration,
    /// How long the acknowledgement of a durable status report waits for the reports after it
    /// to become durable too, so that one `StatusAck` covers them all (zero: each durable
    /// report is acknowledged at once).
    pub status_ack_delay: Duration,
    /// How long a desired bundle this hub has not rendered yet is waited for before the fetch
    /// fails (several replicas: another one may have rendered it first; zero on a single hub).
    pub bundle_wait: Duration,
}

/// What the `AgentSession` service works with.
#[derive(Debug)]
pub struct SessionContext {
    pub registry: Registry,
    pub sessions: Arc<Sessions>,
    pub ca: Arc<Ca>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub config: SessionConfig,
    pub shutdown: watch::Receiver<bool>,
    /// Background work spawned by sessions; hub shutdown waits for it.
    pub tracker: TaskTracker,
    pub desired: DesiredStates,
    pub bundles: Arc<BundleCache>,
    /// Told about status reports, connects and disconnects.
    pub rollouts: crate::engine::rollout::Rollouts,
    /// Relayed agent spans go here; `None`: the hub exports no traces and agents send none.
    pub spans: Option<flotilla_proto::telemetry::SpanForwarder>,
}

/// The `AgentSession` gRPC service. A clone is one pointer: every session's stream holds one.
#[derive(Debug, Clone)]
pub struct SessionService(Arc<SessionContext>);

impl SessionService {
    pub fn new(context: SessionContext) -> Self {
        Self(Arc::new(context))
    }
}

impl std::ops::Deref for SessionService {
    type Target = SessionContext;

    fn deref(&self) -> &SessionContext {
        &self.0
    }
}

/// Unregisters a session however its stream ends (including the peer vanishing, which drops
/// the stream without running it to completion).
struct SessionGuard {
    svc: SessionService,
    shared: Arc<SessionShared>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let svc = &self.svc;
        svc.sessions
            .unregister(&self.shared.cluster, self.shared.id);
        svc.metrics.sessions_connected.dec();
        tracing::info!(cluster.id = %self.shared.cluster, session = self.shared.id, "session closed");
        let registry = svc.registry.clone();
        let cluster = self.shared.cluster.clone();
        let opened_ms = self.shared.opened_ms;
        let rollouts = svc.rollouts.clone();
        // Tracked, so hub shutdown waits for it (and for the store to be released).
        if tokio::runtime::Handle::try_current().is_ok() {
            svc.tracker.spawn(async move {
                if let Err(e) = registry.session_closed(&cluster, opened_ms).await {
                    tracing::debug!(cluster.id = %cluster, error = %e, "could not record last seen");
                }
                // Its grace period starts: rollouts it is part of look at it again.
                rollouts.kick();
            });
        }
    }
}

/// A status acknowledgement waiting to be sent. It goes once the delay after the first durable
/// report it covers has passed and none of the session's reports is still on its way to the
/// store — so that reports the agent sent together are acknowledged together, and it then
/// sends its next ones together too — but no later than twice the delay.
#[derive(Debug, Clone, Copy)]
struct AckDue {
    /// The newest durable report.
    seq: u64,
    /// When it goes if nothing is on its way to the store.
    at: Instant,
    /// When it goes in any case.
    latest: Instant,
}

impl AckDue {
    fn new(now: Instant, delay: Duration) -> Self {
        Self {
            seq: 0,
            at: now + delay,
            latest: now + delay * 2,
        }
    }
}

/// How long a session past its liveness deadline is given for a message already on its way to
/// be read before it is closed.
const LIVENESS_GRACE: Duration = Duration::from_millis(50);

/// When a session's timer is next due: the earliest of its certificate's expiry, its liveness
/// deadline and its waiting acknowledgement.
fn wake_at(cert: Instant, liveness: Instant, ack: Option<&AckDue>) -> Instant {
    let at = cert.min(liveness);
    ack.map_or(at, |a| at.min(a.at))
}

/// Status reports a session has queued and not yet acknowledged, at most; beyond, it reads no
/// further message until the oldest is durable.
const MAX_UNACKED_REPORTS: usize = 64;

/// A queued status report: its outcome once durable, and its sequence number.
type PendingAck = Pin<Box<dyn Future<Output = (Result<(), HubError>, u64)> + Send>>;

/// Takes, after `first`, every queued report already durable, in order: the sequence number
/// to acknowledge (the last one's), or the first failure.
fn durable_prefix(
    first: (Result<(), HubError>, u64),
    acks: &mut FuturesOrdered<PendingAck>,
) -> Result<u64, HubError> {
    let (outcome, mut seq) = first;
    outcome?;
    while let Some(Some((outcome, next))) = acks.next().now_or_never() {
        outcome?;
        seq = seq.max(next);
    }
    Ok(seq)
}

fn hub(msg: HubMsg) -> Result<HubMessage, Status> {
    Ok(HubMessage { msg: Some(msg) })
}

/// The last messages of a session that ends without an error: the waiting acknowledgement
/// first (what is durable is acknowledged before the session ends), then why the hub ends it,
/// if it does.
fn last_words(
    ack: Option<AckDue>,
    disconnect: Option<Disconnect>,
) -> impl Iterator<Item = Result<HubMessage, Status>> {
    let ack = ack.map(|AckDue { seq, .. }| hub(HubMsg::StatusAck(StatusAck { seq })));
    ack.into_iter()
        .chain(disconnect.map(|d| hub(HubMsg::Disconnect(d))))
}

/// What the session sends for desired state `d`: the state itself when it is small
/// ([`INLINE_DESIRED_BYTES`]; tonic keeps the session's encode buffer at the largest message it
/// ever encoded, for the session's life), else, to an agent that can fetch, an announcement of
/// its generation, for `FetchDesiredState` (which derives the state again: nothing waits in
/// memory meanwhile).
fn desired_message(d: DesiredState, fetches: bool, shared: &SessionShared) -> HubMsg {
    // The gRPC frame header (5 bytes), the field's tag and length, the state.
    let len = d.encoded_len();
    if !fetches || 5 + 1 + prost::length_delimiter_len(len) + len <= INLINE_DESIRED_BYTES {
        return HubMsg::Desired(d);
    }
    shared.announce(d.generation);
    HubMsg::DesiredReady(DesiredStateReady {
        generation: d.generation,
    })
}

type HubStream = Pin<Box<dyn Stream<Item = Result<HubMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentSession for SessionService {
    type ConnectStream = HubStream;
    type FetchBundleStream = Pin<Box<dyn Stream<Item = Result<BundleChunk, Status>> + Send>>;
    type FetchBundlesStream = Pin<Box<dyn Stream<Item = Result<BundleChunk, Status>> + Send>>;

    async fn connect(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let c = caller(&req);
        let (cluster, peer) = c.cluster()?;
        let cluster = cluster.to_string();
        let cert_not_after = peer.not_after;
        self.registry
            .authorize_cluster_cert(&cluster, &peer.serial)
            .await
            .map_err(|e| {
                tracing::warn!(cluster.id = %cluster, error = %e, "session refused");
                Status::from(e)
            })?;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
            Ok(Err(s)) => {
                self.metrics.rejected_messages.inc();
                tracing::warn!(cluster.id = %cluster, error = %s, "bad first message");
                return Err(s);
            }
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before Hello")),
            Ok(Ok(Some(AgentMessage {
                msg: Some(AgentMsg::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                self.metrics.rejected_messages.inc();
                return Err(Status::invalid_argument("the first message must be Hello"));
            }
        };
        if !hello.cluster_id.is_empty() && hello.cluster_id != cluster {
            tracing::warn!(
                cluster.id = %cluster,
                claimed = %hello.cluster_id,
                "session refused: Hello names another cluster than the certificate"
            );
            self.metrics.rejected_messages.inc();
            return Err(Status::permission_denied(format!(
                "Hello names cluster {:?} but the certificate is for cluster {cluster:?}",
                hello.cluster_id
            )));
        }
        let version = hello
            .agent
            .as_ref()
            .map(|a| a.version.clone())
            .unwrap_or_default();
        let now_ms = unix_ms(self.clock.now());
        let shared = self.sessions.register(
            &cluster,
            self.registry.id_of(&cluster),
            hello.agent.as_ref(),
            now_ms,
        );
        self.metrics.sessions_connected.inc();
        if let Err(e) = self
            .registry
            .session_opened(&cluster, &version, shared.opened_ms)
            .await
        {
            tracing::warn!(cluster.id = %cluster, error = %e, "could not record session start");
        }
        self.rollouts.kick();
        tracing::info!(cluster.id = %cluster, session = shared.id, agent.version = %version, "session opened");

        let guard = SessionGuard {
            svc: self.clone(),
            shared: shared.clone(),
        };
        // Only what the stream needs goes into it (not the whole Hello).
        let (fetches, last_generation) = (hello.fetches_desired, hello.last_generation);
        drop(hello);
        let svc = self.clone();
        let stream = async_stream::stream! {
            let _guard = guard;
            let mut shutdown = svc.shutdown.clone();
            let interval = svc.config.heartbeat_interval;
            yield hub(HubMsg::Welcome(Welcome {
                session_id: shared.id.to_string(),
                heartbeat_interval_ms: interval.as_millis() as u32,
                spans_wanted: svc.spans.is_some(),
            }));
            let mut sent_generation = last_generation;
            // At most one desired state unacknowledged: changes made meanwhile wait and go
            // together, as the newest state, once the agent acknowledges (or reports on) the
            // one it has, or the hold runs out. `Some((generation, held until))`.
            let mut unacked: Option<(u64, Instant)> = None;
            // The cluster's desired state changed since it was last derived here.
            let mut desired_pending = true;
            // When the session counts as gone unless a message comes.
            let mut liveness = Instant::now() + interval * 3;
            let mut liveness_grace = false;
            // Status reports queued and not yet durable, oldest first.
            let mut acks: FuturesOrdered<PendingAck> = FuturesOrdered::new();
            // The acknowledgement of the newest durable report, while it waits (it covers every
            // report before it).
            let mut ack_due: Option<AckDue> = None;
            let ack_delay = svc.config.status_ack_delay;
            let mut cert_deadline = deadline_for(&svc.clock, cert_not_after);
            // One timer for the certificate's expiry, the waiting acknowledgement and liveness,
            // set to the earliest; it and the wake-ups live across the loop's turns, so that a
            // message handled costs no timer or waiter registration (a message moves `liveness`
            // on, and the timer follows only once it fires).
            let timer = sleep_until(wake_at(cert_deadline, liveness, None));
            let notified = shared.notify.notified();
            let shutting_down = shutdown.changed();
            tokio::pin!(timer, notified, shutting_down);
            loop {
                if desired_pending && unacked.is_none() {
                    desired_pending = false;
                    // Boxed, as the renewal below: not in every session's state while it waits.
                    match Box::pin(svc.rollouts.desired_of(&shared.cluster)).await {
                        Ok(rec) if rec.worth_sending(sent_generation) => {
                            sent_generation = rec.generation;
                            unacked = Some((rec.generation, Instant::now() + svc.config.desired_hold));
                            tracing::debug!(cluster.id = %shared.cluster, generation = rec.generation, "sending desired state");
                            yield hub(desired_message(rec.to_wire(), fetches, &shared));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(cluster.id = %shared.cluster, error = %e, "cannot read desired state"),
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut notified => {
                        notified.set(shared.notify.notified());
                        if let Some(Control::Disconnect { reason, message }) = shared.take() {
                            tracing::info!(cluster.id = %shared.cluster, %reason, "disconnecting session");
                            for m in last_words(ack_due.take(), Some(Disconnect { reason, message })) {
                                yield m;
                            }
                            break;
                        }
                        if shared.desired_dirty.swap(false, Ordering::AcqRel) {
                            desired_pending = true;
                        }
                    }
                    _ = sleep_until(unacked.map_or_else(Instant::now, |(_, until)| until)), if desired_pending && unacked.is_some() => {
                        tracing::debug!(cluster.id = %shared.cluster, "desired state not acknowledged within {:?}; sending the newest", svc.config.desired_hold);
                        unacked = None;
                    }
                    _ = &mut shutting_down => {
                        let bye = Disconnect {
                            reason: "shutdown".into(),
                            message: "the hub is shutting down".into(),
                        };
                        for m in last_words(ack_due.take(), Some(bye)) {
                            yield m;
                        }
                        break;
                    }
                    Some(first) = acks.next(), if !acks.is_empty() => match durable_prefix(first, &mut acks) {
                        Ok(seq) => {
                            // One acknowledgement for every report durable by now (it covers
                            // those before it) — or, with a delay, for every report durable
                            // within it: see `AckDue`.
                            if seq > 0 {
                                let now = Instant::now();
                                let due = ack_due.get_or_insert_with(|| {
                                    let due = AckDue::new(now, ack_delay);
                                    if due.at < timer.deadline() {
                                        timer.as_mut().reset(due.at);
                                    }
                                    due
                                });
                                due.seq = seq;
                                if due.at <= now && acks.is_empty() {
                                    ack_due = None;
                                    yield hub(HubMsg::StatusAck(StatusAck { seq }));
                                }
                            }
                        }
                        Err(e) => {
                            // The agent keeps what is not acknowledged and sends everything
                            // again on its next session.
                            tracing::error!(cluster.id = %shared.cluster, error = %e, "cannot record status; ending the session");
                            yield Err(Status::unavailable(format!("status report not persisted: {e}")));
                            break;
                        }
                    },
                    // After the reports made durable (so that a waiting acknowledgement covers
                    // them), before reading on (so that no stream of messages holds off a
                    // certificate's expiry).
                    _ = &mut timer => {
                        let now = Instant::now();
                        if let Some(due) = ack_due.as_mut().filter(|d| d.at <= now) {
                            if acks.is_empty() || due.at >= due.latest {
                                let seq = due.seq;
                                ack_due = None;
                                yield hub(HubMsg::StatusAck(StatusAck { seq }));
                            } else {
                                due.at = due.latest;
                            }
                        }
                        // A session held back (reading nothing until its reports are durable)
                        // is alive.
                        if acks.len() >= MAX_UNACKED_REPORTS {
                            liveness = liveness.max(now + interval * 3);
                        }
                        if liveness <= now {
                            // A message waiting to be read counts: it is read first, then the
                            // session is looked at again.
                            if !liveness_grace {
                                liveness_grace = true;
                                timer.as_mut().reset(now + LIVENESS_GRACE);
                                continue;
                            }
                            tracing::warn!(cluster.id = %shared.cluster, "no heartbeat for {:?}; closing session", interval * 3);
                            break;
                        }
                        liveness_grace = false;
                        if cert_deadline > now {
                            timer.as_mut().reset(wake_at(cert_deadline, liveness, ack_due.as_ref()));
                            continue;
                        }
                        tracing::warn!(cluster.id = %shared.cluster, "client certificate expired during the session");
                        let bye = Disconnect {
                            reason: "certificate_expired".into(),
                            message: "the session's client certificate expired without renewal".into(),
                        };
                        for m in last_words(ack_due.take(), Some(bye)) {
                            yield m;
                        }
                        break;
                    }
                    msg = inbound.message(), if acks.len() < MAX_UNACKED_REPORTS => match msg {
                        Ok(Some(AgentMessage { msg: Some(m) })) => {
                            liveness = Instant::now() + interval * 3;
                            shared.last_seen_ms.store(unix_ms(svc.clock.now()), Ordering::Relaxed);
                            match m {
                                AgentMsg::Heartbeat(h) => {
                                    svc.metrics.heartbeats.inc();
                                    yield hub(HubMsg::HeartbeatAck(HeartbeatAck { seq: h.seq, sent_unix_ms: h.sent_unix_ms }));
                                }
                                AgentMsg::Renew(r) => {
                                    // Boxed: a renewal is rare, and its future would otherwise enlarge every
                                    // session's state by its size.
                                    let (answer, new_deadline) = Box::pin(svc.renew(&shared.cluster, &r.csr_pem)).await;
                                    if let Some(d) = new_deadline {
                                        cert_deadline = d;
                                        timer.as_mut().reset(wake_at(cert_deadline, liveness, ack_due.as_ref()));
                                    }
                                    yield hub(HubMsg::Renew(answer));
                                }
                                AgentMsg::Status(s) => {
                                    svc.metrics.count_status_report(s.apps.len());
                                    // An agent that could not take a desired state reports on
                                    // it instead of acknowledging it.
                                    if unacked.is_some_and(|(g, _)| g == s.generation) || (s.generation != 0 && shared.handed() == s.generation) {
                                        unacked = None;
                                    }
                                    tracing::debug!(cluster.id = %shared.cluster, generation = s.generation, apps = s.apps.len(), seq = s.seq, "status report");
                                    // A replaced session's last report is superseded by what the
                                    // newer session sends first (everything, `replace`).
                                    if svc.sessions.get(&shared.cluster).is_none_or(|live| live.id != shared.id) {
                                        tracing::debug!(cluster.id = %shared.cluster, session = shared.id, "status report of a replaced session dropped");
                                        continue;
                                    }
                                    // Queued in order (waiting only while the hub's queue is
                                    // full) and acknowledged once durable (group commit), while
                                    // the next reports are read.
                                    let durable = svc.desired.submit_status(&shared.cluster, &s).await;
                                    let seq = s.seq;
                                    acks.push_back(Box::pin(async move { (durable.await, seq) }));
                                }
                                AgentMsg::Spans(b) => svc.relay_spans(&shared.cluster, &b),
                                AgentMsg::Ack(a) => {
                                    tracing::debug!(cluster.id = %shared.cluster, generation = a.generation, "ack");
                                    if unacked.is_some_and(|(g, _)| g == a.generation) {
                                        unacked = None;
                                    }
                                    // A state fetched newer than announced: held now.
                                    if a.generation != 0 && shared.handed() == a.generation {
                                        unacked = None;
                                        sent_generation = a.generation;
                                    }
                                }
                                AgentMsg::Hello(_) => {
                                    svc.metrics.rejected_messages.inc();
                                    tracing::warn!(cluster.id = %shared.cluster, "second Hello in one session");
                                    yield Err(Status::invalid_argument("Hello may only be sent once per session"));
                                    break;
                                }
                            }
                        }
                        Ok(Some(AgentMessage { msg: None })) => {
                            svc.metrics.rejected_messages.inc();
                            yield Err(Status::invalid_argument("empty AgentMessage"));
                            break;
                        }
                        Ok(None) => {
                            for m in last_words(ack_due.take(), None) {
                                yield m;
                            }
                            break;
                        }
                        Err(s) => {
                            // Garbage or oversized input: end this one session, keep serving.
                            svc.metrics.rejected_messages.inc();
                            tracing::warn!(cluster.id = %shared.cluster, error = %s, "session ended by a bad message");
                            yield Err(s);
                            break;
                        }
                    },
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_desired_state(
        &self,
        req: Request<FetchDesiredStateRequest>,
    ) -> Result<Response<DesiredState>, Status> {
        let cluster = self.calling_cluster(&req).await?;
        let FetchDesiredStateRequest {
            session_id,
            generation,
        } = req.into_inner();
        let live = self
            .sessions
            .get(&cluster)
            .filter(|s| s.id.to_string() == session_id)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "session {session_id:?} is not cluster {cluster:?}'s live session"
                ))
            })?;
        if live.announced() != generation {
            return Err(Status::failed_precondition(format!(
                "desired state {generation} is not the one last announced to cluster {cluster:?}"
            )));
        }
        // The state now: newer than the one announced if it changed since (the session then
        // counts the agent's ack of this one).
        let desired = self.rollouts.desired_of(&cluster).await?;
        live.hand(desired.generation);
        tracing::debug!(cluster.id = %cluster, announced = generation, generation = desired.generation, "desired state fetched");
        Ok(Response::new(desired.to_wire()))
    }

    async fn fetch_bundle(
        &self,
        req: Request<FetchBundleRequest>,
    ) -> Result<Response<Self::FetchBundleStream>, Status> {
        let cluster = self.calling_cluster(&req).await?;
        let FetchBundleRequest { digest, offset } = req.into_inner();
        self.refuse_unwanted(&cluster, &[&digest]).await?;
        Ok(Response::new(Box::pin(
            self.bundle_chunks(digest, offset, false).await?,
        )))
    }

    async fn fetch_bundles(
        &self,
        req: Request<FetchBundlesRequest>,
    ) -> Result<Response<Self::FetchBundlesStream>, Status> {
        let cluster = self.calling_cluster(&req).await?;
        let FetchBundlesRequest { bundles } = req.into_inner();
        if bundles.len() > MAX_BUNDLES_PER_FETCH {
            return Err(Status::invalid_argument(format!(
                "{} bundles asked for in one call; at most {MAX_BUNDLES_PER_FETCH}",
                bundles.len()
            )));
        }
        // All of them, or none.
        let digests: Vec<&str> = bundles.iter().map(|b| b.digest.as_str()).collect();
        self.refuse_unwanted(&cluster, &digests).await?;
        let svc = self.clone();
        // One bundle open at a time, each opened when its turn comes.
        let stream = async_stream::try_stream! {
            for FetchBundleRequest { digest, offset } in bundles {
                let chunks = svc.bundle_chunks(digest, offset, true).await?;
                futures::pin_mut!(chunks);
                while let Some(chunk) = chunks.next().await {
                    yield chunk?;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Where a bundle's chunks are read from.
enum Source {
    Memory(Arc<[u8]>),
    File(tokio::fs::File),
}

/// The chunks of a compressed bundle of `total` bytes from `offset` on, paced at `rate` bytes
/// per second if given; each names its bundle when `named`.
fn chunks_of(
    bundle: Compressed,
    digest: String,
    offset: u64,
    total: u64,
    rate: Option<u64>,
    named: bool,
) -> impl Stream<Item = Result<BundleChunk, Status>> + Send + 'static {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    async_stream::try_stream! {
        let mut source = match bundle {
            Compressed::Memory(bytes) => Source::Memory(bytes),
            Compressed::File(f) => Source::File(tokio::fs::File::from_std(f)),
        };
        if let Source::File(f) = &mut source && offset > 0 {
            f.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Status::internal(format!("bundle {digest}: {e}")))?;
        }
        let mut at = offset;
        while at < total {
            let want = ((total - at) as usize).min(BUNDLE_CHUNK_BYTES);
            let data = match &mut source {
                Source::Memory(bytes) => bytes[at as usize..at as usize + want].to_vec(),
                Source::File(f) => {
                    let mut data = vec![0u8; want];
                    f.read_exact(&mut data)
                        .await
                        .map_err(|e| Status::internal(format!("bundle {digest}: {e}")))?;
                    data
                }
            };
            yield BundleChunk {
                offset: at,
                data,
                total_size: total,
                digest: if named { digest.clone() } else { String::new() },
            };
            at += want as u64;
            if let Some(rate) = rate && at < total {
                // Paced after each chunk, so a resumed download always gets one at once.
                tokio::time::sleep(Duration::from_secs_f64(want as f64 / rate as f64)).await;
            }
        }
    }
}

fn deadline_for(clock: &SharedClock, not_after: std::time::SystemTime) -> Instant {
    let left = not_after
        .duration_since(clock.now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

impl SessionService {
    /// The cluster calling, once its certificate is checked against the registry.
    async fn calling_cluster<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let c = caller(req);
        let (cluster, peer) = c.cluster()?;
        self.registry
            .authorize_cluster_cert(cluster, &peer.serial)
            .await?;
        Ok(cluster.to_string())
    }

    /// Refuses a cluster any bundle not desired for it.
    async fn refuse_unwanted(&self, cluster: &str, digests: &[&str]) -> Result<(), Status> {
        match self.rollouts.unwanted(cluster, digests).await? {
            None => Ok(()),
            Some(digest) => {
                tracing::warn!(cluster.id = %cluster, %digest, "refused a bundle not desired for this cluster");
                Err(Status::permission_denied(format!(
                    "bundle {digest} is not desired for cluster {cluster:?}"
                )))
            }
        }
    }

    /// The chunks of bundle `digest` from `offset` on, from the hub's cache (small ones from
    /// memory), paced at the configured rate; each names its bundle when `named`.
    async fn bundle_chunks(
        &self,
        digest: String,
        offset: u64,
        named: bool,
    ) -> Result<impl Stream<Item = Result<BundleChunk, Status>> + Send + 'static, Status> {
        // With several hub replicas, one may be asked for a bundle another rendered first:
        // it renders the same commit on its next sync; give it that long.
        if !self.config.bundle_wait.is_zero() && !self.bundles.contains(&digest) {
            self.bundles
                .wait_for(&digest, self.config.bundle_wait)
                .await;
        }
        let bundle = self
            .bundles
            .compressed(&digest)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .ok_or_else(|| {
                Status::not_found(format!("bundle {digest} is not in the hub's cache"))
            })?;
        let total = match &bundle {
            Compressed::Memory(bytes) => bytes.len() as u64,
            Compressed::File(file) => file
                .metadata()
                .map_err(|e| Status::internal(format!("bundle {digest}: {e}")))?
                .len(),
        };
        if offset > total {
            return Err(Status::out_of_range(format!(
                "offset {offset} is past the end of bundle {digest} ({total} bytes)"
            )));
        }
        let rate = self.config.bundle_rate.filter(|r| *r > 0);
        Ok(chunks_of(bundle, digest, offset, total, rate, named))
    }

    /// Passes an agent's finished spans on to the collector under the session's identity. A
    /// bad batch is logged and counted; it does not end the session (spans are best effort).
    fn relay_spans(&self, cluster: &str, batch: &flotilla_proto::v1::SpanBatch) {
        if batch.dropped > 0 {
            self.metrics.agent_dropped_spans.inc_by(batch.dropped);
            tracing::warn!(cluster.id = %cluster, dropped = batch.dropped, "the agent dropped spans: its relay queue was full");
        }
        let Some(fwd) = &self.spans else {
            return;
        };
        match flotilla_proto::telemetry::traces::decode_relayed(&batch.otlp, cluster) {
            Ok((groups, n)) => {
                if !fwd.forward(groups, n) {
                    tracing::debug!(cluster.id = %cluster, spans = n, "relayed spans dropped: the queue to the collector is full");
                }
            }
            Err(e) => {
                self.metrics.rejected_messages.inc();
                tracing::warn!(cluster.id = %cluster, error = %e, "bad span batch from agent ignored");
            }
        }
    }

    /// Signs a renewal CSR for the session's own cluster (whatever the CSR asks for).
    async fn renew(&self, cluster: &str, csr_pem: &str) -> (RenewResponse, Option<Instant>) {
        let refused = |e: String| {
            tracing::warn!(cluster.id = %cluster, error = %e, "renewal refused");
            (
                RenewResponse {
                    cert_chain_pem: String::new(),
                    error: e,
                },
                None,
            )
        };
        // A revoked or unknown cluster is refused by `record_cert` below.
        let issued = match self.ca.sign_csr(
            csr_pem,
            &Identity::Cluster(cluster.to_string()),
            self.config.cert_lifetime,
        ) {
            Ok(i) => i,
            Err(e) => return refused(e.to_string()),
        };
        if let Err(e) = self
            .registry
            .record_cert(cluster, &issued.serial, issued.not_after, None)
            .await
        {
            return refused(e.to_string());
        }
        self.metrics.renewals.inc();
        tracing::info!(cluster.id = %cluster, serial = %issued.serial, "certificate renewed");
        (
            RenewResponse {
                cert_chain_pem: issued.chain_pem,
                error: String::new(),
            },
            Some(deadline_for(&self.clock, issued.not_after)),
        )
    }
}
