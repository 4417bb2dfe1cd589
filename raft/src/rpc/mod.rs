//! Internal RPC between the nodes of Raft groups, over glommio TCP.
//!
//! Wire format (`frame`): length-prefixed frames, `u32 length | u8 kind | u64 correlation id |
//! u64 group id | u32 CRC32C(payload) | payload`, at most `RPC_FRAME_MAX_BYTES` after the
//! length; payloads are our own rkyv structs (`wire`) for Vote / PreVote / AppendEntries /
//! full-snapshot install / TransferLeader and their responses, converted losslessly to and
//! from openraft's types. A connection opens with `Hello` (protocol version, caller's node id).
//!
//! - `server::RpcServer` accepts connections and hands (group id, request) to the embedder's
//!   `Dispatcher` (`RaftGroups` for groups on the same executor); many requests per connection
//!   are in flight at once and answered in completion order, matched by correlation id.
//! - `client::RpcClient` is one executor's connection cache (one connection per target node,
//!   shared by the executor's groups: connections per (node, shard) pair), with bounded send
//!   queues, openraft's per-request TTLs, and reconnect with capped exponential backoff;
//!   `RpcNetworkFactory` is openraft's network for one group.
//! - `link_filter::LinkFilter` cuts and heals links between nodes, for partition tests.
//!
//! Concurrency contract: servers and clients are `!Send` and live on one glommio executor each
//! (a shard); a group's Raft, its network factory and the server that dispatches to it share
//! that executor. Only `LinkFilter` crosses threads.

pub mod client;
pub mod frame;
pub mod link_filter;
pub mod server;
pub mod wire;

pub use client::{RpcClient, RpcNetwork, RpcNetworkFactory};
pub use link_filter::LinkFilter;
pub use server::{Dispatcher, RaftGroups, RpcServer};
pub use wire::{FaultCode, RpcFault, RpcRequest, RpcResponse};
