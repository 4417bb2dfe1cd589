//! MQTT on the shards: each shard runs one `MqttShard` (the protocol crate's per-shard MQTT
//! state) and an accept loop on the shared MQTT port. Cross-shard MQTT work travels as
//! `ShardOp::Mqtt(MqttOp)` on the same bounded mesh as everything else; `handle_op` hands it to
//! this shard's `MqttShard`, synchronously, so ops from one peer apply in the order sent.
//!
//! Concurrency contract: the `MqttShard` of a shard lives in a thread-local of its executor
//! thread (one executor per thread), created on first use — by the listener at startup or by
//! an early mesh op from a shard that started serving first.

pub mod bridge;
pub mod listener;
pub mod state;
pub mod websocket;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use rmq_protocols::kernel::{Acks, Kernel, KernelError, ProduceInput, TopicPartition};
use rmq_protocols::mqtt::persist::StateRecord;
use rmq_protocols::mqtt::{MeshClosed, MqttKernel, MqttShard, ShardMessage};

use crate::constants::BRIDGE_APPEND_TIMEOUT_MS;
use crate::kernel::ShardKernel;
use crate::shard::{now_ms, Shard, ShardId, ShardOp};

/// An MQTT op from another shard.
pub type MqttOp = ShardMessage;

/// `MqttKernel` over a glommio shard and its mesh.
pub struct BrokerMqttKernel {
    shard: Rc<Shard>,
}

impl MqttKernel for BrokerMqttKernel {
    fn shard_id(&self) -> u16 {
        self.shard.id.0
    }

    fn shard_count(&self) -> u16 {
        // The config caps cores at u16::MAX.
        u16::try_from(self.shard.shard_count).unwrap_or(u16::MAX)
    }

    async fn send(&self, to: u16, message: ShardMessage) -> Result<(), MeshClosed> {
        self.shard
            .send(ShardId(to), ShardOp::Mqtt(message))
            .await
            .map_err(|_| MeshClosed)
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        glommio::spawn_local(task).detach();
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + 'static {
        glommio::timer::sleep(duration)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(now_ms()).unwrap_or(0)
    }

    fn accepting(&self) -> bool {
        !self.shard.is_stopping()
    }

    /// On the executor's blocking thread (glommio keeps one per executor by default), so the
    /// shard goes on serving while an Argon2 hash is checked.
    fn run_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> impl Future<Output = R> {
        glommio::executor().spawn_blocking(work)
    }

    fn partition_count(&self, topic: &str) -> Option<i32> {
        let metadata = self.shard.metadata();
        let topic = metadata.topics.get(topic)?;
        i32::try_from(topic.partition_shards.len()).ok()
    }

    async fn append(
        &self,
        inputs: Vec<(TopicPartition, Bytes)>,
        durable: bool,
    ) -> Vec<Result<(), KernelError>> {
        let acks = if durable { Acks::All } else { Acks::Leader };
        let inputs = inputs
            .into_iter()
            .map(|(partition, records)| ProduceInput { partition, records })
            .collect();
        let kernel = ShardKernel::new(self.shard.clone());
        kernel
            .produce(acks, BRIDGE_APPEND_TIMEOUT_MS, inputs)
            .await
            .into_iter()
            .map(|result| result.map(|_| ()))
            .collect()
    }

    async fn state_append(&self, records: Vec<StateRecord>) -> Result<(), KernelError> {
        state::append(&self.shard, records).await
    }
}

pub type Engine = MqttShard<BrokerMqttKernel>;

thread_local! {
    static ENGINE: RefCell<Option<Rc<Engine>>> = const { RefCell::new(None) };
}

/// This shard's MQTT state (created on first use).
pub fn engine(shard: &Rc<Shard>) -> Rc<Engine> {
    if let Some(engine) = ENGINE.with(|slot| slot.borrow().clone()) {
        return engine;
    }
    let engine = MqttShard::new(
        BrokerMqttKernel {
            shard: shard.clone(),
        },
        shard.config.mqtt.clone(),
    );
    ENGINE.with(|slot| *slot.borrow_mut() = Some(engine.clone()));
    engine
}

/// Serves an MQTT op another shard sent to this one.
pub fn handle_op(shard: &Rc<Shard>, op: MqttOp) {
    engine(shard).handle_message(op);
}
