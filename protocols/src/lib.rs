//! rmq-protocols: the wire protocols RobustMQ speaks, each turning requests into operations on
//! the protocol-agnostic [`kernel::Kernel`].
//!
//! Handlers see only the `Kernel` trait: never shards, channels or storage types. The broker
//! implements `Kernel` over its shards; a new protocol is a new folder here, not a change to the
//! runtime. Everything here is single-threaded per connection (futures are `!Send`-friendly).

pub mod kafka;
pub mod kernel;
pub mod mqtt;
