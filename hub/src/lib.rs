//! `flotilla-hub`: the Flotilla hub — cluster registry, CA, agent sessions, git sources,
//! rendering, promotion and the admin API.
//!
//! Layers, lowest first; a module imports only from its own layer or those below
//! (`tests/tests/layers.rs` checks it):
//! 0. [`telemetry`] — metrics.
//! 1. [`pki`] (the CA), [`store`] (the `Store` trait and its backends), [`git`] (mirrors and
//!    commit trees), [`render`] (`flotilla.yaml`, rendering, bundles) — infrastructure.
//! 2. [`state`] — the records: tables over the store, registry, desired state and statuses,
//!    audit, live sessions, and `HubError`.
//! 3. [`engine`] — rollouts and source syncs.
//! 4. [`api`] — the gRPC services and the HTTP side port.
//! 5. [`server`] — wiring only: builds everything and serves it.

pub mod api;
pub mod engine;
pub mod git;
pub mod pki;
pub mod render;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
