//! Committed offsets as records of the internal `__consumer_offsets` topic, in Kafka's own
//! layout: key v1 = (group, topic, partition), value v3 = (offset, leader epoch, metadata,
//! commit timestamp); a record without a value (tombstone) deletes the key. The latest record
//! of a key wins when the partition is read back at startup.
//!
//! Stored bytes are untrusted on the way back in: a record that does not decode is skipped.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use rmq_protocols::kafka::record_batch::{encode_plain_batch, PlainRecord};
use rmq_protocols::kernel::{CommittedOffset, TopicPartition};

/// Key schema version of an offset commit (Kafka's OffsetCommitKey v1).
const OFFSET_KEY_VERSION: i16 = 1;
/// Value schema version of an offset commit (Kafka's OffsetCommitValue v3).
const OFFSET_VALUE_VERSION: i16 = 3;

/// One change of a group's committed offset: `None` deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetRecord {
    pub group_id: String,
    pub partition: TopicPartition,
    pub committed: Option<CommittedOffset>,
}

fn put_string(buf: &mut BytesMut, value: &str) {
    let len = i16::try_from(value.len()).unwrap_or(i16::MAX);
    buf.put_i16(len);
    buf.put_slice(&value.as_bytes()[..usize::try_from(len).unwrap_or(0)]);
}

fn get_string(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_i16();
    if len < 0 {
        return Some(String::new());
    }
    let len = usize::try_from(len).ok()?;
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}

fn encode_key(group_id: &str, partition: &TopicPartition) -> Bytes {
    let mut key = BytesMut::with_capacity(2 + 2 + group_id.len() + 2 + partition.topic.len() + 4);
    key.put_i16(OFFSET_KEY_VERSION);
    put_string(&mut key, group_id);
    put_string(&mut key, &partition.topic);
    key.put_i32(partition.partition);
    key.freeze()
}

fn encode_value(committed: &CommittedOffset, commit_timestamp_ms: i64) -> Bytes {
    let metadata = committed.metadata.as_deref().unwrap_or("");
    let mut value = BytesMut::with_capacity(2 + 8 + 4 + 2 + metadata.len() + 8);
    value.put_i16(OFFSET_VALUE_VERSION);
    value.put_i64(committed.offset);
    value.put_i32(committed.leader_epoch);
    put_string(&mut value, metadata);
    value.put_i64(commit_timestamp_ms);
    value.freeze()
}

fn decode_key(mut key: Bytes) -> Option<(String, TopicPartition)> {
    if key.remaining() < 2 || key.get_i16() > OFFSET_KEY_VERSION {
        return None;
    }
    let group_id = get_string(&mut key)?;
    let topic = get_string(&mut key)?;
    if key.remaining() < 4 {
        return None;
    }
    Some((
        group_id,
        TopicPartition {
            topic,
            partition: key.get_i32(),
        },
    ))
}

fn decode_value(mut value: Bytes) -> Option<CommittedOffset> {
    if value.remaining() < 2 {
        return None;
    }
    let version = value.get_i16();
    if !(0..=OFFSET_VALUE_VERSION).contains(&version) || value.remaining() < 8 {
        return None;
    }
    let offset = value.get_i64();
    let leader_epoch = if version >= 3 {
        if value.remaining() < 4 {
            return None;
        }
        value.get_i32()
    } else {
        -1
    };
    let metadata = get_string(&mut value)?;
    Some(CommittedOffset {
        offset,
        leader_epoch,
        metadata: Some(metadata),
    })
}

/// One uncompressed RecordBatch v2 holding `records` (offsets assigned by the log on append).
pub fn encode_batch(records: &[OffsetRecord], now_ms: i64) -> anyhow::Result<BytesMut> {
    let records = records.iter().map(|r| PlainRecord {
        key: Some(encode_key(&r.group_id, &r.partition)),
        value: r.committed.as_ref().map(|c| encode_value(c, now_ms)),
        headers: Default::default(),
    });
    encode_plain_batch(records, now_ms)
}

/// The offset records in stored batches; undecodable batches or records are skipped and
/// counted in the second value.
pub fn decode_batches(mut stored: Bytes) -> (Vec<OffsetRecord>, usize) {
    let mut skipped = 0;
    let mut out = Vec::new();
    let sets = match RecordBatchDecoder::decode_all(&mut stored) {
        Ok(sets) => sets,
        Err(_) => return (out, 1),
    };
    for record in sets.into_iter().flat_map(|set| set.records) {
        let Some((group_id, partition)) = record.key.and_then(decode_key) else {
            skipped += 1;
            continue;
        };
        let committed = match record.value {
            None => None,
            Some(value) => match decode_value(value) {
                Some(committed) => Some(committed),
                None => {
                    skipped += 1;
                    continue;
                }
            },
        };
        out.push(OffsetRecord {
            group_id,
            partition,
            committed,
        });
    }
    (out, skipped)
}

/// Kafka's `Utils.abs(groupId.hashCode) % partitions`: Java's String.hashCode over UTF-16.
pub fn partition_for(group_id: &str, partition_count: i32) -> i32 {
    let hash = group_id.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let positive = hash & i32::MAX;
    positive % partition_count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, partition: i32, offset: i64) -> OffsetRecord {
        OffsetRecord {
            group_id: group.to_string(),
            partition: TopicPartition {
                topic: "orders".to_string(),
                partition,
            },
            committed: Some(CommittedOffset {
                offset,
                leader_epoch: 0,
                metadata: Some("meta".to_string()),
            }),
        }
    }

    #[test]
    fn offset_records_round_trip_through_one_batch() {
        let mut tombstone = commit("g2", 1, 0);
        tombstone.committed = None;
        let records = vec![commit("g1", 0, 42), commit("g1", 3, 7), tombstone];
        let batch = encode_batch(&records, 1_000).expect("encodes");
        let headers = rmq_storage::validate_batches(&batch, 1 << 20).expect("one valid batch");
        assert_eq!(headers.len(), 1, "all records in one batch");
        assert_eq!(headers[0].base_sequence, -1);
        let (decoded, skipped) = decode_batches(batch.freeze());
        assert_eq!(skipped, 0);
        assert_eq!(decoded, records);
    }

    #[test]
    fn group_partition_matches_java_string_hash_code() {
        // "hello".hashCode() == 99162322 in Java.
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        assert!((0..16).contains(&partition_for("a-group-with-a-negative-hash-xyz", 16)));
    }

    #[test]
    fn garbage_records_are_skipped() {
        let (decoded, skipped) = decode_batches(Bytes::from_static(b"not a batch"));
        assert!(decoded.is_empty());
        assert_eq!(skipped, 1);
    }
}
