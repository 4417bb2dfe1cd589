//! Scenario tests of the file engine, each in its own glommio executor on an ext4 directory
//! under `target/` (tmpfs would silently drop O_DIRECT).

use crate::{
    probe_direct_io, validate_batches, AppendOutcome, BatchError, LogConfig, LogManager, Offset,
    PartitionLog, StorageEngine, StorageError,
};
use bytes::{Bytes, BytesMut};
use glommio::LocalExecutorBuilder;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One hand-built RecordBatch v2.
#[derive(Clone, Copy)]
pub(crate) struct BatchSpec {
    pub(crate) records: i32,
    pub(crate) value_bytes: usize,
    pub(crate) timestamp_ms: i64,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) base_sequence: i32,
}

impl Default for BatchSpec {
    fn default() -> BatchSpec {
        BatchSpec {
            records: 2,
            value_bytes: 10,
            timestamp_ms: 1_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

pub(crate) use crate::records::write_varlong as put_varint;

fn record(offset_delta: i32, value_bytes: usize) -> Vec<u8> {
    let mut body = vec![0u8]; // attributes
    put_varint(0, &mut body); // timestamp delta
    put_varint(i64::from(offset_delta), &mut body);
    put_varint(-1, &mut body); // null key
    put_varint(value_bytes as i64, &mut body);
    body.extend(std::iter::repeat_n(
        b'a' + (offset_delta % 26) as u8,
        value_bytes,
    ));
    put_varint(0, &mut body); // no headers
    let mut out = Vec::new();
    put_varint(body.len() as i64, &mut out);
    out.extend_from_slice(&body);
    out
}

pub(crate) fn build_batch(spec: BatchSpec) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&0i64.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes()); // length, patched below
    buf.extend_from_slice(&(-1i32).to_be_bytes());
    buf.push(2);
    buf.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    buf.extend_from_slice(&0i16.to_be_bytes());
    buf.extend_from_slice(&(spec.records - 1).to_be_bytes());
    buf.extend_from_slice(&spec.timestamp_ms.to_be_bytes());
    buf.extend_from_slice(&spec.timestamp_ms.to_be_bytes());
    buf.extend_from_slice(&spec.producer_id.to_be_bytes());
    buf.extend_from_slice(&spec.producer_epoch.to_be_bytes());
    buf.extend_from_slice(&spec.base_sequence.to_be_bytes());
    buf.extend_from_slice(&spec.records.to_be_bytes());
    for delta in 0..spec.records {
        buf.extend_from_slice(&record(delta, spec.value_bytes));
    }
    let length = (buf.len() - 12) as i32;
    buf[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf
}

pub(crate) fn append(
    log: &PartitionLog,
    specs: &[BatchSpec],
    now_ms: i64,
) -> Result<AppendOutcome, StorageError> {
    let mut payload = Vec::new();
    specs
        .iter()
        .for_each(|spec| payload.extend(build_batch(*spec)));
    let headers = validate_batches(&payload, 1 << 20)?;
    log.append(BytesMut::from(&payload[..]), &headers, 7, now_ms)
}

pub(crate) fn appended(outcome: AppendOutcome) -> (i64, i64) {
    match outcome {
        AppendOutcome::Appended {
            base_offset,
            last_offset,
        } => (base_offset.0, last_offset.0),
        other => panic!("expected Appended, got {other:?}"),
    }
}

/// Scratch directories on ext4 under `target/`, where direct IO is real.
pub(crate) fn ext4_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp-storage-tests")
}

/// Scratch directories on tmpfs when the machine has one: fdatasync is free there (and
/// O_DIRECT is dropped silently, our alignment still applies), so the 10,000-sequence file
/// fuzzer tests the engine's logic in seconds; `op_fuzzer_file_on_ext4` covers real IO.
pub(crate) fn tmpfs_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join("rmq-storage-tests")
    } else {
        ext4_root()
    }
}

fn test_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

pub(crate) fn run<F, Fut>(name: &str, test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    run_on(&ext4_root(), name, test);
}

pub(crate) fn run_on<F, Fut>(root: &Path, name: &str, test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = test_dir(root, name);
    let cleanup = dir.clone();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            crate::reactor_tick::spawn_reactor_tick();
            probe_direct_io(&dir).await.expect("probe");
            test(dir.join("topic").join("0")).await;
        })
        .expect("executor")
        .join()
        .expect("test executor");
    let _ = std::fs::remove_dir_all(cleanup);
}

pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

pub(crate) fn segment_files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some(extension))
        .collect();
    files.sort();
    files
}

/// Reads every batch from `from` to the high watermark, batch by batch.
pub(crate) async fn read_all(log: &PartitionLog, from: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.high_watermark().0 {
        let bytes = log.read(Offset(next), 1).await.expect("read");
        let headers = validate_batches(&bytes, 1 << 20).expect("stored batches are valid");
        assert_eq!(headers.len(), 1);
        assert!(headers[0].base_offset <= next && next <= headers[0].last_offset());
        next = headers[0].last_offset() + 1;
        out.extend_from_slice(&bytes);
    }
    out
}

pub(crate) async fn open(dir: &Path, config: LogConfig) -> Rc<PartitionLog> {
    PartitionLog::open(dir.to_path_buf(), config)
        .await
        .expect("open")
}

