//! A consumer: one connection, partitions assigned directly (no consumer group), long-poll
//! Fetch from offset 0, end-to-end latency from the send time in each payload's first 8 bytes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use crate::kafka_client::{Conn, Versions};
use crate::report::{Clock, LocalHist, Metrics};

/// Longest accepted `--fetch-max-wait-ms` (the broker long-polls at most this long).
pub const MAX_FETCH_WAIT_MS: i32 = 10_000;
/// Most bytes one Fetch response may carry (all partitions).
pub const FETCH_MAX_BYTES: i32 = 32 * 1024 * 1024;
/// Most bytes per partition in one Fetch response.
pub const PARTITION_MAX_BYTES: i32 = 4 * 1024 * 1024;
/// Pause after a failed Fetch before retrying.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Consecutive failed Fetches after which the consumer gives up.
pub const MAX_CONSECUTIVE_ERRORS: u32 = 50;
/// Socket read timeout: a Fetch must come back within this (long-poll wait included).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a consumer waiting for the backlog to build checks the published byte count.
pub const BACKLOG_POLL: Duration = Duration::from_millis(10);
/// Bytes of a RecordBatch header up to and including `lastOffsetDelta`.
const BATCH_LAST_OFFSET_DELTA_END: usize = 27;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub addr: String,
    pub versions: Versions,
    pub topic: String,
    pub partitions: Vec<i32>,
    /// Start fetching only once producers have published this many bytes (OMB backlog mode).
    pub backlog_bytes: u64,
    /// Long-poll wait of one Fetch (FetchRequest.max_wait_ms).
    pub max_wait_ms: i32,
}

pub fn spawn(
    cfg: ConsumerConfig,
    clock: Clock,
    metrics: Arc<Metrics>,
    id: usize,
) -> Result<JoinHandle<()>> {
    let conn = Conn::connect(&cfg.addr, cfg.versions)?;
    conn.set_read_timeout(Some(FETCH_TIMEOUT))?;
    Ok(std::thread::Builder::new()
        .name(format!("cons-{id}"))
        .spawn(move || {
            if let Err(e) = run(conn, &cfg, clock, &metrics) {
                eprintln!("consumer {id}: {e:#}");
                metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
            }
        })?)
}

/// Split a fetched record set into complete batches: a broker may cut the last one short.
/// Returns (complete batches, offset after the last complete batch).
pub fn complete_batches(records: &Bytes) -> (Bytes, Option<i64>) {
    let mut pos = 0usize;
    let mut next = None;
    while records.len() >= pos + BATCH_LAST_OFFSET_DELTA_END {
        let h = &records[pos..];
        let base = i64::from_be_bytes(h[0..8].try_into().unwrap_or([0; 8]));
        let len = i32::from_be_bytes(h[8..12].try_into().unwrap_or([0; 4]));
        let Ok(len) = usize::try_from(len) else { break };
        let total = 12 + len;
        if len < BATCH_LAST_OFFSET_DELTA_END - 12 || h.len() < total {
            break;
        }
        let delta = i32::from_be_bytes(h[23..27].try_into().unwrap_or([0; 4]));
        next = Some(base + i64::from(delta) + 1);
        pos += total;
    }
    (records.slice(..pos), next)
}

fn run(mut conn: Conn, cfg: &ConsumerConfig, clock: Clock, metrics: &Metrics) -> Result<()> {
    while cfg.backlog_bytes > 0
        && metrics.sent_bytes.load(Ordering::Relaxed) < cfg.backlog_bytes
        && !metrics.stopped()
    {
        std::thread::sleep(BACKLOG_POLL);
    }
    let mut offsets: Vec<i64> = vec![0; cfg.partitions.len()];
    let mut local = LocalHist::new();
    let mut consecutive_errors = 0u32;
    let topic = TopicName(StrBytes::from_string(cfg.topic.clone()));
    while !metrics.consumers_stopped() {
        let req = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(cfg.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic.clone())
                .with_partitions(
                    cfg.partitions
                        .iter()
                        .zip(&offsets)
                        .map(|(p, o)| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(*o)
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(PARTITION_MAX_BYTES)
                        })
                        .collect(),
                )]);
        let resp = match conn.call(cfg.versions.fetch, &req).context("Fetch") {
            Ok(r) => r,
            Err(e) => {
                metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
                consecutive_errors += 1;
                if consecutive_errors >= MAX_CONSECUTIVE_ERRORS || metrics.consumers_stopped() {
                    return Err(e);
                }
                std::thread::sleep(ERROR_BACKOFF);
                conn = Conn::connect(&cfg.addr, cfg.versions)?;
                conn.set_read_timeout(Some(FETCH_TIMEOUT))?;
                continue;
            }
        };
        consecutive_errors = 0;
        if resp.error_code != 0 {
            metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
            metrics.note_error_code(resp.error_code);
            std::thread::sleep(ERROR_BACKOFF);
            continue;
        }
        let now = clock.now_us();
        for t in &resp.responses {
            for pd in &t.partitions {
                let Some(idx) = cfg.partitions.iter().position(|p| *p == pd.partition_index) else {
                    continue;
                };
                if pd.error_code != 0 {
                    metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
                    metrics.note_error_code(pd.error_code);
                    continue;
                }
                let Some(records) = &pd.records else { continue };
                let (complete, next) = complete_batches(records);
                if complete.is_empty() {
                    continue;
                }
                let mut buf = complete;
                let sets = match RecordBatchDecoder::decode_all(&mut buf) {
                    Ok(s) => s,
                    Err(e) => {
                        metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "consumer: undecodable batch on {}: {e:#}",
                            pd.partition_index
                        );
                        continue;
                    }
                };
                let from = offsets[idx];
                let (mut n, mut bytes) = (0u64, 0u64);
                for set in &sets {
                    for r in set
                        .records
                        .iter()
                        .filter(|r| r.offset >= from && !r.control)
                    {
                        n += 1;
                        if let Some(v) = &r.value {
                            bytes += v.len() as u64;
                            if let Some(ts) = v.get(..8).and_then(|s| s.try_into().ok()) {
                                local.record(now.saturating_sub(u64::from_be_bytes(ts)));
                            }
                        }
                    }
                }
                if let Some(next) = next {
                    offsets[idx] = offsets[idx].max(next);
                }
                metrics.recv_msgs.fetch_add(n, Ordering::Relaxed);
                metrics.recv_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        if local.due() {
            metrics.merge_e2e(&mut local);
        }
    }
    metrics.merge_e2e(&mut local);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::encode_batch;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn truncated_trailing_batch_is_left_for_the_next_fetch() {
        let mut payload = BytesMut::new();
        payload.put_u64(7);
        let mut one = BytesMut::new();
        encode_batch(&mut one, payload.freeze(), 8, &[7]).unwrap();
        let one = one.freeze();
        let mut two = BytesMut::new();
        two.put_slice(&one);
        two.put_slice(&one[..one.len() - 3]);
        let (complete, next) = complete_batches(&two.freeze());
        assert_eq!(complete.len(), one.len());
        assert_eq!(next, Some(1));
    }
}
