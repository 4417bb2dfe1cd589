//! rmq-broker: the `rmq-node` server. Starts one glommio shard per core, each owning its
//! listeners, partitions and segment files; shards talk only through the bounded channel mesh
//! (`shard::submit`). `kernel::ShardKernel` implements the protocols' `Kernel` over the shards.

pub mod admin_http;
pub mod budget;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod constants;
pub mod controller;
pub mod group;
pub mod kafka_listener;
pub mod kernel;
pub mod metadata;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod shard;
pub mod topic_config;
