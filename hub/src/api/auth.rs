//! Authentication at the hub's TLS port: the server TLS configuration (with session tickets),
//! the client-certificate verifier (chain to the hub CA, not expired, not revoked), the check of
//! a resumed session's certificate, the caller identity taken from the verified certificate
//! only, and the per-address limiter for failed joins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_proto::identity::{Identity, PeerCert};
use flotilla_proto::tls::{TlsError, certs_from_pem, key_from_pem, provider};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ProducesTickets, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::pki::known::KnownCerts;
use crate::state::registry::RevokedSerials;

/// Session tickets the hub sends after each handshake. An agent holds one connection at a time
/// and each connection brings it a fresh ticket, so one is enough; rustls' default of two
/// doubles the ticket work of every handshake.
const TLS13_TICKETS: usize = 1;

/// Builds the hub's TLS server configuration. Client certificates are optional at the TLS
/// layer (so `Registration.Join` works without one), but one that is presented must chain to
/// the hub CA, be within its validity and not be revoked, or the handshake fails.
///
/// The hub issues stateless session tickets (AEAD-encrypted with a key held in memory only and
/// rotated every 6 hours; a restart starts over), so a reconnecting agent resumes its session
/// without a certificate chain to verify or a signature to make. The ticket carries the client
/// certificate chain verified at the full handshake, which is what `caller()` reads on a resumed
/// connection; the verifier does not run again, so the accept loop re-checks that certificate
/// with [`PeerCheck::resumed`] (revocation, expiry). Once it has refused one, the tickets issued
/// until then are no longer accepted ([`EpochTicketer`]), so the refused client's next attempt
/// is a full handshake that the verifier refuses with a `CertificateRevoked` (or
/// `CertificateExpired`) alert, which an agent takes as final. No session cache is kept:
/// tickets cost the hub no memory per session.
pub fn server_config(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    check: PeerCheck,
) -> Result<ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem, "hub CA")? {
        roots.add(c)?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let epoch = check.epoch.clone();
    let verifier = HubClientVerifier { inner, check };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(
            certs_from_pem(chain_pem, "hub certificate")?,
            key_from_pem(key_pem, "hub key")?,
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.ticketer = Arc::new(EpochTicketer {
        inner: rustls::crypto::ring::Ticketer::new()?,
        epoch,
    });
    cfg.send_tls13_tickets = TLS13_TICKETS;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(cfg)
}

/// What the hub checks of a client certificate beyond its chain: that it names a Flotilla
/// identity of this trust domain and that its serial is not revoked; for a resumed session, also
/// that it has not expired since the full handshake.
#[derive(Debug, Clone)]
pub struct PeerCheck {
    revoked: Arc<RevokedSerials>,
    trust_domain: String,
    /// Client certificates whose chain is known good (signed by this CA, or verified before).
    known: Arc<KnownCerts>,
    /// The ticket epoch: moves when a resumed session is refused (see [`EpochTicketer`]).
    epoch: Arc<AtomicU64>,
}

// === impl PeerCheck ===

impl PeerCheck {
    pub fn new(revoked: Arc<RevokedSerials>, trust_domain: &str, known: Arc<KnownCerts>) -> Self {
        Self {
            revoked,
            trust_domain: trust_domain.to_string(),
            known,
            epoch: Arc::default(),
        }
    }

    /// The identity of `end_entity`, unless it is revoked.
    fn admit(&self, end_entity: &CertificateDer<'_>) -> Result<PeerCert, rustls::Error> {
        let peer = PeerCert::from_der(end_entity, &self.trust_domain).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if self.revoked.contains(&peer.serial) {
            tracing::warn!(identity = %peer.identity, serial = %peer.serial, "refused revoked certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(peer)
    }

    /// Checks the certificate chain a resumed session carries over from its full handshake
    /// (`None` or empty: the session had no client certificate, and neither has the caller) and
    /// returns its identity. The chain was verified then; what may have changed since is
    /// revocation and expiry. A refusal retires every ticket issued so far.
    pub fn resumed(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
        now: SystemTime,
    ) -> Result<Option<PeerCert>, rustls::Error> {
        let Some(end_entity) = certs.and_then(|c| c.first()) else {
            return Ok(None);
        };
        let outcome = self.admit(end_entity).and_then(|peer| {
            if peer.not_after < now {
                tracing::info!(identity = %peer.identity, serial = %peer.serial, "refused resumed session: the certificate has expired");
                return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
            }
            Ok(peer)
        });
        if outcome.is_err() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        outcome.map(Some)
    }

    /// The identity of a client certificate the verifier has just admitted in a full handshake
    /// (`None`: the client presented none).
    pub fn identity(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Option<PeerCert>, rustls::Error> {
        certs
            .and_then(|c| c.first())
            .map(|end_entity| self.admit(end_entity))
            .transpose()
    }
}

/// The hub's session tickets: rustls' ring ticketer, with the ticket epoch sealed inside each
/// ticket. A ticket from another epoch is not accepted, so the client falls back to a full
/// handshake and its certificate meets the verifier again. The epoch moves only when a resumed
/// session was refused (a rare event: the next reconnect of every agent is then a full
/// handshake), so that a client whose certificate was revoked or has expired is told so in the
/// handshake instead of resuming, being dropped and resuming again with the ticket it was just
/// sent.
#[derive(Debug)]
pub struct EpochTicketer {
    inner: Arc<dyn ProducesTickets>,
    epoch: Arc<AtomicU64>,
}

// === impl EpochTicketer ===

impl ProducesTickets for EpochTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut sealed = self.epoch.load(Ordering::SeqCst).to_be_bytes().to_vec();
        sealed.extend_from_slice(plain);
        self.inner.encrypt(&sealed)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let sealed = self.inner.decrypt(cipher)?;
        let (epoch, plain) = sealed.split_at_checked(8)?;
        (u64::from_be_bytes(epoch.try_into().ok()?) == self.epoch.load(Ordering::SeqCst))
            .then(|| plain.to_vec())
    }
}

#[derive(Debug)]
struct HubClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    check: PeerCheck,
}

impl ClientCertVerifier for HubClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // A certificate of this CA known good (see `KnownCerts`) skips the chain's signature
        // check; everything else about it is checked below and in the handshake.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let known = self.check.known.is_valid(end_entity, at);
        if !known {
            self.inner
                .verify_client_cert(end_entity, intermediates, now)?;
        }
        let peer = self.check.admit(end_entity)?;
        if !known && self.check.known.direct(intermediates) {
            self.check.known.insert(end_entity, at, peer.not_after);
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The caller of an RPC, as established by the TLS layer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub addr: Option<std::net::SocketAddr>,
    /// `None` for callers that presented no certificate.
    pub peer: Option<Arc<PeerCert>>,
}

/// What the hub learned of a connection when it accepted it (`accept::HubConn`), handed by the
/// gRPC server to every request on the connection: the identity is read from the verified
/// client certificate once per connection, not once per call.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<std::net::SocketAddr>,
    /// `None`: the client presented no certificate.
    pub peer: Option<Arc<PeerCert>>,
}

