//! Log compaction: scenario tests and a seeded op-fuzzer against a model. Keyed appends
//! (tombstones, headers, idempotent producers, every codec), rolls, cleaner passes with large
//! and tiny key maps, clock jumps past `delete.retention.ms`, clean and crash restarts,
//! truncation and retention, checked against a model that keeps, per key, the latest record.

use crate::constants::COMPACTION_KEY_MAP_BYTES_MAX;
use crate::records::compress;
use crate::segment::{compaction_temp_path, SWAP_EXTENSION};
use crate::tests::{ext4_root, open, put_varint, run, run_on, tmpfs_root, Rng};
use crate::{
    validate_batches, validate_stored_batches, AppendOutcome, BatchError, BatchHeader,
    CleanupPolicy, CompactionOutcome, LogConfig, Offset, PartitionLog, StorageError,
};
use bytes::BytesMut;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

const CODECS: [i16; 5] = [0, 1, 2, 3, 4];

/// One record as a producer sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp_ms: i64,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn rec(key: &str, value: Option<&str>, timestamp_ms: i64) -> Rec {
    Rec {
        key: Some(key.as_bytes().to_vec()),
        value: value.map(|v| v.as_bytes().to_vec()),
        timestamp_ms,
        headers: Vec::new(),
    }
}

#[derive(Clone, Copy, Debug)]
struct Producer {
    id: i64,
    epoch: i16,
    sequence: i32,
}

fn put_bytes(bytes: Option<&[u8]>, out: &mut Vec<u8>) {
    match bytes {
        None => put_varint(-1, out),
        Some(bytes) => {
            put_varint(bytes.len() as i64, out);
            out.extend_from_slice(bytes);
        }
    }
}

fn encode_record(offset_delta: usize, base_timestamp: i64, record: &Rec, out: &mut Vec<u8>) {
    let mut body = vec![0u8];
    put_varint(record.timestamp_ms - base_timestamp, &mut body);
    put_varint(offset_delta as i64, &mut body);
    put_bytes(record.key.as_deref(), &mut body);
    put_bytes(record.value.as_deref(), &mut body);
    put_varint(record.headers.len() as i64, &mut body);
    for (key, value) in &record.headers {
        put_bytes(Some(key), &mut body);
        put_bytes(value.as_deref(), &mut body);
    }
    put_varint(body.len() as i64, out);
    out.extend_from_slice(&body);
}

/// A RecordBatch v2 as a producer builds it (base offset 0, CRC set).
fn keyed_batch(records: &[Rec], producer: Option<Producer>, codec: i16) -> Vec<u8> {
    let base_timestamp = records[0].timestamp_ms;
    let max_timestamp = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .expect("records");
    let mut section = Vec::new();
    for (delta, record) in records.iter().enumerate() {
        encode_record(delta, base_timestamp, record, &mut section);
    }
    let section = compress(codec, &section).expect("compress");
    let (id, epoch, sequence) = producer.map_or((-1, -1, -1), |p| (p.id, p.epoch, p.sequence));
    let mut buf = Vec::new();
    buf.extend_from_slice(&0i64.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&(-1i32).to_be_bytes());
    buf.push(2);
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf.extend_from_slice(&codec.to_be_bytes());
    buf.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
    buf.extend_from_slice(&base_timestamp.to_be_bytes());
    buf.extend_from_slice(&max_timestamp.to_be_bytes());
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&epoch.to_be_bytes());
    buf.extend_from_slice(&sequence.to_be_bytes());
    buf.extend_from_slice(&(records.len() as i32).to_be_bytes());
    buf.extend_from_slice(&section);
    let length = (buf.len() - 12) as i32;
    buf[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf
}

fn append_keyed(
    log: &PartitionLog,
    records: &[Rec],
    producer: Option<Producer>,
    codec: i16,
    now_ms: i64,
) -> Result<AppendOutcome, StorageError> {
    let batch = keyed_batch(records, producer, codec);
    let headers = validate_batches(&batch, 1 << 20)?;
    log.append(BytesMut::from(&batch[..]), &headers, 7, now_ms)
}

fn appended(outcome: AppendOutcome) -> (i64, i64) {
    match outcome {
        AppendOutcome::Appended {
            base_offset,
            last_offset,
        } => (base_offset.0, last_offset.0),
        other => panic!("expected Appended, got {other:?}"),
    }
}

/// One record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredRecord {
    offset: i64,
    record: Rec,
}

/// One batch as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredBatch {
    base: i64,
    last: i64,
    producer_id: i64,
    codec: i16,
    horizon: Option<i64>,
    records: Vec<StoredRecord>,
}

fn get_varint(buf: &[u8], at: &mut usize) -> i64 {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = buf[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (value >> 1) as i64 ^ -((value & 1) as i64);
        }
        shift += 7;
    }
}

fn get_bytes(buf: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let len = get_varint(buf, at);
    if len < 0 {
        return None;
    }
    let bytes = buf[*at..*at + len as usize].to_vec();
    *at += len as usize;
    Some(bytes)
}

