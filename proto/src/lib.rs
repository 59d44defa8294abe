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

impl v1::StatusReport {
    /// `apps` as reports of generation `generation`, in order, each at most
    /// [`limits::MAX_REPORT_BYTES`] (an app larger than that goes alone); the first says
    /// `replace`, and a `replace` with no apps is still one (empty) report. `seq` is left 0.
    pub fn split(
        generation: u64,
        replace: bool,
        apps: impl IntoIterator<Item = v1::AppStatus>,
    ) -> Vec<Self> {
        use prost::Message;
        let empty = |replace| Self {
            generation,
            apps: Vec::new(),
            replace,
            seq: 0,
        };
        let mut reports = Vec::new();
        let mut current = empty(replace);
        for status in apps {
            let grown = current.encoded_len() + status.encoded_len() + 8;
            if grown > limits::MAX_REPORT_BYTES && !current.apps.is_empty() {
                reports.push(std::mem::replace(&mut current, empty(false)));
            }
            current.apps.push(status);
        }
        if !current.apps.is_empty() || current.replace {
            reports.push(current);
        }
        reports
    }
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