#[test]
fn appended_batches_are_read_back_byte_for_byte() {
    run("read_back", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let mut expected = Vec::new();
        for round in 0..5 {
            let spec = BatchSpec {
                records: round + 1,
                ..BatchSpec::default()
            };
            let (base, last) = appended(append(&log, &[spec], 0).unwrap());
            let mut stored = build_batch(spec);
            stored[0..8].copy_from_slice(&base.to_be_bytes());
            stored[12..16].copy_from_slice(&7i32.to_be_bytes());
            expected.extend_from_slice(&stored);
            assert_eq!(last - base, i64::from(round));
        }
        log.wait_written(Offset(log.log_end_offset().0 - 1))
            .await
            .unwrap();
        assert_eq!(read_all(&log, 0).await, expected, "from the cache");
        assert_eq!(
            log.read(Offset(0), 1 << 20).await.unwrap(),
            Bytes::from(expected.clone())
        );
        log.close().await.unwrap();
        let log = open(&dir, LogConfig::default()).await;
        assert_eq!(read_all(&log, 0).await, expected, "from disk");
        let first_two = build_batch(BatchSpec {
            records: 1,
            ..BatchSpec::default()
        })
        .len()
            + build_batch(BatchSpec {
                records: 2,
                ..BatchSpec::default()
            })
            .len();
        assert_eq!(
            log.read(Offset(3), 1 << 20).await.unwrap()[..],
            expected[first_two..]
        );
        assert_eq!(
            log.read(Offset(15), 10).await.unwrap().len(),
            0,
            "at the high watermark"
        );
        assert!(matches!(
            log.read(Offset(16), 10).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();
    });
}

#[test]
fn bad_crc_batch_is_rejected() {
    let mut batch = build_batch(BatchSpec::default());
    let last = batch.len() - 1;
    batch[last] ^= 0xff;
    assert!(matches!(
        validate_batches(&batch, 1 << 20),
        Err(BatchError::CrcMismatch { .. })
    ));
    let good = build_batch(BatchSpec::default());
    assert_eq!(
        validate_batches(&good[..good.len() - 1], 1 << 20),
        Err(BatchError::Truncated)
    );
    assert!(matches!(
        validate_batches(&good, 16),
        Err(BatchError::TooLarge { .. })
    ));
    assert_eq!(validate_batches(&[], 1 << 20), Err(BatchError::Empty));
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    assert_eq!(
        validate_batches(&bad_magic, 1 << 20),
        Err(BatchError::BadMagic(1))
    );
}

#[test]
fn duplicate_idempotent_batch_returns_original_offsets() {
    run("duplicate", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        append(&log, &[BatchSpec::default()], 0).unwrap();
        let first = BatchSpec {
            producer_id: 9,
            producer_epoch: 0,
            base_sequence: 0,
            ..BatchSpec::default()
        };
        let second = BatchSpec {
            base_sequence: 2,
            ..first
        };
        assert_eq!(appended(append(&log, &[first], 0).unwrap()), (2, 3));
        assert_eq!(appended(append(&log, &[second], 0).unwrap()), (4, 5));
        let duplicate = append(&log, &[first], 0).unwrap();
        assert_eq!(
            duplicate,
            AppendOutcome::Duplicate {
                base_offset: Offset(2),
                last_offset: Offset(3)
            }
        );
        assert_eq!(
            log.log_end_offset(),
            Offset(6),
            "a duplicate appends nothing"
        );
        log.close().await.unwrap();
        let log = open(&dir, LogConfig::default()).await;
        let again = append(&log, &[second], 0).unwrap();
        assert_eq!(
            again,
            AppendOutcome::Duplicate {
                base_offset: Offset(4),
                last_offset: Offset(5)
            }
        );
        let third = BatchSpec {
            base_sequence: 4,
            ..first
        };
        assert_eq!(
            appended(append(&log, &[third], 0).unwrap()),
            (6, 7),
            "state survives reopen"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn sequence_gap_is_rejected() {
    run("sequence_gap", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let first = BatchSpec {
            producer_id: 3,
            producer_epoch: 1,
            base_sequence: 10,
            ..BatchSpec::default()
        };
        append(&log, &[first], 0).unwrap();
        let gap = BatchSpec {
            base_sequence: 13,
            ..first
        };
        match append(&log, &[gap], 0) {
            Err(StorageError::OutOfOrderSequence {
                producer_id: 3,
                expected: 12,
                got: 13,
            }) => {}
            other => panic!("expected OutOfOrderSequence, got {other:?}"),
        }
        let stale = BatchSpec {
            producer_epoch: 0,
            base_sequence: 12,
            ..first
        };
        assert!(matches!(
            append(&log, &[stale], 0),
            Err(StorageError::InvalidProducerEpoch {
                current: 1,
                got: 0,
                ..
            })
        ));
        let bumped_not_zero = BatchSpec {
            producer_epoch: 2,
            base_sequence: 5,
            ..first
        };
        assert!(matches!(
            append(&log, &[bumped_not_zero], 0),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            log.log_end_offset(),
            Offset(2),
            "refused appends leave the log unchanged"
        );
        let bumped = BatchSpec {
            producer_epoch: 2,
            base_sequence: 0,
            ..first
        };
        assert_eq!(appended(append(&log, &[bumped], 0).unwrap()), (2, 3));
        log.close().await.unwrap();
    });
}

#[test]
fn roll_by_segment_bytes_creates_new_segment() {
    run("roll", |dir| async move {
        let log = open(&dir, small_config()).await;
        let spec = BatchSpec {
            records: 4,
            value_bytes: 200,
            ..BatchSpec::default()
        };
        for _ in 0..60 {
            append(&log, &[spec], 0).unwrap();
        }
        log.flush().await.unwrap();
        let logs = segment_files(&dir, "log");
        assert!(logs.len() >= 3, "expected several segments, got {logs:?}");
        assert!(logs[1]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("000000000000000000"));
        let all = read_all(&log, 0).await;
        assert_eq!(validate_batches(&all, 1 << 20).unwrap().len(), 60);
        log.close().await.unwrap();
        for file in &logs {
            assert!(
                std::fs::metadata(file).unwrap().len() <= 16 * 1024,
                "{file:?} exceeds segment_bytes"
            );
        }
    });
}

#[test]
fn roll_by_segment_ms_creates_new_segment() {
    run("roll_ms", |dir| async move {
        let config = LogConfig {
            segment_ms: 1_000,
            ..LogConfig::default()
        };
        let log = open(&dir, config).await;
        append(&log, &[BatchSpec::default()], 10_000).unwrap();
        append(&log, &[BatchSpec::default()], 10_500).unwrap();
        append(&log, &[BatchSpec::default()], 11_000).unwrap();
        log.flush().await.unwrap();
        assert_eq!(segment_files(&dir, "log").len(), 2);
        assert!(dir.join(format!("{:020}.log", 4)).exists());
        log.close().await.unwrap();
    });
}

#[test]
fn retention_deletes_old_segments_and_advances_log_start() {
    run("retention", |dir| async move {
        let log = open(&dir, small_config()).await;
        let spec = BatchSpec {
            records: 4,
            value_bytes: 200,
            timestamp_ms: 5_000,
            ..BatchSpec::default()
        };
        for _ in 0..60 {
            append(&log, &[spec], 0).unwrap();
        }
        log.flush().await.unwrap();
        let before = segment_files(&dir, "log").len();
        log.enforce_retention(6_000).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(0), "nothing is old yet");
        log.set_config(LogConfig {
            retention_ms: 500,
            ..small_config()
        });
        log.enforce_retention(6_000).await.unwrap();
        assert_eq!(
            segment_files(&dir, "log").len(),
            1,
            "only the active segment stays"
        );
        assert!(before > 1);
        let start = log.log_start_offset().0;
        assert!(start > 0);
        assert!(matches!(
            log.read(Offset(0), 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            validate_batches(&read_all(&log, start).await, 1 << 20).unwrap()[0].base_offset,
            start
        );
        log.close().await.unwrap();
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_start_offset().0, start, "log start survives reopen");
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_bytes_keeps_the_newest_segments() {
    run("retention_bytes", |dir| async move {
        let log = open(&dir, small_config()).await;
        let spec = BatchSpec {
            records: 4,
            value_bytes: 200,
            ..BatchSpec::default()
        };
        for _ in 0..60 {
            append(&log, &[spec], 0).unwrap();
        }
        log.flush().await.unwrap();
        log.set_config(LogConfig {
            retention_bytes: 20_000,
            retention_ms: -1,
            ..small_config()
        });
        log.enforce_retention(0).await.unwrap();
        assert!(log.size_bytes() <= 20_000 + 16 * 1024);
        assert!(log.size_bytes() >= 20_000);
        assert!(log.log_start_offset().0 > 0);
        log.close().await.unwrap();
    });
}

#[test]
fn missing_index_is_rebuilt() {
    run("missing_index", |dir| async move {
        let log = open(&dir, small_config()).await;
        let spec = BatchSpec {
            records: 1,
            value_bytes: 100,
            ..BatchSpec::default()
        };
        for _ in 0..300 {
            append(&log, &[spec], 0).unwrap();
        }
        log.close().await.unwrap();
        let indexes = segment_files(&dir, "index");
        assert!(indexes.len() >= 3);
        let original_len = std::fs::metadata(&indexes[0]).unwrap().len();
        assert!(original_len > 0);
        std::fs::remove_file(&indexes[0]).unwrap();
        std::fs::write(&indexes[1], [0xffu8; 5]).unwrap();
        let log = open(&dir, small_config()).await;
        assert_eq!(std::fs::metadata(&indexes[0]).unwrap().len(), original_len);
        let entries = log.file_engine().state.borrow().segments[0]
            .index
            .entries()
            .len();
        assert_eq!(entries as u64 * 8, original_len);
        let middle = log.read(Offset(40), 1).await.unwrap();
        assert_eq!(
            validate_batches(&middle, 1 << 20).unwrap()[0].base_offset,
            40
        );
        assert_eq!(read_all(&log, 0).await.len(), 300 * build_batch(spec).len());
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_then_append_continues_from_truncation_point() {
    run("truncate", |dir| async move {
        let log = open(&dir, small_config()).await;
        let spec = BatchSpec {
            records: 3,
            value_bytes: 200,
            ..BatchSpec::default()
        };
        for _ in 0..60 {
            append(&log, &[spec], 0).unwrap();
        }
        log.truncate(Offset(31)).await.unwrap();
        assert_eq!(
            log.log_end_offset(),
            Offset(30),
            "rounded down to the batch base"
        );
        assert_eq!(log.high_watermark(), Offset(30));
        assert_eq!(appended(append(&log, &[spec], 0).unwrap()), (30, 32));
        log.flush().await.unwrap();
        let all = read_all(&log, 0).await;
        let headers = validate_batches(&all, 1 << 20).unwrap();
        assert_eq!(headers.len(), 11);
        assert_eq!(headers.last().unwrap().base_offset, 30);
        log.close().await.unwrap();
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_end_offset(), Offset(33));
        log.truncate(Offset(0)).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(0));
        assert_eq!(appended(append(&log, &[spec], 0).unwrap()), (0, 2));
        log.close().await.unwrap();
    });
}

#[test]
fn reopen_after_close_keeps_all_data() {
    run("reopen", |dir| async move {
        let log = open(&dir, small_config()).await;
        let spec = BatchSpec {
            records: 2,
            value_bytes: 300,
            ..BatchSpec::default()
        };
        for _ in 0..100 {
            append(&log, &[spec], 0).unwrap();
        }
        log.close().await.unwrap();
        assert!(matches!(
            append(&log, &[spec], 0),
            Err(StorageError::Closed)
        ));
        let expected = {
            let log = open(&dir, small_config()).await;
            let bytes = read_all(&log, 0).await;
            log.close().await.unwrap();
            bytes
        };
        assert_eq!(validate_batches(&expected, 1 << 20).unwrap().len(), 100);
        for file in segment_files(&dir, "log") {
            let len = std::fs::metadata(&file).unwrap().len();
            assert_ne!(len % 4096, 0, "close cuts the padding of {file:?}");
        }
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_end_offset(), Offset(200));
        assert_eq!(read_all(&log, 0).await, expected);
        log.close().await.unwrap();
    });
}

#[test]
fn torn_tail_write_is_truncated_on_recovery() {
    run("torn_tail", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        for _ in 0..10 {
            append(&log, &[BatchSpec::default()], 0).unwrap();
        }
        log.close().await.unwrap();
        let file = segment_files(&dir, "log").pop().unwrap();
        let good_len = std::fs::metadata(&file).unwrap().len();
        let mut torn = build_batch(BatchSpec::default());
        torn[0..8].copy_from_slice(&20i64.to_be_bytes());
        torn.truncate(torn.len() - 5);
        let mut contents = std::fs::read(&file).unwrap();
        contents.extend_from_slice(&torn);
        std::fs::write(&file, &contents).unwrap();
        let log = open(&dir, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), Offset(20));
        assert_eq!(std::fs::metadata(&file).unwrap().len(), good_len);
        assert_eq!(
            appended(append(&log, &[BatchSpec::default()], 0).unwrap()),
            (20, 21)
        );
        log.close().await.unwrap();
    });
}

#[test]
fn corrupt_batch_in_the_middle_cuts_the_log_there() {
    run("corrupt_middle", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        for _ in 0..10 {
            append(&log, &[BatchSpec::default()], 0).unwrap();
        }
        log.close().await.unwrap();
        let file = segment_files(&dir, "log").pop().unwrap();
        let batch_len = build_batch(BatchSpec::default()).len();
        let mut contents = std::fs::read(&file).unwrap();
        contents[batch_len * 6 + 70] ^= 0x55;
        std::fs::write(&file, &contents).unwrap();
        let log = open(&dir, LogConfig::default()).await;
        assert_eq!(log.log_end_offset(), Offset(12), "batches 0..6 survive");
        log.close().await.unwrap();
    });
}

#[test]
fn zero_padded_segments_after_a_crash_recover_every_written_batch() {
    run("crash_padding", |dir| async move {
        let crashed = open(&dir, small_config()).await;
        let spec = BatchSpec {
            records: 2,
            value_bytes: 150,
            ..BatchSpec::default()
        };
        for _ in 0..120 {
            append(&crashed, &[spec], 0).unwrap();
        }
        crashed.wait_written(Offset(239)).await.unwrap();
        let expected = read_all(&crashed, 0).await;
        let padded = segment_files(&dir, "log")
            .iter()
            .any(|f| std::fs::metadata(f).unwrap().len() % 4096 == 0);
        assert!(padded, "without close, aligned writes leave padded files");
        // No close: the files keep their zero padding, as after kill -9.
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_end_offset(), Offset(240));
        assert_eq!(read_all(&log, 0).await, expected);
        assert_eq!(appended(append(&log, &[spec], 0).unwrap()), (240, 241));
        log.close().await.unwrap();
    });
}

#[test]
fn wait_durable_is_group_committed_by_one_fdatasync() {
    run("durable", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let mut waits = Vec::new();
        for _ in 0..20 {
            let (_, last) = appended(append(&log, &[BatchSpec::default()], 0).unwrap());
            let log = log.clone();
            waits.push(glommio::spawn_local(async move {
                log.wait_durable(Offset(last)).await
            }));
        }
        for wait in waits {
            wait.await.unwrap();
        }
        assert_eq!(log.file_engine().state.borrow().durable_offset, 40);
        assert_eq!(log.high_watermark(), Offset(40));
        log.flush().await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn offset_for_timestamp_finds_first_batch_at_or_after() {
    run("timestamp", |dir| async move {
        let log = open(&dir, small_config()).await;
        for index in 0..200i64 {
            let spec = BatchSpec {
                records: 1,
                value_bytes: 100,
                timestamp_ms: 1_000 + index * 10,
                ..BatchSpec::default()
            };
            append(&log, &[spec], 0).unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(
            log.offset_for_timestamp(0).await.unwrap(),
            Some((Offset(0), 1_000))
        );
        assert_eq!(
            log.offset_for_timestamp(1_505).await.unwrap(),
            Some((Offset(51), 1_510))
        );
        assert_eq!(
            log.offset_for_timestamp(2_990).await.unwrap(),
            Some((Offset(199), 2_990))
        );
        assert_eq!(log.offset_for_timestamp(3_000).await.unwrap(), None);
        assert_eq!(log.max_timestamp(), Some((Offset(199), 2_990)));
        log.close().await.unwrap();
        let log = open(&dir, small_config()).await;
        assert_eq!(
            log.offset_for_timestamp(1_505).await.unwrap(),
            Some((Offset(51), 1_510))
        );
        assert_eq!(log.max_timestamp(), Some((Offset(199), 2_990)));
        log.close().await.unwrap();
    });
}

#[test]
fn wait_for_data_wakes_on_append_and_dropped_waiters_free_their_slot() {
    run("wait_for_data", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        for _ in 0..100 {
            let timed_out = glommio::timer::timeout(std::time::Duration::from_millis(1), async {
                log.wait_for_data(Offset(0)).await;
                Ok(())
            })
            .await;
            assert!(timed_out.is_err());
        }
        assert_eq!(log.file_engine().written_waiters.live_count(), 0);
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_for_data(Offset(0)).await })
        };
        append(&log, &[BatchSpec::default()], 0).unwrap();
        waiter.await;
        assert!(log.high_watermark() > Offset(0));
        log.close().await.unwrap();
    });
}

#[test]
fn a_commit_limit_hides_uncommitted_batches_from_readers_and_wakes_them_when_it_moves() {
    run("commit_limit", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let spec = BatchSpec {
            records: 2,
            value_bytes: 50,
            ..BatchSpec::default()
        };
        let size = build_batch(spec).len();
        for _ in 0..4 {
            append(&log, &[spec], 0).unwrap();
        }
        log.wait_written(Offset(7)).await.unwrap();
        assert_eq!(log.high_watermark(), Offset(8), "unreplicated: all written");
        // Replicated: the first two batches (offsets 0..4) are committed.
        log.set_commit_limit(Offset(4));
        assert_eq!(log.high_watermark(), Offset(4));
        assert_eq!(log.log_end_offset(), Offset(8));
        let visible = log.read(Offset(0), 1 << 20).await.unwrap();
        assert_eq!(
            visible.len(),
            size * 2,
            "batches at or past the commit point are cut"
        );
        assert!(log.read(Offset(4), 1 << 20).await.unwrap().is_empty());
        assert!(log.read(Offset(5), 1 << 20).await.unwrap().is_empty());
        // A reader at the commit point waits for it to move, not for the written data.
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_for_data(Offset(4)).await })
        };
        let early = glommio::timer::timeout(std::time::Duration::from_millis(20), async {
            log.wait_for_data(Offset(4)).await;
            Ok(())
        })
        .await;
        assert!(
            early.is_err(),
            "written but uncommitted data does not wake readers"
        );
        log.set_commit_limit(Offset(6));
        waiter.await;
        assert_eq!(log.read(Offset(4), 1 << 20).await.unwrap().len(), size);
        log.set_commit_limit(Offset(6));
        log.close().await.unwrap();
    });
}