/// Decodes stored batches independently of the cleaner's record code (only decompression is
/// shared).
fn decode_batches(bytes: &[u8]) -> Vec<StoredBatch> {
    let headers = validate_stored_batches(bytes, usize::MAX).expect("stored batches are valid");
    let mut out = Vec::new();
    let mut position = 0usize;
    for header in headers {
        let size = header.total_size_bytes();
        let batch = &bytes[position..position + size];
        let section = crate::records::records_section(batch, &header).expect("records section");
        let mut at = 0usize;
        let mut records = Vec::new();
        for _ in 0..header.records_count {
            let len = get_varint(&section, &mut at) as usize;
            let end = at + len;
            at += 1; // attributes
            let timestamp_delta = get_varint(&section, &mut at);
            let offset_delta = get_varint(&section, &mut at);
            let key = get_bytes(&section, &mut at);
            let value = get_bytes(&section, &mut at);
            let mut headers = Vec::new();
            for _ in 0..get_varint(&section, &mut at) {
                let key = get_bytes(&section, &mut at).expect("header key");
                headers.push((key, get_bytes(&section, &mut at)));
            }
            assert_eq!(at, end, "record length");
            let timestamp_ms = if header.is_log_append_time() {
                header.max_timestamp
            } else {
                header.base_timestamp + timestamp_delta
            };
            records.push(StoredRecord {
                offset: header.base_offset + offset_delta,
                record: Rec {
                    key,
                    value,
                    timestamp_ms,
                    headers,
                },
            });
        }
        assert_eq!(at, section.len(), "records fill the section");
        assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(records
            .iter()
            .all(|r| (header.base_offset..=header.last_offset()).contains(&r.offset)));
        out.push(StoredBatch {
            base: header.base_offset,
            last: header.last_offset(),
            producer_id: header.producer_id,
            codec: header.compression_codec(),
            horizon: header.delete_horizon_ms(),
            records,
        });
        position += size;
    }
    out
}

/// Every batch from the log start to the high watermark; offsets must strictly increase
/// across batches. Reads of up to 64 KiB (several batches, at most one segment each), so a
/// check costs a few reads, not one per batch.
async fn read_log(log: &PartitionLog) -> Vec<StoredBatch> {
    let mut out: Vec<StoredBatch> = Vec::new();
    let mut next = log.log_start_offset().0;
    while next < log.high_watermark().0 {
        let bytes = log.read(Offset(next), 64 * 1024).await.expect("read");
        let batches = decode_batches(&bytes);
        assert!(!batches.is_empty(), "read from {next} returned nothing");
        assert!(
            batches[0].last >= next,
            "read from {next} returned {:?}",
            batches[0]
        );
        for batch in batches {
            if let Some(previous) = out.last() {
                assert!(batch.base > previous.last, "offsets increase");
            }
            next = batch.last + 1;
            out.push(batch);
        }
    }
    out
}

/// The surviving records of the log, in offset order.
async fn read_records(log: &PartitionLog) -> Vec<StoredRecord> {
    read_log(log)
        .await
        .into_iter()
        .flat_map(|batch| batch.records)
        .collect()
}

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 256,
        cleanup_policy: CleanupPolicy::Compact,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: 10_000,
        ..LogConfig::default()
    }
}

async fn wait_all_written(log: &PartitionLog) {
    let end = log.log_end_offset().0;
    if end > 0 {
        log.wait_written(Offset(end - 1)).await.expect("written");
    }
}

async fn compact(log: &PartitionLog, now_ms: i64) -> Option<CompactionOutcome> {
    log.compact(now_ms, COMPACTION_KEY_MAP_BYTES_MAX)
        .await
        .expect("compact")
}

fn value_of(i: usize, round: usize) -> String {
    format!("value-{i}-{round}-{}", "x".repeat(200))
}

/// Appends `rounds` updates of `keys` keys, one record per batch, enough to span several
/// 16 KiB segments; returns each key's latest value.
fn write_updates(log: &PartitionLog, keys: usize, rounds: usize, now_ms: i64) -> Vec<String> {
    for round in 0..rounds {
        for i in 0..keys {
            let record = rec(
                &format!("key-{i}"),
                Some(&value_of(i, round)),
                now_ms + round as i64,
            );
            appended(append_keyed(log, &[record], None, 0, now_ms).expect("append"));
        }
    }
    (0..keys).map(|i| value_of(i, rounds - 1)).collect()
}

#[test]
fn compaction_keeps_the_latest_value_of_every_key_at_its_original_offset() {
    run("compact_latest", |dir| async move {
        let log = open(&dir, compact_config()).await;
        write_updates(&log, 10, 40, 1_000);
        wait_all_written(&log).await;
        let first = compact(&log, 2_000).await.expect("a pass ran");
        assert!(first.bytes_after < first.bytes_before / 4, "{first:?}");
        // A second round of updates: the next pass also merges the small cleaned segments.
        let latest = write_updates(&log, 10, 40, 3_000);
        wait_all_written(&log).await;
        let before = read_records(&log).await;
        let segments_before = log.file_engine().segment_ranges();
        let active_base = segments_before.last().expect("active").0;
        let end = log.log_end_offset();
        let outcome = compact(&log, 4_000).await.expect("a pass ran");
        assert_eq!(outcome.cleaned_end.0, active_base);
        assert!(
            outcome.segments_after < outcome.segments_before,
            "{outcome:?}"
        );
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.log_start_offset(), Offset(0));
        let check = |after: &[StoredRecord]| {
            let below: Vec<&StoredRecord> =
                after.iter().filter(|r| r.offset < active_base).collect();
            let mut seen = std::collections::HashSet::new();
            for record in &below {
                assert!(
                    seen.insert(record.record.key.clone()),
                    "one record per key below the active segment"
                );
            }
            for (i, value) in latest.iter().enumerate() {
                let key = format!("key-{i}").into_bytes();
                let original = before
                    .iter()
                    .rev()
                    .find(|r| r.record.key.as_deref() == Some(&key[..]))
                    .expect("appended");
                let kept = after
                    .iter()
                    .rev()
                    .find(|r| r.record.key.as_deref() == Some(&key[..]))
                    .expect("kept");
                assert_eq!(kept, original);
                assert_eq!(kept.record.value.as_deref(), Some(value.as_bytes()));
            }
            let active: Vec<&StoredRecord> =
                after.iter().filter(|r| r.offset >= active_base).collect();
            let active_before: Vec<&StoredRecord> =
                before.iter().filter(|r| r.offset >= active_base).collect();
            assert_eq!(active, active_before, "the active segment is untouched");
        };
        check(&read_records(&log).await);
        log.close().await.expect("close");
        let log = open(&dir, compact_config()).await;
        assert_eq!(log.log_end_offset(), end);
        check(&read_records(&log).await);
        let (next, _) = appended(
            append_keyed(&log, &[rec("key-0", Some("after"), 5_000)], None, 0, 5_000)
                .expect("append"),
        );
        assert_eq!(next, end.0);
        log.close().await.expect("close");
    });
}

