//! The hub's TLS accept loop: one task per connection for the handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`], outcomes counted), verified connections handed to the gRPC server.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::telemetry::metrics::Metrics;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>>,
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
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