#[test]
fn read_returns_whole_batches_within_max_bytes_but_at_least_one() {
    run("max_bytes", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let spec = BatchSpec {
            records: 2,
            value_bytes: 100,
            ..BatchSpec::default()
        };
        let size = build_batch(spec).len();
        for _ in 0..10 {
            append(&log, &[spec], 0).unwrap();
        }
        log.close().await.unwrap();
        let log = open(&dir, LogConfig::default()).await;
        assert_eq!(
            log.read(Offset(3), 1).await.unwrap().len(),
            size,
            "at least one batch"
        );
        assert_eq!(
            log.read(Offset(3), size * 3 + 1).await.unwrap().len(),
            size * 3
        );
        let from_middle = log.read(Offset(5), size).await.unwrap();
        assert_eq!(
            validate_batches(&from_middle, 1 << 20).unwrap()[0].base_offset,
            4
        );
        log.close().await.unwrap();
    });
}

#[test]
fn log_manager_opens_once_and_removes_directories() {
    run("manager", |dir| async move {
        let manager = LogManager::new(dir.clone());
        let first = manager
            .open("orders", 0, LogConfig::default())
            .await
            .unwrap();
        let again = manager
            .open("orders", 0, LogConfig::default())
            .await
            .unwrap();
        assert!(Rc::ptr_eq(&first, &again));
        manager
            .open("orders", 1, LogConfig::default())
            .await
            .unwrap();
        assert_eq!(manager.partition_count(), 2);
        append(&first, &[BatchSpec::default()], 0).unwrap();
        manager.enforce_retention_all(0).await.unwrap();
        assert!(manager.partition_dir("orders", 1).exists());
        manager.remove("orders", 1).await.unwrap();
        assert!(!manager.partition_dir("orders", 1).exists());
        assert!(manager.get("orders", 1).is_none());
        manager.close_all().await.unwrap();
        assert_eq!(manager.partition_count(), 0);
        assert!(matches!(
            append(&first, &[BatchSpec::default()], 0),
            Err(StorageError::Closed)
        ));
        let reopened = manager
            .open("orders", 0, LogConfig::default())
            .await
            .unwrap();
        assert_eq!(reopened.log_end_offset(), Offset(2));
        manager.close_all().await.unwrap();
    });
}

