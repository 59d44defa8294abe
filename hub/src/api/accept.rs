//! The hub's TLS accept loop: one task per connection for the handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`], outcomes counted), the certificate of a resumed session re-checked,
//! verified connections handed to the gRPC server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::api::auth::PeerCheck;
use crate::telemetry::metrics::Metrics;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>>,
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
                .map(|r| r.and_then(|tls| admit_resumed(tls, &check, &metrics)));
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

/// Passes a connection on, unless it resumed a session whose client certificate has been revoked
/// or has expired since the full handshake (the certificate verifier does not run on
/// resumption). Dropping the refused connection closes it.
fn admit_resumed(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    check: &PeerCheck,
    metrics: &Metrics,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let conn = tls.get_ref().1;
    if conn.handshake_kind() != Some(HandshakeKind::Resumed) {
        return Ok(tls);
    }
    check
        .resumed(conn.peer_certificates(), SystemTime::now())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    metrics.tls_resumed_handshakes.inc();
    Ok(tls)
}
