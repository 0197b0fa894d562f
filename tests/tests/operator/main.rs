//! The operator end to end: the real controller (`vramkeeper_operator::run`, leader election
//! included) against the in-memory API server double, driving real agent processes on the CPU.
//!
//! Nothing here needs a cluster. The tests that do are `#[ignore]`d in `cluster.rs`, with the
//! command that runs them.

mod cluster;
mod common;
mod conflict;
mod escalation;
mod idle;
mod inference;
mod leader;
mod lifecycle;
mod outage;
mod report;
mod retry;