#[test]
fn multi_batch_produce_assigns_consecutive_offsets() {
    run("multi_batch", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        let a = BatchSpec {
            records: 3,
            ..BatchSpec::default()
        };
        let b = BatchSpec {
            records: 2,
            ..BatchSpec::default()
        };
        assert_eq!(appended(append(&log, &[a, b], 0).unwrap()), (0, 4));
        log.flush().await.unwrap();
        let second = log.read(Offset(3), 1).await.unwrap();
        assert_eq!(
            validate_batches(&second, 1 << 20).unwrap()[0].base_offset,
            3
        );
        let headers =
            validate_batches(&log.read(Offset(0), 1 << 20).await.unwrap(), 1 << 20).unwrap();
        assert_eq!(headers.len(), 2);
        assert!(headers.iter().all(|h| h.partition_leader_epoch == 7));
        assert!(matches!(
            log.append(BytesMut::from(&build_batch(a)[..]), &[], 0, 0),
            Err(StorageError::InvalidArgument(_))
        ));
        log.close().await.unwrap();
    });
}

/// Deterministic xorshift64* for the op fuzzer, so a failing seed replays.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1)
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// The model: every stored batch as (base offset, last offset, stored bytes).
type Model = Vec<(i64, i64, Vec<u8>)>;

fn stored_bytes(spec: BatchSpec, base: i64) -> Vec<u8> {
    let mut stored = build_batch(spec);
    stored[0..8].copy_from_slice(&base.to_be_bytes());
    stored[12..16].copy_from_slice(&7i32.to_be_bytes());
    stored
}

