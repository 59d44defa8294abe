//! Tests of the CA: creating and reloading it, operator CAs, signing CSRs (what is taken from a
//! request and what is refused), serving certificates and explicit validity windows.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use flotilla_proto::clock::{ManualClock, SystemClock};
use flotilla_proto::csr::new_key_and_csr;
use flotilla_proto::identity::PeerCert;
use flotilla_proto::limits::MAX_CSR_BYTES;
use rcgen::{BasicConstraints, DistinguishedName, DnType, IsCa, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};

const TD: &str = "flotilla.test";

// Fixtures made with `openssl req -new -newkey ...` (ring cannot create these keys).
const RSA1024_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBTjCBuAIBADAPMQ0wCwYDVQQDDAR3ZWFrMIGfMA0GCSqGSIb3DQEBAQUAA4GN
ADCBiQKBgQDQpWX7bYpDbUSGGOWimqEHW1EGpoWszwk314cYIb5d3QZmULDmUBB4
jJY+UZnc6V+BYnE2Pje8d198IJAe/5dwLXd+Pjby7DnMZQs/+LGJjqXZR5QTLPWC
FnXjwBxu2VI38IAYEJj0mDAmb8QDzGZEc7kNDTTn0wWhGiedxtTF7QIDAQABoAAw
DQYJKoZIhvcNAQELBQADgYEANK5a/YyvYGI9YKjzIiIXcCi2Sq+OPbH9zq0sb07/
s9hagmSApE/8tm7Iz+qye4Fb/imhxTq5EMhyMINhI05gh+AyLPxPdSaLfdUBMZ+A
paX6a4hod7yJdFoSncUBPhyR2XzGPBnycEKPbxdmSdhneloLR8UQLehypy8QImIf
WCc=
-----END CERTIFICATE REQUEST-----
";
const P521_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBUjCBtAIBADAPMQ0wCwYDVQQDDARwNTIxMIGbMBAGByqGSM49AgEGBSuBBAAj
A4GGAAQA3rR817uKRey4aCckzvV5AfE3qv34f5FjDzmZ0r4sxCPQi5qhC4AimDm6
uysMSZRn69bmeQImXC44a5arDCIZQs4BBcSQfFKY5GJz6x9aEYmpj24SXR7+12lK
rgFFsmVSrUA6i4gWw0A4bqxSasRFKrl9Gmx37s8MJrC7hP6ZlcXG/tugADAKBggq
hkjOPQQDAgOBjAAwgYgCQgEm4QQ42O5tbffVRl9ZgbLMSH/MLeQpY+Y4WjswSBar
86KkmVX+NbpM1ae+kYSBxZoJ2dYUlpIv0sMAHNXRuxYxegJCAQPNQRf8FMRAtNzT
nqsmeYCLnm30mlAP4ncLKDAfr2x3QMbJGvIqYPBnPSvE9rzXUj1C21e3tL1/lCF3
jM6Ah3Wz
-----END CERTIFICATE REQUEST-----
";
const SECP256K1_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIHFMGwCAQAwDTELMAkGA1UEAwwCazEwVjAQBgcqhkjOPQIBBgUrgQQACgNCAARI
NOupT6QD+ih2w3KXPlI835FBpvV/BA6kR3+yc/8gikH9+o2akHMsz1djRHFso/hD
7sOSoHEWdq42YfNdgoA1oAAwCgYIKoZIzj0EAwIDSQAwRgIhANxKWazBRRwtUJBr
QM6VYc3US1dOYN0oebyXNLiRTMbdAiEA9+2LA7xqs9kg+bw3v7WT3D+wbDdsqkwD
Aq0yHrDdB+I=
-----END CERTIFICATE REQUEST-----
";
const RSA2048_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIICUzCCATsCAQAwDjEMMAoGA1UEAwwDcnNhMIIBIjANBgkqhkiG9w0BAQEFAAOC
AQ8AMIIBCgKCAQEAy8JD9ZrNHwTNRTUvR77lPU1kopk9Tv+Qi4uZACXHFtLBPTxL
TwU9A/777yrdf1PBSP5Wx0Qymz01MfkAMX5iSTK6Zw9lqt9qRMzWK2jIvhXyRam+
yyqOHrn22ONZPXtIq4YzDFhPzLnhQcZBA/Y37hRlijnKAXtU30wjem7XhZK1vja9
n4c3QpuJAAYoYF0jBrYAO66z25NxIVT2h55AnvhF1aURVFViwJSa7OX8o4mVnhMg
r16IfCEVfecFYXZZBq2e4K3SsQBCLa5ZdFdC1w4d1mjTErc3zRNQcvJvLnJF4tYs
MpcL7mHWsSuoBKK58h2xfZyMkSWWj/3CYj8EvwIDAQABoAAwDQYJKoZIhvcNAQEL
BQADggEBABXEffDjEjqCxoNQSz4A/4pewDkDzVfM5KLC5cYsXaQn/GxYpKUQR9l2
8wwHIwh9hIHccGJwULznMyJJ1Vrbz2ldKrFYRViUB8Ld6qdSN5qsegGHEUJPZQas
HrrG/fnav6Z1507cbHnUE/uWbfzMp4pgDtTIMNEXTid7utmjOsz3Q0NV1fSZmsTV
Au2w51YxO8XZ86sWwB5WZykMyW6hmXpXvwnpzfmJgTGbvPc4ovPpjxTuVNHqaaIk
TFmkutjUjnVj0IF+A7HBGWpDmqW90nZRrQBK3YVXeg+CobQpoMseGd7af7S+pthZ
GhUPXnPvmrd/5hPMhQ1lblmK6OkQG8g=
-----END CERTIFICATE REQUEST-----
";

fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn new_ca(dir: &Path) -> Ca {
    Ca::load_or_create(dir, TD, None, system_clock()).unwrap()
}

/// A new CA in a fresh temporary directory, which must live as long as the CA is used.
fn temp_ca() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path());
    (dir, ca)
}

fn leaf_der(chain_pem: &str) -> CertificateDer<'static> {
    let chain = certs_from_pem(chain_pem, "chain").unwrap();
    assert_eq!(chain.len(), 2, "chain is leaf + CA");
    chain[0].clone()
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap())
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .unwrap();
    Arc::new(roots)
}

fn verify_client(ca: &Ca, chain_pem: &str, at: SystemTime) -> Result<(), rustls::Error> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca), flotilla_proto::tls::provider())
            .build()
            .unwrap();
    verifier
        .verify_client_cert(&leaf_der(chain_pem), &[], unix(at))
        .map(|_| ())
}

/// Signs `csr` for `id` with a ten-minute lifetime and checks that a client verifier trusting
/// `ca` accepts the chain now.
fn sign_and_verify(ca: &Ca, csr: &str, id: &Identity) -> Issued {
    let issued = ca.sign_csr(csr, id, Duration::from_secs(600)).unwrap();
    verify_client(ca, &issued.chain_pem, SystemTime::now()).unwrap();
    issued
}

fn sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(b) => format!("ip:{}", hex::encode(b)),
            other => format!("other:{other:?}"),
        })
        .collect()
}

fn to_pem(label: &str, der: &[u8]) -> String {
    pem_encode(label, der)
}

fn csr_der(csr_pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn ca_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Ca>();
}

#[test]
fn create_then_reload_keeps_the_ca_and_protects_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let first = new_ca(&ca_dir);
    let mode = fs::metadata(ca_dir.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(first.fingerprint().starts_with("sha256:"));
    assert_eq!(first.trust_domain(), TD);

    let second = new_ca(&ca_dir);
    assert_eq!(first.fingerprint(), second.fingerprint());
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert_eq!(
        fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap(),
        first.cert_pem()
    );
    // No temporary files are left behind.
    let names: Vec<_> = fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let (_, ca_cert) = X509Certificate::from_der(first.cert_der()).unwrap();
    assert!(ca_cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = ca_cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(
        ca_cert.subject().to_string(),
        format!("CN=flotilla hub CA {TD}")
    );
    let lifetime =
        ca_cert.validity().not_after.timestamp() - ca_cert.validity().not_before.timestamp();
    assert_eq!(lifetime as u64, (CA_LIFETIME + BACKDATE).as_secs());
}

#[test]
fn half_present_ca_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    new_ca(dir.path());
    fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
    let err = Ca::load_or_create(dir.path(), TD, None, system_clock()).unwrap_err();
    assert!(matches!(err, CaError::BadStoredCa { .. }), "{err}");
    assert!(err.to_string().contains("ca.crt is missing"), "{err}");
}