#[test]
fn tombstones_stay_for_delete_retention_ms_then_go_with_every_older_value() {
    run("compact_tombstones", |dir| async move {
        let log = open(&dir, compact_config()).await;
        for round in 0..20 {
            for key in ["gone-1", "gone-2"] {
                let value = format!("{key}-{round}");
                appended(
                    append_keyed(&log, &[rec(key, Some(&value), 1_000)], None, 0, 1_000)
                        .expect("append"),
                );
            }
        }
        write_updates(&log, 5, 30, 1_000);
        appended(
            append_keyed(&log, &[rec("gone-1", None, 1_500)], None, 0, 1_500).expect("tombstone"),
        );
        write_updates(&log, 5, 20, 1_600);
        appended(
            append_keyed(&log, &[rec("gone-2", None, 1_700)], None, 0, 1_700).expect("tombstone"),
        );
        let filler = Rec {
            headers: vec![(b"h".to_vec(), None)],
            ..rec("other", Some(&"y".repeat(300)), 1_800)
        };
        for _ in 0..80 {
            appended(
                append_keyed(&log, std::slice::from_ref(&filler), None, 0, 1_800).expect("filler"),
            );
        }
        wait_all_written(&log).await;
        let tombstones = |records: &[StoredRecord]| -> Vec<(i64, Vec<u8>)> {
            records
                .iter()
                .filter(|r| r.record.value.is_none())
                .map(|r| (r.offset, r.record.key.clone().expect("keyed")))
                .collect()
        };
        let before = read_records(&log).await;
        let expected_tombstones = tombstones(&before);
        assert_eq!(expected_tombstones.len(), 2);
        let first = compact(&log, 10_000).await.expect("first pass");
        let records = read_records(&log).await;
        assert_eq!(
            tombstones(&records),
            expected_tombstones,
            "kept while within delete.retention.ms"
        );
        for key in [&b"gone-1"[..], b"gone-2"] {
            let of_key: Vec<&StoredRecord> = records
                .iter()
                .filter(|r| r.record.key.as_deref() == Some(key))
                .collect();
            assert_eq!(of_key.len(), 1, "only the tombstone is left of its key");
        }
        let stamped: Vec<Option<i64>> = read_log(&log)
            .await
            .into_iter()
            .filter(|b| b.records.iter().any(|r| r.record.value.is_none()))
            .map(|b| b.horizon)
            .collect();
        assert_eq!(stamped, vec![Some(20_000), Some(20_000)]);
        let timestamps_before: BTreeMap<i64, i64> = before
            .iter()
            .map(|r| (r.offset, r.record.timestamp_ms))
            .collect();
        for record in &records {
            assert_eq!(
                Some(&record.record.timestamp_ms),
                timestamps_before.get(&record.offset)
            );
        }
        assert!(
            compact(&log, 19_999).await.is_none(),
            "nothing due before the horizon"
        );
        let second = compact(&log, 20_000)
            .await
            .expect("the horizon makes a pass due");
        assert_eq!(second.cleaned_end, first.cleaned_end);
        let records = read_records(&log).await;
        assert!(
            tombstones(&records).is_empty(),
            "gone after delete.retention.ms"
        );
        for key in [&b"gone-1"[..], b"gone-2"] {
            assert!(records.iter().all(|r| r.record.key.as_deref() != Some(key)));
        }
        log.close().await.expect("close");
    });
}

#[test]
fn compressed_batches_are_thinned_and_keep_their_codec() {
    run("compact_codecs", |dir| async move {
        let log = open(&dir, compact_config()).await;
        for round in 0..30 {
            for codec in CODECS {
                let records: Vec<Rec> = (0..4)
                    .map(|i| {
                        let value = format!("{codec}-{i}-{round}-{}", "z".repeat(150));
                        rec(&format!("c{codec}-k{}", i % 3), Some(&value), 5_000 + i)
                    })
                    .collect();
                appended(append_keyed(&log, &records, None, codec, 5_000).expect("append"));
            }
        }
        wait_all_written(&log).await;
        let before = read_records(&log).await;
        let outcome = compact(&log, 6_000).await.expect("pass");
        let batches = read_log(&log).await;
        let cleaned: Vec<&StoredBatch> = batches
            .iter()
            .filter(|b| b.base < outcome.cleaned_end.0)
            .collect();
        for codec in CODECS {
            assert!(
                cleaned
                    .iter()
                    .any(|b| b.codec == codec && !b.records.is_empty()),
                "a thinned batch of codec {codec} survives"
            );
        }
        for batch in &cleaned {
            assert!(batch.records.len() <= 3, "{batch:?}");
        }
        let mut latest: HashMap<Vec<u8>, StoredRecord> = HashMap::new();
        for record in before.iter().filter(|r| r.offset < outcome.cleaned_end.0) {
            latest.insert(record.record.key.clone().expect("key"), record.clone());
        }
        let survivors: Vec<StoredRecord> = batches
            .iter()
            .flat_map(|b| b.records.clone())
            .filter(|r| r.offset < outcome.cleaned_end.0)
            .collect();
        let mut expected: Vec<StoredRecord> = latest.into_values().collect();
        expected.sort_by_key(|r| r.offset);
        assert_eq!(survivors, expected);
        log.close().await.expect("close");
    });
}

