//! The agent half of the session: dials the hub with mutual TLS, opens `Connect`, says Hello,
//! heartbeats, and renews its certificate over the session at ~70% of its lifetime, swapping the
//! new one in for future connections without dropping the current one.

use std::time::{Duration, SystemTime};

use flotilla_proto::clock::{SharedClock, unix_ms};
use flotilla_proto::state::{Health, Phase};
use flotilla_proto::telemetry::SpanRelay;
use flotilla_proto::tls::{TlsDialer, error_chain};
use flotilla_proto::v1::agent_message::Msg as AgentMsg;
use flotilla_proto::v1::agent_session_client::AgentSessionClient;
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::{
    Ack, AgentInfo, AgentMessage, AppStatus, DesiredState, FetchDesiredStateRequest, Heartbeat,
    Hello, RenewRequest, SpanBatch, StatusReport,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::AgentStatus;
use crate::bundles::BundleStore;
use crate::identity::{AgentState, Credentials, IdentityStore, new_key_and_csr};
use crate::reconcile::status::StatusBoard;

/// Share of a certificate's lifetime after which it is renewed.
pub const RENEW_AT: f64 = 0.7;

/// How a session ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    Shutdown,
    /// The hub said goodbye.
    Disconnected {
        reason: String,
        message: String,
    },
    /// The stream ended without a word (hub went away).
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Retrying will not help (revoked, expired certificate, refused identity).
    #[error("session refused: {0}")]
    Refused(String),
    #[error("session failed: {0}")]
    Failed(String),
    /// Our own credentials could not be made or used (a renewal's key, certificate or state).
    #[error("session failed: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("session failed: {0}")]
    Tls(#[from] flotilla_proto::tls::TlsError),
}

/// What a session needs; owned by the agent across reconnects.
pub struct SessionCtx {
    pub state: AgentState,
    pub creds: Credentials,
    pub dialer: TlsDialer,
    /// Where renewed credentials are persisted.
    pub store: IdentityStore,
    pub status: watch::Sender<AgentStatus>,
    pub clock: SharedClock,
    pub agent: AgentInfo,
    pub last_generation: u64,
    pub bundles: BundleStore,
    /// How long a bundle download may wait for its next chunk before it resumes afresh.
    pub chunk_timeout: Duration,
    /// The key behind an outstanding renewal request.
    pub pending_key: Option<String>,
    /// Hands a desired state whose bundles are all held to the reconciler.
    pub desired_tx: watch::Sender<Option<DesiredState>>,
    /// The reconciler's statuses, sent to the hub as they change.
    pub board: StatusBoard,
    /// Finished spans to send to the hub (when it exports traces).
    pub relay: Option<SpanRelay>,
    /// Record reconnects and renewals as spans.
    pub trace: bool,
}

impl SessionCtx {
    /// A root span for a session event, or a disabled one when spans are not recorded.
    fn event_span(&self, name: &'static str) -> tracing::Span {
        if !self.trace {
            return tracing::Span::none();
        }
        match name {
            "connect" => {
                tracing::info_span!(parent: None, "flotilla.agent.connect", cluster.id = %self.state.cluster_id)
            }
            _ => {
                tracing::info_span!(parent: None, "flotilla.agent.renew", cluster.id = %self.state.cluster_id)
            }
        }
    }
}

/// Resolves when the relay holds spans to send (never without a relay).
async fn spans_ready(relay: &Option<SpanRelay>) {
    match relay {
        Some(r) => r.ready().await,
        None => std::future::pending().await,
    }
}

fn classify(msg: String) -> SessionError {
    const FINAL: [&str; 4] = [
        "CertificateRevoked",
        "CertificateExpired",
        "UnknownCA",
        "BadCertificate",
    ];
    if FINAL.iter().any(|f| msg.contains(f)) {
        SessionError::Refused(msg)
    } else {
        SessionError::Failed(msg)
    }
}

fn agent_msg(m: AgentMsg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

impl SessionCtx {
    /// When the current certificate should be renewed.
    fn renew_deadline(&self) -> Instant {
        let leaf = self.creds.leaf(&self.state.trust_domain);
        let nb = self.creds.not_before();
        let now = self.clock.now();
        match (leaf, nb) {
            (Ok(leaf), Ok(nb)) => {
                let life = leaf.not_after.duration_since(nb).unwrap_or_default();
                let at = nb + life.mul_f64(RENEW_AT);
                Instant::now() + at.duration_since(now).unwrap_or_default()
            }
            _ => Instant::now(),
        }
    }

    /// Moves to the hub endpoint after the current one (several replicas) and returns it;
    /// `None` with one endpoint.
    pub fn next_endpoint(&mut self) -> Option<&str> {
        let endpoints = self.state.endpoints();
        if endpoints.len() < 2 {
            return None;
        }
        let at = endpoints.iter().position(|h| *h == self.state.hub);
        let next = at.map_or(0, |i| (i + 1) % endpoints.len());
        self.state.hub.clone_from(&endpoints[next]);
        Some(&self.state.hub)
    }

    fn retry_delay(&self) -> Duration {
        let life = self
            .creds
            .leaf(&self.state.trust_domain)
            .ok()
            .and_then(|l| self.creds.not_before().ok().map(|nb| (l, nb)))
            .and_then(|(l, nb)| l.not_after.duration_since(nb).ok())
            .unwrap_or(Duration::from_secs(60));
        life.mul_f64(0.05)
            .clamp(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// Runs one session until it ends.
    pub async fn run_once(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, SessionError> {
        let hub = self.state.hub.clone();
        let channel = self
            .dialer
            .channel(&hub)
            .await
            .map_err(|e| classify(format!("hub {hub}: {}", error_chain(&e))))?;
        let mut client = AgentSessionClient::new(channel)
            .max_decoding_message_size(flotilla_proto::limits::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<AgentMessage>(16);
        let hello = Hello {
            cluster_id: self.state.cluster_id.clone(),
            last_generation: self.last_generation,
            cached_bundles: self.bundles.digests(),
            agent: Some(self.agent.clone()),
            fetches_desired: true,
        };
        tx.send(agent_msg(AgentMsg::Hello(hello)))
            .await
            .expect("receiver is alive");
        let mut inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(|s| match s.code() {
                Code::PermissionDenied | Code::Unauthenticated => {
                    SessionError::Refused(s.message().to_string())
                }
                _ => classify(format!("hub {hub}: {}", error_chain(&s))),
            })?
            .into_inner();

        let mut heartbeat_every = Duration::from_secs(10);
        let mut next_heartbeat = Instant::now() + heartbeat_every;
        let mut renew_at = self.renew_deadline();
        let mut renewing = false;
        let mut seq = 0u64;
        let mut board = self.board.subscribe();
        let mut welcomed = false;
        let relay = self.relay.clone();
        // Bundles download beside the session, so heartbeats keep flowing during a long one.
        // Keyed by the generation announced (inline or by DesiredStateReady).
        let (done_tx, mut done_rx) = mpsc::channel::<(u64, Result<Downloaded, Status>)>(1);
        let mut download: Option<(u64, AbortOnDrop)> = None;
        let mut session_id = String::new();
        loop {
            tokio::select! {
                Some((generation, done)) = done_rx.recv() => {
                    if download.as_ref().is_some_and(|(g, _)| *g == generation) {
                        download = None;
                        let done = match done {
                            Ok(done) => done,
                            // Superseded: a newer announcement is on its way.
                            Err(s) if s.code() == Code::FailedPrecondition => {
                                tracing::debug!(generation, error = %s.message(), "announced desired state superseded");
                                continue;
                            }
                            // The hub counts it as sent: a new session gets it again.
                            Err(s) => return Err(classify(format!("fetching desired state {generation}: {}", error_chain(&s)))),
                        };
                        for m in self.take_desired(done) {
                            if tx.send(agent_msg(m)).await.is_err() {
                                return Err(SessionError::Failed("session stream closed".into()));
                            }
                        }
                    }
                }
                _ = shutdown.changed() => return Ok(SessionEnd::Shutdown),
                _ = spans_ready(&relay), if welcomed => {
                    let r = relay.as_ref().expect("ready only with a relay");
                    while let Some(otlp) = r.pop() {
                        let batch = SpanBatch { otlp, dropped: r.take_dropped() };
                        if tx.send(agent_msg(AgentMsg::Spans(batch))).await.is_err() {
                            return Err(SessionError::Failed("session stream closed".into()));
                        }
                    }
                }
                _ = board.changed(), if welcomed => {
                    for r in self.board.take_reports(false) {
                        if tx.send(agent_msg(AgentMsg::Status(r))).await.is_err() {
                            return Err(SessionError::Failed("session stream closed".into()));
                        }
                    }
                }
                _ = sleep_until(next_heartbeat) => {
                    seq += 1;
                    let hb = Heartbeat { seq, sent_unix_ms: unix_ms(SystemTime::now()) };
                    if tx.send(agent_msg(AgentMsg::Heartbeat(hb))).await.is_err() {
                        return Err(SessionError::Failed("session stream closed".into()));
                    }
                    next_heartbeat = Instant::now() + heartbeat_every;
                }
                _ = sleep_until(renew_at), if !renewing => {
                    let (key_pem, csr_pem) = new_key_and_csr("flotilla-agent")?;
                    self.pending_key = Some(key_pem);
                    tracing::info!(cluster.id = %self.state.cluster_id, "renewing certificate");
                    if tx.send(agent_msg(AgentMsg::Renew(RenewRequest { csr_pem }))).await.is_err() {
                        return Err(SessionError::Failed("session stream closed".into()));
                    }
                    renewing = true;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => match m.msg {
                        Some(HubMsg::Welcome(w)) => {
                            if w.heartbeat_interval_ms > 0 {
                                heartbeat_every = Duration::from_millis(w.heartbeat_interval_ms as u64);
                                next_heartbeat = Instant::now() + heartbeat_every;
                            }
                            if let Some(r) = &relay {
                                r.set_wanted(w.spans_wanted);
                            }
                            let reconnect = self.status.borrow().sessions_opened > 0;
                            // A span of its own, so that reconnects show in traces as events.
                            self.event_span("connect").in_scope(|| {
                                tracing::info!(cluster.id = %self.state.cluster_id, session = %w.session_id, reconnect, "connected to hub");
                            });
                            session_id = w.session_id.clone();
                            self.status.send_modify(|s| {
                                s.connected = true;
                                s.session_id = w.session_id.clone();
                                s.sessions_opened += 1;
                                s.last_error = None;
                            });
                            // Everything the hub may have missed while we were apart.
                            welcomed = true;
                            board.mark_unchanged();
                            for r in self.board.take_reports(true) {
                                if tx.send(agent_msg(AgentMsg::Status(r))).await.is_err() {
                                    return Err(SessionError::Failed("session stream closed".into()));
                                }
                            }
                        }
                        Some(HubMsg::HeartbeatAck(_)) => {
                            self.status.send_modify(|s| s.heartbeats_acked += 1);
                        }
                        // Persisted: the board may forget what the reports up to it carried.
                        Some(HubMsg::StatusAck(a)) => self.board.ack(a.seq),
                        Some(HubMsg::Renew(r)) => {
                            renewing = false;
                            let key = self.pending_key.take();
                            match (r.error.is_empty(), key) {
                                (true, Some(key_pem)) => match self.adopt(key_pem, r.cert_chain_pem).await {
                                    Ok(()) => renew_at = self.renew_deadline(),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "renewed certificate unusable; will retry");
                                        renew_at = Instant::now() + self.retry_delay();
                                    }
                                },
                                _ => {
                                    tracing::warn!(error = %r.error, "renewal refused; will retry");
                                    renew_at = Instant::now() + self.retry_delay();
                                }
                            }
                        }
                        Some(HubMsg::Desired(d)) if self.wants(d.generation, &download) => {
                            let generation = d.generation;
                            download = Some((generation, self.take_on(Announced::Inline(d), &client, &session_id, &done_tx)));
                        }
                        Some(HubMsg::DesiredReady(r)) if self.wants(r.generation, &download) => {
                            let generation = r.generation;
                            download = Some((generation, self.take_on(Announced::Waiting(generation), &client, &session_id, &done_tx)));
                        }
                        Some(HubMsg::Desired(_) | HubMsg::DesiredReady(_)) => {}
                        Some(HubMsg::Disconnect(d)) => {
                            return Ok(SessionEnd::Disconnected { reason: d.reason, message: d.message });
                        }
                        None => {}
                    },
                    Ok(None) => return Ok(SessionEnd::Closed),
                    Err(s) => return Err(match s.code() {
                        Code::PermissionDenied | Code::Unauthenticated => SessionError::Refused(s.message().to_string()),
                        _ => classify(format!("hub {hub}: {}", error_chain(&s))),
                    }),
                }
            }
        }
    }

    /// Whether an announced desired state of `generation` is new: neither held nor the one
    /// being downloaded.
    fn wants(&self, generation: u64, download: &Option<(u64, AbortOnDrop)>) -> bool {
        generation != self.last_generation
            && download.as_ref().is_none_or(|(g, _)| *g != generation)
    }

    /// Starts taking an announced desired state beside the session: fetching it if it waits at
    /// the hub, then its bundles. The outcome comes on `done` under the generation announced.
    /// It replaces a download in flight (dropping the returned handle aborts it; partial files
    /// are resumed later).
    fn take_on(
        &self,
        announced: Announced,
        client: &AgentSessionClient<tonic::transport::Channel>,
        session_id: &str,
        done: &mpsc::Sender<(u64, Result<Downloaded, Status>)>,
    ) -> AbortOnDrop {
        let (bundles, mut client, status) =
            (self.bundles.clone(), client.clone(), self.status.clone());
        let (chunk_timeout, session_id, done) =
            (self.chunk_timeout, session_id.to_string(), done.clone());
        AbortOnDrop(tokio::spawn(async move {
            let (generation, desired) = match announced {
                Announced::Inline(d) => (d.generation, Ok(d)),
                Announced::Waiting(generation) => {
                    let req = FetchDesiredStateRequest {
                        session_id,
                        generation,
                    };
                    let got =
                        tokio::time::timeout(chunk_timeout, client.fetch_desired_state(req)).await;
                    let got = got.unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "no answer within {chunk_timeout:?}"
                        )))
                    });
                    (generation, got.map(tonic::Response::into_inner))
                }
            };
            let outcome = match desired {
                Ok(d) => Ok(download_bundles(bundles, client, d, chunk_timeout, status).await),
                Err(e) => Err(e),
            };
            let _ = done.send((generation, outcome)).await;
        }))
    }

    /// Takes a desired state whose download ended: when every bundle is held the state is
    /// saved locally, handed to the reconciler and acknowledged; otherwise the apps whose bundle
    /// could not be taken are reported failed and the reconciler keeps the previous state.
    fn take_desired(&mut self, done: Downloaded) -> Vec<AgentMsg> {
        let Downloaded { desired: d, failed } = done;
        if !failed.is_empty() {
            return vec![AgentMsg::Status(StatusReport {
                generation: d.generation,
                apps: failed,
                replace: false,
                seq: 0,
            })];
        }
        if let Err(e) = self.bundles.save_desired(&d) {
            tracing::warn!(error = %e, "could not persist the desired state");
        }
        self.last_generation = d.generation;
        self.status.send_modify(|s| {
            s.desired_generation = d.generation;
            s.bundles = d.apps.iter().map(|a| a.bundle_digest.clone()).collect();
        });
        tracing::info!(
            generation = d.generation,
            apps = d.apps.len(),
            "desired state held"
        );
        let generation = d.generation;
        self.desired_tx.send_replace(Some(d));
        vec![AgentMsg::Ack(Ack { generation })]
    }

    /// Swaps in a renewed certificate: checks it, persists it, and points new connections at it.
    async fn adopt(&mut self, key_pem: String, chain_pem: String) -> Result<(), SessionError> {
        let creds = Credentials {
            key_pem,
            chain_pem,
            ca_pem: self.creds.ca_pem.clone(),
        };
        let leaf = creds.leaf(&self.state.trust_domain)?;
        if leaf.identity.uri(&self.state.trust_domain) != self.state.identity {
            return Err(SessionError::Failed(format!(
                "renewed certificate is for {} not {}",
                leaf.identity, self.state.identity
            )));
        }
        let cfg = creds.client_config()?;
        self.store.save_credentials(&creds).await?;
        self.dialer.set_config(cfg);
        self.creds = creds;
        self.event_span("renew").in_scope(|| {
                tracing::info!(serial = %leaf.serial, expires = %flotilla_proto::clock::rfc3339(leaf.not_after), "certificate renewed and swapped in");
            });
        self.status.send_modify(|s| {
            s.renewals += 1;
            s.cert_serial = leaf.serial.clone();
            s.cert_not_after_ms = unix_ms(leaf.not_after);
        });
        Ok(())
    }
}

