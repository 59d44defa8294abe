//! The lightweight session clients: enrollment (AddCluster + Registration.Join, no state dir)
//! and one task per session that holds an open `AgentSession.Connect` stream, answers the
//! coordinator's heartbeat rounds and sends background heartbeats so the hub keeps it alive.
//! Nothing here reconciles. A session given a [`DesiredHandler`] hands every new
//! `DesiredState` to it (which may fetch bundles on the session's connection) and sends back
//! what it returns; without one, desired states are ignored.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_agent::identity::new_key_and_csr;
use flotilla_proto::clock::unix_ms;
use flotilla_proto::tls::{TlsDialer, error_chain, mtls_client_config};
use flotilla_proto::token::JoinToken;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::agent_message::Msg as AgentMsg;
use flotilla_proto::v1::agent_session_client::AgentSessionClient;
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::registration_client::RegistrationClient;
use flotilla_proto::v1::{
    AddClusterRequest, AgentInfo, AgentMessage, DesiredState, FetchDesiredStateRequest, Heartbeat,
    Hello, HubMessage, JoinRequest, Welcome,
};
use futures::future::BoxFuture;
use rustls::ClientConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::prog;

/// Background heartbeat period cap; the hub closes sessions silent for 3× its interval.
const KEEPALIVE_MAX: Duration = Duration::from_secs(20);
/// Sequence numbers of background heartbeats start here, far above round numbers.
const BACKGROUND_SEQ: u64 = 1 << 32;

/// The loopback source address for connection `i`: 127.0.0.2, 127.0.0.3, …
pub fn source_ip(i: usize, sources: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8))
}

pub fn agent_info() -> AgentInfo {
    AgentInfo {
        version: format!("{}-{}", prog(), env!("CARGO_PKG_VERSION")),
        hostname: prog().into(),
        platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        cluster_backend: "simulated".into(),
    }
}

/// What a session client needs: its own key, certificate chain and the hub CA, and the TLS
/// configuration made of them.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub cluster: String,
    pub key_pem: String,
    pub chain_pem: String,
    pub ca_pem: String,
    /// Built once and used for every connection of this cluster, as an agent does: it keeps the
    /// hub's session tickets, so a reconnect resumes the TLS session.
    pub tls: Arc<ClientConfig>,
}

pub fn cluster_name(i: usize) -> String {
    format!("load-{i:05}")
}

/// Asks the Admin API for a single-use join token for `name`.
pub async fn add_cluster(admin: &mut AdminClient<Channel>, name: &str) -> Result<JoinToken> {
    let resp = admin
        .add_cluster(AddClusterRequest {
            name: name.to_string(),
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("AddCluster {name}: {}: {}", s.code(), s.message()))?
        .into_inner();
    JoinToken::decode(&resp.token).with_context(|| format!("token for {name}"))
}

/// Exchanges a token and a fresh CSR for a certificate over a (shared) bootstrap channel.
pub async fn join(boot: Channel, name: &str, token: &JoinToken) -> Result<Enrolled> {
    let (key_pem, csr_pem) = new_key_and_csr(name)?;
    let resp = RegistrationClient::new(boot)
        .join(JoinRequest {
            token: token.token.clone(),
            csr_pem,
            agent: Some(agent_info()),
        })
        .await
        .map_err(|s| anyhow!("Join {name}: {}: {}", s.code(), s.message()))?
        .into_inner();
    if resp.cluster_id != name {
        bail!("Join {name}: hub assigned cluster {:?}", resp.cluster_id);
    }
    let tls = Arc::new(mtls_client_config(
        &resp.ca_bundle_pem,
        &resp.cert_chain_pem,
        &key_pem,
    )?);
    Ok(Enrolled {
        cluster: resp.cluster_id,
        key_pem,
        chain_pem: resp.cert_chain_pem,
        ca_pem: resp.ca_bundle_pem,
        tls,
    })
}

/// A command from the coordinator to one session task.
#[derive(Debug)]
pub enum Cmd {
    /// Send heartbeat `round` now and report its round trip on the sender.
    Round(u32, mpsc::Sender<RoundReply>),
}

/// One session's answer to a heartbeat round.
pub type RoundReply = Result<Duration, String>;

/// A new desired state for one session, handed to its [`DesiredHandler`].
pub struct DesiredCall {
    pub cluster: String,
    /// A client on the session's own connection (for `FetchBundle`).
    pub client: AgentSessionClient<Channel>,
    pub desired: DesiredState,
    /// Digests of the bundles this session already holds (fetched and verified before).
    pub cached: BTreeSet<String>,
}

/// What a [`DesiredHandler`] did with a desired state.
#[derive(Debug, Default)]
pub struct DesiredOutcome {
    /// Sent to the hub in order (acks, status reports).
    pub messages: Vec<AgentMessage>,
    /// Digests now held (added to the session's cache).
    pub holds: Vec<String>,
    /// Whether the whole desired state is held (its generation is then not handled again).
    pub complete: bool,
}

/// Handles a session's new desired states, one at a time beside the session (which keeps
/// heartbeating and reading), as an agent does.
pub type DesiredHandler =
    Arc<dyn Fn(DesiredCall) -> BoxFuture<'static, DesiredOutcome> + Send + Sync>;

/// State shared by all session tasks.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Sessions whose task is still holding an open stream.
    pub alive: AtomicUsize,
    /// How sessions ended early, the first few of them.
    pub ended: Mutex<Vec<String>>,
    pub ended_count: AtomicUsize,
}