#[test]
fn signed_client_cert_carries_identity_serial_and_expiry_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let ca = Ca::load_or_create(dir.path(), TD, None, Arc::new(clock.clone())).unwrap();
    let (_key, csr) = new_key_and_csr("agent").unwrap();
    let id = Identity::Cluster("eu-1".into());
    let issued = ca.sign_csr(&csr, &id, Duration::from_secs(3600)).unwrap();

    assert!(issued.chain_pem.ends_with(ca.cert_pem()));
    let leaf = leaf_der(&issued.chain_pem);
    let peer = PeerCert::from_der(&leaf, TD).unwrap();
    assert_eq!(peer.identity, id);
    assert_eq!(peer.serial, issued.serial);
    assert_eq!(issued.serial.len(), 32, "16-byte serial");
    assert_eq!(peer.not_after, issued.not_after);
    assert_eq!(issued.not_after, start + Duration::from_secs(3600));

    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(cert.validity().not_before.timestamp(), 1_800_000_000 - 60);
    assert_eq!(cert.subject().to_string(), "CN=cluster/eu-1");
    assert_eq!(
        cert.public_key().raw,
        X509CertificationRequest::from_der(&csr_der(&csr))
            .unwrap()
            .1
            .certification_request_info
            .subject_pki
            .raw
    );

    verify_client(&ca, &issued.chain_pem, start).unwrap();
    // Expired an hour later, and a different CA does not accept it.
    let err = verify_client(&ca, &issued.chain_pem, start + Duration::from_secs(7200)).unwrap_err();
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
    let other_dir = tempfile::tempdir().unwrap();
    let other = Ca::load_or_create(other_dir.path(), TD, None, Arc::new(clock)).unwrap();
    assert!(verify_client(&other, &issued.chain_pem, start).is_err());

    // Serials are random.
    let again = ca.sign_csr(&csr, &id, Duration::from_secs(3600)).unwrap();
    assert_ne!(again.serial, issued.serial);
}

#[test]
fn csr_requests_are_ignored_except_the_key() {
    let (_dir, ca) = temp_ca();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "cluster/other");
    params.subject_alt_names = vec![
        SanType::URI(format!("spiffe://{TD}/cluster/other").try_into().unwrap()),
        SanType::URI(format!("spiffe://{TD}/admin/root").try_into().unwrap()),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x05, 0x00],
        ));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let id = Identity::Cluster("eu-1".into());
    let issued = sign_and_verify(&ca, &csr, &id);
    let leaf = leaf_der(&issued.chain_pem);
    assert_eq!(sans(&leaf), vec![format!("uri:spiffe://{TD}/cluster/eu-1")]);
    assert_eq!(PeerCert::from_der(&leaf, TD).unwrap().identity, id);

    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(cert.subject().to_string(), "CN=cluster/eu-1");
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
    for ext in cert.extensions() {
        assert!(
            !matches!(
                ext.parsed_extension(),
                ParsedExtension::UnsupportedExtension { .. }
            ),
            "unexpected extension {}",
            ext.oid
        );
        assert_ne!(ext.oid.to_id_string(), "1.3.6.1.4.1.99999.1");
    }
}

#[test]
fn accepts_p384_ed25519_and_rsa_2048() {
    let (_dir, ca) = temp_ca();
    let id = Identity::Admin("ops".into());
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        sign_and_verify(&ca, &csr, &id);
    }
    let issued = sign_and_verify(&ca, RSA2048_CSR, &id);
    let leaf = leaf_der(&issued.chain_pem);
    assert_eq!(PeerCert::from_der(&leaf, TD).unwrap().identity, id);
}

