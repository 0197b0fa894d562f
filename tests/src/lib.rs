//! End-to-end tests of vramkeeper: real agent processes, the operator, the Helm chart.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
