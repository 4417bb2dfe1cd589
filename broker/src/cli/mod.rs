//! `rmq`: the command-line client for operators. It speaks the Kafka protocol to any broker in
//! `--brokers` (or `RMQ_BROKERS`) through a small blocking client (`client`): topics
//! (`topic`), records in and out (`produce`, `consume`), consumer groups (`group`) and the
//! cluster (`cluster`). `user` edits an MQTT password file locally and contacts no broker.

pub mod client;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod topic;
pub mod user;

use clap::{Parser, Subcommand};

/// rmq: manage and use a RobustMQ (or any Kafka) cluster from the command line.
#[derive(Parser, Debug)]
#[command(name = "rmq", version, about)]
pub struct Cli {
    /// Brokers to bootstrap from, HOST:PORT[,HOST:PORT...]
    #[arg(
        long,
        short = 'b',
        env = "RMQ_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Produce one record per line of stdin.
    Produce(produce::ProduceArgs),
    /// Print records of a topic, alone or as a member of a consumer group.
    Consume(consume::ConsumeArgs),
    /// List, describe and delete consumer groups; reset their offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// The cluster: id, controller, brokers.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Add and delete MQTT users in a password file (mqtt.password_file); no broker needed.
    #[command(subcommand)]
    User(user::UserCommand),
}

/// Runs the parsed command; errors are printed by the binary.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::User(command) => return user::run(command),
        other => other,
    };
    let mut client = client::Client::connect(&cli.brokers)?;
    match command {
        Command::Topic(command) => topic::run(&mut client, command),
        Command::Produce(args) => produce::run(&mut client, args),
        Command::Consume(args) => consume::run(&mut client, args),
        Command::Group(command) => group::run(&mut client, command),
        Command::Cluster(command) => cluster::run(&mut client, command),
        Command::User(command) => user::run(command),
    }
}
