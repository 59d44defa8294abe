//! `flotilla-hub`: the Flotilla hub — cluster registry, CA, agent sessions, git sources,
//! rendering, promotion and the admin API.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod ca;
pub mod desired;
pub mod error;
pub mod git;
pub mod http;
pub mod metrics;
pub mod registration;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod rollout_view;
pub mod server;
pub mod session;
pub mod sources;
pub mod store;
pub mod webhook;
