//! A session client that reports app statuses as an agent does — a `replace` report with every
//! app first, then one changed app per report, each numbered (`seq`) — keeping up to a window of
//! reports unacknowledged, and recording what the hub acknowledged (`StatusAck`): per app the
//! newest report the hub said is durable, and the send-to-ack latency of each. Each status's
//! message is `seq <n>`, so what the hub stored can be checked against what it acknowledged
//! ([`seq_of`]). Used by `statusbench` and the `kill -9` status test.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow};
use flotilla_proto::clock::unix_ms;
use flotilla_proto::state::{Health, Phase};
use flotilla_proto::tls::{TlsDialer, error_chain, mtls_client_config};
use flotilla_proto::v1::agent_message::Msg as AgentMsg;
use flotilla_proto::v1::agent_session_client::AgentSessionClient;
use flotilla_proto::v1::hub_message::Msg as HubMsg;
use flotilla_proto::v1::{
    AgentMessage, AppStatus, Heartbeat, HubMessage, ObjectCounts, StatusReport,
};
use tokio::sync::{mpsc, watch};
use tonic::Streaming;
use tonic::transport::Channel;

use super::client::{Enrolled, hello_welcome};

/// How long a stopping reporter waits for the acknowledgements of what it has in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// Heartbeats keep a reporter's session alive while it sends nothing.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The name of app `i` of every reporting cluster.
pub fn app_name(i: usize) -> String {
    format!("app-{i:02}")
}

/// The `seq` a status carried, from its message (`seq <n>`).
pub fn seq_of(message: &str) -> Option<u64> {
    message.strip_prefix("seq ")?.parse().ok()
}