impl Fleet {
    /// How many sessions ended early, and how the first few ended.
    pub fn ended_early(&self) -> (usize, Vec<String>) {
        let examples = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.ended_count.load(Ordering::SeqCst), examples)
    }

    fn end(&self, cluster: &str, why: String) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
        self.ended_count.fetch_add(1, Ordering::SeqCst);
        let mut e = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < 5 {
            e.push(format!("{cluster}: {why}"));
        }
    }
}

/// A held session: the coordinator's handle on its task.
pub struct Session {
    pub cmd: mpsc::Sender<Cmd>,
    pub task: JoinHandle<()>,
}

/// Opens one session (one mutual-TLS handshake from `src` — full the first time, resumed from
/// the hub's ticket after that —, Connect, Hello, Welcome) and leaves a task holding it. Returns
/// the time from dial to Welcome.
/// Opens `Connect` on `client` (outbound messages buffered `buffer` deep), says Hello as
/// `cluster` holding nothing, and waits up to 30 s for the Welcome: the outbound sender, the
/// inbound stream and the Welcome.
pub async fn hello_welcome(
    client: &mut AgentSessionClient<Channel>,
    cluster: &str,
    buffer: usize,
) -> Result<(mpsc::Sender<AgentMessage>, Streaming<HubMessage>, Welcome)> {
    let (tx, rx) = mpsc::channel::<AgentMessage>(buffer);
    tx.send(AgentMessage {
        msg: Some(AgentMsg::Hello(Hello {
            cluster_id: cluster.to_string(),
            last_generation: 0,
            cached_bundles: vec![],
            agent: Some(agent_info()),
            fetches_desired: true,
        })),
    })
    .await
    .map_err(|_| anyhow!("outbound stream closed"))?;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow!("Connect: {}: {}", s.code(), s.message()))?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
        .await
        .map_err(|_| anyhow!("no Welcome within 30s"))?
        .map_err(|s| anyhow!("waiting for Welcome: {}: {}", s.code(), s.message()))?;
    match first {
        Some(HubMessage {
            msg: Some(HubMsg::Welcome(w)),
        }) => Ok((tx, inbound, w)),
        Some(other) => bail!("first hub message is not Welcome: {other:?}"),
        None => bail!("stream closed before Welcome"),
    }
}

