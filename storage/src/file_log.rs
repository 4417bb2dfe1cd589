//! The file engine of a partition log: offset assignment, idempotent-producer checks, segment
//! rolls, reads, truncation, retention and close. The background writer (writes, fdatasync
//! policy, ENOSPC retries, close) lives in `log_writer.rs`, the log cleaner (compaction) in
//! `log_cleaner.rs`.
//!
//! Concurrency contract: single-threaded (`!Send`), shared as `Rc<FileLog>` by the tasks
//! of one shard. All mutable state sits in one `RefCell` that is borrowed only between awaits,
//! never across one. `append` is synchronous and only touches memory; one background writer
//! task per log moves appended bytes to disk. File-level work (writer rounds, truncation,
//! retention deletes, the cleaner's segment swaps, close) is serialised by `io_lock`, so there
//! is at most one write in flight per segment, and every change to the list of closed segments
//! happens under it (a roll only pushes a new active segment).

use crate::batch::{assign_offset, BatchHeader};
use crate::constants::{PENDING_BYTES_MAX, READ_CACHE_BYTES_MAX, SEGMENT_RELATIVE_OFFSET_MAX};
use crate::error::StorageError;
use crate::log::{check_payload, AppendOutcome, LogConfig, LogStats};
use crate::log_cleaner::CleanerState;
use crate::open_files::{self, IdleFiles};
use crate::producer_state::{ProducerStateManager, SequenceCheck};
use crate::records::check_keyed_batches;
use crate::recovery::{recover_log, RecoveredLog};
use crate::segment::{remove_segment_paths, Segment, SegmentFiles};
use crate::segment_index::{decode_entries, SegmentIndex};
use crate::segment_reader::{read_batches, BaseOffsetCheck, BatchScanner, ScanStep};
use crate::waiters::WaiterList;
use crate::Offset;
use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Open,
    Truncating,
    Closing,
    Closed,
}

/// Bytes appended to one segment, waiting for the writer.
pub(crate) struct PendingWrite {
    pub(crate) segment_base: i64,
    pub(crate) bytes: Bytes,
    /// One past the last offset in `bytes`.
    pub(crate) end_offset: i64,
    pub(crate) batches: u64,
}

pub(crate) struct CachedBatch {
    base_offset: i64,
    last_offset: i64,
    bytes: Bytes,
}

pub(crate) struct LogState {
    pub(crate) config: LogConfig,
    pub(crate) segments: Vec<Segment>,
    pub(crate) producers: ProducerStateManager,
    pub(crate) next_offset: i64,
    /// One past the last offset written to its file (pwrite done).
    pub(crate) high_watermark: i64,
    /// One past the last offset covered by a completed fdatasync.
    pub(crate) durable_offset: i64,
    /// Durability requested up to here (exclusive) by `wait_durable` / `flush`.
    pub(crate) sync_wanted: i64,
    pub(crate) pending: VecDeque<PendingWrite>,
    pub(crate) pending_bytes: u64,
    /// Segments written since their last fdatasync.
    pub(crate) unsynced_segments: Vec<i64>,
    /// Segments written since open, whose files may end in padding until `close`.
    pub(crate) padded_segments: Vec<i64>,
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    max_timestamp: Option<(i64, i64)>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) writer_running: bool,
    pub(crate) failure: Option<String>,
    /// Bumped by every truncation so waiters for truncated offsets give up.
    pub(crate) truncations: u64,
    /// Set when a write round failed with ENOSPC: appends are refused with `NoSpace` and
    /// waiters beyond the high watermark get it, until a retry at this instant succeeds.
    pub(crate) no_space_retry_at: Option<Instant>,
    /// When the oldest write not yet covered by an fdatasync completed (`flush.ms`).
    pub(crate) first_unsynced_at: Option<Instant>,
    /// Batches written to their files, and how many of those an fdatasync covered.
    pub(crate) written_batches: u64,
    pub(crate) synced_batches: u64,
    pub(crate) stats: LogStats,
    /// Where the log cleaner's dirty section starts, and its pending tombstone horizons.
    pub(crate) cleaner: CleanerState,
}

pub struct FileLog {
    pub(crate) dir: PathBuf,
    /// This log's key in the shard's open-file cache, and a handle the cache can evict with.
    pub(crate) id: u64,
    pub(crate) me: Weak<FileLog>,
    pub(crate) state: RefCell<LogState>,
    pub(crate) io_lock: Semaphore,
    /// Woken when the high watermark moves (wait_written, wait_for_data) or on close/failure.
    pub(crate) written_waiters: WaiterList,
    pub(crate) durable_waiters: WaiterList,
    pub(crate) writer_waiters: WaiterList,
    pub(crate) writer_stopped: WaiterList,
    /// True while a compaction pass runs (at most one per log).
    pub(crate) compacting: Cell<bool>,
}

