//! Identities: who a peer is, as carried in the URI SAN of its certificate
//! (`spiffe://<trust-domain>/cluster/<id>` or `spiffe://<trust-domain>/admin/<name>`).
//! A small pure type with no TLS code in it.

use std::fmt;
use std::time::SystemTime;

use x509_parser::prelude::*;

/// The kind and name of an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Cluster(String),
    Admin(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IdentityError {
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("certificate carries no flotilla identity (no spiffe:// URI SAN)")]
    NoIdentity,
    #[error("identity {uri:?} is not of the form spiffe://{trust_domain}/(cluster|admin)/<name>")]
    Malformed { uri: String, trust_domain: String },
    #[error("invalid name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Cluster(n) | Identity::Admin(n) => n,
        }
    }

    /// The SPIFFE URI for this identity in `trust_domain`.
    pub fn uri(&self, trust_domain: &str) -> String {
        match self {
            Identity::Cluster(n) => format!("spiffe://{trust_domain}/cluster/{n}"),
            Identity::Admin(n) => format!("spiffe://{trust_domain}/admin/{n}"),
        }
    }

    /// Parses a SPIFFE URI, requiring the given trust domain.
    pub fn parse_uri(uri: &str, trust_domain: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed {
            uri: uri.to_string(),
            trust_domain: trust_domain.to_string(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .and_then(|r| r.strip_prefix(trust_domain))
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(malformed)?;
        let (kind, name) = rest.split_once('/').ok_or_else(malformed)?;
        validate_name(name).map_err(|_| malformed())?;
        match kind {
            "cluster" => Ok(Identity::Cluster(name.to_string())),
            "admin" => Ok(Identity::Admin(name.to_string())),
            _ => Err(malformed()),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Cluster(n) => write!(f, "cluster/{n}"),
            Identity::Admin(n) => write!(f, "admin/{n}"),
        }
    }
}

/// Cluster and admin names: 1–63 characters of lowercase letters, digits and '-', starting and
/// ending with a letter or digit (a DNS label, so names fit in URIs, keys and Kubernetes labels).
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let bad = |why| {
        Err(IdentityError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// What the hub needs to know about a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub identity: Identity,
    /// Lowercase hex of the certificate serial number.
    pub serial: String,
    pub not_after: SystemTime,
}

impl PeerCert {
    /// Reads identity, serial and expiry from a DER certificate.
    pub fn from_der(der: &[u8], trust_domain: &str) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(IdentityError::BadCertificate)?;
        let mut found = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && uri.starts_with("spiffe://")
                {
                    found = Some(Identity::parse_uri(uri, trust_domain)?);
                    break;
                }
            }
        }
        let identity = found.ok_or(IdentityError::NoIdentity)?;
        let serial = hex::encode(cert.raw_serial());
        let not_after = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        Ok(PeerCert {
            identity,
            serial,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        let id = Identity::Cluster("eu-1".into());
        let uri = id.uri("flotilla.local");
        assert_eq!(uri, "spiffe://flotilla.local/cluster/eu-1");
        assert_eq!(Identity::parse_uri(&uri, "flotilla.local").unwrap(), id);
    }

    #[test]
    fn rejects_foreign_trust_domain_and_bad_names() {
        assert!(Identity::parse_uri("spiffe://other/cluster/a", "flotilla.local").is_err());
        assert!(
            Identity::parse_uri("spiffe://flotilla.local/cluster/A_B", "flotilla.local").is_err()
        );
        assert!(Identity::parse_uri("spiffe://flotilla.local/root/a", "flotilla.local").is_err());
        assert!(
            Identity::parse_uri("spiffe://flotilla.local/cluster/a/b", "flotilla.local").is_err()
        );
        assert!(validate_name("-x").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
        assert!(validate_name("us-east-1").is_ok());
    }
}
