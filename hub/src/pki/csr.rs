//! Reading an agent's certificate signing request: size, PEM and PKCS#10 structure, an accepted
//! key type and size, and a self-signature that verifies. Only the public key is kept
//! ([`CsrKey`]); subject, SANs and requested extensions are never looked at.

use flotilla_proto::limits::MAX_CSR_BYTES;
use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::CaError;
use super::CaError::CsrMalformed;

/// RSA keys in CSRs: smaller is weak, larger is more than the verifiers accept.
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// A public key taken from a CSR, in the form rcgen writes into certificates.
pub(super) struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    /// The request's whole SubjectPublicKeyInfo, which the issued certificate must carry.
    spki: Vec<u8>,
}

impl CsrKey {
    /// The public key of a PEM PKCS#10 CSR. Refuses requests over [`MAX_CSR_BYTES`], requests
    /// that do not parse or whose self-signature does not verify, and keys other than ECDSA
    /// P-256/P-384, Ed25519 and RSA of 2048 to 8192 bits.
    pub(super) fn from_pem(csr_pem: &str) -> Result<CsrKey, CaError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CaError::CsrTooLarge {
                size: csr_pem.len(),
                max: MAX_CSR_BYTES,
            });
        }
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(
            |e| match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    CsrMalformed("no \"BEGIN CERTIFICATE REQUEST\" PEM block".to_string())
                }
                e => CsrMalformed(format!("bad PEM: {e}")),
            },
        )?;
        let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CsrMalformed(format!("not a PKCS#10 request: {e}")))?;
        if !rest.is_empty() {
            return Err(CsrMalformed("trailing data after the request".to_string()));
        }
        let spki = &csr.certification_request_info.subject_pki;
        // The key is judged before the signature: the verifier cannot check signatures made
        // with refused keys (e.g. RSA-1024), and "weak key" is the useful answer for those.
        let alg = accepted_key(spki)?;
        csr.verify_signature()
            .map_err(|e| CsrMalformed(format!("signature does not verify: {e}")))?;

        Ok(CsrKey {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
            spki: spki.raw.to_vec(),
        })
    }

    /// The request's SubjectPublicKeyInfo, DER.
    pub(super) fn spki(&self) -> &[u8] {
        &self.spki
    }
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Checks a CSR's public key type and size; returns the rcgen algorithm whose SPKI encoding
/// matches it.
fn accepted_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<&'static SignatureAlgorithm, CaError> {
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CaError::WeakKey("EC key without a named curve".to_string()))?;
        if curve == OID_EC_P256 {
            Ok(&rcgen::PKCS_ECDSA_P256_SHA256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(&rcgen::PKCS_ECDSA_P384_SHA384)
        } else {
            Err(CaError::WeakKey(format!(
                "EC curve {} is not accepted (use P-256, P-384, Ed25519 or RSA >= 2048 bits)",
                oid_name(&curve)
            )))
        }
    } else if *oid == OID_SIG_ED25519 {
        Ok(&rcgen::PKCS_ED25519)
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa_bits(rsa.modulus),
            _ => return Err(CsrMalformed("RSA public key does not parse".to_string())),
        };
        if bits < MIN_RSA_BITS {
            Err(CaError::WeakKey(format!(
                "RSA key of {bits} bits is too small (minimum {MIN_RSA_BITS})"
            )))
        } else if bits > MAX_RSA_BITS {
            Err(CaError::WeakKey(format!(
                "RSA key of {bits} bits is larger than the supported {MAX_RSA_BITS}"
            )))
        } else {
            Ok(&rcgen::PKCS_RSA_SHA256)
        }
    } else {
        Err(CaError::WeakKey(format!(
            "key algorithm {} is not accepted (use P-256, P-384, Ed25519 or RSA >= 2048 bits)",
            oid_name(oid)
        )))
    }
}

/// Significant bits of a big-endian unsigned integer.
fn rsa_bits(modulus: &[u8]) -> usize {
    let m = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    m.len() * 8 - m[0].leading_zeros() as usize
}

/// "secp521r1 (1.3.132.0.35)" for known OIDs, the dotted form otherwise.
fn oid_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    match x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry()) {
        Ok(sn) => format!("{sn} ({oid})"),
        Err(_) => oid.to_id_string(),
    }
}
