//! The broker side of MQTT persistence (`rmq_protocols::mqtt::persist`): the internal compacted
//! topic `__mqtt_state` (one partition, created by shard 0 on the first start), reading it back
//! before the node reports ready, the periodic writer, and the last write at shutdown.
//!
//! Startup: every shard reads the whole partition (latest record per key) and installs its
//! share: shard 0 the retained messages, each shard the sessions its registry owns. Shutdown:
//! every shard writes its changes once its connections are closed, then waits (bounded) until
//! every shard has, so no shard closes the state partition's log while another still writes.
//!
//! Concurrency contract: runs on each shard's executor; reads and appends go through
//! `ShardKernel`, which routes them to the partition's owning shard.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use rmq_protocols::kafka::record_batch::{encode_plain_batch, PlainRecord};
use rmq_protocols::kernel::{
    Acks, Kernel, KernelError, ProduceInput, ReadInput, TopicPartition, TopicSpec,
};
use rmq_protocols::mqtt::persist::{latest_per_key, StateRecord, STATE_TOPIC};
use rmq_storage::validate_stored_batches;
use tracing::{info, warn};

use crate::kernel::ShardKernel;
use crate::node::create_topic_at_startup;
use crate::shard::{now_ms, Shard};

/// `max.message.bytes` of `__mqtt_state`: room for the largest session image
/// (`SESSION_IMAGE_MAX_BYTES`) in one batch.
const STATE_TOPIC_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of records put in one batch of a state write.
const STATE_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// `segment.bytes` of `__mqtt_state`.
const STATE_TOPIC_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes read per step when `__mqtt_state` is read back at startup.
const STATE_LOAD_READ_BYTES: usize = 4 * 1024 * 1024;
/// How long an append of state records may wait for its durable write.
const STATE_APPEND_TIMEOUT_MS: u32 = 30_000;
/// Poll interval while a shard waits for shard 0 to create `__mqtt_state`, or at shutdown
/// for the other shards' last writes.
const STATE_WAIT_POLL_MS: u64 = 5;
/// How long a shard waits at startup for `__mqtt_state` to appear in its metadata.
const STATE_TOPIC_WAIT_TIMEOUT_MS: u64 = 60_000;
/// How long a shard waits at shutdown for the other shards' last state writes.
const SHUTDOWN_STATE_WAIT_MS: u64 = 3_000;

fn state_partition() -> TopicPartition {
    TopicPartition {
        topic: STATE_TOPIC.to_string(),
        partition: 0,
    }
}

/// Shard 0: creates `__mqtt_state` (compacted, kept forever) if it does not exist.
pub async fn ensure_topic(shard: &Rc<Shard>) -> anyhow::Result<()> {
    if shard.metadata().topics.contains_key(STATE_TOPIC) {
        return Ok(());
    }
    let spec = TopicSpec {
        name: STATE_TOPIC.to_string(),
        partition_count: 1,
        replication_factor: -1,
        configs: vec![
            ("cleanup.policy".to_string(), Some("compact".to_string())),
            ("retention.ms".to_string(), Some("-1".to_string())),
            (
                "max.message.bytes".to_string(),
                Some(STATE_TOPIC_MAX_MESSAGE_BYTES.to_string()),
            ),
            (
                "segment.bytes".to_string(),
                Some(STATE_TOPIC_SEGMENT_BYTES.to_string()),
            ),
        ],
    };
    create_topic_at_startup(shard, spec).await.map(|_| ())
}

/// Appends state records to `__mqtt_state` in order, in batches of at most
/// `STATE_BATCH_MAX_BYTES` (one larger record gets a batch of its own), and waits until they
/// are durable.
pub async fn append(shard: &Rc<Shard>, records: Vec<StateRecord>) -> Result<(), KernelError> {
    let now = now_ms();
    let mut inputs = Vec::new();
    let mut batch: Vec<PlainRecord> = Vec::new();
    let mut batch_bytes = 0usize;
    let encode = |batch: Vec<PlainRecord>| -> Result<ProduceInput, KernelError> {
        let records = encode_plain_batch(batch, now)
            .map_err(|e| KernelError::CorruptMessage(format!("state batch: {e}")))?;
        Ok(ProduceInput {
            partition: state_partition(),
            records: records.freeze(),
        })
    };
    for record in records {
        let size = record.key.len() + record.value.as_ref().map_or(0, Bytes::len);
        if !batch.is_empty() && batch_bytes + size > STATE_BATCH_MAX_BYTES {
            inputs.push(encode(std::mem::take(&mut batch))?);
            batch_bytes = 0;
        }
        batch_bytes += size;
        batch.push(PlainRecord {
            key: Some(record.key),
            value: record.value,
            headers: Default::default(),
        });
    }
    if !batch.is_empty() {
        inputs.push(encode(batch)?);
    }
    let kernel = ShardKernel::new(shard.clone());
    for result in kernel
        .produce(Acks::All, STATE_APPEND_TIMEOUT_MS, inputs)
        .await
    {
        result?;
    }
    Ok(())
}

