//! The admin credential (`DATA/admin.yaml`, mode 0600): an admin client certificate issued by
//! the hub CA, with the CA and the hub's address, for the `flotilla` CLI.

use std::path::Path;
use std::time::{Duration, SystemTime};

use flotilla_proto::clock::rfc3339;
use flotilla_proto::credential::{AdminCredential, CredentialError};
use flotilla_proto::identity::{Identity, PeerCert};
use flotilla_proto::tls::certs_from_pem;

use super::{Ca, CaError};

/// Lifetime of the admin credential written to `DATA/admin.yaml`.
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the admin credential could not be issued or written.
#[derive(Debug, thiserror::Error)]
pub enum AdminCredentialError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    File(#[from] CredentialError),
}

/// Writes `DATA/admin.yaml` on first start; later starts keep the credential, only reissuing it
/// when it expired or belongs to another CA, and update the hub address if it changed.
pub fn ensure_admin_credential(
    ca: &Ca,
    path: &Path,
    hub_address: &str,
    now: SystemTime,
) -> Result<(), AdminCredentialError> {
    if let Ok(mut cred) = AdminCredential::load(path) {
        let still_valid = cred.ca == ca.cert_pem()
            && certs_from_pem(&cred.cert, "admin certificate")
                .ok()
                .and_then(|c| PeerCert::from_der(&c[0], ca.trust_domain()).ok())
                .is_some_and(|p| p.not_after > now + Duration::from_secs(3600));
        if still_valid {
            if cred.hub != hub_address {
                cred.hub = hub_address.to_string();
                cred.save(path)?;
            }
            return Ok(());
        }
        tracing::warn!(path = %path.display(), "admin credential expired or from another CA; reissuing");
    }
    let (issued, key) = ca.issue_with_key(
        &Identity::Admin("admin".into()),
        now - Duration::from_secs(60),
        now + ADMIN_CERT_LIFETIME,
    )?;
    AdminCredential {
        hub: hub_address.to_string(),
        name: "admin".into(),
        ca: ca.cert_pem().to_string(),
        cert: issued.chain_pem,
        key,
    }
    .save(path)?;
    tracing::info!(path = %path.display(), expires = %rfc3339(issued.not_after), "wrote admin credential");
    Ok(())
}
