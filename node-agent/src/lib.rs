//! vramkeeper's node agent.
//!
//! ```text
//!  HTTP (axum): /v1 API . status page . /metrics
//!        |
//!  Device (one per GPU, or the CPU) ---- probe: NVML | procfs
//!        |  switch: unload -> verify release -> load -> cleanup -> measure
//!        |  sampler: ghost = used - baseline - Σ expected; zombie -> auto-free
//!        v
//!  worker process (one per loaded model; burn cuda | flex), framed JSON over a Unix socket
//! ```
#![deny(rust_2018_idioms)]
#![deny(unsafe_code)]

pub mod access;
pub mod api;
pub mod app;
pub mod args;
pub mod device;
pub mod error;
pub mod ghost;
pub mod history;
pub mod http_server;
pub mod metrics;
pub mod models;
pub mod probe;
pub mod report;
pub mod serve;
pub mod state_file;
pub mod tracker;
pub mod ui;
pub mod worker;
pub mod zombie;