/// App `i`'s status as reported in report `seq`: applied and healthy, with object counts, a
/// revision and a digest of realistic sizes.
pub fn app_status(i: usize, seq: u64) -> AppStatus {
    AppStatus {
        app: app_name(i),
        revision: format!("{:040x}", 0x5eed_u64 + i as u64),
        bundle_digest: format!("sha256:{:064x}", 0xb0b_u64 + i as u64),
        phase: Phase::Applied.into(),
        message: format!("seq {seq}"),
        observed_unix_ms: unix_ms(SystemTime::now()),
        health: Health::Healthy.into(),
        objects: Some(ObjectCounts {
            total: 12,
            current: 12,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What to report.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Apps per cluster (the first report carries all of them, each later one one app).
    pub apps: usize,
    /// Reports sent and not yet acknowledged, at most.
    pub window: usize,
    /// The `seq` of the first report (a reconnecting reporter continues above its last one).
    pub first_seq: u64,
}

/// Shared by the reporters of a run: whether latencies are being measured, and how many
/// reports the hub acknowledged so far.
#[derive(Debug, Default)]
pub struct Progress {
    pub measuring: AtomicBool,
    pub acked: AtomicU64,
}

/// What one reporter saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub cluster: String,
    /// Reports acknowledged while [`Progress::measuring`] was set.
    pub acked_measured: u64,
    /// Their send-to-ack latencies.
    pub latencies: Vec<Duration>,
    /// Reports acknowledged in all.
    pub acked: u64,
    /// Per app: the `seq` of the newest acknowledged report that carried it (0: none).
    pub acked_seq: Vec<u64>,
    /// Per app: the `seq` of the newest report sent that carried it (0: none).
    pub sent_seq: Vec<u64>,
    /// The last `seq` used.
    pub last_seq: u64,
    /// How the session ended, when the hub (or the connection) ended it.
    pub ended: Option<String>,
}

/// An open session that has been welcomed, ready to report.
pub struct Reporter {
    cluster: String,
    /// Kept so that the connection stays up.
    _client: AgentSessionClient<Channel>,
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<HubMessage>,
}

fn msg(m: AgentMsg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

impl Reporter {
    /// Dials the hub with the cluster's certificate (from `src`), opens `Connect`, says Hello and
    /// waits for the Welcome.
    pub async fn connect(who: &Enrolled, hub: &str, src: Option<IpAddr>) -> Result<Self> {
        let cfg = mtls_client_config(&who.ca_pem, &who.chain_pem, &who.key_pem)?;
        let channel = TlsDialer::new(cfg)
            .with_local_ip(src)
            .channel(hub)
            .await
            .map_err(|e| anyhow!("dial {hub}: {}", error_chain(&e)))?;
        let mut client = AgentSessionClient::new(channel);
        let (tx, inbound, _) = hello_welcome(&mut client, &who.cluster, 64).await?;
        Ok(Self {
            cluster: who.cluster.clone(),
            _client: client,
            tx,
            inbound,
        })
    }

    /// Reports until `stop` turns true — then waits up to [`DRAIN`] for what is in flight to be
    /// acknowledged — or until the session ends.
    pub async fn run(
        mut self,
        load: Load,
        progress: Arc<Progress>,
        mut stop: watch::Receiver<bool>,
    ) -> Tally {
        let apps = load.apps.max(1);
        let mut t = Tally {
            cluster: self.cluster.clone(),
            acked_seq: vec![0; apps],
            sent_seq: vec![0; apps],
            ..Default::default()
        };
        // Sent and not acknowledged: seq, when, which app (`None`: all of them).
        let mut inflight: VecDeque<(u64, Instant, Option<usize>)> = VecDeque::new();
        let mut seq = load.first_seq.max(1) - 1;
        let mut stopping = *stop.borrow();
        let mut drain_until = tokio::time::Instant::now() + DRAIN;
        // Kept across the loop's turns, so that a report costs no timer registration.
        let heartbeat = tokio::time::sleep(HEARTBEAT_EVERY);
        tokio::pin!(heartbeat);
        loop {
            while !stopping && inflight.len() < load.window.max(1) {
                seq += 1;
                let first = seq == load.first_seq.max(1);
                let (report_apps, which) = if first {
                    ((0..apps).map(|i| app_status(i, seq)).collect(), None)
                } else {
                    let i = (seq % apps as u64) as usize;
                    (vec![app_status(i, seq)], Some(i))
                };
                match which {
                    None => t.sent_seq.iter_mut().for_each(|s| *s = seq),
                    Some(i) => t.sent_seq[i] = seq,
                }
                let report = StatusReport {
                    generation: 1,
                    apps: report_apps,
                    replace: first,
                    seq,
                };
                if self.tx.send(msg(AgentMsg::Status(report))).await.is_err() {
                    t.ended = Some("outbound stream closed".into());
                    t.last_seq = seq;
                    return t;
                }
                inflight.push_back((seq, Instant::now(), which));
            }
            t.last_seq = seq;
            if stopping && inflight.is_empty() {
                return t;
            }
            tokio::select! {
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    drain_until = tokio::time::Instant::now() + DRAIN;
                }
                _ = tokio::time::sleep_until(drain_until), if stopping => {
                    t.ended = Some(format!("{} reports not acknowledged within {DRAIN:?}", inflight.len()));
                    return t;
                }
                _ = &mut heartbeat => {
                    let hb = Heartbeat { seq: 0, sent_unix_ms: unix_ms(SystemTime::now()) };
                    if self.tx.send(msg(AgentMsg::Heartbeat(hb))).await.is_err() {
                        t.ended = Some("outbound stream closed".into());
                        return t;
                    }
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + HEARTBEAT_EVERY);
                }
                m = self.inbound.message() => match m {
                    Ok(Some(HubMessage { msg: Some(HubMsg::StatusAck(a)) })) => {
                        let measured = progress.measuring.load(Ordering::Relaxed);
                        while inflight.front().is_some_and(|(s, _, _)| *s <= a.seq) {
                            let (s, sent, which) = inflight.pop_front().expect("checked");
                            t.acked += 1;
                            progress.acked.fetch_add(1, Ordering::Relaxed);
                            if measured {
                                t.acked_measured += 1;
                                t.latencies.push(sent.elapsed());
                            }
                            match which {
                                None => t.acked_seq.iter_mut().for_each(|x| *x = (*x).max(s)),
                                Some(i) => t.acked_seq[i] = t.acked_seq[i].max(s),
                            }
                        }
                    }
                    Ok(Some(HubMessage { msg: Some(HubMsg::Disconnect(d)) })) => {
                        t.ended = Some(format!("hub disconnected the session: {} ({})", d.reason, d.message));
                        return t;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        t.ended = Some("stream closed by the hub".into());
                        return t;
                    }
                    Err(s) => {
                        t.ended = Some(format!("stream error: {}: {}", s.code(), s.message()));
                        return t;
                    }
                }
            }
        }
    }
}