#[test]
fn a_small_key_map_cleans_a_prefix_and_later_passes_the_rest() {
    run("compact_prefix", |dir| async move {
        let log = open(&dir, compact_config()).await;
        let latest = write_updates(&log, 40, 15, 1_000);
        wait_all_written(&log).await;
        let active_base = log.file_engine().segment_ranges().last().expect("active").0;
        // Room for ~12 keys of 6 bytes: each pass maps a prefix of the dirty section.
        let bound = 12 * (6 + crate::constants::KEY_MAP_ENTRY_OVERHEAD_BYTES);
        let mut cleaned_end = 0;
        let mut passes = 0;
        while cleaned_end < active_base {
            let outcome = log
                .compact(2_000, bound)
                .await
                .expect("compact")
                .expect("due");
            assert!(
                outcome.cleaned_end.0 > cleaned_end,
                "every pass makes progress"
            );
            cleaned_end = outcome.cleaned_end.0;
            passes += 1;
            assert!(passes < 1_000);
        }
        assert!(passes > 1, "the bound forced several passes");
        assert_eq!(cleaned_end, active_base);
        // The dirty section is gone: a full pass now changes nothing.
        let records = read_records(&log).await;
        compact(&log, 2_000).await;
        assert_eq!(read_records(&log).await, records);
        for (i, value) in latest.iter().enumerate() {
            let key = format!("key-{i}").into_bytes();
            let of_key: Vec<&StoredRecord> = records
                .iter()
                .filter(|r| r.record.key.as_deref() == Some(&key[..]))
                .collect();
            assert_eq!(
                of_key.last().expect("kept").record.value.as_deref(),
                Some(value.as_bytes())
            );
            assert!(of_key.iter().filter(|r| r.offset < active_base).count() <= 1);
        }
        log.close().await.expect("close");
    });
}

#[test]
fn keyless_records_are_refused_by_a_compacted_log() {
    run("compact_keyless", |dir| async move {
        let log = open(&dir, compact_config()).await;
        let keyless = Rec {
            key: None,
            ..rec("unused", Some("v"), 1)
        };
        let refused = append_keyed(&log, &[rec("k", Some("v"), 1), keyless.clone()], None, 0, 1);
        assert!(
            matches!(refused, Err(StorageError::Batch(BatchError::MissingKey))),
            "{refused:?}"
        );
        assert_eq!(log.log_end_offset(), Offset(0));
        log.set_config(LogConfig {
            cleanup_policy: CleanupPolicy::Delete,
            ..compact_config()
        });
        appended(append_keyed(&log, &[keyless], None, 0, 1).expect("a delete log takes it"));
        log.close().await.expect("close");
    });
}

#[test]
fn compact_only_retention_deletes_nothing_and_compact_delete_still_expires() {
    run("compact_retention", |dir| async move {
        let config = LogConfig {
            retention_bytes: 20 * 1024,
            retention_ms: 1_000,
            ..compact_config()
        };
        let log = open(&dir, config.clone()).await;
        write_updates(&log, 10, 40, 1_000);
        wait_all_written(&log).await;
        log.enforce_retention(1_000_000).await.expect("retention");
        assert_eq!(
            log.log_start_offset(),
            Offset(0),
            "compact alone keeps every segment"
        );
        log.set_config(LogConfig {
            cleanup_policy: CleanupPolicy::CompactDelete,
            ..config
        });
        log.enforce_retention(1_000_000).await.expect("retention");
        assert!(
            log.log_start_offset() > Offset(0),
            "compact,delete expires old segments"
        );
        log.close().await.expect("close");
    });
}

#[test]
fn an_idempotent_producers_last_batch_is_kept_empty_and_still_detects_retries() {
    run("compact_producer", |dir| async move {
        let log = open(&dir, compact_config()).await;
        let producer = Producer {
            id: 42,
            epoch: 0,
            sequence: 0,
        };
        let (base, last) = appended(
            append_keyed(&log, &[rec("p", Some("first"), 1)], Some(producer), 0, 1)
                .expect("append"),
        );
        write_updates(&log, 3, 60, 2);
        for i in 0..200 {
            let record = rec("p", Some(&format!("later-{i}")), 3);
            appended(append_keyed(&log, &[record], None, 0, 3).expect("append"));
        }
        wait_all_written(&log).await;
        compact(&log, 10).await.expect("pass");
        let batches = read_log(&log).await;
        let kept = batches
            .iter()
            .find(|b| b.base == base)
            .expect("the producer's last batch is kept");
        assert!(kept.records.is_empty(), "emptied, not removed: {kept:?}");
        assert_eq!((kept.last, kept.producer_id), (last, 42));
        let retry =
            append_keyed(&log, &[rec("p", Some("first"), 1)], Some(producer), 0, 4).expect("retry");
        assert_eq!(
            retry,
            AppendOutcome::Duplicate {
                base_offset: Offset(base),
                last_offset: Offset(last)
            }
        );
        let next = Producer {
            sequence: 1,
            ..producer
        };
        appended(
            append_keyed(&log, &[rec("p", Some("second"), 5)], Some(next), 0, 5)
                .expect("in sequence"),
        );
        log.close().await.expect("close");
    });
}

