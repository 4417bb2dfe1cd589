//! Tests of partition scale and fast recovery: the shard's open-file cache (idle partitions
//! hold no descriptor, evicted segments reopen on demand and keep every byte) and the
//! recovery checkpoint (sealed segments are trusted without a scan after a crash; a segment
//! that changed on disk, or a corrupt checkpoint, takes the full recovery path).
//!
//! Concurrency contract: each test runs in its own glommio executor thread, so the
//! thread-local open-file cache and its lowered limit are the test's own.

use crate::constants::RECOVERY_CHECKPOINT_FILE;
use crate::open_files;
use crate::tests::{append, appended, open, read_all, run, segment_files, small_config, BatchSpec};
use crate::{LogConfig, Offset, PartitionLog};
use std::path::Path;
use std::rc::Rc;

/// Segments the open-file cache may keep open in these tests.
const TEST_OPEN_SEGMENTS: usize = 4;

/// Partitions opened against that limit.
const TEST_PARTITIONS: usize = 24;

fn spec(value_bytes: usize) -> BatchSpec {
    BatchSpec {
        value_bytes,
        ..BatchSpec::default()
    }
}

/// (segments with open files, segments whose files exist but are closed) of one log.
fn file_states(log: &PartitionLog) -> (usize, usize) {
    let state = log.file_engine().state.borrow();
    let open = state.segments.iter().filter(|s| s.files.is_some()).count();
    let closed = state
        .segments
        .iter()
        .filter(|s| s.closed_sizes.is_some())
        .count();
    (open, closed)
}

async fn open_partitions(root: &Path, config: &LogConfig) -> Vec<Rc<PartitionLog>> {
    let mut logs = Vec::new();
    for partition in 0..TEST_PARTITIONS {
        logs.push(open(&root.join(partition.to_string()), config.clone()).await);
    }
    logs
}

#[test]
fn idle_partitions_hold_no_files_and_evicted_segments_reopen() {
    run("open_file_cache", |dir| async move {
        open_files::set_limit(TEST_OPEN_SEGMENTS);
        let root = dir
            .parent()
            .expect("partition dir has a parent")
            .join("many");
        let config = small_config();
        let logs = open_partitions(&root, &config).await;
        // Never written: no segment file on disk, nothing open.
        for (partition, log) in logs.iter().enumerate() {
            assert_eq!(file_states(log), (0, 0));
            assert!(segment_files(&root.join(partition.to_string()), "log").is_empty());
        }
        assert_eq!(open_files::open_segments(), 0);

        // One batch each, then a second round after everything was evicted at least once.
        let mut expected: Vec<Vec<u8>> = vec![Vec::new(); TEST_PARTITIONS];
        for round in 0..2 {
            for (partition, log) in logs.iter().enumerate() {
                let value_bytes = 10 + partition + round * 100;
                let (_, last) = appended(append(log, &[spec(value_bytes)], 1_000).unwrap());
                log.wait_durable(Offset(last)).await.expect("durable");
                expected[partition] = read_all(log, 0).await;
            }
            open_files::evict_over_limit().await;
            assert_eq!(open_files::open_segments(), TEST_OPEN_SEGMENTS);
            let open: usize = logs.iter().map(|log| file_states(log).0).sum();
            assert_eq!(open, TEST_OPEN_SEGMENTS, "the cache closed the rest");
        }
        for (partition, log) in logs.iter().enumerate() {
            assert_eq!(log.log_end_offset(), Offset(4), "2 batches of 2 records");
            // The read cache holds the tail; a read from disk must reopen the files.
            log.file_engine()
                .state
                .borrow_mut()
                .cache_drop_before(i64::MAX);
            assert_eq!(read_all(log, 0).await, expected[partition]);
        }
        open_files::evict_over_limit().await;
        assert!(open_files::open_segments() <= TEST_OPEN_SEGMENTS);
        for log in &logs {
            log.close().await.expect("close");
        }
        assert_eq!(
            open_files::open_segments(),
            0,
            "close forgets every segment"
        );

        // After a clean restart every partition has its records and accepts more.
        let logs = open_partitions(&root, &config).await;
        for (partition, log) in logs.iter().enumerate() {
            assert_eq!(file_states(log), (0, 1), "recovery leaves the files closed");
            assert_eq!(read_all(log, 0).await, expected[partition]);
            let (base, _) = appended(append(log, &[spec(7)], 2_000).unwrap());
            assert_eq!(base, 4);
            log.wait_durable(Offset(base + 1)).await.expect("durable");
        }
        open_files::evict_over_limit().await;
        assert!(open_files::open_segments() <= TEST_OPEN_SEGMENTS);
        for log in &logs {
            log.close().await.expect("close");
        }
    });
}

