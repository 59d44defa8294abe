//! `flotilla-proto`: the `flotilla.v1` wire protocol plus the helpers both hub and agent need
//! (identities, key and CSR generation, join tokens, TLS configuration, clock, states, telemetry
//! setup), kept here so they are never written twice.

pub mod clock;
pub mod codec;
pub mod credential;
/// Key and CSR generation (rcgen), for the hub's tests and the agent; not linked into the CLI.
#[cfg(feature = "csr")]
pub mod csr;
pub mod files;
pub mod identity;
pub mod limits;
pub mod revision;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod token;

/// Generated protobuf and gRPC code for package `flotilla.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flotilla.v1");
}

impl v1::FetchBundlesRequest {
    /// Asks for each of `digests` whole (from offset 0), in that order.
    pub fn from_start(digests: &[&str]) -> Self {
        Self {
            bundles: digests
                .iter()
                .map(|d| v1::FetchBundleRequest {
                    digest: d.to_string(),
                    offset: 0,
                })
                .collect(),
        }
    }
}
