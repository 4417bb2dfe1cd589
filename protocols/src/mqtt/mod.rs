//! MQTT 3.1, 3.1.1 and 5 on the shared kernel: codec (mqttbytes behind our own types, our own
//! 3.1 CONNECT path), one handler per packet type, sessions with their QoS state machines, the
//! topic-filter trie, shared subscription groups, the retained store and the per-shard engine that routes publishes
//! across shards. The runtime plugs in through `MqttKernel`; see `engine` for the cross-shard
//! design.

pub mod acl;
pub mod auth;
pub mod bridge;
pub mod codec;
pub mod config;
pub mod connection;
pub mod constants;
pub mod engine;
pub mod handlers;
pub mod kernel;
pub mod message;
pub mod persist;
pub mod retained;
pub mod session;
pub mod shared;
pub mod topic;
pub mod topic_alias;
pub mod trie;

pub use config::MqttConfig;
pub use connection::serve_connection;
pub use engine::{MqttShard, ShardMessage};
pub use kernel::{MeshClosed, MqttKernel};
