//! `vramkeeper-agent`: the node agent (default), or a worker process (`worker`).

use clap::Parser;
use vramkeeper_node_agent::args::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn,cubecl=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Worker(args)) => vramkeeper_node_agent::run_worker(args),
        Some(Command::Serve) | None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(vramkeeper_node_agent::serve(cli.serve)),
    }
}
