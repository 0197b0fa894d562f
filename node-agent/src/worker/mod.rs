//! Worker processes: one per loaded model, the same binary started with `worker`.

pub(crate) mod client;
pub(crate) mod engine;
pub mod protocol;
pub(crate) mod server;
pub(crate) mod server_logs;
pub(crate) mod server_process;
