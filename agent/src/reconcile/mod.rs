//! Reconcile: turns the bundles the agent holds into its cluster's state.

pub mod health;
