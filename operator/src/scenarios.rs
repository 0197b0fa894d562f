//! Reconcile scenarios.