/// Copies every regular file of `from` into a fresh `to`.
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("log"))
        .collect();
    files.sort();
    files
}

#[test]
fn recovery_finishes_a_durable_swap_and_discards_an_unfinished_one() {
    run("compact_crash_swap", |dir| async move {
        let log = open(&dir, compact_config()).await;
        write_updates(&log, 10, 40, 1_000);
        wait_all_written(&log).await;
        compact(&log, 1_500).await.expect("first pass");
        write_updates(&log, 10, 40, 1_600);
        log.close().await.expect("close");
        let original = dir.with_file_name("original");
        copy_dir(&dir, &original);
        let old_logs = log_files(&dir);
        let log = open(&dir, compact_config()).await;
        compact(&log, 2_000).await.expect("pass");
        let expected = read_records(&log).await;
        log.close().await.expect("close");
        let new_logs = log_files(&dir);
        assert!(new_logs.len() < old_logs.len());
        // The first cleaned group replaced the segments up to the second new segment's base.
        let first_base = 0;
        let group_end: i64 = new_logs[1]
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("segment name");
        for (case, delete_some) in [("swap_untouched", false), ("swap_half_deleted", true)] {
            let crashed = dir.with_file_name(case);
            copy_dir(&original, &crashed);
            let swap = compaction_temp_path(&crashed, first_base, group_end, SWAP_EXTENSION);
            std::fs::copy(&new_logs[0], &swap).expect("swap file");
            if delete_some {
                let replaced: Vec<&PathBuf> = old_logs
                    .iter()
                    .filter(|p| {
                        let base: i64 = p
                            .file_stem()
                            .and_then(|s| s.to_str())
                            .and_then(|s| s.parse().ok())
                            .expect("name");
                        base > first_base && base < group_end
                    })
                    .collect();
                assert!(!replaced.is_empty());
                std::fs::remove_file(crashed.join(replaced[0].file_name().expect("name")))
                    .expect("rm");
                std::fs::remove_file(crashed.join("00000000000000000000.index")).expect("rm index");
            }
            let cleaned = compaction_temp_path(&crashed, group_end, group_end + 1, "cleaned");
            std::fs::write(&cleaned, b"half written").expect("cleaned file");
            let log = open(&crashed, compact_config()).await;
            assert!(!swap.exists() && !cleaned.exists(), "{case}");
            let records = read_records(&log).await;
            let before_group: Vec<&StoredRecord> =
                records.iter().filter(|r| r.offset < group_end).collect();
            let expected_group: Vec<&StoredRecord> =
                expected.iter().filter(|r| r.offset < group_end).collect();
            assert_eq!(
                before_group, expected_group,
                "{case}: the swapped group is the cleaned one"
            );
            let later: Vec<&StoredRecord> =
                records.iter().filter(|r| r.offset >= group_end).collect();
            assert!(!later.is_empty());
            log.close().await.expect("close");
            let _ = std::fs::remove_dir_all(&crashed);
        }
        let _ = std::fs::remove_dir_all(&original);
    });
}

#[test]
fn appends_and_reads_go_on_while_a_pass_runs() {
    run("compact_concurrent", |dir| async move {
        let log = open(&dir, compact_config()).await;
        write_updates(&log, 20, 60, 1_000);
        wait_all_written(&log).await;
        let cleaner_log = log.clone();
        let pass = glommio::spawn_local(async move { compact(&cleaner_log, 2_000).await });
        glommio::executor().yield_now().await;
        assert!(log.file_engine().compacting.get(), "the pass started");
        let mut appends_during_pass = 0;
        let mut reads_during_pass = 0;
        while log.file_engine().compacting.get() {
            let record = rec("live", Some(&format!("{appends_during_pass}")), 1_500);
            let (_, last) =
                appended(append_keyed(&log, &[record], None, 0, 1_500).expect("append"));
            log.wait_written(Offset(last)).await.expect("written");
            let from = (last * 7919) % (last + 1);
            let bytes = log
                .read(Offset(from), 4096)
                .await
                .expect("read during the pass");
            let batches = decode_batches(&bytes);
            assert!(batches[0].last >= from);
            appends_during_pass += 1;
            reads_during_pass += 1;
            assert!(appends_during_pass < 100_000);
        }
        let outcome = pass.await.expect("a pass ran");
        assert!(outcome.records_removed > 0);
        assert!(
            appends_during_pass > 0 && reads_during_pass > 0,
            "{appends_during_pass} appends during the pass"
        );
        let records = read_records(&log).await;
        let live: Vec<&StoredRecord> = records
            .iter()
            .filter(|r| r.record.key.as_deref() == Some(b"live"))
            .collect();
        let last_live = live.last().expect("live records");
        assert_eq!(
            last_live.record.value.as_deref(),
            Some(format!("{}", appends_during_pass - 1).as_bytes())
        );
        log.close().await.expect("close");
    });
}

/// The model of one batch: what the cleaner must leave of it.
#[derive(Clone, Debug)]
struct ModelBatch {
    base: i64,
    last: i64,
    producer_id: i64,
    codec: i16,
    horizon: Option<i64>,
    records: Vec<StoredRecord>,
}

/// Prints the seed of a failing compaction sequence with the command that replays it.
struct CompactionSeedReporter(u64);

