//! `rmq cluster info`: the cluster id, the controller and every broker (DescribeCluster).

use clap::Subcommand;
use kafka_protocol::messages::DescribeClusterRequest;

use super::client::{check, Client};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Cluster id, controller, brokers and topic count.
    Info,
}

pub fn run(client: &mut Client, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Info => info(client),
    }
}

fn info(client: &mut Client) -> anyhow::Result<()> {
    let cluster = client.send(1, &DescribeClusterRequest::default())?;
    check(cluster.error_code, "describe cluster")?;
    let metadata = super::topic::metadata(client, None)?;
    println!("cluster id:  {}", cluster.cluster_id.as_str());
    println!("controller:  {}", cluster.controller_id.0);
    println!("topics:      {}", metadata.topics.len());
    println!("brokers:");
    for broker in &cluster.brokers {
        println!(
            "  {}  {}:{}",
            broker.broker_id.0,
            broker.host.as_str(),
            broker.port
        );
    }
    Ok(())
}
