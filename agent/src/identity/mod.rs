//! The agent's identity: its private key (generated here, never sent anywhere), its certificate
//! chain and the hub CA, persisted as three items (`identity.pem` holding certificate and key
//! together so a renewal swaps both atomically; `ca.crt`; `agent.yaml`) in an [`IdentityStore`]:
//! a state dir (files, mode 0600) or a Kubernetes Secret ([`SecretState`]).

mod secret_state;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flotilla_proto::identity::PeerCert;
use flotilla_proto::tls::{TlsError, certs_from_pem, mtls_client_config};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

pub use secret_state::SecretState;

/// Name of the agent state item (file or Secret key).
pub const AGENT_YAML: &str = "agent.yaml";
/// Name of the item holding the certificate chain followed by the private key.
pub const IDENTITY_PEM: &str = "identity.pem";
/// Name of the item holding the hub CA bundle.
pub const CA_CRT: &str = "ca.crt";

/// What `agent.yaml` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// `host:port` of the hub (the endpoint the agent joined through).
    pub hub: String,
    /// Every `host:port` of the hub's replicas, tried in turn (from the join token or
    /// `--hub`); empty: `hub` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hubs: Vec<String>,
    pub cluster_id: String,
    /// The SPIFFE URI the hub assigned.
    pub identity: String,
    pub trust_domain: String,
}

impl AgentState {
    /// The endpoints to dial, in order: `hubs`, or `hub` alone.
    pub fn endpoints(&self) -> Vec<String> {
        if self.hubs.is_empty() {
            vec![self.hub.clone()]
        } else {
            self.hubs.clone()
        }
    }

    /// The `agent.yaml` item.
    pub fn to_yaml(&self) -> Result<String, IdentityError> {
        serde_yaml_ng::to_string(self).map_err(IdentityError::Serialize)
    }
}

/// Key, certificate chain and CA, all PEM.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub key_pem: String,
    pub chain_pem: String,
    pub ca_pem: String,
}

impl Credentials {
    /// The `identity.pem` item: certificate chain, then private key.
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.chain_pem, self.key_pem)
    }

    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        mtls_client_config(&self.ca_pem, &self.chain_pem, &self.key_pem)
    }

    /// Serial, identity and expiry of the leaf certificate.
    pub fn leaf(&self, trust_domain: &str) -> Result<PeerCert, IdentityError> {
        let certs = certs_from_pem(&self.chain_pem, "certificate")?;
        PeerCert::from_der(&certs[0], trust_domain).map_err(IdentityError::Certificate)
    }

    /// `not_before` of the leaf certificate.
    pub fn not_before(&self) -> Result<SystemTime, IdentityError> {
        let certs = certs_from_pem(&self.chain_pem, "certificate")?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&certs[0]).map_err(IdentityError::Unparsable)?;
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
    #[error("state Secret {secret} key {key} is corrupt: {err}")]
    SecretCorrupt {
        secret: String,
        key: &'static str,
        err: String,
    },
    #[error("state Secret {secret}: {action}: {source}")]
    Kube {
        secret: String,
        action: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("state: {0}")]
    Serialize(#[source] serde_yaml_ng::Error),
    #[error("certificate: {0}")]
    Certificate(#[source] flotilla_proto::identity::IdentityError),
    #[error("certificate: {0}")]
    Unparsable(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("key generation: {0}")]
    KeyGen(#[source] rcgen::Error),
}

/// Generates a fresh P-256 key and a CSR for it ([`flotilla_proto::csr::new_key_and_csr`]). The
/// CSR's subject is informational: the hub assigns the identity it signs.
pub fn new_key_and_csr(cn: &str) -> Result<(String, String), IdentityError> {
    flotilla_proto::csr::new_key_and_csr(cn).map_err(IdentityError::KeyGen)
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
        let state_path = self.dir.join(AGENT_YAML);
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
        let id_path = self.dir.join(IDENTITY_PEM);
        let identity = std::fs::read_to_string(&id_path).map_err(self.io(&id_path))?;
        let ca_path = self.dir.join(CA_CRT);
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
        self.write(CA_CRT, creds.ca_pem.as_bytes())?;
        self.save_credentials(creds)?;
        self.write(AGENT_YAML, state.to_yaml()?.as_bytes())
    }

    /// Persists a renewed certificate and key (one atomic file replace).
    pub fn save_credentials(&self, creds: &Credentials) -> Result<(), IdentityError> {
        self.write(IDENTITY_PEM, creds.identity_pem().as_bytes())
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<(), IdentityError> {
        let path = self.dir.join(name);
        flotilla_proto::files::write_atomic(&path, data, 0o600).map_err(self.io(&path))
    }
}

/// Where the agent's identity is configured to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// Files in a directory.
    Dir(PathBuf),
    /// Keys of one Kubernetes Secret (type Opaque) in the agent's cluster.
    Secret { namespace: String, name: String },
}

/// A `--state-secret` value that is not `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefError {
    #[error("expected NAMESPACE/NAME, got {0:?}")]
    Shape(String),
    #[error(
        "namespace {0:?} is not a valid Kubernetes namespace (lowercase letters, digits and '-', at most 63)"
    )]
    Namespace(String),
    #[error(
        "name {0:?} is not a valid Secret name (lowercase letters, digits, '-' and '.', at most 253)"
    )]
    Name(String),
}