#[test]
fn refuses_weak_and_unsupported_keys() {
    let (_dir, ca) = temp_ca();
    let id = Identity::Cluster("eu-1".into());
    let life = Duration::from_secs(600);
    for (csr, why) in [
        (RSA1024_CSR, "1024 bits"),
        (P521_CSR, "secp521r1"),
        (SECP256K1_CSR, "1.3.132.0.10"),
    ] {
        match ca.sign_csr(csr, &id, life) {
            Err(CaError::WeakKey(msg)) => assert!(msg.contains(why), "{msg}"),
            other => panic!("expected WeakKey ({why}), got {other:?}"),
        }
    }
}

#[test]
fn refuses_garbage_oversized_and_tampered_csrs() {
    let (_dir, ca) = temp_ca();
    let id = Identity::Cluster("eu-1".into());
    let life = Duration::from_secs(600);

    for garbage in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        match ca.sign_csr(garbage, &id, life) {
            Err(CaError::CsrMalformed(msg)) => assert!(!msg.is_empty()),
            other => panic!("expected CsrMalformed for {garbage:?}, got {other:?}"),
        }
    }

    let (_, csr) = new_key_and_csr("agent-1").unwrap();
    let padded = format!("{csr}{}", "\n".repeat(MAX_CSR_BYTES));
    match ca.sign_csr(&padded, &id, life) {
        Err(CaError::CsrTooLarge { size, max }) => {
            assert_eq!(size, padded.len());
            assert_eq!(max, MAX_CSR_BYTES);
        }
        other => panic!("expected CsrTooLarge, got {other:?}"),
    }

    // Change the requested CN after signing: the self-signature no longer verifies.
    let mut der = csr_der(&csr);
    let pos = der
        .windows(7)
        .position(|w| w == b"agent-1")
        .expect("CN in CSR");
    der[pos + 6] = b'2';
    let tampered = to_pem("CERTIFICATE REQUEST", &der);
    match ca.sign_csr(&tampered, &id, life) {
        Err(CaError::CsrMalformed(msg)) => assert!(msg.contains("signature"), "{msg}"),
        other => panic!("expected CsrMalformed, got {other:?}"),
    }
    // The untampered request is fine.
    ca.sign_csr(&csr, &id, life).unwrap();
}

#[test]
fn refuses_invalid_identity_names() {
    let (_dir, ca) = temp_ca();
    let (_, csr) = new_key_and_csr("x").unwrap();
    let err = ca
        .sign_csr(
            &csr,
            &Identity::Cluster("Bad/Name".into()),
            Duration::from_secs(60),
        )
        .unwrap_err();
    assert!(matches!(err, CaError::BadName(_)), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the name's error is kept as the cause"
    );
}

#[test]
fn server_cert_has_ip_and_dns_sans_and_verifies() {
    let (_dir, ca) = temp_ca();
    let names = vec![
        "hub.example.com".to_string(),
        "127.0.0.1".to_string(),
        "[::1]".to_string(),
    ];
    let (issued, key_pem) = ca.issue_server(&names, Duration::from_secs(3600)).unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));
    flotilla_proto::tls::key_from_pem(&key_pem, "key").unwrap();
    let leaf = leaf_der(&issued.chain_pem);
    assert_eq!(
        sans(&leaf),
        vec![
            "dns:hub.example.com".to_string(),
            "ip:7f000001".to_string(),
            format!("ip:{}", "0".repeat(31) + "1"),
        ]
    );
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);

    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots(&ca), flotilla_proto::tls::provider())
            .build()
            .unwrap();
    let now = unix(SystemTime::now());
    for name in ["hub.example.com", "127.0.0.1", "::1"] {
        let server_name = ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &server_name, &[], now)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let wrong = ServerName::try_from("other.example.com").unwrap();
    assert!(
        verifier
            .verify_server_cert(&leaf, &[], &wrong, &[], now)
            .is_err()
    );

    assert!(matches!(
        ca.issue_server(&[], Duration::from_secs(60)),
        Err(CaError::BadServerName(_))
    ));
    assert!(matches!(
        ca.issue_server(&["bad name/x".to_string()], Duration::from_secs(60)),
        Err(CaError::BadServerName(_))
    ));
}