/// A read must return whole model batches from the one containing `from`, at least one,
/// and no more than `max_bytes` unless a single batch is larger.
fn check_read(model: &Model, from: i64, max_bytes: usize, bytes: &[u8]) {
    let Some(first) = model.iter().position(|(_, last, _)| *last >= from) else {
        assert!(bytes.is_empty());
        return;
    };
    let mut expected = Vec::new();
    for (_, _, stored) in &model[first..] {
        if expected.len() >= bytes.len() {
            break;
        }
        expected.extend_from_slice(stored);
    }
    assert_eq!(bytes, &expected[..], "read from {from}");
    assert!(bytes.len() <= max_bytes.max(model[first].2.len()));
}

/// Prints the engine and seed of a failing op sequence, with the command that replays it.
struct SeedReporter {
    engine: StorageEngine,
    seed: u64,
}

impl Drop for SeedReporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "op-fuzzer failed: engine={} seed={} (replay: RMQ_FUZZ_SEED={} cargo test -p \
                 rmq-storage op_fuzzer_{})",
                self.engine.name(),
                self.seed,
                self.seed,
                self.engine.name()
            );
        }
    }
}

/// One seeded op sequence against one engine and the model.
struct FuzzRun {
    rng: Rng,
    dir: PathBuf,
    config: LogConfig,
    log: Rc<PartitionLog>,
    model: Model,
    /// An idempotent producer per epoch of the log (a new one after truncate or restart):
    /// (producer id, next sequence, the last batch it wrote and its offsets).
    producer_id: i64,
    next_sequence: i32,
    last_idempotent: Option<(BatchSpec, i64, i64)>,
}

impl FuzzRun {
    fn random_spec(&mut self) -> BatchSpec {
        BatchSpec {
            records: 1 + self.rng.below(5) as i32,
            value_bytes: 1 + self.rng.below(600) as usize,
            timestamp_ms: 1_000 + self.rng.below(10_000) as i64,
            ..BatchSpec::default()
        }
    }

    fn forget_producer(&mut self) {
        self.producer_id += 1;
        self.next_sequence = 0;
        self.last_idempotent = None;
    }

    /// Drops model batches the log no longer has (retention, memory bound) and checks the
    /// log start sits on a batch boundary.
    fn sync_log_start(&mut self) {
        let start = self.log.log_start_offset().0;
        self.model.retain(|(base, _, _)| *base >= start);
        let end = self.log.log_end_offset().0;
        let expected_start = self.model.first().map_or(end, |(base, _, _)| *base);
        assert_eq!(start, expected_start, "log start is a batch boundary");
        let model_end = self.model.last().map_or(start, |(_, last, _)| last + 1);
        assert_eq!(end, model_end, "log end");
    }

    fn append_one(&mut self) {
        let mut spec = self.random_spec();
        let idempotent = self.rng.below(3) == 0;
        if idempotent {
            spec.producer_id = self.producer_id;
            spec.producer_epoch = 0;
            spec.base_sequence = self.next_sequence;
        }
        let (base, last) = appended(append(&self.log, &[spec], 0).unwrap());
        assert_eq!(last - base + 1, i64::from(spec.records));
        self.model.push((base, last, stored_bytes(spec, base)));
        if idempotent {
            self.next_sequence += spec.records;
            self.last_idempotent = Some((spec, base, last));
        }
    }

    fn retry_last_idempotent(&mut self) {
        let Some((spec, base, last)) = self.last_idempotent else {
            return self.append_one();
        };
        let outcome = append(&self.log, &[spec], 0).unwrap();
        assert_eq!(
            outcome,
            AppendOutcome::Duplicate {
                base_offset: Offset(base),
                last_offset: Offset(last)
            }
        );
    }

    async fn read_random(&mut self) {
        let end = self.log.log_end_offset().0;
        if end > 0 {
            self.log.wait_written(Offset(end - 1)).await.unwrap();
        }
        let start = self.log.log_start_offset().0;
        let from = start + self.rng.below((end - start) as u64 + 1) as i64;
        let max_bytes = 1 + self.rng.below(3000) as usize;
        let bytes = self.log.read(Offset(from), max_bytes).await.unwrap();
        check_read(&self.model, from, max_bytes, &bytes);
        self.log.wait_durable(Offset(end - 1)).await.unwrap();
    }