impl Drop for CompactionSeedReporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "compaction op-fuzzer failed: seed={} (replay: RMQ_COMPACTION_FUZZ_SEED={} \
                 RMQ_COMPACTION_FUZZ_TRACE=1 cargo test -p rmq-storage --release \
                 compaction_op_fuzzer -- --nocapture)",
                self.0, self.0
            );
        }
    }
}

struct CompactionFuzz {
    rng: Rng,
    dir: PathBuf,
    config: LogConfig,
    log: Rc<PartitionLog>,
    model: Vec<ModelBatch>,
    now_ms: i64,
    key_space: u64,
    producer: Producer,
    last_idempotent: Option<(Vec<Rec>, Producer, i16, i64, i64)>,
}

impl CompactionFuzz {
    fn random_records(&mut self) -> Vec<Rec> {
        let count = 1 + self.rng.below(4);
        (0..count)
            .map(|_| {
                let key = format!("k{}", self.rng.below(self.key_space)).into_bytes();
                let value = (self.rng.below(100) >= 15).then(|| {
                    let len = self.rng.below(300) as usize;
                    let fill = b'a' + self.rng.below(26) as u8;
                    vec![fill; len]
                });
                let headers = if self.rng.below(5) == 0 {
                    vec![(b"h".to_vec(), Some(vec![b'v'; self.rng.below(8) as usize]))]
                } else {
                    Vec::new()
                };
                Rec {
                    key: Some(key),
                    value,
                    timestamp_ms: self.now_ms + self.rng.below(60) as i64 - 30,
                    headers,
                }
            })
            .collect()
    }

    fn push_model(&mut self, records: &[Rec], producer: Option<Producer>, codec: i16, base: i64) {
        let last = base + records.len() as i64 - 1;
        self.model.push(ModelBatch {
            base,
            last,
            producer_id: producer.map_or(-1, |p| p.id),
            codec,
            horizon: None,
            records: records
                .iter()
                .enumerate()
                .map(|(i, r)| StoredRecord {
                    offset: base + i as i64,
                    record: r.clone(),
                })
                .collect(),
        });
    }

    fn append(&mut self) {
        let records = self.random_records();
        let codec = if self.rng.below(10) < 6 {
            0
        } else {
            CODECS[self.rng.below(CODECS.len() as u64) as usize]
        };
        let producer = (self.rng.below(3) == 0).then_some(self.producer);
        let (base, last) = appended(
            append_keyed(&self.log, &records, producer, codec, self.now_ms).expect("append"),
        );
        assert_eq!(last - base + 1, records.len() as i64);
        self.push_model(&records, producer, codec, base);
        if let Some(producer) = producer {
            self.producer.sequence += records.len() as i32;
            self.last_idempotent = Some((records, producer, codec, base, last));
        }
    }

    fn retry_last_idempotent(&mut self) {
        let Some((records, producer, codec, base, last)) = self.last_idempotent.clone() else {
            return self.append();
        };
        let outcome = append_keyed(&self.log, &records, Some(producer), codec, self.now_ms);
        assert_eq!(
            outcome.expect("retry"),
            AppendOutcome::Duplicate {
                base_offset: Offset(base),
                last_offset: Offset(last)
            }
        );
    }

    fn forget_producer(&mut self) {
        self.producer = Producer {
            id: self.producer.id + 1,
            epoch: 0,
            sequence: 0,
        };
        self.last_idempotent = None;
    }

    fn model_end(&self) -> i64 {
        self.model
            .last()
            .map_or(self.log.log_start_offset().0, |b| b.last + 1)
    }

    /// The model after a pass that cleaned below `map_end` at `now_ms` (see compaction.rs).
    fn apply_pass(&mut self, map_end: i64) {
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        for record in self.model.iter().flat_map(|b| &b.records) {
            if record.offset < map_end {
                latest.insert(record.record.key.clone().expect("keyed"), record.offset);
            }
        }
        let now_ms = self.now_ms;
        let retention_ms = self.config.delete_retention_ms;
        for batch in self.model.iter_mut().filter(|b| b.base < map_end) {
            assert!(batch.last < map_end, "passes end on batch boundaries");
            let expired = batch.horizon.is_some_and(|horizon| now_ms >= horizon);
            batch.records.retain(|r| {
                let key = r.record.key.as_ref().expect("keyed");
                latest.get(key) == Some(&r.offset) && !(r.record.value.is_none() && expired)
            });
            let tombstones = batch.records.iter().any(|r| r.record.value.is_none());
            batch.horizon = tombstones.then(|| batch.horizon.unwrap_or(now_ms + retention_ms));
            if batch.records.is_empty() {
                batch.codec = 0;
            }
        }
    }

    /// Reads the whole log and compares it with the model; emptied model batches the log
    /// dropped are dropped from the model.
    async fn check_against_model(&mut self) {
        wait_all_written(&self.log).await;
        let stored = read_log(&self.log).await;
        let mut next = 0usize;
        let mut kept = Vec::with_capacity(self.model.len());
        for batch in self.model.drain(..) {
            match stored.get(next) {
                Some(found) if found.base == batch.base => {
                    let expected = StoredBatch {
                        base: batch.base,
                        last: batch.last,
                        producer_id: batch.producer_id,
                        codec: batch.codec,
                        horizon: batch.horizon,
                        records: batch.records.clone(),
                    };
                    assert_eq!(found, &expected, "batch at {}", batch.base);
                    next += 1;
                    kept.push(batch);
                }
                other => assert!(
                    batch.records.is_empty(),
                    "batch {batch:?} with live records is missing; the log has {other:?} there"
                ),
            }
        }
        assert_eq!(
            next,
            stored.len(),
            "the log has batches the model does not: {:?}",
            &stored[next..]
        );
        self.model = kept;
        assert_eq!(self.log.log_end_offset().0, self.model_end(), "log end");
    }

