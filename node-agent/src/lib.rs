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
//!
//! # Adding a model kind
//!
//! A kind is one file in `src/models/`, say `models/llama.rs`:
//!
//! 1. Its catalog entry: a struct with `#[derive(Serialize, Deserialize, Debug, Clone,
//!    PartialEq)]` and `#[serde(deny_unknown_fields)]`, whose fields are the catalog's keys.
//! 2. `impl Kind for` it ([`models::Kind`]): `NAME` (the catalog's `kind = "..."`), `check`
//!    (ranges, naming the field), `size` (parameters and element type, known before a first
//!    load: the agent sizes ghost memory and refuses what cannot fit with it), `capabilities`
//!    (which of `/v1/infer`, `/v1/embeddings` it serves, with their bounds), `resolve` (only if
//!    the agent must fetch files before the worker loads) and `load`, which builds a
//!    [`models::Loaded`] on the worker's backend (`warm_up`, and the capabilities it declared).
//! 3. A variant in [`models::ModelKind`] and an arm in `each_kind!` beside it (the one `match`
//!    over kinds; the compiler points at it when the arm is missing).
//! 4. Tests: a catalog entry that parses and one that is refused, and a worker test that loads
//!    it on the CPU backend and serves a request (see `tests/it/embeddings.rs`).
//!
//! The API, the switch, the workers and the status page need no change: they ask the kind.
#![deny(rust_2018_idioms)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

mod access;
mod api;
mod app;
pub mod args;
mod backend;
mod device;
mod ghost;
mod history;
mod http_server;
mod metrics;
mod models;
mod probe;
mod report;
mod serve;
mod state_file;
mod tracker;
mod ui;
mod units;
mod worker;
mod zombie;

pub use serve::serve;
pub use worker::server::run as run_worker;

/// What the protocol and body fuzz tests (`tests/it/fuzz.rs`) exercise directly.
pub mod fuzzing {
    pub use crate::{
        api::{ApiJson, BODY_LIMIT},
        models::{
            Catalog,
            generate::{Finish, Outcome, Prompt, Sampling},
        },
        worker::protocol,
    };
}