impl LogState {
    fn from_recovered(config: LogConfig, recovered: RecoveredLog) -> LogState {
        let end = recovered.next_offset;
        let log_start = recovered.segments.first().map_or(0, |s| s.base_offset);
        LogState {
            config,
            segments: recovered.segments,
            producers: recovered.producers,
            next_offset: end,
            high_watermark: end,
            durable_offset: end,
            sync_wanted: end,
            pending: VecDeque::new(),
            pending_bytes: 0,
            unsynced_segments: Vec::new(),
            padded_segments: Vec::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            max_timestamp: recovered.max_timestamp,
            lifecycle: Lifecycle::Open,
            writer_running: false,
            failure: None,
            truncations: 0,
            no_space_retry_at: None,
            first_unsynced_at: None,
            written_batches: 0,
            synced_batches: 0,
            stats: LogStats::default(),
            cleaner: CleanerState::new(log_start),
        }
    }

    pub(crate) fn failure_error(&self) -> Option<StorageError> {
        self.failure
            .as_ref()
            .map(|message| StorageError::Io(std::io::Error::other(message.clone())))
    }

    pub(crate) fn ensure_open(&self) -> Result<(), StorageError> {
        if let Some(error) = self.failure_error() {
            return Err(error);
        }
        match self.lifecycle {
            Lifecycle::Open => Ok(()),
            Lifecycle::Truncating => Err(StorageError::TruncateInProgress),
            Lifecycle::Closing | Lifecycle::Closed => Err(StorageError::Closed),
        }
    }

    pub(crate) fn log_start(&self) -> i64 {
        self.segments
            .first()
            .map_or(0, |segment| segment.base_offset)
    }

    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    pub(crate) fn segment(&self, base_offset: i64) -> Option<&Segment> {
        let index = self
            .segments
            .partition_point(|s| s.base_offset < base_offset);
        self.segments
            .get(index)
            .filter(|s| s.base_offset == base_offset)
    }

    pub(crate) fn segment_mut(&mut self, base_offset: i64) -> Option<&mut Segment> {
        let index = self
            .segments
            .partition_point(|s| s.base_offset < base_offset);
        self.segments
            .get_mut(index)
            .filter(|s| s.base_offset == base_offset)
    }
}

impl LogState {
    fn check_append(&self, records: &[u8], headers: &[BatchHeader]) -> Result<i64, StorageError> {
        self.ensure_open()?;
        if self.no_space_retry_at.is_some() {
            return Err(StorageError::NoSpace);
        }
        let offsets = check_payload(records, headers)?;
        if self.config.cleanup_policy.compacts() {
            check_keyed_batches(records, headers)?;
        }
        let pending_bytes = self.pending_bytes + records.len() as u64;
        if pending_bytes > PENDING_BYTES_MAX {
            return Err(StorageError::Backpressure {
                pending_bytes: self.pending_bytes,
                max_bytes: PENDING_BYTES_MAX,
            });
        }
        if self.next_offset.checked_add(offsets).is_none() {
            return Err(StorageError::InvalidArgument("offset overflow".into()));
        }
        Ok(offsets)
    }

    /// Starts a new segment when the active one is non-empty and full, old, or would overflow
    /// its u32 relative offsets.
    fn roll_if_needed(&mut self, incoming_bytes: u64, last_offset: i64, now_ms: i64) {
        let next_offset = self.next_offset;
        let segment_bytes = self.config.segment_bytes;
        let segment_ms = self.config.segment_ms;
        let interval = self.config.index_interval_bytes;
        let active = self.active();
        if active.is_empty() {
            return;
        }
        let full = active.size_bytes + incoming_bytes > segment_bytes;
        let old = active
            .first_append_ms
            .is_some_and(|first_ms| now_ms.saturating_sub(first_ms) >= segment_ms);
        let overflow = last_offset - active.base_offset > SEGMENT_RELATIVE_OFFSET_MAX;
        if full || old || overflow {
            assert!(next_offset >= active.next_offset);
            self.segments.push(Segment::new(next_offset, interval));
        }
    }

