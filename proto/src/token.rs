//! The one-line join token: `flotilla-join:<base64url(JSON)>` carrying the hub address (and,
//! for several hub replicas, every endpoint an agent may dial), the
//! SHA-256 fingerprint of the hub CA (bootstrap trust, like kubeadm's discovery hash) and the
//! secret `<id>.<secret>` that the hub stores only hashed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "flotilla-join:";

/// A decoded join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// `host:port` of the hub's TLS port (the first of `hubs` when there are several).
    pub hub: String,
    /// Every `host:port` an agent may dial, in order of preference (several hub replicas);
    /// empty: `hub` only (tokens made before there were several).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hubs: Vec<String>,
    /// `sha256:<hex>` of the hub CA certificate (DER).
    pub ca: String,
    /// Token id (public) and secret, `<id>.<secret>`.
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("join token must start with {TOKEN_PREFIX:?}")]
    Prefix,
    #[error("join token is not valid base64url: {0}")]
    Encoding(#[source] base64::DecodeError),
    #[error("join token content is malformed: {0}")]
    Json(#[source] serde_json::Error),
    #[error("join token content is malformed: {0}")]
    Content(&'static str),
}

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("token serializes");
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// The endpoints to dial, in order: `hubs`, or `hub` alone.
    pub fn endpoints(&self) -> Vec<String> {
        if self.hubs.is_empty() {
            vec![self.hub.clone()]
        } else {
            self.hubs.clone()
        }
    }

    pub fn decode(s: &str) -> Result<Self, TokenError> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Prefix)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(TokenError::Encoding)?;
        let t: JoinToken = serde_json::from_slice(&json).map_err(TokenError::Json)?;
        if t.hub.is_empty()
            || t.hubs.iter().any(String::is_empty)
            || !t.ca.starts_with("sha256:")
            || split_secret(&t.token).is_none()
        {
            return Err(TokenError::Content(
                "needs hub, ca (sha256:…) and token (<id>.<secret>)",
            ));
        }
        Ok(t)
    }
}

/// Splits `<id>.<secret>`.
pub fn split_secret(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// The stored form of a token secret. Secrets are 256 random bits, so a plain SHA-256 suffices
/// (no password-hashing work factor is needed against brute force).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = JoinToken {
            hub: "127.0.0.1:7443".into(),
            hubs: vec![],
            ca: "sha256:ab".into(),
            token: "id1.s3cret".into(),
        };
        let line = t.encode();
        assert!(
            !line.contains("hubs")
                && !URL_SAFE_NO_PAD
                    .decode(&line[TOKEN_PREFIX.len()..])
                    .map(|j| String::from_utf8(j).unwrap().contains("hubs"))
                    .unwrap()
        );
        assert_eq!(t.endpoints(), ["127.0.0.1:7443"]);
        let several = JoinToken {
            hubs: vec!["a:7443".into(), "b:7443".into()],
            hub: "a:7443".into(),
            ..t.clone()
        };
        let decoded = JoinToken::decode(&several.encode()).unwrap();
        assert_eq!(decoded.endpoints(), ["a:7443", "b:7443"]);
        assert!(line.starts_with(TOKEN_PREFIX));
        assert!(!line.contains(char::is_whitespace));
        assert_eq!(JoinToken::decode(&line).unwrap(), t);
        assert!(matches!(JoinToken::decode("nope"), Err(TokenError::Prefix)));
        assert!(matches!(
            JoinToken::decode("flotilla-join:!!!"),
            Err(TokenError::Encoding(_))
        ));
        assert!(matches!(
            JoinToken::decode("flotilla-join:e30"),
            Err(TokenError::Json(_))
        ));
        // `{"hub":"","ca":"x","token":"y"}`: well-formed JSON, wrong content.
        assert!(matches!(
            JoinToken::decode("flotilla-join:eyJodWIiOiIiLCJjYSI6IngiLCJ0b2tlbiI6InkifQ"),
            Err(TokenError::Content(_))
        ));
    }
}
