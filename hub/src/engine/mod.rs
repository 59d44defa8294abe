//! Layer 3, what moves the fleet: the rollout engine (promotion and removal through pipelines,
//! over the pure plan in `rollout::plan`), source syncs (fetch, render, offer to rollouts), and
//! the scrape-time view of the fleet for the metrics. Imports layers 0–2.

pub mod fleet;
pub mod rollout;
pub mod sources;
