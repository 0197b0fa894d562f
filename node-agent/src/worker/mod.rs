//! Worker processes: one per loaded model, the same binary started with `worker`.

pub mod client;
pub mod engine;
pub mod protocol;
pub mod server;