pub async fn open_session(
    who: &Enrolled,
    hub: &str,
    src: IpAddr,
    fleet: Arc<Fleet>,
    on_desired: Option<DesiredHandler>,
) -> Result<(Session, Duration)> {
    let started = Instant::now();
    let channel = TlsDialer::new(who.tls.clone())
        .with_local_ip(Some(src))
        .channel(hub)
        .await
        .map_err(|e| anyhow!("dial from {src}: {}", error_chain(&e)))?;
    let mut client = AgentSessionClient::new(channel);
    let (tx, inbound, welcome) = hello_welcome(&mut client, &who.cluster, 4).await?;
    let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms));
    let took = started.elapsed();
    let keepalive = if interval.is_zero() {
        KEEPALIVE_MAX
    } else {
        interval.min(KEEPALIVE_MAX)
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    fleet.alive.fetch_add(1, Ordering::SeqCst);
    let cluster = who.cluster.clone();
    let task = tokio::spawn(async move {
        let held = Held {
            cluster,
            client,
            tx,
            inbound,
            cmds: cmd_rx,
            keepalive,
            on_desired,
            session_id: welcome.session_id,
            last_generation: 0,
            cached: BTreeSet::new(),
        };
        match held.run().await {
            Some((cluster, why)) => fleet.end(&cluster, why),
            None => {
                fleet.alive.fetch_sub(1, Ordering::SeqCst);
            }
        }
    });
    Ok((Session { cmd: cmd_tx, task }, took))
}

/// Everything one held session owns; dropping it closes the stream and the connection.
struct Held {
    cluster: String,
    client: AgentSessionClient<Channel>,
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<HubMessage>,
    cmds: mpsc::Receiver<Cmd>,
    keepalive: Duration,
    on_desired: Option<DesiredHandler>,
    /// The Welcome's session id (named when fetching an announced desired state).
    session_id: String,
    /// The generation of the last desired state held completely.
    last_generation: u64,
    /// Bundles held, by digest.
    cached: BTreeSet<String>,
}

fn heartbeat(seq: u64) -> AgentMessage {
    AgentMessage {
        msg: Some(AgentMsg::Heartbeat(Heartbeat {
            seq,
            sent_unix_ms: unix_ms(SystemTime::now()),
        })),
    }
}

/// A desired state as the hub announced it: sent inline, or waiting to be fetched.
enum Announced {
    Inline(DesiredState),
    Waiting(u64),
}

impl Announced {
    /// The announcement `m` makes, if it is one.
    fn of(m: HubMsg) -> Option<Self> {
        match m {
            HubMsg::Desired(d) => Some(Self::Inline(d)),
            HubMsg::DesiredReady(r) => Some(Self::Waiting(r.generation)),
            _ => None,
        }
    }

    fn generation(&self) -> u64 {
        match self {
            Self::Inline(d) => d.generation,
            Self::Waiting(g) => *g,
        }
    }
}

/// What became of an announced desired state: handled, or not fetched (why).
type Handled = (u64, Result<DesiredOutcome, Status>);

impl Held {
    /// Handles an announced desired state in a task of its own (fetching it first if it
    /// waits at the hub); the outcome comes back on `done`.
    fn handle(&self, announced: Announced, done: mpsc::Sender<Handled>) {
        let handler = self.on_desired.clone().expect("only called with a handler");
        let generation = announced.generation();
        let (cluster, mut client) = (self.cluster.clone(), self.client.clone());
        let (cached, session_id) = (self.cached.clone(), self.session_id.clone());
        tokio::spawn(async move {
            let desired = match announced {
                Announced::Inline(d) => d,
                Announced::Waiting(generation) => {
                    let req = FetchDesiredStateRequest {
                        session_id,
                        generation,
                    };
                    match client.fetch_desired_state(req).await {
                        Ok(r) => r.into_inner(),
                        Err(s) => {
                            let _ = done.send((generation, Err(s))).await;
                            return;
                        }
                    }
                }
            };
            let call = DesiredCall {
                cluster,
                client,
                desired,
                cached,
            };
            let outcome = handler(call).await;
            let _ = done.send((generation, Ok(outcome))).await;
        });
    }

