//! Integration tests of the node agent: a real agent process on 127.0.0.1 with real worker
//! processes on the CPU, driven over HTTP (one test binary, a module per area).

mod admission;
mod checkpoints;
mod devices;
mod embeddings;
mod errors;
mod faults;
mod fuzz;
mod ghost;
mod http_limits;
mod isolation;
mod restart;
mod rude_clients;
mod security;
mod servers;
mod sick_workers;
mod switching;
