//! A fresh key pair and a certificate signing request for it: what an agent sends the hub when
//! it joins or renews (and what the hub's tests sign). The key never leaves the caller; the hub
//! takes only the public key from the request and assigns the identity itself.

/// Generates a P-256 key pair and a CSR for it with subject CN `cn` (an empty subject when `cn`
/// is empty). The subject is informational: the hub signs only the public key. Returns
/// `(key_pem, csr_pem)`.
pub fn new_key_and_csr(cn: &str) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if !cn.is_empty() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;

    fn parse(csr_pem: &str) -> (String, Vec<u8>) {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().expect("self-signed by its key");
        let info = &csr.certification_request_info;
        (
            info.subject.to_string(),
            info.subject_pki.subject_public_key.data.to_vec(),
        )
    }

    #[test]
    fn the_request_carries_the_new_key_and_the_name() {
        let (key_pem, csr_pem) = new_key_and_csr("flotilla-agent").unwrap();
        let (subject, public_key) = parse(&csr_pem);
        assert_eq!(subject, "CN=flotilla-agent");
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(key.public_key_raw(), public_key.as_slice());
        crate::tls::key_from_pem(&key_pem, "key").unwrap();

        let (other_key, _) = new_key_and_csr("flotilla-agent").unwrap();
        assert_ne!(other_key, key_pem, "a fresh key each time");
        assert_eq!(parse(&new_key_and_csr("").unwrap().1).0, "", "no CN");
    }
}
