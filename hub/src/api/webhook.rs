//! `POST /hooks/git/<source>` on the HTTP side port: push events from GitHub
//! (`X-Hub-Signature-256`), Gitea (`X-Gitea-Signature`) and GitLab (`X-Gitlab-Token`) are
//! verified with the source's webhook secret and trigger an immediate fetch. Polling remains the
//! backstop, so a lost webhook delays a revision but never loses it.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Why a webhook was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("no signature: expected X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token")]
    Missing,
    #[error("signature does not match the source's webhook secret")]
    Mismatch,
    #[error("malformed signature header {0}")]
    Malformed(&'static str),
}

/// The headers that may carry a signature or token.
#[derive(Debug, Default, Clone)]
pub struct Signatures<'a> {
    pub github: Option<&'a str>,
    pub gitea: Option<&'a str>,
    pub gitlab_token: Option<&'a str>,
}

fn hmac_ok(
    secret: &[u8],
    body: &[u8],
    hex_sig: &str,
    header: &'static str,
) -> Result<(), WebhookError> {
    let sig = hex::decode(hex_sig.trim()).map_err(|_| WebhookError::Malformed(header))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(&sig).map_err(|_| WebhookError::Mismatch)
}

/// Verifies a webhook body against the secret with whichever signature is present.
pub fn verify(secret: &str, body: &[u8], sig: &Signatures<'_>) -> Result<(), WebhookError> {
    let secret = secret.trim();
    if let Some(h) = sig.github {
        let hex_sig = h
            .strip_prefix("sha256=")
            .ok_or(WebhookError::Malformed("X-Hub-Signature-256"))?;
        return hmac_ok(secret.as_bytes(), body, hex_sig, "X-Hub-Signature-256");
    }
    if let Some(h) = sig.gitea {
        return hmac_ok(secret.as_bytes(), body, h, "X-Gitea-Signature");
    }
    if let Some(t) = sig.gitlab_token {
        // Compare digests of equal length rather than the secrets themselves.
        return if Sha256::digest(t.trim().as_bytes()) == Sha256::digest(secret.as_bytes()) {
            Ok(())
        } else {
            Err(WebhookError::Mismatch)
        };
    }
    Err(WebhookError::Missing)
}

/// `sha256=<hex>` HMAC of a body, as GitHub sends it (for tests and tools).
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_verifies_and_mismatches_are_refused() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let gh = github_signature("s3cret", body);
        let ok = |s: Signatures| verify("s3cret\n", body, &s);
        assert_eq!(
            ok(Signatures {
                github: Some(&gh),
                ..Default::default()
            }),
            Ok(())
        );
        let gitea = gh.trim_start_matches("sha256=").to_string();
        assert_eq!(
            ok(Signatures {
                gitea: Some(&gitea),
                ..Default::default()
            }),
            Ok(())
        );
        assert_eq!(
            ok(Signatures {
                gitlab_token: Some("s3cret"),
                ..Default::default()
            }),
            Ok(())
        );
        let wrong = github_signature("other", body);
        assert_eq!(
            ok(Signatures {
                github: Some(&wrong),
                ..Default::default()
            }),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            ok(Signatures {
                gitlab_token: Some("nope"),
                ..Default::default()
            }),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            ok(Signatures {
                github: Some("md5=00"),
                ..Default::default()
            }),
            Err(WebhookError::Malformed("X-Hub-Signature-256"))
        );
        assert_eq!(ok(Signatures::default()), Err(WebhookError::Missing));
        // A signature of another body does not verify.
        assert_eq!(
            verify(
                "s3cret",
                b"tampered",
                &Signatures {
                    github: Some(&gh),
                    ..Default::default()
                }
            ),
            Err(WebhookError::Mismatch)
        );
    }
}
