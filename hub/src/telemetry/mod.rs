//! Layer 0, observability: the hub's Prometheus metrics (counters and histograms fed where things
//! happen, and the exposition). Imports nothing else of the hub, so every layer may feed it.

pub mod metrics;