    async fn compact(&mut self) {
        wait_all_written(&self.log).await;
        let bound = if self.rng.below(10) < 3 {
            200 + self.rng.below(1500) as usize
        } else {
            COMPACTION_KEY_MAP_BYTES_MAX
        };
        let latest_before = self.latest_by_key();
        let segments = self.log.file_engine().segment_ranges();
        let Some(outcome) = self.log.compact(self.now_ms, bound).await.expect("compact") else {
            return self.check_against_model().await;
        };
        let active_base = segments.last().expect("active").0;
        assert!(outcome.cleaned_end.0 <= active_base, "{outcome:?}");
        if bound == COMPACTION_KEY_MAP_BYTES_MAX && self.config.min_compaction_lag_ms == 0 {
            assert_eq!(
                outcome.cleaned_end.0, active_base,
                "a large map cleans every closed segment"
            );
        }
        self.apply_pass(outcome.cleaned_end.0);
        self.check_against_model().await;
        self.check_latest_survive(&latest_before, outcome.cleaned_end.0)
            .await;
    }

    fn latest_by_key(&self) -> HashMap<Vec<u8>, StoredRecord> {
        let mut latest = HashMap::new();
        for record in self.model.iter().flat_map(|b| &b.records) {
            latest.insert(record.record.key.clone().expect("keyed"), record.clone());
        }
        latest
    }

    /// Independent of the model's mechanics: each key's latest value is still there at its
    /// offset (a latest tombstone: it, or nothing of the key); below `cleaned_end` a key
    /// appears at most once.
    async fn check_latest_survive(
        &self,
        latest_before: &HashMap<Vec<u8>, StoredRecord>,
        cleaned_end: i64,
    ) {
        let records = read_records(&self.log).await;
        let mut below: HashMap<&[u8], usize> = HashMap::new();
        for record in records.iter().filter(|r| r.offset < cleaned_end) {
            let count = below
                .entry(record.record.key.as_deref().expect("keyed"))
                .or_default();
            *count += 1;
            assert_eq!(*count, 1, "one record per key below the cleaned end");
        }
        for (key, latest) in latest_before {
            let of_key: Vec<&StoredRecord> = records
                .iter()
                .filter(|r| r.record.key.as_deref() == Some(&key[..]))
                .collect();
            let tombstone_removed = latest.record.value.is_none() && of_key.is_empty();
            assert!(
                tombstone_removed || of_key.last() == Some(&latest),
                "latest record of {key:?}: {of_key:?}"
            );
        }
    }

    async fn restart(&mut self, crash: bool) {
        if crash {
            wait_all_written(&self.log).await;
            self.log.crash().await;
        } else {
            self.log.close().await.expect("close");
        }
        self.log = open(&self.dir, self.config.clone()).await;
        self.forget_producer();
        self.check_against_model().await;
    }

    async fn truncate(&mut self) {
        let start = self.log.log_start_offset().0;
        let end = self.log.log_end_offset().0;
        let to = start + self.rng.below((end - start) as u64 + 1) as i64;
        self.log.truncate(Offset(to)).await.expect("truncate");
        self.model.retain(|b| b.last < to);
        self.forget_producer();
        self.check_against_model().await;
    }

    async fn retention(&mut self) {
        wait_all_written(&self.log).await;
        let start_before = self.log.log_start_offset();
        self.log
            .enforce_retention(self.now_ms)
            .await
            .expect("retention");
        let start = self.log.log_start_offset();
        if !self.config.cleanup_policy.deletes() {
            assert_eq!(start, start_before, "compact alone never deletes segments");
        }
        self.model.retain(|b| b.base >= start.0);
        self.check_against_model().await;
    }

    async fn step(&mut self) {
        let op = self.rng.below(100);
        if std::env::var("RMQ_COMPACTION_FUZZ_TRACE").is_ok() {
            eprintln!(
                "op {op} now {} end {}",
                self.now_ms,
                self.log.log_end_offset().0
            );
        }
        match op {
            0..=49 => self.append(),
            50..=53 => self.retry_last_idempotent(),
            54..=61 => {
                self.now_ms += self.rng.below(2 * self.config.delete_retention_ms as u64) as i64
            }
            62..=77 => self.compact().await,
            78..=81 => self.check_against_model().await,
            82..=85 => self.restart(false).await,
            86..=88 => self.restart(true).await,
            89..=92 => self.truncate().await,
            93..=96 => self.retention().await,
            _ => self.log.flush().await.expect("flush"),
        }
    }

    /// Ends a sequence: a pass at `now`, then one past every horizon it set; afterwards no
    /// tombstone is left below the cleaned end and every key's latest value is there.
    async fn finish(&mut self) {
        self.log.set_config(LogConfig {
            min_cleanable_dirty_ratio: 0.0,
            min_compaction_lag_ms: 0,
            ..self.config.clone()
        });
        self.config = self.log.config();
        let latest = self.latest_by_key();
        wait_all_written(&self.log).await;
        let first = self
            .log
            .compact(self.now_ms, COMPACTION_KEY_MAP_BYTES_MAX)
            .await
            .expect("compact");
        if let Some(outcome) = first {
            self.apply_pass(outcome.cleaned_end.0);
        }
        self.now_ms += self.config.delete_retention_ms;
        let second = self
            .log
            .compact(self.now_ms, COMPACTION_KEY_MAP_BYTES_MAX)
            .await
            .expect("compact");
        if let Some(outcome) = second {
            self.apply_pass(outcome.cleaned_end.0);
        }
        self.check_against_model().await;
        let cleaned_end = second.or(first).map_or(0, |o| o.cleaned_end.0);
        self.check_latest_survive(&latest, cleaned_end).await;
        let records = read_records(&self.log).await;
        assert!(
            records
                .iter()
                .all(|r| r.offset >= cleaned_end || r.record.value.is_some()),
            "tombstones are gone once delete.retention.ms has passed"
        );
        self.log.close().await.expect("close");
    }
}