/// A DNS-1123 label (`max` 63) or, with `dots`, subdomain (`max` 253).
fn dns1123(s: &str, max: usize, dots: bool) -> bool {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(ok_char)
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

impl StateLocation {
    /// Parses `NAMESPACE/NAME` into a Secret location.
    pub fn parse_secret(s: &str) -> Result<Self, SecretRefError> {
        let (namespace, name) = s
            .split_once('/')
            .filter(|(_, n)| !n.contains('/'))
            .ok_or_else(|| SecretRefError::Shape(s.to_string()))?;
        if !dns1123(namespace, 63, false) {
            return Err(SecretRefError::Namespace(namespace.to_string()));
        }
        if !dns1123(name, 253, true) {
            return Err(SecretRefError::Name(name.to_string()));
        }
        Ok(StateLocation::Secret {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::Dir(d) => write!(f, "state dir {}", d.display()),
            StateLocation::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
        }
    }
}

/// Where identity is loaded from and saved to.
#[derive(Clone)]
pub enum IdentityStore {
    Dir(StateDir),
    Secret(SecretState),
}

impl fmt::Display for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityStore::Dir(d) => write!(f, "state dir {}", d.path().display()),
            IdentityStore::Secret(s) => write!(f, "Secret {s}"),
        }
    }
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityStore({self})")
    }
}

impl IdentityStore {
    /// Loads state and credentials; `Ok(None)` when the agent has not joined yet.
    pub async fn load(&self) -> Result<Option<(AgentState, Credentials)>, IdentityError> {
        match self {
            IdentityStore::Dir(d) => {
                let d = d.clone();
                blocking(d.path().to_path_buf(), move || d.load()).await
            }
            IdentityStore::Secret(s) => s.load().await,
        }
    }

    /// Persists everything after a join.
    pub async fn save(&self, state: &AgentState, creds: &Credentials) -> Result<(), IdentityError> {
        match self {
            IdentityStore::Dir(d) => {
                let (d, state, creds) = (d.clone(), state.clone(), creds.clone());
                blocking(d.path().to_path_buf(), move || d.save(&state, &creds)).await
            }
            IdentityStore::Secret(s) => s.save(state, creds).await,
        }
    }

    /// Persists a renewed certificate and key in one atomic write.
    pub async fn save_credentials(&self, creds: &Credentials) -> Result<(), IdentityError> {
        match self {
            IdentityStore::Dir(d) => {
                let (d, creds) = (d.clone(), creds.clone());
                blocking(d.path().to_path_buf(), move || d.save_credentials(&creds)).await
            }
            IdentityStore::Secret(s) => s.save_credentials(creds).await,
        }
    }
}

/// Runs file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, IdentityError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(IdentityError::Io {
            path,
            source: std::io::Error::other(e),
        }),
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

    /// A joined agent's state and credentials: a real key, a placeholder chain and CA (for the
    /// tests of both stores).
    pub(super) fn fixture() -> (AgentState, Credentials) {
        let (key_pem, _) = new_key_and_csr("x").unwrap();
        let creds = Credentials {
            key_pem,
            chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nBB==\n-----END CERTIFICATE-----\n".into(),
        };
        let st = AgentState {
            hub: "h:1".into(),
            hubs: vec![],
            cluster_id: "c".into(),
            identity: "spiffe://t/cluster/c".into(),
            trust_domain: "t".into(),
        };
        (st, creds)
    }

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
        let (st, creds) = fixture();
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

    #[test]
    fn state_secret_values_are_validated() {
        assert_eq!(
            StateLocation::parse_secret("flotilla/agent-state.v1"),
            Ok(StateLocation::Secret {
                namespace: "flotilla".into(),
                name: "agent-state.v1".into()
            })
        );
        for bad in [
            "", "x", "/x", "x/", "a/b/c", "Ns/x", "ns/X", "n.s/x", "-ns/x", "ns/x-",
        ] {
            assert!(
                StateLocation::parse_secret(bad).is_err(),
                "{bad:?} accepted"
            );
        }
        let long = format!("ns/{}", "a".repeat(254));
        assert!(matches!(
            StateLocation::parse_secret(&long),
            Err(SecretRefError::Name(_))
        ));
        assert!(matches!(
            StateLocation::parse_secret(&format!("{}/x", "a".repeat(64))),
            Err(SecretRefError::Namespace(_))
        ));
        let shown = StateLocation::parse_secret("a/b").unwrap().to_string();
        assert_eq!(shown, "Secret a/b");
    }

    #[tokio::test]
    async fn dir_store_round_trips_asynchronously() {
        let d = tempfile::tempdir().unwrap();
        let store = IdentityStore::Dir(StateDir::new(d.path().join("s")));
        assert!(store.load().await.unwrap().is_none());
        let (st, creds) = fixture();
        store.save(&st, &creds).await.unwrap();
        let (key2, _) = new_key_and_csr("y").unwrap();
        let renewed = Credentials {
            key_pem: key2.clone(),
            ..creds.clone()
        };
        store.save_credentials(&renewed).await.unwrap();
        let (st2, c2) = store.load().await.unwrap().unwrap();
        assert_eq!(st2, st);
        assert_eq!(c2.key_pem, key2);
        assert!(store.to_string().starts_with("state dir "));
    }
}