    /// Records the batches of `bytes` (offsets already assigned) in the active segment, the
    /// producer state, the read cache and the pending queue.
    fn apply_append(&mut self, bytes: Bytes, headers: &[BatchHeader], now_ms: i64) {
        let mut position = 0usize;
        let mut offset = self.next_offset;
        for header in headers {
            let size = header.total_size_bytes();
            let mut assigned = *header;
            assigned.base_offset = offset;
            self.record_batch(&assigned, position as u64);
            self.cache_push(CachedBatch {
                base_offset: offset,
                last_offset: assigned.last_offset(),
                bytes: bytes.slice(position..position + size),
            });
            position += size;
            offset = assigned.last_offset() + 1;
        }
        let active = self.active();
        active.size_bytes += bytes.len() as u64;
        active.next_offset = offset;
        active.first_append_ms.get_or_insert(now_ms);
        let segment_base = active.base_offset;
        self.next_offset = offset;
        self.pending_bytes += bytes.len() as u64;
        self.stats.appended_batches += headers.len() as u64;
        self.stats.appended_bytes += bytes.len() as u64;
        self.pending.push_back(PendingWrite {
            segment_base,
            bytes,
            end_offset: offset,
            batches: headers.len() as u64,
        });
    }

    fn record_batch(&mut self, header: &BatchHeader, position_in_append: u64) {
        let active = self.active();
        let position = active.size_bytes + position_in_append;
        let relative = header.base_offset - active.base_offset;
        assert!((0..=SEGMENT_RELATIVE_OFFSET_MAX).contains(&relative));
        assert!(position <= u64::from(u32::MAX));
        let max_before = active.max_timestamp;
        active
            .index
            .maybe_add(relative as u32, position as u32, max_before);
        if header.max_timestamp > active.max_timestamp {
            active.max_timestamp = header.max_timestamp;
            active.max_timestamp_offset = header.base_offset;
        }
        if self
            .max_timestamp
            .is_none_or(|(_, ts)| header.max_timestamp > ts)
        {
            self.max_timestamp = Some((header.base_offset, header.max_timestamp));
        }
        self.producers.record(header);
    }

    fn cache_push(&mut self, batch: CachedBatch) {
        self.cache_bytes += batch.bytes.len();
        self.cache.push_back(batch);
        while self.cache_bytes > READ_CACHE_BYTES_MAX {
            let evicted = self.cache.pop_front().expect("cache bytes imply entries");
            self.cache_bytes -= evicted.bytes.len();
        }
    }

    pub(crate) fn cache_drop_before(&mut self, offset: i64) {
        while self
            .cache
            .front()
            .is_some_and(|batch| batch.base_offset < offset)
        {
            let evicted = self.cache.pop_front().expect("front exists");
            self.cache_bytes -= evicted.bytes.len();
        }
    }

    /// Whole cached batches from the one containing `from`, if the cache reaches back that far.
    fn cache_read(&self, from: i64, max_bytes: usize) -> Option<Bytes> {
        if self.cache.front()?.base_offset > from {
            return None;
        }
        let first = self.cache.partition_point(|batch| batch.last_offset < from);
        let mut parts: Vec<&Bytes> = Vec::new();
        let mut total = 0usize;
        for batch in self.cache.range(first..) {
            let fits = parts.is_empty() || total + batch.bytes.len() <= max_bytes;
            if batch.base_offset >= self.high_watermark || !fits {
                break;
            }
            total += batch.bytes.len();
            parts.push(&batch.bytes);
        }
        match parts.as_slice() {
            [] => None,
            [only] => Some((*only).clone()),
            many => {
                let mut joined = BytesMut::with_capacity(total);
                many.iter().for_each(|part| joined.extend_from_slice(part));
                Some(joined.freeze())
            }
        }
    }
}

impl FileLog {
    /// Opens (creating `dir` if missing) and recovers the log, then starts its writer task.
    /// Must run inside a glommio executor. Call `close` before dropping: the writer task holds
    /// an `Rc` of the log until then. `config` is already normalized.
    pub(crate) async fn open(dir: PathBuf, config: LogConfig) -> Result<Rc<FileLog>, StorageError> {
        std::fs::create_dir_all(&dir)?;
        let recovered = recover_log(&dir, &config).await?;
        let mut state = LogState::from_recovered(config, recovered);
        state.writer_running = true;
        let log = Rc::new_cyclic(|me| FileLog {
            dir,
            id: open_files::next_log_id(),
            me: me.clone(),
            state: RefCell::new(state),
            io_lock: Semaphore::new(1),
            written_waiters: WaiterList::default(),
            durable_waiters: WaiterList::default(),
            writer_waiters: WaiterList::default(),
            writer_stopped: WaiterList::default(),
            compacting: Cell::new(false),
        });
        glommio::spawn_local(FileLog::run_writer(log.clone())).detach();
        Ok(log)
    }

