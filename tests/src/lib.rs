//! End-to-end tests of vramkeeper: real agent processes, the operator, the Helm chart.
//!
//! The library half is the harness the tests share: [`Agent`] starts a real `vramkeeper-agent`
//! on 127.0.0.1 with a port the OS picks, in a temporary state directory, and ends it and all
//! its workers when dropped.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod apiserver_double;
pub mod checkpoints;
pub mod procs;
pub mod wait;

pub use agent::{Agent, AgentOptions};
pub use apiserver_double::ApiServerDouble;
pub use wait::{wait_for, wait_until};
