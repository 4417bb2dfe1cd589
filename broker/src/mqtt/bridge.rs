//! The broker side of the MQTT <-> Kafka bridge rules (`[[bridge.mqtt_to_kafka]]`; the rules,
//! record layout and origin marker are in `rmq_protocols::mqtt::bridge`).
//!
//! - At startup shard 0 creates each rule's Kafka topic if it is missing (`partitions`, default
//!   the node's core count); an existing topic keeps its partitions and configs.
//! - Kafka -> MQTT: every shard runs one tailer task per bridged partition it owns. A tailer
//!   starts where it stopped before a restart (its next offset is kept in `__mqtt_state`,
//!   written every `mqtt.state_flush_interval_ms` and at shutdown; after a crash the records
//!   of the last interval are routed again) or, the first time, at the log end; it waits for
//!   data past its position,
//!   reads at most `BRIDGE_READ_MAX_BYTES`, and routes each record produced by a Kafka client
//!   through this shard's MQTT engine as a QoS 1 publish. The node reports ready only after
//!   every tailer has its start position, so a record produced after the ready line is routed.
//!   Partitions added later are tailed after the next restart.
//!
//! Concurrency contract: tailers run on the shard that owns their partition and read it
//! locally; routing uses the MQTT engine of that shard (one thread, no shared state).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rmq_protocols::kernel::{
    Kernel, KernelError, ReadInput, TopicPartition, TopicSpec, LIST_OFFSETS_EARLIEST,
    LIST_OFFSETS_LATEST,
};
use rmq_protocols::mqtt::bridge::{decode_records, BridgeRule};
use rmq_protocols::mqtt::message::Message;
use tracing::{debug, info, warn};

use crate::constants::{BRIDGE_ERROR_BACKOFF_MS, BRIDGE_READ_MAX_BYTES, BRIDGE_WAIT_TIMEOUT_MS};
use crate::kernel::ShardKernel;
use crate::node::create_topic_at_startup;
use crate::shard::Shard;

/// Poll interval while a shard waits for shard 0 to create the bridged topics.
const TOPIC_WAIT_POLL_MS: u64 = 20;
/// How long a shard waits at startup for the bridged topics to appear in its metadata.
const TOPIC_WAIT_TIMEOUT_MS: u64 = 60_000;

/// Shard 0: creates every rule's Kafka topic that does not exist yet.
pub async fn ensure_topics(shard: &Rc<Shard>) -> anyhow::Result<()> {
    for rule in shard.config.mqtt.bridge.rules() {
        if shard.metadata().topics.contains_key(&rule.topic) {
            continue;
        }
        let spec = TopicSpec {
            name: rule.topic.clone(),
            partition_count: rule.partitions,
            replication_factor: -1,
            configs: Vec::new(),
        };
        if create_topic_at_startup(shard, spec).await? {
            info!(
                topic = %rule.topic,
                partitions = rule.partitions,
                filter = %rule.filter,
                "bridge: created Kafka topic"
            );
        }
    }
    Ok(())
}

/// Every shard: waits until the bridged topics exist, then starts a tailer at the log end of
/// each bridged partition this shard owns.
pub async fn start_tailers(shard: &Rc<Shard>) -> anyhow::Result<()> {
    let rules = shard.config.mqtt.bridge.rules().to_vec();
    if rules.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_millis(TOPIC_WAIT_TIMEOUT_MS);
    while !rules
        .iter()
        .all(|rule| shard.metadata().topics.contains_key(&rule.topic))
    {
        if Instant::now() > deadline || shard.is_stopping() {
            bail!("bridge topics did not appear within {TOPIC_WAIT_TIMEOUT_MS} ms");
        }
        glommio::timer::sleep(Duration::from_millis(TOPIC_WAIT_POLL_MS)).await;
    }
    let kernel = ShardKernel::new(shard.clone());
    let engine = super::engine(shard);
    for rule in rules {
        let partition_count = shard
            .metadata()
            .topics
            .get(&rule.topic)
            .map_or(0, |t| t.partition_shards.len());
        for index in 0..partition_count {
            let partition = TopicPartition {
                topic: rule.topic.clone(),
                partition: i32::try_from(index).context("partition index")?,
            };
            if shard.owner_of(&partition) != Some(shard.id) {
                continue;
            }
            let (end, _) = kernel
                .list_offset(partition.clone(), LIST_OFFSETS_LATEST)
                .await
                .map_err(|e| anyhow::anyhow!("bridge: log end of {partition:?}: {e}"))?;
            let (log_start, _) = kernel
                .list_offset(partition.clone(), LIST_OFFSETS_EARLIEST)
                .await
                .map_err(|e| anyhow::anyhow!("bridge: log start of {partition:?}: {e}"))?;
            // Where the tailer stopped before the restart, if it still lies in the log;
            // otherwise (first start, a log cut since) the log end.
            let start = engine
                .bridge_position(&partition.topic, partition.partition)
                .filter(|stopped| (log_start..=end).contains(stopped))
                .unwrap_or(end);
            if start < end {
                info!(
                    ?partition,
                    records = end - start,
                    "bridge: routing records not routed before the restart"
                );
            }
            debug!(?partition, start, "bridge: tailing");
            let tailer = Tailer {
                shard: shard.clone(),
                kernel: kernel.clone(),
                rule: rule.clone(),
                partition,
                next_offset: start,
                skipped: 0,
            };
            glommio::spawn_local(tailer.run()).detach();
        }
    }
    Ok(())
}