    /// Synchronous, in memory: `records` holds batches already checked by `validate_batches`
    /// (their headers passed in, same order). Assigns offsets in place, checks idempotent
    /// sequences, rolls the segment if needed and queues the bytes for the writer. Errors leave
    /// the log unchanged. `Backpressure` when more than `PENDING_BYTES_MAX` wait for the disk.
    pub fn append(
        &self,
        mut records: BytesMut,
        headers: &[BatchHeader],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome, StorageError> {
        let mut state = self.state.borrow_mut();
        let offsets = state.check_append(&records, headers)?;
        if let SequenceCheck::Duplicate {
            base_offset,
            last_offset,
        } = state.producers.check_append(headers)?
        {
            return Ok(AppendOutcome::Duplicate {
                base_offset: Offset(base_offset),
                last_offset: Offset(last_offset),
            });
        }
        let base_offset = state.next_offset;
        let last_offset = base_offset + offsets - 1;
        state.roll_if_needed(records.len() as u64, last_offset, now_ms);
        let mut position = 0usize;
        let mut offset = base_offset;
        for header in headers {
            assign_offset(&mut records[position..], offset, leader_epoch);
            position += header.total_size_bytes();
            offset += i64::from(header.last_offset_delta) + 1;
        }
        state.apply_append(records.freeze(), headers, now_ms);
        assert_eq!(state.next_offset, last_offset + 1);
        drop(state);
        self.writer_waiters.wake_all();
        Ok(AppendOutcome::Appended {
            base_offset: Offset(base_offset),
            last_offset: Offset(last_offset),
        })
    }

    /// Exclusive end offset for waiting on `last`, clamped to what was appended.
    fn wait_target(&self, last: Offset) -> Result<(i64, u64), StorageError> {
        let state = self.state.borrow();
        if let Some(error) = state.failure_error() {
            return Err(error);
        }
        Ok((
            last.0.saturating_add(1).min(state.next_offset),
            state.truncations,
        ))
    }

    /// Outcome of a wait on `target` that started at truncation count `truncations`.
    fn wait_result(&self, reached: i64, target: i64, truncations: u64) -> Result<(), StorageError> {
        let state = self.state.borrow();
        if let Some(error) = state.failure_error() {
            return Err(error);
        }
        if state.truncations != truncations {
            return Err(StorageError::OffsetOutOfRange {
                requested: target - 1,
                log_start: state.log_start(),
                log_end: state.next_offset,
            });
        }
        if reached >= target {
            return Ok(());
        }
        if state.no_space_retry_at.is_some() {
            return Err(StorageError::NoSpace);
        }
        Err(StorageError::Closed)
    }

    /// Resolves once every byte up to and including `last` was written to its segment file.
    pub async fn wait_written(&self, last: Offset) -> Result<(), StorageError> {
        let (target, truncations) = self.wait_target(last)?;
        self.written_waiters
            .wait_until(|| {
                let state = self.state.borrow();
                state.high_watermark >= target
                    || state.stop_waiting(truncations)
                    || state.no_space_retry_at.is_some()
            })
            .await;
        let reached = self.state.borrow().high_watermark;
        self.wait_result(reached, target, truncations)
    }

    /// Resolves once an fdatasync that started after `last` was written has completed; with a
    /// relaxed flush policy (`flush.messages` > 1 and `flush.ms` > 0), once it is written.
    pub async fn wait_durable(&self, last: Offset) -> Result<(), StorageError> {
        if self.state.borrow().config.sync_every_record() {
            self.wait_synced(last).await
        } else {
            self.wait_written(last).await
        }
    }

    /// Resolves once an fdatasync that started after `last` was written has completed.
    async fn wait_synced(&self, last: Offset) -> Result<(), StorageError> {
        let (target, truncations) = self.wait_target(last)?;
        {
            let mut state = self.state.borrow_mut();
            state.sync_wanted = state.sync_wanted.max(target);
        }
        self.writer_waiters.wake_all();
        self.durable_waiters
            .wait_until(|| {
                let state = self.state.borrow();
                state.durable_offset >= target
                    || state.stop_waiting(truncations)
                    || (state.no_space_retry_at.is_some() && state.high_watermark < target)
            })
            .await;
        let reached = self.state.borrow().durable_offset;
        self.wait_result(reached, target, truncations)
    }

    pub fn log_start_offset(&self) -> Offset {
        Offset(self.state.borrow().log_start())
    }

    /// The next offset to assign.
    pub fn log_end_offset(&self) -> Offset {
        Offset(self.state.borrow().next_offset)
    }

    /// What `append` would find for these batches' idempotent sequences now, without
    /// appending: `None` to append, the original offsets for a retry, or the error.
    pub fn check_sequence(
        &self,
        headers: &[BatchHeader],
    ) -> Result<Option<(Offset, Offset)>, StorageError> {
        self.state.borrow().producers.duplicate_of(headers)
    }

    /// End of what readers may see: everything written (pwrite done) so far.
    pub fn high_watermark(&self) -> Offset {
        Offset(self.state.borrow().high_watermark)
    }

    /// Closed, or failed: no more data will come.
    pub(crate) fn is_stopped(&self) -> bool {
        let state = self.state.borrow();
        state.lifecycle == Lifecycle::Closed || state.failure.is_some()
    }

    /// Resolves when `high_watermark() > from` (or the log closes or fails). Dropping the
    /// future (a timed-out long poll) frees its waiter slot.
    pub async fn wait_for_data(&self, from: Offset) {
        self.written_waiters
            .wait_until(|| {
                let state = self.state.borrow();
                state.high_watermark > from.0
                    || state.lifecycle == Lifecycle::Closed
                    || state.failure.is_some()
            })
            .await;
    }

    pub fn max_timestamp(&self) -> Option<(Offset, i64)> {
        self.state
            .borrow()
            .max_timestamp
            .map(|(offset, timestamp)| (Offset(offset), timestamp))
    }

    pub fn set_config(&self, config: LogConfig) {
        let mut state = self.state.borrow_mut();
        for segment in &mut state.segments {
            segment
                .index
                .set_interval_bytes(config.index_interval_bytes);
        }
        state.config = config;
    }

    pub fn config(&self) -> LogConfig {
        self.state.borrow().config.clone()
    }

    /// Bytes of all segments, appended-but-unwritten bytes included.
    pub fn size_bytes(&self) -> u64 {
        self.state
            .borrow()
            .segments
            .iter()
            .map(|s| s.size_bytes)
            .sum()
    }

    pub fn stats(&self) -> LogStats {
        self.state.borrow().stats
    }

    /// Test-only crash: stops the writer and drops every file handle without flushing or
    /// cutting padding, as kill -9 would leave the files.
    #[cfg(test)]
    pub(crate) fn abandon(&self) {
        let mut state = self.state.borrow_mut();
        state.failure = Some("abandoned".into());
        state.segments.iter_mut().for_each(|s| {
            if let Some(files) = s.files.take() {
                s.closed_sizes = Some(files.sizes());
            }
        });
        drop(state);
        self.wake_everyone();
    }

    /// Writes and fdatasyncs everything appended so far, whatever the flush policy.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let end = self.state.borrow().next_offset;
        if end == 0 {
            return Ok(());
        }
        self.wait_synced(Offset(end - 1)).await
    }
}