    async fn truncate_random(&mut self) {
        let start = self.log.log_start_offset().0;
        let end = self.log.log_end_offset().0;
        let to = start + self.rng.below((end - start) as u64 + 1) as i64;
        self.log.truncate(Offset(to)).await.unwrap();
        self.model.retain(|(_, last, _)| *last < to);
        self.forget_producer();
    }

    async fn timestamp_lookup(&mut self) {
        let end = self.log.log_end_offset().0;
        if end > 0 {
            self.log.wait_written(Offset(end - 1)).await.unwrap();
        }
        let ts = 1_000 + self.rng.below(11_000) as i64;
        let expected = self
            .model
            .iter()
            .find(|(_, _, stored)| {
                let header = crate::BatchHeader::parse(stored).unwrap();
                header.max_timestamp >= ts
            })
            .map(|(base, _, stored)| {
                (
                    Offset(*base),
                    crate::BatchHeader::parse(stored).unwrap().max_timestamp,
                )
            });
        assert_eq!(
            self.log.offset_for_timestamp(ts).await.unwrap(),
            expected,
            "ts {ts}"
        );
    }

    /// Restart (clean or crash): the file engine keeps everything written, the memory
    /// engine comes back empty at offset 0.
    async fn restart(&mut self, crash: bool) {
        if crash {
            let end = self.log.log_end_offset().0;
            if end > 0 {
                self.log.wait_written(Offset(end - 1)).await.unwrap();
            }
            self.log.crash().await;
        } else {
            self.log.close().await.unwrap();
        }
        self.log = open(&self.dir, self.config.clone()).await;
        if self.config.engine == StorageEngine::Memory {
            self.model.clear();
            assert_eq!(self.log.log_end_offset(), Offset(0));
        }
        self.forget_producer();
    }

    async fn step(&mut self) {
        match self.rng.below(100) {
            0..=49 => self.append_one(),
            50..=54 => self.retry_last_idempotent(),
            55..=69 => self.read_random().await,
            70..=74 => self.timestamp_lookup().await,
            75..=81 => self.truncate_random().await,
            82..=86 => self.log.enforce_retention(20_000).await.unwrap(),
            87..=91 => self.restart(false).await,
            92..=96 => self.restart(true).await,
            _ => self.log.flush().await.unwrap(),
        }
        self.sync_log_start();
    }
}

fn fuzz_config(engine: StorageEngine) -> LogConfig {
    LogConfig {
        engine,
        retention_bytes: 40 * 1024,
        retention_ms: -1,
        ..small_config()
    }
}

/// Runs this test's share of seeded op sequences of `ops` operations each: seeds
/// `shard, shard + shards, ...` below `sequences` (RMQ_FUZZ_SEQUENCES overrides it for a
/// longer run), or only RMQ_FUZZ_SEED to replay one. Shards run as parallel tests.
fn op_fuzzer(root: &Path, engine: StorageEngine, sequences: u64, shard: u64, ops: usize) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let shards = FUZZ_SHARDS;
    let seeds: Vec<u64> = match env("RMQ_FUZZ_SEED") {
        Some(seed) if seed % shards == shard => vec![seed],
        Some(_) => Vec::new(),
        None => (0..env("RMQ_FUZZ_SEQUENCES").unwrap_or(sequences))
            .filter(|seed| seed % shards == shard)
            .collect(),
    };
    let name = format!("op_fuzzer_{}_{shard}", engine.name());
    run_on(root, &name, move |dir| async move {
        let config = fuzz_config(engine);
        for seed in seeds {
            let _reporter = SeedReporter { engine, seed };
            let _ = std::fs::remove_dir_all(&dir);
            let mut fuzz = FuzzRun {
                rng: Rng::new(seed),
                log: open(&dir, config.clone()).await,
                dir: dir.clone(),
                config: config.clone(),
                model: Model::new(),
                producer_id: 1,
                next_sequence: 0,
                last_idempotent: None,
            };
            for _ in 0..ops {
                fuzz.step().await;
            }
            fuzz.log.flush().await.unwrap();
            let start = fuzz.log.log_start_offset().0;
            let expected: Vec<u8> = fuzz
                .model
                .iter()
                .flat_map(|(_, _, stored)| stored.clone())
                .collect();
            assert_eq!(read_all(&fuzz.log, start).await, expected);
            fuzz.log.close().await.unwrap();
        }
    });
}

/// Parallel tests the fuzzer's sequences are spread over (their seeds modulo this).
const FUZZ_SHARDS: u64 = 4;

/// Seeded op sequences per engine in `cargo test`.
const FUZZ_SEQUENCES: u64 = 10_000;

#[test]
fn op_fuzzer_file_0() {
    op_fuzzer(&tmpfs_root(), StorageEngine::File, FUZZ_SEQUENCES, 0, 10);
}

#[test]
fn op_fuzzer_file_1() {
    op_fuzzer(&tmpfs_root(), StorageEngine::File, FUZZ_SEQUENCES, 1, 10);
}

#[test]
fn op_fuzzer_file_2() {
    op_fuzzer(&tmpfs_root(), StorageEngine::File, FUZZ_SEQUENCES, 2, 10);
}

#[test]
fn op_fuzzer_file_3() {
    op_fuzzer(&tmpfs_root(), StorageEngine::File, FUZZ_SEQUENCES, 3, 10);
}

/// Fewer, longer sequences on ext4, where direct IO and fdatasync are real.
#[test]
fn op_fuzzer_file_on_ext4() {
    op_fuzzer(&ext4_root(), StorageEngine::File, 100 * FUZZ_SHARDS, 0, 40);
}

#[test]
fn op_fuzzer_memory() {
    for shard in 0..FUZZ_SHARDS {
        op_fuzzer(
            &tmpfs_root(),
            StorageEngine::Memory,
            FUZZ_SEQUENCES,
            shard,
            40,
        );
    }
}

/// Runs the same test body against every engine, each in its own executor and directory.
fn conformance<F, Fut>(name: &str, test: F)
where
    F: Fn(PathBuf, LogConfig) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    for engine in [StorageEngine::File, StorageEngine::Memory] {
        let test = test.clone();
        let config = LogConfig {
            engine,
            ..small_config()
        };
        run(
            &format!("{name}_{}", engine.name()),
            move |dir| async move {
                let log = open(&dir, config.clone()).await;
                assert_eq!(log.engine(), engine);
                log.close().await.unwrap();
                test(dir, config).await;
            },
        );
    }
}

