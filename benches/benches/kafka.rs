//! Kafka hot paths: Produce request decode (kafka-protocol, as the broker's connection loop
//! does it: request header, then body) and RecordBatch validation (rmq_storage, CRC32C over
//! the stored bytes).
//!
//!     cargo bench -p rmq-bench --bench kafka

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Produce version the benchmark encodes (flexible: header v2).
const PRODUCE_VERSION: i16 = 9;
/// The broker's largest accepted batch (Kafka's default max.message.bytes).
const MAX_BATCH_BYTES: usize = 1024 * 1024 + 12;

fn batch(records: usize, value_size: usize) -> Bytes {
    let recs: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(vec![(i % 251) as u8; value_size])),
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    out.freeze()
}

/// A Produce request body (header + request, no size prefix) with one batch per partition.
fn produce_request(partitions: i32, batch: &Bytes) -> Bytes {
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench-topic")))
            .with_partition_data(
                (0..partitions)
                    .map(|p| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(batch.clone()))
                    })
                    .collect(),
            )]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(PRODUCE_VERSION)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("rmq-bench")));
    let hv = ApiKey::Produce.request_header_version(PRODUCE_VERSION);
    let mut out = BytesMut::new();
    header.encode(&mut out, hv).expect("encode header");
    req.encode(&mut out, PRODUCE_VERSION)
        .expect("encode produce");
    out.freeze()
}

fn produce_decode(c: &mut Criterion) {
    let hv = ApiKey::Produce.request_header_version(PRODUCE_VERSION);
    let mut g = c.benchmark_group("kafka_produce_decode");
    for (name, partitions, records, size) in
        [("1p_100x100B", 1, 100, 100), ("16p_16x1KiB", 16, 16, 1024)]
    {
        let body = produce_request(partitions, &batch(records, size));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = body.clone();
                let h = RequestHeader::decode(&mut buf, hv).expect("header");
                let r = ProduceRequest::decode(&mut buf, PRODUCE_VERSION).expect("body");
                black_box((h, r))
            })
        });
    }
    g.finish();
}

fn batch_validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_batch_validate");
    for (name, records, size) in [
        ("100x100B", 100, 100),
        ("16x1KiB", 16, 1024),
        ("1000x1KiB", 1000, 1024),
    ] {
        let b = batch(records, size);
        rmq_storage::validate_batches(&b, MAX_BATCH_BYTES).expect("valid batch");
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(name, |bn| {
            bn.iter(|| {
                black_box(rmq_storage::validate_batches(
                    black_box(&b),
                    MAX_BATCH_BYTES,
                ))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = produce_decode, batch_validation
}
criterion_main!(benches);
