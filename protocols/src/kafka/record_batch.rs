//! Record batches built on the broker side (MQTT bridge, the offsets log, the `rmq produce`
//! CLI): uncompressed RecordBatch v2 with no producer id, records at offsets 0..n of the batch
//! (the log assigns the real offsets on append).
//!
//! Concurrency contract: pure functions.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// One record of a batch without a producer.
#[derive(Clone, Debug, Default)]
pub struct PlainRecord {
    pub key: Option<Bytes>,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    pub headers: IndexMap<StrBytes, Option<Bytes>>,
}

/// Encodes `records`, in order, as one uncompressed RecordBatch v2 stamped `timestamp_ms`.
pub fn encode_plain_batch(
    records: impl IntoIterator<Item = PlainRecord>,
    timestamp_ms: i64,
) -> anyhow::Result<BytesMut> {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let offset = i64::try_from(index).unwrap_or(i64::MAX);
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                // The encoder keeps records in one batch while offset - sequence is constant;
                // this makes the batch's base sequence -1 (no producer).
                sequence: i32::try_from(offset - 1).unwrap_or(i32::MAX),
                timestamp: timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record.headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options)?;
    Ok(buf)
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), as its default partitioner hashes keys.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default partition of a key among `partition_count`: `toPositive(murmur2(key)) % n`,
/// where Java producers put it.
pub fn partition_for_key(key: &[u8], partition_count: i32) -> i32 {
    (murmur2(key) & i32::MAX) % partition_count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    /// Offset, key, value, timestamp, producer id of a decoded record.
    type Seen = (i64, Option<Bytes>, Option<Bytes>, i64, i64);

    #[test]
    fn records_stay_in_one_batch_in_order_without_a_producer() {
        let records = (0..3).map(|i| PlainRecord {
            key: Some(Bytes::from(format!("k{i}"))),
            value: (i != 1).then(|| Bytes::from(format!("v{i}"))),
            headers: IndexMap::default(),
        });
        let mut bytes = encode_plain_batch(records, 7).expect("encode").freeze();
        let sets = RecordBatchDecoder::decode_all(&mut bytes).expect("decode");
        assert_eq!(sets.len(), 1);
        let got: Vec<Seen> = sets[0]
            .records
            .iter()
            .map(|r| {
                (
                    r.offset,
                    r.key.clone(),
                    r.value.clone(),
                    r.timestamp,
                    r.producer_id,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Some(Bytes::from("k0")), Some(Bytes::from("v0")), 7, -1),
                (1, Some(Bytes::from("k1")), None, 7, -1),
                (2, Some(Bytes::from("k2")), Some(Bytes::from("v2")), 7, -1),
            ]
        );
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
        for partitions in [1, 3, 16] {
            let p = partition_for_key(b"sensors/a/b", partitions);
            assert!((0..partitions).contains(&p));
            assert_eq!(p, partition_for_key(b"sensors/a/b", partitions));
        }
    }
}
