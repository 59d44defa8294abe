//! kstatus-style health of Kubernetes objects (being written).
