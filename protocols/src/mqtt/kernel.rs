//! What the MQTT layer needs from the runtime, beyond the shared `Kernel`: its shard's place in
//! the node and a way to reach the other shards, timers and task spawning. The broker
//! implements it over glommio and the shard mesh; everything else about MQTT (sessions,
//! routing, retained messages) lives in this crate.
//!
//! Concurrency contract: used from one shard's thread only; futures need not be `Send`. Only
//! `ShardMessage` crosses threads.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::engine::ShardMessage;
use super::persist::StateRecord;
use crate::kernel::{KernelError, TopicPartition};

/// The other shard's queue is gone (the node is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshClosed;

pub trait MqttKernel: 'static {
    fn shard_id(&self) -> u16;
    fn shard_count(&self) -> u16;
    /// Sends `message` to shard `to` (never this shard); waits while that queue is full.
    fn send(&self, to: u16, message: ShardMessage) -> impl Future<Output = Result<(), MeshClosed>>;
    /// Runs `task` on this shard in the background.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>);
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + 'static;
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// False once the node is shutting down.
    fn accepting(&self) -> bool;
    /// Runs CPU-heavy `work` (a password hash) off this shard's event loop if the runtime can,
    /// and waits for its result. The default runs it in place.
    fn run_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> impl Future<Output = R> {
        let result = work();
        async move { result }
    }
    /// Partitions of Kafka topic `topic`, `None` if it does not exist (bridge rules).
    fn partition_count(&self, topic: &str) -> Option<i32>;
    /// Appends record batches to Kafka partitions (bridge rules), each input in order, with
    /// one result per input. `durable`: resolves once they are as durable as a Kafka produce
    /// with acks=-1 makes them; otherwise once the partitions' leaders wrote them (acks=1).
    fn append(
        &self,
        inputs: Vec<(TopicPartition, Bytes)>,
        durable: bool,
    ) -> impl Future<Output = Vec<Result<(), KernelError>>>;
    /// Appends `records` to the internal `__mqtt_state` topic, in order, and resolves once
    /// they are durable (see `persist`).
    fn state_append(
        &self,
        records: Vec<StateRecord>,
    ) -> impl Future<Output = Result<(), KernelError>>;
}
