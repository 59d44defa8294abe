//! Client certificates whose chain to the hub CA is known to be good, so that a full TLS
//! handshake with one of them skips the chain's signature check (one of the two ECDSA
//! verifications mutual TLS costs the hub per handshake). Known are the client certificates this
//! process's CA signed (the first session after a join or a renewal) and those the TLS verifier
//! has verified in full (an agent that restarted, or whose ticket ran out). A certificate is
//! known by the SHA-256 of its exact DER bytes, so a byte that differs is a stranger, and only
//! within the validity it was signed or verified with. What still runs on every handshake:
//! the client's signature over the handshake (possession of the key), the identity and the
//! revocation check. Process memory only: after a restart, each certificate's first handshake
//! verifies in full.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Certificates kept at most; beyond, expired ones are dropped, and while none are, new ones are
/// not kept (their handshakes verify in full). About 80 bytes each.
const MAX_KNOWN: usize = 1 << 20;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KnownCerts {
    /// The CA certificate (DER), which clients send after their own certificate.
    anchor: Vec<u8>,
    /// SHA-256 of the DER → (not before, not after), in Unix seconds.
    by_digest: RwLock<HashMap<[u8; 32], (u64, u64)>>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl KnownCerts {
    /// An empty set for the CA whose certificate is `anchor` (DER).
    pub fn new(anchor: Vec<u8>) -> Self {
        Self {
            anchor,
            by_digest: RwLock::default(),
        }
    }

    /// Whether a chain with these certificates after the client's own is the direct kind this
    /// CA issues: none, or the CA certificate itself. Only such a chain's verdict is learned: a
    /// path through an intermediate could stop being good before the certificate expires.
    pub fn direct(&self, intermediates: &[impl AsRef<[u8]>]) -> bool {
        intermediates
            .iter()
            .all(|c| !self.anchor.is_empty() && c.as_ref() == self.anchor.as_slice())
    }

    /// Records `der` as a good client certificate of this CA from `not_before` until
    /// `not_after`.
    pub fn insert(&self, der: &[u8], not_before: SystemTime, not_after: SystemTime) {
        let digest: [u8; 32] = Sha256::digest(der).into();
        let mut map = self.by_digest.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KNOWN {
            let now = secs(SystemTime::now());
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= MAX_KNOWN {
                return;
            }
        }
        map.insert(digest, (secs(not_before), secs(not_after)));
    }

    /// Whether `der` is a known good client certificate at `now`.
    pub fn is_valid(&self, der: &[u8], now: SystemTime) -> bool {
        let digest: [u8; 32] = Sha256::digest(der).into();
        let now = secs(now);
        self.by_digest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .is_some_and(|&(from, until)| from <= now && now < until)
    }

    pub fn len(&self) -> usize {
        self.by_digest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