#[test]
fn issue_with_key_honours_a_past_window() {
    let (_dir, ca) = temp_ca();
    let now = SystemTime::now();
    let id = Identity::Admin("admin".into());
    let (issued, key_pem) = ca
        .issue_with_key(
            &id,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    assert!(issued.not_after < now);
    let leaf = leaf_der(&issued.chain_pem);
    let peer = PeerCert::from_der(&leaf, TD).unwrap();
    assert_eq!(peer.identity, id);
    assert_eq!(peer.not_after, issued.not_after);
    assert!(peer.not_after < now);
    let err = verify_client(&ca, &issued.chain_pem, now).unwrap_err();
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
    // The key belongs to the certificate: rustls accepts the pair.
    flotilla_proto::tls::mtls_client_config(ca.cert_pem(), &issued.chain_pem, &key_pem).unwrap();

    assert!(matches!(
        ca.issue_with_key(&id, now, now - Duration::from_secs(1)),
        Err(CaError::BadValidity(_))
    ));
}

/// An operator CA with a multi-attribute subject, P-384, as separate cert and key files.
fn write_operator_ca(dir: &Path, is_ca: bool) -> (PathBuf, PathBuf, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CountryName, "DE");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Acme Ops");
    params
        .distinguished_name
        .push(DnType::CommonName, "Acme Fleet CA");
    let now = SystemTime::now();
    set_validity(
        &mut params,
        now - Duration::from_secs(3600),
        now + Duration::from_secs(86400 * 365),
    )
    .unwrap();
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    }
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("op.crt");
    let key_path = dir.join("op.key");
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, key)
}

#[test]
fn operator_ca_is_used_and_not_copied() {
    let op_dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = write_operator_ca(op_dir.path(), true);
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca =
        Ca::load_or_create(&ca_dir, TD, Some((&cert_path, &key_path)), system_clock()).unwrap();
    let op_der = certs_from_pem(&fs::read_to_string(&cert_path).unwrap(), "op")
        .unwrap()
        .remove(0);
    assert_eq!(ca.cert_der(), op_der.as_ref());
    assert_eq!(ca.fingerprint(), fingerprint(&op_der));
    assert!(!ca_dir.join(CA_KEY_FILE).exists());
    assert!(!ca_dir.join(CA_CERT_FILE).exists());

    let (_, csr) = new_key_and_csr("agent").unwrap();
    sign_and_verify(&ca, &csr, &Identity::Cluster("eu-1".into()));
}

/// Why `Ca::load_or_create` refuses the operator CA in `cert` and `key` (a `BadOperatorCa`).
fn operator_ca_refusal(dir: &Path, cert: &Path, key: &Path) -> String {
    match Ca::load_or_create(dir, TD, Some((cert, key)), system_clock()) {
        Err(CaError::BadOperatorCa(msg)) => msg,
        other => panic!("expected BadOperatorCa, got {other:?}"),
    }
}

#[test]
fn operator_ca_with_wrong_key_or_without_ca_flag_is_refused() {
    let op_dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = write_operator_ca(op_dir.path(), true);
    let other_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    fs::write(&key_path, other_key.serialize_pem()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let msg = operator_ca_refusal(dir.path(), &cert_path, &key_path);
    assert!(msg.contains("does not match"), "{msg}");

    let leaf_dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = write_operator_ca(leaf_dir.path(), false);
    let msg = operator_ca_refusal(dir.path(), &cert_path, &key_path);
    assert!(msg.contains("not a CA"), "{msg}");

    let missing = dir.path().join("missing.crt");
    let err = Ca::load_or_create(dir.path(), TD, Some((&missing, &key_path)), system_clock())
        .unwrap_err();
    assert!(matches!(err, CaError::Io { .. }), "{err}");
}