/// How many times a broken or stalled bundle download is resumed before its app is reported
/// failed (a later desired state, or the next session, tries again).
const DOWNLOAD_ATTEMPTS: u32 = 8;

/// A desired state as the hub announced it.
enum Announced {
    /// Sent on the session.
    Inline(DesiredState),
    /// Waiting at the hub: fetched with `FetchDesiredState`.
    Waiting(u64),
}

/// A desired state whose bundles were downloaded, with the apps whose bundle could not be.
struct Downloaded {
    desired: DesiredState,
    failed: Vec<AppStatus>,
}

/// Aborts the task when dropped (a session that ends takes its download with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fetches and verifies every bundle of `d`, resuming a broken or stalled transfer where it
/// stopped.
async fn download_bundles(
    bundles: BundleStore,
    mut client: AgentSessionClient<tonic::transport::Channel>,
    d: DesiredState,
    chunk_timeout: Duration,
    status: watch::Sender<AgentStatus>,
) -> Downloaded {
    let mut failed = Vec::new();
    // Every missing bundle in one call; what it could not take is fetched one by one below.
    let digests: Vec<&str> = d.apps.iter().map(|a| a.bundle_digest.as_str()).collect();
    if digests.len() > 1
        && let Err(e) = bundles
            .fetch_many(&mut client, &digests, chunk_timeout)
            .await
    {
        tracing::info!(error = %e, "batched bundle download incomplete; fetching the rest one by one");
    }
    for a in &d.apps {
        let mut attempt = 1;
        let result = loop {
            match bundles
                .fetch(&mut client, &a.bundle_digest, chunk_timeout)
                .await
            {
                Err(e) if e.resumable() && attempt < DOWNLOAD_ATTEMPTS => {
                    tracing::info!(app = %a.app, error = %e, attempt, "bundle download interrupted; resuming");
                    status.send_modify(|s| s.bundle_resumes += 1);
                    attempt += 1;
                }
                other => break other,
            }
        };
        if let Err(e) = result {
            tracing::warn!(app = %a.app, error = %e, "bundle not taken");
            failed.push(AppStatus {
                app: a.app.clone(),
                revision: a.revision.clone(),
                bundle_digest: a.bundle_digest.clone(),
                phase: Phase::Failed.into(),
                message: format!("bundle not fetched: {e}"),
                observed_unix_ms: unix_ms(SystemTime::now()),
                health: Health::Unknown.into(),
                ..Default::default()
            });
        }
    }
    Downloaded { desired: d, failed }
}
