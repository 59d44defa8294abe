//! TLS building blocks shared by hub, agent and CLI: PEM loading, CA fingerprints, the mutual-TLS
//! client configuration, the bootstrap configuration that pins the hub CA by fingerprint, and a
//! dialer that turns a rustls client configuration into a tonic channel.
//!
//! Everything uses rustls with the `ring` provider; no system OpenSSL is involved.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM certificate found in {0}")]
    NoCertificate(&'static str),
    #[error("no PEM private key found in {0}")]
    NoKey(&'static str),
    #[error("bad PEM in {what}: {err}")]
    Pem { what: &'static str, err: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider used everywhere (ring), preferring the SHA-256 suite
/// `TLS13_AES_128_GCM_SHA256`: ring's default order starts with AES-256/SHA-384, whose key
/// schedule hashes with SHA-384 in software, while SHA-256 runs on the CPU's SHA extensions;
/// with it, a mutual-TLS handshake costs the hub measurably less CPU. The other suites stay
/// acceptable, in ring's order.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// All certificates in a PEM text, in order.
pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            err: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM text.
pub fn key_from_pem(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(what),
        e => TlsError::Pem {
            what,
            err: e.to_string(),
        },
    })
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in ca {
        store.add(c.clone())?;
    }
    Ok(store)
}

/// Hubs a client keeps session tickets for. A client talks to one hub (one server name); a few
/// slots cover a hub reached under another name.
const RESUMPTION_SERVERS: usize = 4;

/// Client configuration for mutual TLS to the hub: trusts only `ca_pem` and presents the chain.
///
/// The configuration keeps the session tickets the hub sends, so a reconnect made with the same
/// configuration (the same [`TlsDialer`]) resumes the TLS session: no certificate is sent or
/// verified on either side and no signature is made, which makes a reconnect storm cheaper for
/// the hub than the first connects. A new configuration (a renewed certificate) starts with no
/// tickets, so its first connection presents the new certificate.
pub fn mtls_client_config(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let ca = certs_from_pem(ca_pem, "CA bundle")?;
    let chain = certs_from_pem(chain_pem, "certificate")?;
    let key = key_from_pem(key_pem, "private key")?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&ca)?)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.resumption = Resumption::in_memory_sessions(RESUMPTION_SERVERS);
    Ok(cfg)
}

/// Client configuration for TLS to the hub without a client certificate, trusting only `ca_pem`.
pub fn anonymous_client_config(ca_pem: &str) -> Result<ClientConfig, TlsError> {
    let ca = certs_from_pem(ca_pem, "CA bundle")?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&ca)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Client configuration for the join call: the hub's chain must contain a CA certificate whose
/// fingerprint equals the one in the join token, and the server certificate must verify against it.
pub fn bootstrap_client_config(ca_fingerprint: &str) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider.clone(),
    };
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Verifies a server against the CA found in its own chain, pinned by fingerprint.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "hub CA fingerprint does not match the join token (expected {})",
                    self.fingerprint
                ))
            })?;
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Dials the hub over TLS and hands tonic a ready HTTP/2 transport. The configuration can be
/// replaced at run time (certificate renewal): every new connection uses the newest one, while
/// connections already open keep going.
#[derive(Clone)]
pub struct TlsDialer {
    config: Arc<RwLock<Arc<ClientConfig>>>,
    local_ip: Option<IpAddr>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for TlsDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDialer")
            .field("local_ip", &self.local_ip)
            .finish_non_exhaustive()
    }
}

impl TlsDialer {
    /// A dialer using `config` (owned, or shared with other dialers: dialers sharing one
    /// configuration share its session tickets).
    pub fn new(config: impl Into<Arc<ClientConfig>>) -> Self {
        Self {
            config: Arc::new(RwLock::new(config.into())),
            local_ip: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Binds outgoing connections to this local address (the load generator spreads its
    /// connections over several loopback sources to get past the ephemeral-port limit).
    pub fn with_local_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.local_ip = ip;
        self
    }

    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Replaces the configuration used for new connections.
    pub fn set_config(&self, config: impl Into<Arc<ClientConfig>>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config.into();
    }

    fn current(&self) -> Arc<ClientConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Opens one TLS connection to `addr` (`host:port`).
    pub async fn dial(&self, addr: &str) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let (host, _) = split_host_port(addr)?;
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let target: SocketAddr = tokio::net::lookup_host(addr)
            .await?
            .find(|a| match self.local_ip {
                Some(ip) => a.is_ipv4() == ip.is_ipv4(),
                None => true,
            })
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{addr} did not resolve"))
            })?;
        let fut = async {
            let tcp = match self.local_ip {
                Some(ip) => {
                    let sock = if ip.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    sock.bind(SocketAddr::new(ip, 0))?;
                    sock.connect(target).await?
                }
                None => TcpStream::connect(target).await?,
            };
            tcp.set_nodelay(true)?;
            tokio_rustls::TlsConnector::from(self.current())
                .connect(server_name, tcp)
                .await
        };
        tokio::time::timeout(self.connect_timeout, fut)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                )
            })?
    }

    /// A tonic channel to `addr` whose connections are made by this dialer. Connects eagerly so
    /// that handshake errors surface here.
    pub async fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let dialer = self.clone();
        let addr_owned = addr.to_string();
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("host:port forms a valid URI")
            .connect_timeout(self.connect_timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let dialer = dialer.clone();
                let addr = addr_owned.clone();
                async move { dialer.dial(&addr).await.map(TokioIo::new) }
            }))
            .await
    }
}

/// Splits `host:port`, accepting `[v6]:port`.
pub fn split_host_port(addr: &str) -> io::Result<(&str, u16)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} is not host:port"),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// Finds the innermost cause of a transport error that mentions TLS or certificates, so CLI and
/// agent can print the real reason ("invalid peer certificate: Expired") rather than
/// "transport error".
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sha256_suite_comes_first_and_the_others_stay() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(suites.len(), ring.cipher_suites.len());
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:7443").unwrap(),
            ("127.0.0.1", 7443)
        );
        assert_eq!(split_host_port("[::1]:1").unwrap(), ("[::1]", 1));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":1").is_err());
    }

    #[test]
    fn pem_errors_are_specific() {
        assert!(matches!(
            certs_from_pem("garbage", "x"),
            Err(TlsError::NoCertificate("x"))
        ));
        assert!(matches!(key_from_pem("", "k"), Err(TlsError::NoKey("k"))));
    }
}
