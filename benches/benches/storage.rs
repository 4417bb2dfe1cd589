//! Storage hot path: appending validated RecordBatches to a partition log, on a glommio
//! executor as a shard does it. Each iteration appends one batch; every
//! `APPENDS_PER_WAIT` appends (and at the end) the bench waits until the batches are written
//! (file engine: in the direct-IO segment file, no fdatasync) so the writer keeps up and
//! the figure includes the io_uring write, not just the in-memory queueing.
//!
//!     cargo bench -p rmq-bench --bench storage
//!
//! The segment files go under `RMQ_BENCH_DIR` (default `/var/tmp`): O_DIRECT needs a real
//! filesystem, not tmpfs.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rmq_storage::{
    validate_batches, AppendOutcome, BatchHeader, LogConfig, Offset, PartitionLog, StorageEngine,
};

/// Appends between two waits for the writer (well below the storage crate's pending-bytes
/// backpressure limit for the batch sizes here).
const APPENDS_PER_WAIT: u64 = 64;
/// Segment size for the bench logs: small enough that rolls happen during a run.
const BENCH_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
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
            sequence: -1,
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

fn bench_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("RMQ_BENCH_DIR").map_or_else(|| "/var/tmp".into(), PathBuf::from);
    let dir = root.join(format!("rmq-bench-storage-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

/// Appends `iters` copies of `wire` and returns the time until the last one is written.
async fn append_n(
    log: &PartitionLog,
    wire: &Bytes,
    headers: &[BatchHeader],
    iters: u64,
) -> Duration {
    let start = Instant::now();
    let mut last = Offset(0);
    for i in 0..iters {
        let outcome = log
            .append(BytesMut::from(&wire[..]), headers, 0, 1_700_000_000_000)
            .expect("append");
        last = match outcome {
            AppendOutcome::Appended { last_offset, .. }
            | AppendOutcome::Duplicate { last_offset, .. } => last_offset,
        };
        if (i + 1) % APPENDS_PER_WAIT == 0 {
            log.wait_written(last).await.expect("written");
        }
    }
    log.wait_written(last).await.expect("written");
    start.elapsed()
}

fn append(c: &mut Criterion) {
    let executor: LocalExecutor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor");
    let mut g = c.benchmark_group("segment_append");
    for engine in [StorageEngine::File, StorageEngine::Memory] {
        for (name, records, size) in [("1x100B", 1, 100), ("16x1KiB", 16, 1024)] {
            let wire = batch(records, size);
            let headers = validate_batches(&wire, MAX_BATCH_BYTES).expect("valid batch");
            let dir = bench_dir(&format!("{}-{name}", engine.name()));
            let config = LogConfig {
                engine,
                segment_bytes: BENCH_SEGMENT_BYTES,
                retention_bytes: 256 * 1024 * 1024,
                ..LogConfig::default()
            };
            let log: Rc<PartitionLog> = executor
                .run(PartitionLog::open(dir.clone(), config))
                .expect("open log");
            g.throughput(Throughput::Bytes(wire.len() as u64));
            g.bench_function(format!("{}_{name}", engine.name()), |b| {
                b.iter_custom(|iters| executor.run(append_n(&log, &wire, &headers, iters)))
            });
            executor.run(log.close()).expect("close log");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = append
}
criterion_main!(benches);