impl LogState {
    /// Waiters give up on failure, close, or a truncation since they started.
    fn stop_waiting(&self, truncations: u64) -> bool {
        self.failure.is_some()
            || self.lifecycle == Lifecycle::Closed
            || self.truncations != truncations
    }
}

/// Where a disk read for one offset goes.
struct ReadPlan {
    file: Rc<glommio::io::DmaFile>,
    start: u64,
    end: u64,
}

impl LogState {
    fn check_readable(&self, from: i64) -> Result<(), StorageError> {
        match self.lifecycle {
            Lifecycle::Closed => return Err(StorageError::Closed),
            Lifecycle::Truncating => return Err(StorageError::TruncateInProgress),
            Lifecycle::Open | Lifecycle::Closing => {}
        }
        if from < self.log_start() || from > self.high_watermark {
            return Err(StorageError::OffsetOutOfRange {
                requested: from,
                log_start: self.log_start(),
                log_end: self.high_watermark,
            });
        }
        Ok(())
    }

    /// Base offset of the first segment that holds offsets at or after `from`.
    fn read_target(&self, from: i64) -> Option<i64> {
        let first = self
            .segments
            .partition_point(|s| s.base_offset <= from)
            .saturating_sub(1);
        let segment = self.segments[first..]
            .iter()
            .find(|s| s.next_offset > from)?;
        Some(segment.base_offset)
    }
}