/// Reads the caller from the connection behind a request: the identity comes from the
/// verified client certificate only, never from message fields.
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    let info = req.extensions().get::<ConnInfo>();
    Caller {
        addr: info.and_then(|i| i.remote_addr),
        peer: info.and_then(|i| i.peer.clone()),
    }
}

impl Caller {
    /// Requires a cluster certificate; returns the cluster name and serial.
    pub fn cluster(&self) -> Result<(&str, &PeerCert), tonic::Status> {
        match &self.peer {
            Some(p) => match &p.identity {
                Identity::Cluster(n) => Ok((n, p.as_ref())),
                Identity::Admin(n) => Err(tonic::Status::permission_denied(format!(
                    "admin/{n} cannot open a cluster session: a cluster certificate is required"
                ))),
            },
            None => Err(tonic::Status::unauthenticated(
                "a cluster client certificate is required",
            )),
        }
    }

    /// Requires an admin certificate; returns the admin name.
    pub fn admin(&self) -> Result<&str, tonic::Status> {
        match &self.peer {
            Some(p) => match &p.identity {
                Identity::Admin(n) => Ok(n),
                Identity::Cluster(n) => Err(tonic::Status::permission_denied(format!(
                    "cluster/{n} cannot call the Admin API: an admin certificate is required"
                ))),
            },
            None => Err(tonic::Status::unauthenticated(
                "an admin client certificate is required",
            )),
        }
    }
}

