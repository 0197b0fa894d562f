//! Integration tests of the node agent: a real agent process on 127.0.0.1 with real worker
//! processes on the CPU, driven over HTTP (one test binary, a module per area).

mod embeddings;
mod errors;
mod faults;
mod fuzz;
mod ghost;
mod isolation;
mod restart;
mod security;
mod switching;
