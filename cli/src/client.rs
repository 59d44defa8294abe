//! How the CLI finds and reaches the hub: the config file (`--config`, `FLOTILLA_CONFIG`, then
//! `~/.config/flotilla/config.yaml`, same format as the hub's `DATA/admin.yaml`) and a mutual-TLS
//! admin channel.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flotilla_proto::clock::rfc3339;
use flotilla_proto::tls::{TlsDialer, certs_from_pem, error_chain, mtls_client_config};
use flotilla_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use flotilla_proto::credential::AdminCredential;

/// A CLI failure: one line for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError(match s.code() {
            tonic::Code::Unavailable => format!("hub unavailable: {}", error_chain(&s)),
            _ => s.message().to_string(),
        })
    }
}

/// Resolves the config file path.
pub fn config_path(flag: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("FLOTILLA_CONFIG")
        && !p.is_empty()
    {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var("HOME").map_err(|_| {
        CliError("no --config, FLOTILLA_CONFIG or HOME to find the config file".into())
    })?;
    Ok(PathBuf::from(home).join(".config/flotilla/config.yaml"))
}

/// Loads the credential and checks it locally before dialing.
pub fn load_credential(path: &Path) -> Result<AdminCredential, CliError> {
    let cred = AdminCredential::load(path).map_err(|e| {
        CliError(format!(
            "{e} (point --config or FLOTILLA_CONFIG at the hub's admin.yaml)"
        ))
    })?;
    let certs = certs_from_pem(&cred.cert, "admin certificate")
        .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| CliError(format!("{}: admin certificate: {e}", path.display())))?;
    let not_after = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    if not_after <= SystemTime::now() {
        return Err(CliError(format!(
            "admin credential in {} expired at {}; restart the hub to reissue DATA/admin.yaml",
            path.display(),
            rfc3339(not_after)
        )));
    }
    Ok(cred)
}

/// Dials the hub's Admin API.
pub async fn admin_client(cred: &AdminCredential) -> Result<AdminClient<Channel>, CliError> {
    let cfg = mtls_client_config(&cred.ca, &cred.cert, &cred.key)
        .map_err(|e| CliError(format!("admin credential: {e}")))?;
    let channel = TlsDialer::new(cfg)
        .with_connect_timeout(std::time::Duration::from_secs(5))
        .channel(&cred.hub)
        .await
        .map_err(|e| {
            CliError(format!(
                "cannot reach hub at {}: {}",
                cred.hub,
                error_chain(&e)
            ))
        })?;
    Ok(AdminClient::new(channel))
}
