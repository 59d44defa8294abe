//! The admin credential file (`DATA/admin.yaml`, mode 0600): hub address, CA, admin certificate
//! and key. The CLI reads the same format from its config file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminCredential {
    /// `host:port` of the hub's gRPC port.
    pub hub: String,
    /// Admin name (the identity is `spiffe://<trust-domain>/admin/<name>`).
    pub name: String,
    /// PEM of the hub CA.
    pub ca: String,
    /// PEM of the admin certificate chain.
    pub cert: String,
    /// PEM of the admin private key.
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid credential file: {err}")]
    Parse { path: PathBuf, err: String },
}

impl AdminCredential {
    pub fn load(path: &Path) -> Result<Self, CredentialError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_yaml_ng::from_str(&text).map_err(|e| CredentialError::Parse {
            path: path.to_path_buf(),
            err: e.to_string(),
        })
    }

    /// Writes the file with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), CredentialError> {
        let werr = |source| CredentialError::Write {
            path: path.to_path_buf(),
            source,
        };
        let text = serde_yaml_ng::to_string(self).expect("credential serializes");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(werr)?;
        }
        crate::files::write_atomic(path, text.as_bytes(), 0o600).map_err(werr)
    }
}