/// Limits failed join attempts per source address: at most `burst` failures in `window`.
#[derive(Debug)]
pub struct JoinLimiter {
    burst: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl JoinLimiter {
    pub fn new(burst: usize, window: Duration) -> Self {
        Self {
            burst,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when the address has used up its failures.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get_mut(&ip) else {
            return Ok(());
        };
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() >= self.burst {
            let oldest = list[0];
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bound memory under a flood of distinct sources.
        if map.len() > 65_536 {
            map.retain(|_, v| v.iter().any(|t| now.duration_since(*t) < self.window));
        }
        map.entry(ip).or_default().push(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    fn check() -> PeerCheck {
        PeerCheck::new(Arc::default(), "flotilla.local", Arc::default())
    }

    fn ticketer(check: &PeerCheck) -> EpochTicketer {
        EpochTicketer {
            inner: rustls::crypto::ring::Ticketer::new().unwrap(),
            epoch: check.epoch.clone(),
        }
    }

    /// The webpki verifier, counting the chains it checks.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        chains: std::sync::atomic::AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.chains.fetch_add(1, Ordering::SeqCst);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    fn new_ca(dir: &std::path::Path) -> Ca {
        Ca::load_or_create(
            dir,
            "flotilla.local",
            None,
            Arc::new(flotilla_proto::clock::SystemClock),
        )
        .unwrap()
    }

    #[test]
    fn only_a_certificate_this_ca_signed_or_verified_skips_the_chain_check_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(&dir.path().join("ca"));
        let other = new_ca(&dir.path().join("other"));
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let counting = Arc::new(Counting {
            inner: webpki,
            chains: Default::default(),
        });
        let revoked = Arc::new(RevokedSerials::default());
        let verifier = HubClientVerifier {
            inner: counting.clone(),
            check: PeerCheck::new(revoked.clone(), "flotilla.local", ca.known_client_certs()),
        };
        let chains = || counting.chains.load(Ordering::SeqCst);
        let leaf = |pem: &str| certs_from_pem(pem, "chain").unwrap().remove(0);
        // Clients send the CA certificate after their own.
        let anchor = [CertificateDer::from(ca.cert_der().to_vec())];
        let now = SystemTime::now();
        let at = |t: SystemTime| {
            UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
        };
        let hour = Duration::from_secs(3600);
        let cluster = Identity::Cluster("eu".into());

        // Signed here: admitted without checking the chain again.
        let (issued, _) = ca.issue_with_key(&cluster, now - hour, now + hour).unwrap();
        let mine = leaf(&issued.chain_pem);
        verifier
            .verify_client_cert(&mine, &anchor, at(now))
            .unwrap();
        assert_eq!(chains(), 0);
        // Not once it has expired: then the chain check runs, and refuses it.
        assert!(
            verifier
                .verify_client_cert(&mine, &[], at(now + 2 * hour))
                .is_err()
        );
        assert_eq!(chains(), 1);
        // Revocation is checked every time.
        revoked.insert(issued.serial.clone());
        assert!(matches!(
            verifier.verify_client_cert(&mine, &[], at(now)),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ));

        // The same identity from another CA, and a signed certificate with one byte changed,
        // are strangers: checked in full and refused.
        let (forged, _) = other
            .issue_with_key(&cluster, now - hour, now + hour)
            .unwrap();
        assert!(
            verifier
                .verify_client_cert(&leaf(&forged.chain_pem), &[], at(now))
                .is_err()
        );
        assert_eq!(chains(), 2);
        let (issued, _) = ca.issue_with_key(&cluster, now - hour, now + hour).unwrap();
        let mut tampered = leaf(&issued.chain_pem).to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(
            verifier
                .verify_client_cert(&CertificateDer::from(tampered), &[], at(now))
                .is_err()
        );
        assert_eq!(chains(), 3);

        // A good certificate this process did not sign (signed before a restart) is checked in
        // full once, then known.
        let fresh = || HubClientVerifier {
            inner: counting.clone(),
            check: PeerCheck::new(
                Arc::default(),
                "flotilla.local",
                Arc::new(KnownCerts::new(ca.cert_der().to_vec())),
            ),
        };
        let restarted = fresh();
        let before_restart = leaf(&issued.chain_pem);
        for _ in 0..2 {
            restarted
                .verify_client_cert(&before_restart, &anchor, at(now))
                .unwrap();
        }
        assert_eq!(chains(), 4);
        // One verified along with another certificate than the CA's is not learned.
        let restarted = fresh();
        let via = [CertificateDer::from(other.cert_der().to_vec())];
        for _ in 0..2 {
            restarted
                .verify_client_cert(&before_restart, &via, at(now))
                .unwrap();
        }
        assert_eq!(chains(), 6);
    }

    #[test]
    fn tickets_of_an_earlier_epoch_are_refused() {
        let check = check();
        let t = ticketer(&check);
        let ticket = t.encrypt(b"session").unwrap();
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        check.epoch.fetch_add(1, Ordering::SeqCst);
        assert_eq!(t.decrypt(&ticket), None);
        let newer = t.encrypt(b"session").unwrap();
        assert_eq!(t.decrypt(&newer).as_deref(), Some(&b"session"[..]));
        assert_eq!(t.decrypt(b"not a ticket"), None);
    }

    #[test]
    fn a_resumed_certificate_that_expired_since_is_refused_and_retires_the_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(
            dir.path(),
            "flotilla.local",
            None,
            Arc::new(flotilla_proto::clock::SystemClock),
        )
        .unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let (issued, _) = ca
            .issue_with_key(&Identity::Cluster("eu".into()), now - hour, now + hour)
            .unwrap();
        let chain = certs_from_pem(&issued.chain_pem, "chain").unwrap();
        let check = check();
        let t = ticketer(&check);
        let ticket = t.encrypt(b"session").unwrap();

        assert!(
            matches!(check.resumed(None, now), Ok(None)),
            "no certificate, no identity"
        );
        let peer = check.resumed(Some(&chain), now).unwrap().unwrap();
        assert_eq!(peer.identity, Identity::Cluster("eu".into()));
        assert_eq!(
            check.identity(Some(&chain)).unwrap().unwrap().serial,
            peer.serial
        );
        assert!(t.decrypt(&ticket).is_some());
        let later = now + 2 * hour;
        assert!(matches!(
            check.resumed(Some(&chain), later),
            Err(rustls::Error::InvalidCertificate(CertificateError::Expired))
        ));
        assert_eq!(
            t.decrypt(&ticket),
            None,
            "tickets issued before are retired"
        );
    }

    #[test]
    fn limiter_blocks_after_burst_and_per_address() {
        let l = JoinLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check(a).is_ok());
        l.record_failure(a);
        assert!(l.check(a).is_ok());
        l.record_failure(a);
        let retry = l.check(a).unwrap_err();
        assert!(retry <= Duration::from_secs(60) && retry > Duration::ZERO);
        assert!(l.check(b).is_ok());
    }
}
