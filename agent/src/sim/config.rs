//! How the simulated cluster behaves. Built with or without the feature `simulated`: the agent's
//! configuration names it either way (`--cluster simulated` then fails at start when the
//! simulated cluster itself is not built).

use std::time::Duration;

/// How the simulated cluster behaves (used with `--cluster simulated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// How long after a change a simulated workload takes to become ready.
    pub ready_delay: Duration,
    /// Namespaces that exist from the start.
    pub namespaces: Vec<String>,
    /// How many of the last requests to keep for inspection (`SimCluster::requests`, for
    /// tests); 0 keeps none, so a long-running agent does not hoard request bodies.
    pub record_requests: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ready_delay: Duration::from_secs(1),
            namespaces: [
                "default",
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "flotilla-system",
            ]
            .map(String::from)
            .to_vec(),
            record_requests: 0,
        }
    }
}