impl FileLog {
    /// Makes a segment usable for reads: opens its files if they exist but are closed
    /// (registering them with the shard's open-file cache, which may close idle ones of other
    /// segments) and loads its index if recovery left it unloaded. None if the segment is gone
    /// or has no files yet. The returned clone keeps the files from being evicted while held.
    pub(crate) async fn segment_ready(
        &self,
        base_offset: i64,
    ) -> Result<Option<SegmentFiles>, StorageError> {
        let (open, sizes, index_loaded) = {
            let state = self.state.borrow();
            let Some(segment) = state.segment(base_offset) else {
                return Ok(None);
            };
            match (&segment.files, segment.closed_sizes) {
                (Some(files), _) => (Some(files.clone()), None, segment.index_loaded),
                (None, Some(sizes)) => (None, Some(sizes), segment.index_loaded),
                (None, None) => return Ok(None),
            }
        };
        if let Some(files) = open {
            open_files::touch(self.id, base_offset, &self.me);
            if !index_loaded {
                self.load_segment_index(base_offset, &files).await?;
            }
            return Ok(Some(files));
        }
        let Some(sizes) = sizes else {
            return Ok(None);
        };
        let opened = SegmentFiles::open_existing(&self.dir, base_offset, sizes).await;
        // (files now in the segment, files of ours to close, what to return if not ours)
        let (installed, discard, other) = {
            let mut state = self.state.borrow_mut();
            let segment = state.segment_mut(base_offset);
            match (opened, segment) {
                (Ok(files), Some(segment))
                    if segment.files.is_none() && segment.closed_sizes == Some(sizes) =>
                {
                    segment.closed_sizes = None;
                    segment.files = Some(files.clone());
                    (Some(files), None, None)
                }
                // Opened by another task meanwhile: use theirs.
                (Ok(files), Some(segment)) if segment.files.is_some() => {
                    (None, Some(files), segment.files.clone())
                }
                // Removed (retention, truncation, a cleaner swap) meanwhile.
                (Ok(files), _) => (None, Some(files), None),
                (Err(_), None) => (None, None, None),
                (Err(error), Some(_)) => return Err(error),
            }
        };
        if let Some(files) = discard {
            files.close().await;
        }
        let Some(files) = installed else {
            return Ok(other);
        };
        open_files::touch(self.id, base_offset, &self.me);
        open_files::evict_over_limit().await;
        if !index_loaded {
            self.load_segment_index(base_offset, &files).await?;
        }
        Ok(Some(files))
    }

    /// Reads a sealed segment's index files (recovery trusted them from the checkpoint without
    /// reading them). Entries are validated as recovery would: the longest consistent prefix
    /// is kept, and an entry whose batch is not where it says is dropped with all after it.
    async fn load_segment_index(
        &self,
        base_offset: i64,
        files: &SegmentFiles,
    ) -> Result<(), StorageError> {
        let log_size = files.log.size_bytes();
        let offsets = read_prefix(&files.offset_index).await?;
        let times = read_prefix(&files.time_index).await?;
        let mut entries = decode_entries(&offsets, &times, log_size);
        while let Some(last) = entries.last() {
            let mut scanner =
                BatchScanner::new(files.log.file(), u64::from(last.position), log_size);
            let expected = base_offset + i64::from(last.relative_offset);
            if let ScanStep::Batch { .. } = scanner
                .next(BaseOffsetCheck::Exactly(expected), true)
                .await?
            {
                break;
            }
            entries.pop();
        }
        let mut state = self.state.borrow_mut();
        let interval = state.config.index_interval_bytes;
        if let Some(segment) = state.segment_mut(base_offset) {
            if !segment.index_loaded {
                segment.index = SegmentIndex::from_entries(interval, entries);
                segment.index_loaded = true;
            }
        }
        Ok(())
    }

    /// Called by the open-file cache: takes the segment's files out if they are open and no
    /// task holds them, remembering their logical sizes for the reopen.
    pub(crate) fn take_idle_files(&self, base_offset: i64) -> IdleFiles {
        let mut state = self.state.borrow_mut();
        let Some(segment) = state.segment_mut(base_offset) else {
            return IdleFiles::NotOpen;
        };
        match &segment.files {
            None => IdleFiles::NotOpen,
            Some(files) if files.in_use() => IdleFiles::InUse,
            Some(_) => {
                let Some(files) = segment.files.take() else {
                    return IdleFiles::NotOpen;
                };
                segment.closed_sizes = Some(files.sizes());
                IdleFiles::Taken(files)
            }
        }
    }

    /// Unlinks a segment's files whether open or not, closing open ones.
    pub(crate) async fn remove_segment(&self, segment: Segment) -> Result<(), StorageError> {
        open_files::forget(self.id, segment.base_offset);
        match segment.files {
            Some(files) => {
                let removed = files.remove().await;
                files.close().await;
                removed
            }
            None if segment.closed_sizes.is_some() => {
                remove_segment_paths(&self.dir, segment.base_offset)
            }
            None => Ok(()),
        }
    }

    /// Closes every open file of `segments` (dropped from the log: close, truncation).
    pub(crate) async fn close_segment_files(&self, segments: Vec<Segment>) {
        for segment in segments {
            open_files::forget(self.id, segment.base_offset);
            if let Some(files) = segment.files {
                files.close().await;
            }
        }
    }
}