/// Appends until the log has at least `segments` segments; returns its end offset. A last
/// append in a writer round of its own means the round that rolled (and checkpointed the
/// sealed segments) is over, as it would long be in a running broker.
async fn fill_segments(log: &PartitionLog, segments: usize) -> i64 {
    let mut last = 0;
    while log.file_engine().state.borrow().segments.len() < segments {
        last = appended(append(log, &[spec(900)], 1_000).unwrap()).1;
    }
    log.wait_written(Offset(last)).await.expect("written");
    last = appended(append(log, &[spec(10)], 1_000).unwrap()).1;
    log.wait_written(Offset(last)).await.expect("written");
    last + 1
}

/// Sealed segments recovery trusted from the checkpoint (not opened, index not loaded).
fn trusted_segments(log: &PartitionLog) -> usize {
    let state = log.file_engine().state.borrow();
    state
        .segments
        .iter()
        .filter(|s| !s.index_loaded && s.files.is_none() && s.checkpointed)
        .count()
}

#[test]
fn recovery_checkpoint_skips_sealed_segments_after_a_crash() {
    run("recovery_checkpoint", |dir| async move {
        let config = small_config();
        let log = open(&dir, config.clone()).await;
        let end = fill_segments(&log, 6).await;
        let expected = read_all(&log, 0).await;
        log.crash().await;

        // Written at each roll while running: a kill -9 leaves it in place.
        assert!(dir.join(RECOVERY_CHECKPOINT_FILE).is_file());
        let log = open(&dir, config.clone()).await;
        let segments = log.file_engine().state.borrow().segments.len();
        assert_eq!(segments, 6);
        // All but the last RECOVERY_PRODUCER_SEGMENTS (2) are trusted without a scan.
        assert_eq!(trusted_segments(&log), 4);
        assert_eq!(log.log_end_offset(), Offset(end));
        // Reads of trusted segments load their index on demand and return the same bytes.
        assert_eq!(read_all(&log, 0).await, expected);
        let (_, last) = appended(append(&log, &[spec(10)], 3_000).unwrap());
        log.wait_written(Offset(last)).await.expect("written");
        let expected = read_all(&log, 0).await;
        log.crash().await;

        // A sealed segment cut short behind the checkpoint's back: its size no longer
        // matches, so recovery scans it, cuts the torn batch and drops every later segment.
        let second = segment_files(&dir, "log")[1].clone();
        let size = std::fs::metadata(&second).expect("stat").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&second)
            .expect("open");
        file.set_len(size - 100).expect("cut");
        drop(file);
        let log = open(&dir, config.clone()).await;
        let (first_end, second_end, count) = {
            let state = log.file_engine().state.borrow();
            let s = &state.segments;
            (s[0].next_offset, s[1].next_offset, s.len())
        };
        assert_eq!(count, 2, "segments after the torn one are gone");
        assert!(second_end > first_end && second_end < end);
        assert_eq!(log.log_end_offset(), Offset(second_end));
        let recovered = read_all(&log, 0).await;
        assert!(recovered.len() < expected.len());
        assert_eq!(recovered[..], expected[..recovered.len()]);
        log.close().await.expect("close");
    });
}

#[test]
fn corrupt_checkpoint_falls_back_to_a_full_recovery() {
    run("corrupt_checkpoint", |dir| async move {
        let config = small_config();
        let log = open(&dir, config.clone()).await;
        let end = fill_segments(&log, 5).await;
        let expected = read_all(&log, 0).await;
        log.close().await.expect("close");

        let path = dir.join(RECOVERY_CHECKPOINT_FILE);
        let mut text = std::fs::read(&path).expect("checkpoint");
        let middle = text.len() / 2;
        text[middle] = if text[middle] == b'1' { b'2' } else { b'1' };
        std::fs::write(&path, &text).expect("write");

        let log = open(&dir, config.clone()).await;
        assert_eq!(
            trusted_segments(&log),
            0,
            "a checkpoint failing its CRC is ignored"
        );
        assert_eq!(log.log_end_offset(), Offset(end));
        assert_eq!(read_all(&log, 0).await, expected);
        log.close().await.expect("close");
        // That recovery rewrote a valid checkpoint: the next start trusts the sealed ones.
        let log = open(&dir, config).await;
        assert_eq!(trusted_segments(&log), 3);
        assert_eq!(read_all(&log, 0).await, expected);
        log.close().await.expect("close");
    });
}
