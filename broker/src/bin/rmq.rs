//! `rmq`: the RobustMQ command-line client (topics, produce, consume, groups, cluster,
//! MQTT users).

use clap::Parser;
use rmq_broker::cli::{run, Cli};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("rmq: {e:#}");
        std::process::exit(1);
    }
}