/// The logical contents of a small index file (bounded by `INDEX_ENTRIES_MAX` entries).
async fn read_prefix(
    appender: &crate::segment_appender::SegmentAppender,
) -> Result<Vec<u8>, StorageError> {
    use crate::constants::{INDEX_ENTRIES_MAX, TIME_INDEX_ENTRY_BYTES};
    let len = (appender.size_bytes() as usize).min(INDEX_ENTRIES_MAX * TIME_INDEX_ENTRY_BYTES);
    if len == 0 {
        return Ok(Vec::new());
    }
    Ok(appender.file().read_at(0, len).await?.to_vec())
}

impl FileLog {
    /// Whole batches starting with the one containing `from`, up to `max_bytes` but at least
    /// one batch; empty at the high watermark. Recent batches come from the in-memory cache,
    /// older ones from a direct-IO read. Bytes are exactly as stored.
    pub async fn read(&self, from: Offset, max_bytes: usize) -> Result<Bytes, StorageError> {
        let target = {
            let state = self.state.borrow();
            state.check_readable(from.0)?;
            if from.0 == state.high_watermark {
                return Ok(Bytes::new());
            }
            if let Some(bytes) = state.cache_read(from.0, max_bytes) {
                return Ok(bytes);
            }
            state.read_target(from.0)
        };
        let Some(base) = target else {
            return Ok(Bytes::new());
        };
        let Some(files) = self.segment_ready(base).await? else {
            return Ok(Bytes::new());
        };
        let (plan, high_watermark) = {
            let state = self.state.borrow();
            state.check_readable(from.0)?;
            let Some(segment) = state.segment(base) else {
                return Ok(Bytes::new());
            };
            let plan = ReadPlan {
                file: files.log.file(),
                start: segment.position_for(from.0),
                end: files.log.size_bytes(),
            };
            (plan, state.high_watermark)
        };
        drop(files);
        read_batches(
            plan.file,
            plan.start,
            plan.end,
            from.0,
            max_bytes,
            high_watermark,
        )
        .await
    }

    /// First written batch whose max_timestamp >= `ts_ms`: (its base offset, its max_timestamp).
    pub async fn offset_for_timestamp(
        &self,
        ts_ms: i64,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        let (bases, high_watermark) = {
            let state = self.state.borrow();
            state.check_readable(state.log_start())?;
            let bases: Vec<i64> = state
                .segments
                .iter()
                .filter(|s| s.max_timestamp >= ts_ms)
                .map(|s| s.base_offset)
                .collect();
            (bases, state.high_watermark)
        };
        for base in bases {
            let Some(files) = self.segment_ready(base).await? else {
                continue;
            };
            let plan = {
                let state = self.state.borrow();
                let Some(segment) = state.segment(base) else {
                    continue;
                };
                ReadPlan {
                    file: files.log.file(),
                    start: u64::from(segment.index.timestamp_floor_position(ts_ms)),
                    end: files.log.size_bytes(),
                }
            };
            drop(files);
            let mut scanner = BatchScanner::new(plan.file, plan.start, plan.end);
            loop {
                match scanner.next(BaseOffsetCheck::Any, false).await? {
                    ScanStep::Batch { header, .. } if header.base_offset >= high_watermark => {
                        return Ok(None)
                    }
                    ScanStep::Batch { header, .. } if header.max_timestamp >= ts_ms => {
                        return Ok(Some((Offset(header.base_offset), header.max_timestamp)))
                    }
                    ScanStep::Batch { .. } => {}
                    // A batch cut by the end of what is written yet is not visible either.
                    ScanStep::End | ScanStep::Invalid { .. } => break,
                }
            }
        }
        Ok(None)
    }
}

impl LogState {
    /// How many leading closed, fully written segments retention deletes (none unless
    /// `cleanup.policy` includes delete).
    fn expired_prefix(&self, now_ms: i64) -> usize {
        if !self.config.cleanup_policy.deletes() {
            return 0;
        }
        let retention_ms = self.config.retention_ms;
        let retention_bytes = self.config.retention_bytes;
        let mut total: u64 = self.segments.iter().map(|s| s.size_bytes).sum();
        let mut count = 0;
        let closed = &self.segments[..self.segments.len() - 1];
        for segment in closed {
            if segment.next_offset > self.high_watermark {
                break;
            }
            let by_time =
                retention_ms >= 0 && now_ms.saturating_sub(segment.max_timestamp) > retention_ms;
            let by_size =
                retention_bytes >= 0 && total - segment.size_bytes >= retention_bytes as u64;
            if !by_time && !by_size {
                break;
            }
            total -= segment.size_bytes;
            count += 1;
        }
        count
    }
}

