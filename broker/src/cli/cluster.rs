//! `rmq cluster info`: the cluster id, the controller and every broker (DescribeCluster); with
//! `--admin HOST:PORT` (a node's admin HTTP address) also that node's view of the controller
//! Raft group from `/v1/cluster`: its state and term, and per node the log index it has
//! matched and its lag (known on the controller leader).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use kafka_protocol::messages::DescribeClusterRequest;

use super::client::{check, Client};

/// Timeout of the admin HTTP request (connect, write, each read).
const ADMIN_HTTP_TIMEOUT_MS: u64 = 10_000;
/// Largest `/v1/cluster` answer read: 1 MiB (a few hundred bytes per node).
const ADMIN_HTTP_RESPONSE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Cluster id, controller, brokers and topic count; with --admin, the controller group's
    /// replication (state, term, per-node matched index and lag) as that node sees it.
    Info {
        /// A node's admin HTTP address (HOST:PORT or http://HOST:PORT); ask the controller's
        /// for every node's lag.
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
}

pub fn run(client: &mut Client, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Info { admin } => info(client, admin.as_deref()),
    }
}

fn info(client: &mut Client, admin: Option<&str>) -> anyhow::Result<()> {
    let cluster = client.send(1, &DescribeClusterRequest::default())?;
    check(cluster.error_code, "describe cluster")?;
    let metadata = super::topic::metadata(client, None)?;
    let status = admin.map(cluster_status).transpose()?;
    println!("cluster id:  {}", cluster.cluster_id.as_str());
    println!("controller:  {}", cluster.controller_id.0);
    println!("topics:      {}", metadata.topics.len());
    if let Some(status) = &status {
        if status["mode"] == "cluster" {
            println!(
                "controller group (as node {} sees it): {} in term {}, last log index {}",
                status["node_id"], status["state"], status["term"], status["last_log_index"]
            );
        }
    }
    println!("brokers:");
    for broker in &cluster.brokers {
        let mut line = format!(
            "  {}  {}:{}",
            broker.broker_id.0,
            broker.host.as_str(),
            broker.port
        );
        if let Some(status) = &status {
            line.push_str(&replication_of(status, broker.broker_id.0));
        }
        println!("{line}");
    }
    if let Some(partitions) = status
        .as_ref()
        .and_then(|status| status["partitions"].as_array())
        .filter(|partitions| !partitions.is_empty())
    {
        println!("replicas on this node (topic partition: role, leader, term, committed):");
        for p in partitions {
            println!(
                "  {} {}: {}, leader {}, term {}, committed {}",
                p["topic"].as_str().unwrap_or("?"),
                p["partition"],
                p["role"].as_str().unwrap_or("?"),
                p["serving_leader"],
                p["term"],
                p["committed_index"]
            );
        }
    }
    Ok(())
}

/// "  matched N  lag M" for `node_id` from a `/v1/cluster` answer (`?` where unknown).
fn replication_of(status: &serde_json::Value, node_id: i32) -> String {
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let Some(node) = nodes
        .iter()
        .find(|n| n["node_id"].as_i64() == Some(i64::from(node_id)))
    else {
        return String::new();
    };
    let show = |value: &serde_json::Value| {
        value
            .as_u64()
            .map_or_else(|| "?".to_string(), |v| v.to_string())
    };
    format!(
        "  matched {}  lag {}",
        show(&node["matched_index"]),
        show(&node["lag"])
    )
}

/// GET `/v1/cluster` from a node's admin HTTP listener.
fn cluster_status(admin: &str) -> anyhow::Result<serde_json::Value> {
    let addr = admin.trim_start_matches("http://").trim_end_matches('/');
    let timeout = Duration::from_millis(ADMIN_HTTP_TIMEOUT_MS);
    let socket = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .with_context(|| format!("--admin {admin}"))?
        .next()
        .with_context(|| format!("--admin {admin}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)
        .with_context(|| format!("cannot connect to the admin HTTP at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /v1/cluster HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(ADMIN_HTTP_RESPONSE_BYTES_MAX)
        .read_to_end(&mut response)
        .with_context(|| format!("reading /v1/cluster from {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}: not an HTTP response"))?;
    let status_code = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status_code != Some("200") {
        bail!(
            "{addr}/v1/cluster answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(body).with_context(|| format!("{addr}/v1/cluster: bad JSON"))
}