fn fuzz_config(rng: &mut Rng) -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        segment_ms: 2_000 + rng.below(8_000) as i64,
        index_interval_bytes: 256,
        retention_bytes: 48 * 1024,
        retention_ms: 60_000,
        cleanup_policy: if rng.below(4) == 0 {
            CleanupPolicy::CompactDelete
        } else {
            CleanupPolicy::Compact
        },
        delete_retention_ms: 500 + rng.below(5_000) as i64,
        min_cleanable_dirty_ratio: if rng.below(3) == 0 { 0.5 } else { 0.0 },
        min_compaction_lag_ms: if rng.below(5) == 0 { 3_000 } else { 0 },
        ..LogConfig::default()
    }
}

/// Seeds `shard, shard + shards, ...` below `sequences` (RMQ_COMPACTION_FUZZ_SEQUENCES
/// overrides it), or only RMQ_COMPACTION_FUZZ_SEED to replay one.
fn compaction_op_fuzzer(root: &Path, sequences: u64, shard: u64, ops: usize) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds: Vec<u64> = match env("RMQ_COMPACTION_FUZZ_SEED") {
        Some(seed) if seed % COMPACTION_FUZZ_SHARDS == shard => vec![seed],
        Some(_) => Vec::new(),
        None => (0..env("RMQ_COMPACTION_FUZZ_SEQUENCES").unwrap_or(sequences))
            .filter(|seed| seed % COMPACTION_FUZZ_SHARDS == shard)
            .collect(),
    };
    run_on(
        root,
        &format!("compaction_fuzzer_{shard}"),
        move |dir| async move {
            for seed in seeds {
                let _reporter = CompactionSeedReporter(seed);
                if std::env::var("RMQ_COMPACTION_FUZZ_TRACE").is_ok() {
                    eprintln!("seed {seed}");
                }
                let _ = std::fs::remove_dir_all(&dir);
                let mut rng = Rng::new(seed);
                let config = fuzz_config(&mut rng);
                let key_space = 2 + rng.below(30);
                let mut fuzz = CompactionFuzz {
                    rng,
                    log: open(&dir, config.clone()).await,
                    dir: dir.clone(),
                    config,
                    model: Vec::new(),
                    now_ms: 1_000_000,
                    key_space,
                    producer: Producer {
                        id: 1,
                        epoch: 0,
                        sequence: 0,
                    },
                    last_idempotent: None,
                };
                for _ in 0..ops {
                    fuzz.step().await;
                }
                fuzz.finish().await;
            }
        },
    );
}

/// Parallel tests the compaction fuzzer's seeds are spread over.
const COMPACTION_FUZZ_SHARDS: u64 = 4;

/// Seeded compaction sequences in `cargo test`.
const COMPACTION_FUZZ_SEQUENCES: u64 = 1_000;

/// Operations per compaction sequence: enough appends to fill and roll several segments.
const COMPACTION_FUZZ_OPS: usize = 150;

#[test]
fn compaction_op_fuzzer_0() {
    compaction_op_fuzzer(
        &tmpfs_root(),
        COMPACTION_FUZZ_SEQUENCES,
        0,
        COMPACTION_FUZZ_OPS,
    );
}

#[test]
fn compaction_op_fuzzer_1() {
    compaction_op_fuzzer(
        &tmpfs_root(),
        COMPACTION_FUZZ_SEQUENCES,
        1,
        COMPACTION_FUZZ_OPS,
    );
}

#[test]
fn compaction_op_fuzzer_2() {
    compaction_op_fuzzer(
        &tmpfs_root(),
        COMPACTION_FUZZ_SEQUENCES,
        2,
        COMPACTION_FUZZ_OPS,
    );
}

#[test]
fn compaction_op_fuzzer_3() {
    compaction_op_fuzzer(
        &tmpfs_root(),
        COMPACTION_FUZZ_SEQUENCES,
        3,
        COMPACTION_FUZZ_OPS,
    );
}

/// A few longer sequences on ext4, where direct IO, fdatasync and renames are real.
#[test]
fn compaction_op_fuzzer_on_ext4() {
    compaction_op_fuzzer(
        &ext4_root(),
        2 * COMPACTION_FUZZ_SHARDS,
        0,
        4 * COMPACTION_FUZZ_OPS,
    );
}

#[test]
fn stored_batch_validation_accepts_thinned_batches_only() {
    let full = keyed_batch(&[rec("a", Some("1"), 1), rec("b", Some("2"), 1)], None, 0);
    let header = BatchHeader::parse(&full).expect("header");
    let thinned = crate::records::build_batch(&header, &full, &[], 1, false).expect("empty batch");
    assert!(
        validate_batches(&thinned, 1 << 20).is_err(),
        "a producer may not send it"
    );
    let stored = validate_stored_batches(&thinned, 1 << 20).expect("a stored batch may be empty");
    assert_eq!(
        (stored[0].records_count, stored[0].last_offset_delta),
        (0, 1)
    );
}
