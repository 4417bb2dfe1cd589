//! The admin HTTP endpoint (`--admin-addr`, default 0.0.0.0:9644): `/metrics` (Prometheus
//! text), `/v1/health`, `/v1/topics`, `/v1/groups`, `/v1/cluster` (nodes, the controller
//! leader and, on the leader, each node's replication lag in the controller group; the
//! replicated partitions hosted here), and with `--fault-injection` the `/v1/debug/rpc/*`
//! link cutters for partition tests.
//!
//! Concurrency contract: it runs on its own OS thread (the control plane need not be
//! thread-per-core) and never touches shard state: metrics are read from the shards' atomics,
//! and topics and groups are asked of the node itself over its Kafka listener, like any
//! client. The data path pays nothing for it but relaxed atomic adds.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use kafka_protocol::messages::{ApiKey, ListGroupsRequest};
use serde_json::json;
use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

use crate::cli::client::{check, Client};
use crate::cli::topic::metadata;
use crate::cluster::ClusterView;
use crate::metrics::{self, ShardMetrics};

const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4";
const CONTENT_TYPE_JSON: &str = "application/json";
/// A debug request body is a few ids: 64 KiB is plenty.
const DEBUG_BODY_BYTES_MAX: u64 = 64 * 1024;

/// Binds `addr` and serves it on a new thread; returns the bound address.
pub fn start(
    addr: SocketAddr,
    kafka_addr: SocketAddr,
    shards: Vec<Arc<ShardMetrics>>,
    cluster: Option<Arc<ClusterView>>,
) -> anyhow::Result<SocketAddr> {
    let server = Server::http(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .context("admin listener has no IP address")?;
    let kafka = if kafka_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], kafka_addr.port()))
    } else {
        kafka_addr
    };
    std::thread::Builder::new()
        .name("rmq-admin-http".to_string())
        .spawn(move || {
            for mut request in server.incoming_requests() {
                let (status, content_type, body) = if request.url().starts_with("/v1/debug/") {
                    let mut body = String::new();
                    let read = request
                        .as_reader()
                        .take(DEBUG_BODY_BYTES_MAX)
                        .read_to_string(&mut body);
                    match read {
                        Ok(_) => debug_route(
                            request.method() == &Method::Post,
                            request.url(),
                            &body,
                            cluster.as_deref(),
                        ),
                        Err(e) => (
                            400,
                            CONTENT_TYPE_JSON,
                            json!({"error": format!("cannot read the body: {e}")}).to_string(),
                        ),
                    }
                } else {
                    route(request.url(), kafka, &shards, cluster.as_deref())
                };
                let mut response = Response::from_string(body).with_status_code(status);
                if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
                    response = response.with_header(header);
                }
                if let Err(e) = request.respond(response) {
                    warn!(error = %e, "admin http response failed");
                }
            }
        })
        .context("cannot start the admin http thread")?;
    info!(%bound, "admin http listening");
    Ok(bound)
}

/// Fault injection (`--fault-injection` only; 404 otherwise):
/// `POST /v1/debug/rpc/isolate` with `{"peers": [ids]}` cuts this node's RPC links to those
/// nodes, `POST /v1/debug/rpc/heal` heals every link.
fn debug_route(
    post: bool,
    url: &str,
    body: &str,
    cluster: Option<&ClusterView>,
) -> (u16, &'static str, String) {
    let Some((view, filter)) =
        cluster.and_then(|view| view.link_filter.as_ref().map(|f| (view, f)))
    else {
        return (
            404,
            CONTENT_TYPE_JSON,
            json!({"error": "not found"}).to_string(),
        );
    };
    if !post {
        return (
            405,
            CONTENT_TYPE_JSON,
            json!({"error": "POST only"}).to_string(),
        );
    }
    let node = u64::try_from(view.node_id).unwrap_or(0);
    match url.split('?').next().unwrap_or("") {
        "/v1/debug/rpc/isolate" => {
            let peers: Result<Vec<u64>, String> = serde_json::from_str::<serde_json::Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|value| {
                    serde_json::from_value(value["peers"].clone()).map_err(|e| e.to_string())
                });
            match peers {
                Ok(peers) => {
                    filter.isolate(node, &peers);
                    warn!(?peers, "fault injection: RPC links to these nodes are cut");
                    (
                        200,
                        CONTENT_TYPE_JSON,
                        json!({"isolated_from": peers}).to_string(),
                    )
                }
                Err(e) => (
                    400,
                    CONTENT_TYPE_JSON,
                    json!({"error": format!("expected {{\"peers\": [node ids]}}: {e}")})
                        .to_string(),
                ),
            }
        }
        "/v1/debug/rpc/heal" => {
            filter.heal_all();
            warn!("fault injection: every RPC link healed");
            (200, CONTENT_TYPE_JSON, json!({"healed": true}).to_string())
        }
        _ => (
            404,
            CONTENT_TYPE_JSON,
            json!({"error": "not found"}).to_string(),
        ),
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| key.to_string(), |api| format!("{api:?}"))
}

fn route(
    url: &str,
    kafka: SocketAddr,
    shards: &[Arc<ShardMetrics>],
    cluster: Option<&ClusterView>,
) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    let answer = match path {
        "/metrics" => {
            return (
                200,
                CONTENT_TYPE_PROMETHEUS,
                metrics::render(shards, api_name),
            )
        }
        "/v1/health" => Ok(json!({"status": "ok"})),
        "/v1/topics" => topics(kafka),
        "/v1/groups" => groups(kafka),
        "/v1/cluster" => match cluster {
            Some(view) => Ok(view.status()),
            None => single_node(kafka),
        },
        _ => {
            return (
                404,
                CONTENT_TYPE_JSON,
                json!({"error": "not found"}).to_string(),
            )
        }
    };
    match answer {
        Ok(value) => (200, CONTENT_TYPE_JSON, value.to_string()),
        Err(e) => (
            503,
            CONTENT_TYPE_JSON,
            json!({"error": format!("{e:#}")}).to_string(),
        ),
    }
}

fn topics(kafka: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::connect(&kafka.to_string())?;
    let response = metadata(&mut client, None)?;
    let topics: Vec<serde_json::Value> = response
        .topics
        .iter()
        .filter_map(|t| {
            let name = t.name.as_ref()?.0.to_string();
            Some(json!({"name": name, "partitions": t.partitions.len(), "internal": t.is_internal}))
        })
        .collect();
    Ok(json!(topics))
}

/// `/v1/cluster` of a node running alone: itself, the controller.
fn single_node(kafka: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::connect(&kafka.to_string())?;
    let response = metadata(&mut client, None)?;
    let nodes: Vec<serde_json::Value> = response
        .brokers
        .iter()
        .map(|b| json!({"node_id": b.node_id.0, "host": b.host.as_str(), "port": b.port}))
        .collect();
    Ok(json!({
        "mode": "single-node",
        "cluster_id": response.cluster_id.as_ref().map(|id| id.as_str()),
        "controller": response.controller_id.0,
        "nodes": nodes,
    }))
}

fn groups(kafka: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::connect(&kafka.to_string())?;
    let response = client.send(4, &ListGroupsRequest::default())?;
    check(response.error_code, "list groups")?;
    let groups: Vec<serde_json::Value> = response
        .groups
        .iter()
        .map(|g| {
            json!({
                "group": g.group_id.0.as_str(),
                "state": g.group_state.as_str(),
                "protocol_type": g.protocol_type.as_str(),
            })
        })
        .collect();
    Ok(json!(groups))
}
