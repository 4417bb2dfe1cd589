//! `rmq-node`: the RobustMQ broker process.

use clap::Parser;
use rmq_broker::config::{Cli, NodeConfig};
use tracing_subscriber::EnvFilter;

/// Messages cross shards (threads): allocated on one, freed on another. See the workspace
/// Cargo.toml for why not glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let config = match NodeConfig::from_cli(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rmq-node: {e:#}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
    if let Err(e) = rmq_broker::node::run(config) {
        eprintln!("rmq-node: {e:#}");
        std::process::exit(1);
    }
}
