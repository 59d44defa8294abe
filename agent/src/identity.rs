//! The agent's identity: its private key (generated here, never sent anywhere), its certificate
//! chain and the hub CA, persisted in the state dir (`identity.pem` holding certificate and key
//! together so a renewal swaps both atomically, mode 0600; `ca.crt`; `agent.yaml`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flotilla_proto::identity::PeerCert;
use flotilla_proto::tls::{TlsError, certs_from_pem, mtls_client_config};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

/// What `agent.yaml` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// `host:port` of the hub.
    pub hub: String,
    pub cluster_id: String,
    /// The SPIFFE URI the hub assigned.
    pub identity: String,
    pub trust_domain: String,
}

/// Key, certificate chain and CA, all PEM.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub key_pem: String,
    pub chain_pem: String,
    pub ca_pem: String,
}

impl Credentials {
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        mtls_client_config(&self.ca_pem, &self.chain_pem, &self.key_pem)
    }

    /// Serial, identity and expiry of the leaf certificate.
    pub fn leaf(&self, trust_domain: &str) -> Result<PeerCert, IdentityError> {
        let certs = certs_from_pem(&self.chain_pem, "certificate")?;
        PeerCert::from_der(&certs[0], trust_domain)
            .map_err(|e| IdentityError::Certificate(e.to_string()))
    }

    /// `not_before` of the leaf certificate.
    pub fn not_before(&self) -> Result<SystemTime, IdentityError> {
        let certs = certs_from_pem(&self.chain_pem, "certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        Ok(SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(cert.validity().not_before.timestamp().max(0) as u64))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {err}")]
    Corrupt { path: PathBuf, err: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("key generation: {0}")]
    KeyGen(String),
}

/// Generates a fresh P-256 key and a CSR for it. The CSR's subject is informational: the hub
/// assigns the identity it signs.
pub fn new_key_and_csr(cn: &str) -> Result<(String, String), IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::KeyGen(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IdentityError::KeyGen(e.to_string()))?;
    let csr_pem = csr
        .pem()
        .map_err(|e| IdentityError::KeyGen(e.to_string()))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Where the agent keeps its identity.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> IdentityError + use<> {
        let path = path.to_path_buf();
        move |source| IdentityError::Io {
            path: path.clone(),
            source,
        }
    }

    /// Loads state and credentials; `Ok(None)` when the agent has not joined yet.
    pub fn load(&self) -> Result<Option<(AgentState, Credentials)>, IdentityError> {
        let state_path = self.dir.join("agent.yaml");
        let text = match std::fs::read_to_string(&state_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&state_path)(e)),
        };
        let state: AgentState =
            serde_yaml_ng::from_str(&text).map_err(|e| IdentityError::Corrupt {
                path: state_path.clone(),
                err: e.to_string(),
            })?;
        let id_path = self.dir.join("identity.pem");
        let identity = std::fs::read_to_string(&id_path).map_err(self.io(&id_path))?;
        let ca_path = self.dir.join("ca.crt");
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(self.io(&ca_path))?;
        let (chain_pem, key_pem) =
            split_identity(&identity).ok_or_else(|| IdentityError::Corrupt {
                path: id_path.clone(),
                err: "expected certificate and private key PEM blocks".into(),
            })?;
        Ok(Some((
            state,
            Credentials {
                key_pem,
                chain_pem,
                ca_pem,
            },
        )))
    }

    /// Persists everything after a join.
    pub fn save(&self, state: &AgentState, creds: &Credentials) -> Result<(), IdentityError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(self.io(&self.dir))?;
        }
        self.write("ca.crt", creds.ca_pem.as_bytes())?;
        self.save_credentials(creds)?;
        let yaml = serde_yaml_ng::to_string(state).expect("state serializes");
        self.write("agent.yaml", yaml.as_bytes())
    }

    /// Persists a renewed certificate and key (one atomic file replace).
    pub fn save_credentials(&self, creds: &Credentials) -> Result<(), IdentityError> {
        let both = format!("{}{}", creds.chain_pem, creds.key_pem);
        self.write("identity.pem", both.as_bytes())
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<(), IdentityError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let err = self.io(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(&err)?;
        f.write_all(data).map_err(&err)?;
        f.sync_all().map_err(&err)?;
        std::fs::rename(&tmp, &path).map_err(&err)
    }
}

/// Splits `identity.pem` into (certificate PEM blocks, key PEM block).
fn split_identity(text: &str) -> Option<(String, String)> {
    let key_start = text
        .find("-----BEGIN PRIVATE KEY-----")
        .or_else(|| text.find("-----BEGIN EC PRIVATE KEY-----"))?;
    let (certs, key) = text.split_at(key_start);
    (certs.contains("-----BEGIN CERTIFICATE-----")).then(|| (certs.to_string(), key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_pem_and_key_stays_local() {
        let (key, csr) = new_key_and_csr("x").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(csr.contains("CERTIFICATE REQUEST"));
        assert!(!csr.contains("PRIVATE KEY"));
    }

    #[test]
    fn state_round_trip_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::new(d.path().join("s"));
        assert!(sd.load().unwrap().is_none());
        let (key_pem, _) = new_key_and_csr("x").unwrap();
        let creds = Credentials {
            key_pem,
            chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            ca_pem: "ca".into(),
        };
        let st = AgentState {
            hub: "h:1".into(),
            cluster_id: "c".into(),
            identity: "spiffe://t/cluster/c".into(),
            trust_domain: "t".into(),
        };
        sd.save(&st, &creds).unwrap();
        let (st2, c2) = sd.load().unwrap().unwrap();
        assert_eq!(st2, st);
        assert_eq!(c2.key_pem, creds.key_pem);
        assert_eq!(c2.chain_pem, creds.chain_pem);
        let mode = std::fs::metadata(sd.path().join("identity.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
