//! Layer 2, the hub's records: one typed table per kind of record over the `Store` trait
//! ([`table::Table`]: key prefix, JSON encoding, compare-and-swap with retry, one corrupt-record
//! error), the cluster registry and join tokens, desired state and agents' statuses, the audit
//! log, the live sessions, and [`error::HubError`], the error of this layer and those above.
//! Imports only layers 0–1 (telemetry; pki, store, git, render).

pub mod audit;
pub mod desired;
pub mod error;
pub mod intern;
pub mod registry;
pub mod sessions;
pub mod status;
pub mod status_ingest;
pub mod table;
