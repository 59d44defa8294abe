//! The simulated cluster: an in-memory Kubernetes API served behind `kube::Client` (being written).
