//! The vramkeeper operator: reconciles each GpuModel's desired model against what its node
//! agent reports. (Being built: see the operator issue.)
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

fn main() {
    eprintln!("vramkeeper-operator: not built yet");
    std::process::exit(2);
}
