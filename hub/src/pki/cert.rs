//! Building certificates with rcgen: end-entity parameters, random serials, P-256 keys, a new
//! self-signed CA, validity windows, and the conversions between `SystemTime`, certificate
//! times and PEM.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::{BACKDATE, CA_LIFETIME, CaError};

/// End-entity parameters: subject CN, the given SANs, one EKU, key usage digitalSignature, a
/// random positive 16-byte serial, CA:FALSE and an authority key identifier.
pub(super) fn leaf_params(
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

/// 16 random bytes with the top bit clear (positive) and a non-zero first byte (so the DER
/// encoding keeps all 16 bytes and the hex serial has a fixed length).
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

pub(super) fn new_p256() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Signer {
        what: "cannot generate a P-256 key",
        source,
    })
}

/// A new self-signed CA: `(cert_pem, key_pem)`.
pub(super) fn create_ca(trust_domain: &str, now: SystemTime) -> Result<(String, String), CaError> {
    let key = new_p256()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("flotilla hub CA {trust_domain}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, now - BACKDATE, now + CA_LIFETIME)?;
    let cert = params.self_signed(&key).map_err(|source| CaError::Signer {
        what: "cannot self-sign the CA certificate",
        source,
    })?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(super) fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(), CaError> {
    if not_after <= not_before {
        return Err(CaError::BadValidity(format!(
            "not_after {} is not after not_before {}",
            flotilla_proto::clock::rfc3339(not_after),
            flotilla_proto::clock::rfc3339(not_before)
        )));
    }
    params.not_before = asn1_time(not_before)?;
    params.not_after = asn1_time(not_after)?;
    Ok(())
}

/// Whole seconds since the epoch, as certificates store them.
pub(super) fn asn1_time(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::BadValidity("time before 1970".to_string()))?
        .as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|dt| dt.year() <= 9999)
        .ok_or_else(|| CaError::BadValidity(format!("time {secs}s after 1970 is out of range")))
}

pub(super) fn cert_time(unix_secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs.max(0) as u64)
}

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut i = 0;
    while i < b64.len() {
        let end = (i + 64).min(b64.len());
        out.push_str(&b64[i..end]);
        out.push('\n');
        i = end;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
