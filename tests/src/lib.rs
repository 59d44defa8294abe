//! Shared helpers for system tests and the load generator.
