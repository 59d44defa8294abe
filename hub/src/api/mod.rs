//! Layer 4, the hub's edges: the gRPC services (`registration` for joins, `session` for agents,
//! `admin` for the CLI) with their caller authentication (`auth`), and the HTTP side port
//! (`http`: health, metrics, git webhooks). They translate between the wire and layers 0–3 and
//! hold no state of their own beyond a request.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod http;
pub mod registration;
pub mod rollout_view;
pub mod session;
pub mod webhook;