#[test]
fn conformance_reads_return_whole_stored_batches_within_max_bytes() {
    conformance("conf_reads", |dir, config| async move {
        let log = open(&dir, config).await;
        let spec = BatchSpec {
            records: 2,
            value_bytes: 100,
            ..BatchSpec::default()
        };
        let size = build_batch(spec).len();
        let mut expected = Vec::new();
        for _ in 0..10 {
            let (base, _) = appended(append(&log, &[spec], 0).unwrap());
            expected.extend(stored_bytes(spec, base));
        }
        log.wait_durable(Offset(19)).await.unwrap();
        assert_eq!(log.high_watermark(), Offset(20));
        assert_eq!(read_all(&log, 0).await, expected);
        assert_eq!(log.read(Offset(3), 1).await.unwrap().len(), size);
        let three = log.read(Offset(3), size * 3 + 1).await.unwrap();
        assert_eq!(three[..], expected[size..size * 4]);
        assert!(log.read(Offset(20), 100).await.unwrap().is_empty());
        assert!(matches!(
            log.read(Offset(21), 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();
        assert!(matches!(
            append(&log, &[spec], 0),
            Err(StorageError::Closed)
        ));
    });
}

#[test]
fn conformance_idempotent_producers_get_original_offsets_and_gaps_are_refused() {
    conformance("conf_idempotent", |dir, config| async move {
        let log = open(&dir, config).await;
        let first = BatchSpec {
            producer_id: 9,
            producer_epoch: 0,
            base_sequence: 0,
            ..BatchSpec::default()
        };
        assert_eq!(appended(append(&log, &[first], 0).unwrap()), (0, 1));
        assert_eq!(
            append(&log, &[first], 0).unwrap(),
            AppendOutcome::Duplicate {
                base_offset: Offset(0),
                last_offset: Offset(1)
            }
        );
        let gap = BatchSpec {
            base_sequence: 5,
            ..first
        };
        assert!(matches!(
            append(&log, &[gap], 0),
            Err(StorageError::OutOfOrderSequence { expected: 2, .. })
        ));
        let two = BatchSpec {
            records: 3,
            ..BatchSpec::default()
        };
        assert_eq!(appended(append(&log, &[two, two], 0).unwrap()), (2, 7));
        assert_eq!(log.log_end_offset(), Offset(8));
        log.close().await.unwrap();
    });
}

#[test]
fn conformance_timestamps_truncation_and_wakeups() {
    conformance("conf_timestamps", |dir, config| async move {
        let log = open(&dir, config).await;
        for index in 0..50i64 {
            let spec = BatchSpec {
                records: 1,
                timestamp_ms: 1_000 + index * 10,
                ..BatchSpec::default()
            };
            append(&log, &[spec], 0).unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(
            log.offset_for_timestamp(1_105).await.unwrap(),
            Some((Offset(11), 1_110))
        );
        assert_eq!(log.offset_for_timestamp(9_999).await.unwrap(), None);
        assert_eq!(log.max_timestamp(), Some((Offset(49), 1_490)));
        log.truncate(Offset(30)).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(30));
        assert_eq!(log.max_timestamp(), Some((Offset(29), 1_290)));
        assert!(matches!(
            log.read(Offset(31), 10).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_for_data(Offset(30)).await })
        };
        assert_eq!(
            appended(append(&log, &[BatchSpec::default()], 0).unwrap()),
            (30, 31)
        );
        waiter.await;
        log.close().await.unwrap();
    });
}

#[test]
fn memory_engine_drops_oldest_batches_past_its_byte_bound() {
    run("memory_bound", |dir| async move {
        let config = LogConfig {
            engine: StorageEngine::Memory,
            retention_bytes: 10_000,
            ..LogConfig::default()
        };
        let log = open(&dir, config.clone()).await;
        let spec = BatchSpec {
            records: 2,
            value_bytes: 400,
            ..BatchSpec::default()
        };
        let size = build_batch(spec).len() as u64;
        for _ in 0..100 {
            append(&log, &[spec], 0).unwrap();
        }
        assert!(log.size_bytes() <= 10_000 && log.size_bytes() + size > 10_000);
        let start = log.log_start_offset().0;
        assert_eq!(start, 200 - 2 * (log.size_bytes() / size) as i64);
        assert!(matches!(
            log.read(Offset(0), 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log, start).await.len() as u64, log.size_bytes());
        assert_eq!(log.stats().evicted_batches, (start / 2) as u64);
        assert!(!dir.exists(), "a memory log never touches the disk");
        log.close().await.unwrap();
        let log = open(&dir, config).await;
        assert_eq!(
            log.log_end_offset(),
            Offset(0),
            "memory topics restart empty"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn acks_all_waits_for_fdatasync_by_default_and_counts_batches_per_fsync() {
    run("flush_default", |dir| async move {
        let manager = LogManager::new(dir.clone());
        let log = manager.open("t", 0, LogConfig::default()).await.unwrap();
        let mut waits = Vec::new();
        for _ in 0..10 {
            let (_, last) = appended(append(&log, &[BatchSpec::default()], 0).unwrap());
            let log = log.clone();
            waits.push(glommio::spawn_local(async move {
                log.wait_durable(Offset(last)).await
            }));
        }
        for wait in waits {
            wait.await.unwrap();
        }
        let stats = manager.stats();
        assert_eq!(stats.appended_batches, 10);
        assert_eq!(stats.fsynced_batches, 10, "every acked batch was fsynced");
        assert!(stats.fsyncs >= 1 && stats.fsyncs <= 10, "{stats:?}");
        manager.close_all().await.unwrap();
    });
}

#[test]
fn flush_messages_and_flush_ms_sync_in_the_background() {
    run("flush_policy", |dir| async move {
        let relaxed = LogConfig {
            flush_messages: 6,
            flush_ms: i64::MAX,
            ..LogConfig::default()
        };
        let log = open(&dir, relaxed.clone()).await;
        append(&log, &[BatchSpec::default()], 0).unwrap();
        log.wait_durable(Offset(1)).await.unwrap();
        assert_eq!(log.stats().fsyncs, 0, "acks=all answered once written");
        for _ in 0..2 {
            append(&log, &[BatchSpec::default()], 0).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while log.stats().fsyncs == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "6 records trigger a sync"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        log.set_config(LogConfig {
            flush_messages: i64::MAX,
            flush_ms: 20,
            ..relaxed
        });
        let synced = log.stats().fsynced_batches;
        append(&log, &[BatchSpec::default()], 0).unwrap();
        log.wait_durable(Offset(7)).await.unwrap();
        while log.stats().fsynced_batches == synced {
            assert!(
                std::time::Instant::now() < deadline,
                "flush.ms triggers a sync"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(log.stats().fsynced_batches, 4);
        log.close().await.unwrap();
    });
}

#[test]
fn disk_full_refuses_writes_keeps_reads_and_resumes_when_space_returns() {
    use crate::segment_appender::fault_injection::fail_next_writes_with_no_space;
    run("no_space", |dir| async move {
        let log = open(&dir, LogConfig::default()).await;
        append(&log, &[BatchSpec::default()], 0).unwrap();
        log.wait_durable(Offset(1)).await.unwrap();
        fail_next_writes_with_no_space(3);
        let (_, last) = appended(append(&log, &[BatchSpec::default()], 0).unwrap());
        assert!(matches!(
            log.wait_durable(Offset(last)).await,
            Err(StorageError::NoSpace)
        ));
        assert!(matches!(
            append(&log, &[BatchSpec::default()], 0),
            Err(StorageError::NoSpace)
        ));
        assert_eq!(
            read_all(&log, 0).await.len(),
            build_batch(BatchSpec::default()).len()
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let resumed = loop {
            assert!(std::time::Instant::now() < deadline, "writes resume");
            match append(&log, &[BatchSpec::default()], 0) {
                Ok(outcome) => break appended(outcome),
                Err(StorageError::NoSpace) => {
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(other) => panic!("{other:?}"),
            }
        };
        assert_eq!(resumed, (4, 5), "the refused batch was written on retry");
        log.wait_durable(Offset(5)).await.unwrap();
        assert!(log.stats().no_space_errors >= 3);
        assert_eq!(
            validate_batches(&read_all(&log, 0).await, 1 << 20)
                .unwrap()
                .len(),
            3
        );
        fail_next_writes_with_no_space(u64::MAX);
        append(&log, &[BatchSpec::default()], 0).unwrap();
        log.close().await.unwrap();
        fail_next_writes_with_no_space(0);
        let log = open(&dir, LogConfig::default()).await;
        assert_eq!(
            log.log_end_offset(),
            Offset(6),
            "close on a full disk drops the unwritten"
        );
        log.close().await.unwrap();
    });
}

/// Appends `count` batches with a tiny segment size so the log spans several segments,
/// closes it, and returns the stored bytes of every batch.
async fn write_segments(dir: &Path, count: usize) -> Vec<Vec<u8>> {
    let log = open(dir, small_config()).await;
    let spec = BatchSpec {
        records: 2,
        value_bytes: 300,
        ..BatchSpec::default()
    };
    let mut stored = Vec::new();
    for _ in 0..count {
        let (base, _) = appended(append(&log, &[spec], 0).unwrap());
        stored.push(stored_bytes(spec, base));
    }
    log.close().await.unwrap();
    stored
}

#[test]
fn flipped_bits_in_an_older_segment_are_caught_by_crc_and_never_served() {
    run("flipped_bits", |dir| async move {
        let stored = write_segments(&dir, 150).await;
        let logs = segment_files(&dir, "log");
        assert!(logs.len() >= 4, "{logs:?}");
        let mut contents = std::fs::read(&logs[0]).unwrap();
        let batch_len = stored[0].len();
        contents[batch_len * 5 + 100] ^= 0x10;
        std::fs::write(&logs[0], &contents).unwrap();
        // Recovery scans only the tail segments, so the log opens whole...
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_end_offset(), Offset(300));
        // ...and the read path checks every batch's CRC: the bad one is refused, the batches
        // before it end a read early, and everything else is served intact.
        assert!(matches!(
            log.read(Offset(10), 1).await,
            Err(StorageError::Corrupt(_))
        ));
        assert_eq!(
            log.read(Offset(0), 1 << 20).await.unwrap(),
            stored[..5].concat()
        );
        assert_eq!(read_all(&log, 12).await, stored[6..].concat());
        log.close().await.unwrap();
    });
}

#[test]
fn torn_tail_page_of_garbage_is_cut_on_recovery() {
    run("torn_page", |dir| async move {
        let stored = write_segments(&dir, 20).await;
        let last = segment_files(&dir, "log").pop().unwrap();
        let good_len = std::fs::metadata(&last).unwrap().len();
        let mut contents = std::fs::read(&last).unwrap();
        let mut rng = Rng::new(7);
        contents.extend((0..3000).map(|_| rng.below(256) as u8));
        std::fs::write(&last, &contents).unwrap();
        let log = open(&dir, small_config()).await;
        assert_eq!(log.log_end_offset(), Offset(40));
        assert_eq!(std::fs::metadata(&last).unwrap().len(), good_len);
        assert_eq!(read_all(&log, 0).await, stored.concat());
        log.close().await.unwrap();
    });
}

#[test]
fn truncated_and_missing_indexes_of_older_segments_are_rebuilt() {
    run("index_damage", |dir| async move {
        let stored = write_segments(&dir, 150).await;
        let indexes = segment_files(&dir, "index");
        let times = segment_files(&dir, "timeindex");
        assert!(indexes.len() >= 4);
        let lengths: Vec<u64> = indexes
            .iter()
            .map(|file| std::fs::metadata(file).unwrap().len())
            .collect();
        assert!(lengths[0] >= 16);
        let cut = std::fs::OpenOptions::new()
            .write(true)
            .open(&indexes[0])
            .unwrap();
        cut.set_len(lengths[0] / 2 - 3).unwrap();
        std::fs::remove_file(&indexes[1]).unwrap();
        std::fs::remove_file(&times[1]).unwrap();
        let log = open(&dir, small_config()).await;
        for (file, length) in indexes.iter().zip(&lengths).take(2) {
            assert_eq!(
                std::fs::metadata(file).unwrap().len(),
                *length,
                "{file:?} rebuilt"
            );
        }
        assert_eq!(read_all(&log, 0).await, stored.concat());
        for from in [3i64, 41, 99, 170] {
            let bytes = log.read(Offset(from), 1).await.unwrap();
            let headers = validate_batches(&bytes, 1 << 20).unwrap();
            assert!(headers[0].base_offset <= from && from <= headers[0].last_offset());
        }
        log.close().await.unwrap();
    });
}