impl FileLog {
    /// Deletes whole closed segments older than `retention_ms` (by their largest timestamp) or
    /// beyond `retention_bytes`, oldest first, and advances the log start. Holds `io_lock`
    /// while it changes the segment list, so a cleaner swap never sees it half done.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        {
            let state = self.state.borrow();
            state.ensure_open()?;
            if state.expired_prefix(now_ms) == 0 {
                return Ok(());
            }
        }
        let _permit = self.io_lock.acquire_permit(1).await?;
        let removed: Vec<Segment> = {
            let mut state = self.state.borrow_mut();
            state.ensure_open()?;
            let count = state.expired_prefix(now_ms);
            let removed = state.segments.drain(..count).collect();
            let log_start = state.log_start();
            state.cache_drop_before(log_start);
            removed
        };
        for segment in removed {
            tracing::info!(dir = %self.dir.display(), base_offset = segment.base_offset, bytes = segment.size_bytes, "retention deletes segment");
            self.remove_segment(segment).await?;
        }
        self.write_checkpoint_from_state()?;
        Ok(())
    }

    /// Removes every batch with offset >= `to` (rounded down to the base offset of the batch
    /// containing it). Appends are refused while it runs.
    pub async fn truncate(&self, to: Offset) -> Result<(), StorageError> {
        {
            let mut state = self.state.borrow_mut();
            state.ensure_open()?;
            if state.no_space_retry_at.is_some() {
                return Err(StorageError::NoSpace);
            }
            if to.0 >= state.next_offset {
                return Ok(());
            }
            if to.0 < state.log_start() {
                return Err(StorageError::OffsetOutOfRange {
                    requested: to.0,
                    log_start: state.log_start(),
                    log_end: state.next_offset,
                });
            }
            state.lifecycle = Lifecycle::Truncating;
        }
        let result = self.truncate_files(to.0).await;
        {
            let mut state = self.state.borrow_mut();
            if state.lifecycle == Lifecycle::Truncating {
                state.lifecycle = Lifecycle::Open;
            }
            state.truncations += 1;
        }
        self.wake_everyone();
        result
    }

    pub(crate) fn wake_everyone(&self) {
        self.written_waiters.wake_all();
        self.durable_waiters.wake_all();
        self.writer_waiters.wake_all();
        self.writer_stopped.wake_all();
    }

    /// Waits for the writer to drain, cuts the files on disk, then re-runs recovery so every
    /// in-memory structure (indexes, producer state, timestamps) matches the cut log.
    async fn truncate_files(&self, to: i64) -> Result<(), StorageError> {
        let end = self.state.borrow().next_offset;
        self.written_waiters
            .wait_until(|| {
                let state = self.state.borrow();
                state.high_watermark >= end || state.failure.is_some()
            })
            .await;
        if let Some(error) = self.state.borrow().failure_error() {
            return Err(error);
        }
        let _permit = self.io_lock.acquire_permit(1).await?;
        // The checkpoint may list segments this cuts: recovery below writes a new one.
        crate::recovery_checkpoint::remove_checkpoint(&self.dir)?;
        // Recovery will call everything it finds durable, so make that true first.
        let unsynced: Vec<i64> = self.state.borrow().unsynced_segments.clone();
        for base in unsynced {
            if let Some(files) = self.segment_ready(base).await? {
                files.log.sync().await?;
            }
        }
        let (target_base, later) = {
            let mut state = self.state.borrow_mut();
            let index = state
                .segments
                .partition_point(|s| s.base_offset <= to)
                .saturating_sub(1);
            let later: Vec<Segment> = state.segments.drain(index + 1..).collect();
            (state.segments[index].base_offset, later)
        };
        for segment in later {
            self.remove_segment(segment).await?;
        }
        let target = match self.segment_ready(target_base).await? {
            Some(files) => {
                let state = self.state.borrow();
                state
                    .segment(target_base)
                    .map(|segment| (files, segment.position_for(to)))
            }
            None => None,
        };
        if let Some((files, start)) = target {
            let mut scanner = BatchScanner::new(files.log.file(), start, files.log.size_bytes());
            if let Some((position, _)) = scanner.seek(to).await? {
                files.log.truncate(position).await?;
                files.log.sync().await?;
            }
        }
        let old_segments = std::mem::take(&mut self.state.borrow_mut().segments);
        self.close_segment_files(old_segments).await;
        let config = self.state.borrow().config.clone();
        let recovered = recover_log(&self.dir, &config).await?;
        let mut state = self.state.borrow_mut();
        let mut fresh = LogState::from_recovered(config, recovered);
        fresh.lifecycle = state.lifecycle;
        fresh.writer_running = state.writer_running;
        fresh.truncations = state.truncations;
        fresh.stats = state.stats;
        *state = fresh;
        tracing::info!(dir = %self.dir.display(), to, end = state.next_offset, "truncated log");
        Ok(())
    }
}