/// Reads `__mqtt_state` back: the latest value of every key still present.
async fn load(shard: &Rc<Shard>) -> anyhow::Result<Vec<(Bytes, Bytes)>> {
    let deadline = Instant::now() + Duration::from_millis(STATE_TOPIC_WAIT_TIMEOUT_MS);
    while !shard.metadata().topics.contains_key(STATE_TOPIC) {
        if Instant::now() > deadline || shard.is_stopping() {
            bail!("{STATE_TOPIC} did not appear within {STATE_TOPIC_WAIT_TIMEOUT_MS} ms");
        }
        glommio::timer::sleep(Duration::from_millis(STATE_WAIT_POLL_MS)).await;
    }
    let kernel = ShardKernel::new(shard.clone());
    let mut records = Vec::new();
    let mut offset = 0i64;
    let mut skipped_batches = 0usize;
    loop {
        let input = ReadInput {
            partition: state_partition(),
            offset,
            max_bytes: STATE_LOAD_READ_BYTES,
        };
        let Some(output) = kernel.read(vec![input]).await.into_iter().next() else {
            bail!("reading {STATE_TOPIC}: no answer");
        };
        let mut stored = match output.records {
            Ok(stored) => stored,
            Err(KernelError::OffsetOutOfRange) if offset < output.log_start_offset => {
                offset = output.log_start_offset;
                continue;
            }
            Err(e) => bail!("reading {STATE_TOPIC} at offset {offset}: {e}"),
        };
        if stored.is_empty() || offset >= output.high_watermark {
            break;
        }
        // Compacted batches may hold fewer records than offsets: the headers say where the
        // next batch starts.
        let headers = validate_stored_batches(&stored, usize::MAX)
            .map_err(|e| anyhow::anyhow!("{STATE_TOPIC} at offset {offset}: {e}"))?;
        let Some(last) = headers.last() else {
            break;
        };
        let next = last.base_offset + i64::from(last.last_offset_delta) + 1;
        let sets = match RecordBatchDecoder::decode_all(&mut stored) {
            Ok(sets) => sets,
            Err(e) => bail!("decoding {STATE_TOPIC} at offset {offset}: {e}"),
        };
        for record in sets.into_iter().flat_map(|set| set.records) {
            if record.offset < offset || record.control {
                continue;
            }
            let Some(key) = record.key else {
                skipped_batches += 1;
                continue;
            };
            records.push(StateRecord {
                key,
                value: record.value,
            });
        }
        if next <= offset {
            bail!("{STATE_TOPIC} does not advance at offset {offset}");
        }
        offset = next;
    }
    if skipped_batches > 0 {
        warn!(
            skipped = skipped_batches,
            "{STATE_TOPIC}: records without a key skipped"
        );
    }
    Ok(latest_per_key(records))
}

/// Every shard, before the node reports ready: installs its share of the stored MQTT state
/// and starts the periodic writer.
pub async fn restore(shard: &Rc<Shard>) -> anyhow::Result<()> {
    let records = load(shard).await?;
    let engine = super::engine(shard);
    let restored = engine.restore_state(&records).await;
    if restored.skipped > 0 {
        warn!(
            shard = shard.id.0,
            skipped = restored.skipped,
            "{STATE_TOPIC}: undecodable records skipped"
        );
    }
    if restored.retained + restored.sessions + restored.expired > 0 {
        info!(
            shard = shard.id.0,
            retained = restored.retained,
            sessions = restored.sessions,
            queued_messages = restored.queued_messages,
            expired_sessions = restored.expired,
            "MQTT state restored"
        );
    }
    engine.spawn_state_writer();
    Ok(())
}

/// Every shard, at shutdown once its connections are closed: writes what changed, then waits
/// (at most `SHUTDOWN_STATE_WAIT_MS`) until every shard has (`written` counts them).
pub async fn write_at_shutdown(shard: &Rc<Shard>, written: &AtomicUsize, shard_count: usize) {
    let engine = super::engine(shard);
    // Closed first (the listener's shutdown hook may not have run yet), so no publish is
    // acknowledged after the last write.
    engine.close_all();
    if let Err(e) = engine.write_state().await {
        warn!(shard = shard.id.0, error = %e, "MQTT state not written at shutdown");
    }
    written.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_STATE_WAIT_MS);
    while written.load(Ordering::SeqCst) < shard_count && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(STATE_WAIT_POLL_MS)).await;
    }
}
