//! The hub's TLS accept loop: one task per connection for the handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`], outcomes counted), the certificate of a resumed session re-checked,
//! the peer's identity read once, verified connections handed to the gRPC server as [`HubConn`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::api::auth::{ConnInfo, PeerCheck};
use crate::telemetry::metrics::Metrics;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<io::Result<HubConn>>,
    check: PeerCheck,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        let metrics = metrics.clone();
        let check = check.clone();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                .await
                .map(|r| r.and_then(|tls| admit(tls, &check, &metrics)));
            match accepted {
                Ok(Ok(tls)) => {
                    metrics.count_handshake("ok");
                    let _ = conns.send(Ok(tls)).await;
                }
                Ok(Err(e)) => {
                    let reason = crate::telemetry::metrics::handshake_failure_reason(&e);
                    metrics.count_handshake_failure(reason);
                    tracing::info!(%peer, error = %e, reason, "TLS handshake refused");
                }
                Err(_) => {
                    metrics.count_handshake_failure("timeout");
                    tracing::info!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// Passes a connection on with its peer's identity, unless it resumed a session whose client
/// certificate has been revoked or has expired since the full handshake (the certificate
/// verifier does not run on resumption). Dropping the refused connection closes it.
fn admit(tls: TlsStream<TcpStream>, check: &PeerCheck, metrics: &Metrics) -> io::Result<HubConn> {
    let conn = tls.get_ref().1;
    let peer = if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
        let peer = check.resumed(conn.peer_certificates(), SystemTime::now());
        if peer.is_ok() {
            metrics.tls_resumed_handshakes.inc();
        }
        peer
    } else {
        check.identity(conn.peer_certificates())
    }
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let info = ConnInfo {
        remote_addr: tls.get_ref().0.peer_addr().ok(),
        peer: peer.map(Arc::new),
    };
    Ok(HubConn { tls, info })
}

/// A verified connection as the gRPC server holds it: the TLS stream and what the accept loop
/// learned of the peer, which tonic hands to every request as [`ConnInfo`] (instead of a copy of
/// the peer's certificate chain that each call would parse again).
pub struct HubConn {
    tls: TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for HubConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for HubConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for HubConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