    /// Runs until the coordinator drops its command sender (`None`) or the session ends early
    /// (`Some((cluster, why))`).
    async fn run(mut self) -> Option<(String, String)> {
        let cluster = self.cluster.clone();
        let ended = |why: String| Some((cluster.clone(), why));
        // Spread background heartbeats over the period instead of firing them all together.
        let phase = Duration::from_millis(rand::random_range(0..self.keepalive.as_millis() as u64));
        let mut next_bg = tokio::time::Instant::now() + phase;
        let mut bg_seq = BACKGROUND_SEQ;
        // The round in flight: its heartbeat sequence, when it was sent, where to report.
        let mut pending: Option<(u64, Instant, mpsc::Sender<RoundReply>)> = None;
        // A desired state being handled (fetching bundles takes a while on a busy hub; an agent
        // does that beside its session, which keeps heartbeating), and the newest one waiting.
        let (done_tx, mut done_rx) = mpsc::channel::<Handled>(1);
        let mut busy = false;
        let mut waiting: Option<Announced> = None;
        loop {
            tokio::select! {
                Some((generation, outcome)) = done_rx.recv() => {
                    match outcome {
                        Ok(outcome) => {
                            self.cached.extend(outcome.holds);
                            if outcome.complete {
                                self.last_generation = generation;
                            }
                            for m in outcome.messages {
                                if self.tx.send(m).await.is_err() {
                                    return ended("outbound stream closed".into());
                                }
                            }
                        }
                        // Superseded: a newer announcement is on its way.
                        Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
                        Err(s) => return ended(format!("FetchDesiredState {generation}: {}: {}", s.code(), s.message())),
                    }
                    busy = false;
                    if let Some(d) = waiting.take().filter(|d| d.generation() != self.last_generation) {
                        busy = true;
                        self.handle(d, done_tx.clone());
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    None => return None,
                    Some(Cmd::Round(round, reply)) => {
                        if let Some((_, _, old)) = pending.take() {
                            let _ = old.try_send(Err("no ack before the next round".into()));
                        }
                        let seq = u64::from(round) + 1;
                        let sent = Instant::now();
                        if self.tx.send(heartbeat(seq)).await.is_err() {
                            let _ = reply.try_send(Err("outbound stream closed".into()));
                            return ended("outbound stream closed".into());
                        }
                        pending = Some((seq, sent, reply));
                    }
                },
                _ = sleep_until(next_bg) => {
                    bg_seq += 1;
                    if self.tx.send(heartbeat(bg_seq)).await.is_err() {
                        return ended("outbound stream closed".into());
                    }
                    next_bg += self.keepalive;
                }
                msg = self.inbound.message() => match msg {
                    Ok(Some(HubMessage { msg: Some(HubMsg::HeartbeatAck(a)) })) => {
                        if pending.as_ref().is_some_and(|(seq, _, _)| *seq == a.seq) {
                            let (_, sent, reply) = pending.take().expect("checked");
                            let _ = reply.try_send(Ok(sent.elapsed()));
                        }
                    }
                    Ok(Some(HubMessage { msg: Some(m @ (HubMsg::Desired(_) | HubMsg::DesiredReady(_))) })) if self.on_desired.is_some() => {
                        let d = Announced::of(m).expect("an announcement");
                        if d.generation() == self.last_generation {
                            continue;
                        }
                        // One at a time, the newest waiting; heartbeats go on meanwhile.
                        if busy {
                            waiting = Some(d);
                        } else {
                            busy = true;
                            self.handle(d, done_tx.clone());
                        }
                    }
                    Ok(Some(HubMessage { msg: Some(HubMsg::Disconnect(d)) })) => {
                        let why = format!("hub disconnected the session: {} ({})", d.reason, d.message);
                        if let Some((_, _, r)) = pending.take() {
                            let _ = r.try_send(Err(why.clone()));
                        }
                        return ended(why);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        if let Some((_, _, r)) = pending.take() {
                            let _ = r.try_send(Err("stream closed by the hub".into()));
                        }
                        return ended("stream closed by the hub".into());
                    }
                    Err(s) => {
                        let why = format!("stream error: {}: {}", s.code(), s.message());
                        if let Some((_, _, r)) = pending.take() {
                            let _ = r.try_send(Err(why.clone()));
                        }
                        return ended(why);
                    }
                }
            }
        }
    }
}