/// Routes the Kafka-produced records of one bridged partition to MQTT subscribers.
struct Tailer {
    shard: Rc<Shard>,
    kernel: ShardKernel,
    rule: BridgeRule,
    partition: TopicPartition,
    next_offset: i64,
    /// Records skipped for a missing or invalid key (logged on the first one).
    skipped: u64,
}

impl Tailer {
    async fn run(mut self) {
        let engine = super::engine(&self.shard);
        while !self.shard.is_stopping() {
            self.kernel
                .wait_for_data(
                    vec![(self.partition.clone(), self.next_offset)],
                    BRIDGE_WAIT_TIMEOUT_MS,
                )
                .await;
            let read = self
                .kernel
                .read(vec![ReadInput {
                    partition: self.partition.clone(),
                    offset: self.next_offset,
                    max_bytes: BRIDGE_READ_MAX_BYTES,
                }])
                .await;
            let Some(output) = read.into_iter().next() else {
                return;
            };
            let stored = match output.records {
                Ok(stored) if stored.is_empty() => continue,
                Ok(stored) => stored,
                Err(KernelError::OffsetOutOfRange) => {
                    // Retention or DeleteRecords passed our position: go on from the start.
                    self.next_offset = self.next_offset.max(output.log_start_offset);
                    continue;
                }
                Err(KernelError::UnknownTopicOrPartition) => {
                    info!(partition = ?self.partition, "bridge: partition gone; tailer stops");
                    return;
                }
                Err(KernelError::ShuttingDown) => return,
                Err(e) => {
                    warn!(partition = ?self.partition, error = %e, "bridge: read failed");
                    self.backoff().await;
                    continue;
                }
            };
            let decoded = match decode_records(&self.rule, stored, self.next_offset) {
                Ok(decoded) => decoded,
                Err(e) => {
                    // Stored batches passed CRC checks on produce; skip what cannot be read.
                    warn!(partition = ?self.partition, error = %e, "bridge: skipping undecodable batches");
                    self.next_offset = self.next_offset.max(output.high_watermark);
                    continue;
                }
            };
            if decoded.skipped > 0 {
                if self.skipped == 0 {
                    warn!(
                        partition = ?self.partition,
                        filter = %self.rule.filter,
                        "bridge: Kafka records without a key that is an MQTT topic matching the \
                         rule's filter are not routed to MQTT (logged once per partition)"
                    );
                }
                self.skipped += decoded.skipped;
            }
            for inbound in decoded.inbound {
                let message = Arc::new(Message {
                    id: engine.next_message_id(),
                    topic: inbound.topic,
                    payload: inbound.payload,
                    qos: 1,
                    retain: false,
                    properties: inbound.properties,
                    publisher: None,
                    expires_at_ms: None,
                });
                if engine.publish(message).await.is_err() {
                    return;
                }
                let routed = engine.stats.bridged_from_kafka.get() + 1;
                engine.stats.bridged_from_kafka.set(routed);
            }
            match decoded.next_offset {
                Some(next) => {
                    self.next_offset = next;
                    engine.set_bridge_position(
                        &self.partition.topic,
                        self.partition.partition,
                        next,
                    );
                }
                None => {
                    // Nothing at or past our position in what was read (compacted away).
                    self.next_offset = self.next_offset.max(output.high_watermark);
                    self.backoff().await;
                }
            }
        }
    }

    async fn backoff(&self) {
        glommio::timer::sleep(Duration::from_millis(BRIDGE_ERROR_BACKOFF_MS)).await;
    }
}
