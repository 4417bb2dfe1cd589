//! One partition log, whatever engine stores it: the public `PartitionLog` API the broker
//! uses, its per-topic `LogConfig`, and the dispatch to the engine chosen by
//! `LogConfig::engine` when the log is opened (`file_log.rs` or `memory_log.rs`).
//!
//! Engine semantics every caller may rely on (the conformance tests in `tests.rs` run the same
//! bodies against both): offsets are dense and assigned at `append`; reads return whole
//! batches byte for byte from the one containing the requested offset; idempotent producers
//! get their original offsets for a retried batch; `log_start_offset` only grows except by
//! truncation to an empty log; `wait_durable` resolves once the batch is durable under the
//! topic's policy. For the memory engine that is "appended in memory": a memory topic answers
//! acks=all at once and loses its records on restart (the topic comes back, empty, at offset
//! 0).
//!
//! Concurrency contract: single-threaded (`!Send`), shared as `Rc<PartitionLog>` by the tasks
//! of one shard; each engine documents how it keeps borrows off awaits.

use crate::batch::{BatchHeader, BATCH_LENGTH_PREFIX_BYTES as LOG_OVERHEAD_BYTES};
use crate::constants::{
    DELETE_RETENTION_MS_DEFAULT, FLUSH_MESSAGES_STRICT, MEMORY_LOG_BYTES_DEFAULT,
    MEMORY_LOG_BYTES_MAX, MESSAGE_BYTES_MAX, MIN_CLEANABLE_DIRTY_RATIO_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};
use crate::error::StorageError;
use crate::file_log::FileLog;
use crate::memory_log::MemoryLog;
use crate::waiters::WaiterList;
use crate::Offset;
use bytes::{Bytes, BytesMut};
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

/// Where a partition keeps its batches (topic config `storage.engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageEngine {
    /// Direct-IO segment files; survives restarts and crashes under the flush policy.
    #[default]
    File,
    /// Batches in memory, bounded by bytes; nothing survives a restart.
    Memory,
}

impl StorageEngine {
    pub fn name(self) -> &'static str {
        match self {
            StorageEngine::File => "file",
            StorageEngine::Memory => "memory",
        }
    }

    pub fn parse(value: &str) -> Option<StorageEngine> {
        match value {
            "file" => Some(StorageEngine::File),
            "memory" => Some(StorageEngine::Memory),
            _ => None,
        }
    }
}

/// What happens to old segments (topic config `cleanup.policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// `retention.ms` / `retention.bytes` delete whole old segments.
    #[default]
    Delete,
    /// The log cleaner keeps the latest record per key; retention deletes nothing.
    Compact,
    /// Both: compacted, and whole segments still expire by time and size.
    CompactDelete,
}

impl CleanupPolicy {
    pub fn name(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Kafka's list syntax: "delete", "compact", or both in either order ("compact,delete").
    pub fn parse(value: &str) -> Option<CleanupPolicy> {
        let mut delete = false;
        let mut compact = false;
        for item in value.split(',').map(str::trim) {
            match item {
                "delete" => delete = true,
                "compact" => compact = true,
                _ => return None,
            }
        }
        match (compact, delete) {
            (false, true) => Some(CleanupPolicy::Delete),
            (true, false) => Some(CleanupPolicy::Compact),
            (true, true) => Some(CleanupPolicy::CompactDelete),
            (false, false) => None,
        }
    }

    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
}

/// What one compaction pass did (`PartitionLog::compact`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    /// Every key's records below this offset are deduplicated (Kafka's first dirty offset
    /// after the pass). Records at or after it were not touched.
    pub cleaned_end: Offset,
    /// Closed segments the pass covered, and how many replaced them.
    pub segments_before: usize,
    pub segments_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
}

/// Per-partition settings, named after Kafka's topic configs.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    /// -1 = keep forever.
    pub retention_ms: i64,
    /// -1 = unbounded (file engine); the memory engine then keeps
    /// `MEMORY_LOG_BYTES_DEFAULT`.
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub index_interval_bytes: u32,
    /// Fixed when the log is opened; `set_config` does not move a log between engines.
    pub engine: StorageEngine,
    /// Kafka `flush.messages`: fdatasync once this many records are written but not synced.
    /// 1 (the default) = every record is synced before `wait_durable` resolves.
    pub flush_messages: i64,
    /// Kafka `flush.ms`: fdatasync once the oldest unsynced write is this old. 0 = every
    /// record is synced before `wait_durable` resolves; i64::MAX (the default) = no timer.
    pub flush_ms: i64,
    /// Kafka `cleanup.policy`. Compaction needs the file engine; the memory engine ignores it.
    pub cleanup_policy: CleanupPolicy,
    /// Kafka `delete.retention.ms`: how long a tombstone stays after the cleaner first kept it
    /// as the latest record of its key.
    pub delete_retention_ms: i64,
    /// Kafka `min.cleanable.dirty.ratio`: a pass runs once dirty bytes / closed bytes reach it.
    pub min_cleanable_dirty_ratio: f64,
    /// Kafka `min.compaction.lag.ms`: closed segments with records newer than this stay
    /// uncompacted.
    pub min_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    /// Kafka's defaults: 1 GiB segments, 7 days roll and retention, 1 MiB + 12 batches,
    /// an index entry every 4096 bytes; the file engine with an fdatasync before every
    /// acks=all answer.
    fn default() -> LogConfig {
        let week_ms = 7 * 24 * 3600 * 1000;
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: week_ms,
            retention_ms: week_ms,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
            engine: StorageEngine::File,
            flush_messages: FLUSH_MESSAGES_STRICT,
            flush_ms: i64::MAX,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DELETE_RETENTION_MS_DEFAULT,
            min_cleanable_dirty_ratio: MIN_CLEANABLE_DIRTY_RATIO_DEFAULT,
            min_compaction_lag_ms: 0,
        }
    }
}

impl LogConfig {
    /// Clamps values to what the engines support.
    pub(crate) fn normalized(mut self) -> LogConfig {
        self.segment_bytes = self
            .segment_bytes
            .clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX);
        self.max_message_bytes = self.max_message_bytes.min(MESSAGE_BYTES_MAX);
        self.index_interval_bytes = self.index_interval_bytes.max(1);
        self.flush_messages = self.flush_messages.max(FLUSH_MESSAGES_STRICT);
        self.flush_ms = self.flush_ms.max(0);
        self.delete_retention_ms = self.delete_retention_ms.max(0);
        self.min_compaction_lag_ms = self.min_compaction_lag_ms.max(0);
        self.min_cleanable_dirty_ratio = if self.min_cleanable_dirty_ratio.is_nan() {
            MIN_CLEANABLE_DIRTY_RATIO_DEFAULT
        } else {
            self.min_cleanable_dirty_ratio.clamp(0.0, 1.0)
        };
        self
    }

    /// True when every record must be fdatasynced before `wait_durable` resolves.
    pub(crate) fn sync_every_record(&self) -> bool {
        self.flush_messages <= FLUSH_MESSAGES_STRICT || self.flush_ms == 0
    }

    /// Bytes a memory log keeps: `retention.bytes` when set, else the default, capped.
    pub(crate) fn memory_bytes_max(&self) -> u64 {
        u64::try_from(self.retention_bytes)
            .unwrap_or(MEMORY_LOG_BYTES_DEFAULT)
            .min(MEMORY_LOG_BYTES_MAX)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        base_offset: Offset,
        last_offset: Offset,
    },
    /// A retried idempotent batch: nothing appended; these are the original offsets.
    Duplicate {
        base_offset: Offset,
        last_offset: Offset,
    },
}

/// Counters of one log since it was opened (summed per shard by `LogManager::stats`).
/// Batches per fsync = `fsynced_batches / fsyncs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub appended_batches: u64,
    pub appended_bytes: u64,
    /// fdatasync calls on segment files completed by the writer.
    pub fsyncs: u64,
    /// Batches made durable by those fdatasyncs.
    pub fsynced_batches: u64,
    /// Write rounds that failed with ENOSPC / EDQUOT (each retried later).
    pub no_space_errors: u64,
    /// Batches a memory log dropped to stay within its byte bound.
    pub evicted_batches: u64,
    /// Compaction passes that ran, and the segment bytes they freed.
    pub compactions: u64,
    pub compacted_bytes_removed: u64,
}

impl LogStats {
    pub fn add(&mut self, other: &LogStats) {
        self.appended_batches += other.appended_batches;
        self.appended_bytes += other.appended_bytes;
        self.fsyncs += other.fsyncs;
        self.fsynced_batches += other.fsynced_batches;
        self.no_space_errors += other.no_space_errors;
        self.evicted_batches += other.evicted_batches;
        self.compactions += other.compactions;
        self.compacted_bytes_removed += other.compacted_bytes_removed;
    }
}

/// Checks that `headers` describe `records` exactly; returns the number of offsets they use.
pub(crate) fn check_payload(records: &[u8], headers: &[BatchHeader]) -> Result<i64, StorageError> {
    if headers.is_empty() {
        return Err(StorageError::InvalidArgument("no batch headers".into()));
    }
    let mut position = 0usize;
    let mut offsets = 0i64;
    for header in headers {
        let parsed = BatchHeader::parse(records.get(position..).unwrap_or(&[]))?;
        if parsed.batch_length != header.batch_length || header.last_offset_delta < 0 {
            return Err(StorageError::InvalidArgument(format!(
                "header does not match the batch at position {position}"
            )));
        }
        position += header.total_size_bytes();
        offsets += i64::from(header.last_offset_delta) + 1;
    }
    if position != records.len() {
        return Err(StorageError::InvalidArgument(format!(
            "headers cover {position} bytes of {}",
            records.len()
        )));
    }
    Ok(offsets)
}

/// The leading whole batches of `stored` (whole batches as read from a log) whose base offset
/// is below `end`.
fn batches_below(stored: Bytes, end: i64) -> Bytes {
    let mut position = 0usize;
    while stored.len() >= position + LOG_OVERHEAD_BYTES {
        let base = i64::from_be_bytes(
            stored[position..position + 8]
                .try_into()
                .unwrap_or([0xff; 8]),
        );
        let length = i32::from_be_bytes(
            stored[position + 8..position + 12]
                .try_into()
                .unwrap_or([0xff; 4]),
        );
        let Ok(length) = usize::try_from(length) else {
            break;
        };
        let next = position + LOG_OVERHEAD_BYTES + length;
        if base >= end || next > stored.len() {
            break;
        }
        position = next;
    }
    stored.slice(..position)
}

enum Engine {
    File(Rc<FileLog>),
    Memory(Box<MemoryLog>),
}

/// One partition log; see the module comment for what every engine guarantees.
pub struct PartitionLog {
    engine: Engine,
    /// A replicated partition's commit point (Raft): readers see offsets below it only, even
    /// if more is written locally. `None` (unreplicated): readers see everything written.
    commit_limit: Cell<Option<i64>>,
    /// Readers waiting for the commit point to pass an offset.
    commit_waiters: WaiterList,
}

/// Calls the same method on whichever engine backs the log.
macro_rules! dispatch {
    ($self:ident, $log:ident => $call:expr) => {
        match &$self.engine {
            Engine::File($log) => $call,
            Engine::Memory($log) => $call,
        }
    };
}

impl PartitionLog {
    /// Opens the log with the engine `config.engine` names. The file engine creates `dir`,
    /// recovers it and starts its writer task (call `close` before dropping); the memory engine
    /// starts empty and never touches `dir`. Must run inside a glommio executor.
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<Rc<PartitionLog>, StorageError> {
        let config = config.normalized();
        let engine = match config.engine {
            StorageEngine::File => Engine::File(FileLog::open(dir, config).await?),
            StorageEngine::Memory => Engine::Memory(Box::new(MemoryLog::new(dir, config))),
        };
        Ok(Rc::new(PartitionLog {
            engine,
            commit_limit: Cell::new(None),
            commit_waiters: WaiterList::default(),
        }))
    }

    /// The engine this log runs on (fixed at open).
    pub fn engine(&self) -> StorageEngine {
        match self.engine {
            Engine::File(_) => StorageEngine::File,
            Engine::Memory(_) => StorageEngine::Memory,
        }
    }

    /// Test-only crash: a file log stops writing and drops its files as kill -9 would; a
    /// memory log just closes.
    #[cfg(test)]
    pub(crate) async fn crash(&self) {
        match &self.engine {
            Engine::File(log) => {
                log.abandon();
                // In-flight IO completes (or not) before a real crash is over; the abandoned
                // writer must not race the next open's recovery.
                log.writer_stopped
                    .wait_until(|| !log.state.borrow().writer_running)
                    .await;
            }
            Engine::Memory(log) => log.close().await.expect("close memory log"),
        }
    }

    #[cfg(test)]
    pub(crate) fn file_engine(&self) -> &FileLog {
        match &self.engine {
            Engine::File(log) => log,
            Engine::Memory(_) => panic!("not a file log"),
        }
    }

    /// Synchronous, in memory: `records` holds batches already checked by `validate_batches`
    /// (their headers passed in, same order). Assigns offsets in place, checks idempotent
    /// sequences and queues or stores the bytes. Errors leave the log unchanged.
    /// `Backpressure` when too much waits for the disk; `NoSpace` while the disk is full.
    pub fn append(
        &self,
        records: BytesMut,
        headers: &[BatchHeader],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendOutcome, StorageError> {
        dispatch!(self, log => log.append(records, headers, leader_epoch, now_ms))
    }

    /// What `append` would find for these batches' idempotent sequences now, without
    /// appending: `None` to append, the original (base, last) offsets for a retry, or the
    /// sequence error. A Raft leader checks this before proposing a batch.
    pub fn check_sequence(
        &self,
        headers: &[BatchHeader],
    ) -> Result<Option<(Offset, Offset)>, StorageError> {
        if headers.is_empty() {
            return Ok(None);
        }
        dispatch!(self, log => log.check_sequence(headers))
    }

    /// Resolves once every byte up to and including `last` is readable (written to its
    /// segment file, or stored in memory). `NoSpace` if the disk filled up before.
    pub async fn wait_written(&self, last: Offset) -> Result<(), StorageError> {
        dispatch!(self, log => log.wait_written(last).await)
    }

    /// Resolves once `last` is durable under the topic's policy: by default after an
    /// fdatasync that started after it was written (group commit); with `flush.messages` > 1
    /// and `flush.ms` > 0, once written (the writer syncs by those triggers); for the memory
    /// engine, at once.
    pub async fn wait_durable(&self, last: Offset) -> Result<(), StorageError> {
        dispatch!(self, log => log.wait_durable(last).await)
    }

    pub fn log_start_offset(&self) -> Offset {
        dispatch!(self, log => log.log_start_offset())
    }

    /// The next offset to assign.
    pub fn log_end_offset(&self) -> Offset {
        dispatch!(self, log => log.log_end_offset())
    }

    /// End of what readers may see: what is written, capped by the commit point of a
    /// replicated partition.
    pub fn high_watermark(&self) -> Offset {
        let written = dispatch!(self, log => log.high_watermark());
        match self.commit_limit.get() {
            Some(limit) => Offset(written.0.min(limit)),
            None => written,
        }
    }

    /// Makes the log a replicated one whose readers see offsets below `end` only (the Raft
    /// state machine calls it as entries commit). The commit point never goes back, and a
    /// committed batch is never truncated (asserted by `truncate`).
    pub fn set_commit_limit(&self, end: Offset) {
        if let Some(previous) = self.commit_limit.get() {
            assert!(
                end.0 >= previous,
                "commit point goes back: {previous} -> {}",
                end.0
            );
            if end.0 == previous {
                return;
            }
        }
        self.commit_limit.set(Some(end.0));
        self.commit_waiters.wake_all();
    }

    /// The commit point of a replicated partition (`None`: not replicated).
    pub fn commit_limit(&self) -> Option<Offset> {
        self.commit_limit.get().map(Offset)
    }

    /// Whole batches starting with the one containing `from`, up to `max_bytes` but at least
    /// one batch; empty at the high watermark. Bytes are exactly as stored.
    pub async fn read(&self, from: Offset, max_bytes: usize) -> Result<Bytes, StorageError> {
        let Some(limit) = self.commit_limit.get() else {
            return dispatch!(self, log => log.read(from, max_bytes).await);
        };
        if from.0 >= limit && from.0 <= self.log_end_offset().0 {
            return Ok(Bytes::new());
        }
        let stored = dispatch!(self, log => log.read(from, max_bytes).await)?;
        Ok(batches_below(stored, limit))
    }

    /// Like `read`, but up to what is written, past the commit point: for the replication
    /// layer, which ships entries before they commit.
    pub async fn read_uncommitted(
        &self,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Bytes, StorageError> {
        dispatch!(self, log => log.read(from, max_bytes).await)
    }

    /// Resolves when `high_watermark() > from` (or the log closes or fails). Dropping the
    /// future (a timed-out long poll) frees its waiter slot. For a replicated log it waits for
    /// the commit point (entries commit after they are written locally).
    pub async fn wait_for_data(&self, from: Offset) {
        if self.commit_limit.get().is_none() {
            return dispatch!(self, log => log.wait_for_data(from).await);
        }
        self.commit_waiters
            .wait_until(|| self.high_watermark() > from || self.is_stopped())
            .await;
    }

    /// Closed or failed: no more data will come.
    fn is_stopped(&self) -> bool {
        dispatch!(self, log => log.is_stopped())
    }

    /// First readable batch whose max_timestamp >= `ts_ms`: (its base offset, its
    /// max_timestamp).
    pub async fn offset_for_timestamp(
        &self,
        ts_ms: i64,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        dispatch!(self, log => log.offset_for_timestamp(ts_ms).await)
    }

    pub fn max_timestamp(&self) -> Option<(Offset, i64)> {
        dispatch!(self, log => log.max_timestamp())
    }

    /// Removes every batch with offset >= `to` (rounded down to the base offset of the batch
    /// containing it). Appends are refused while it runs.
    pub async fn truncate(&self, to: Offset) -> Result<(), StorageError> {
        if let Some(limit) = self.commit_limit.get() {
            assert!(
                to.0 >= limit,
                "truncation to {} cuts committed data (commit point {limit})",
                to.0
            );
        }
        dispatch!(self, log => log.truncate(to).await)
    }

    /// Makes everything appended so far durable (an fdatasync whatever the flush policy).
    pub async fn flush(&self) -> Result<(), StorageError> {
        dispatch!(self, log => log.flush().await)
    }

    /// Flushes and closes; later appends and reads get `Closed`.
    pub async fn close(&self) -> Result<(), StorageError> {
        let closed = dispatch!(self, log => log.close().await);
        self.commit_waiters.wake_all();
        closed
    }

    /// Drops what `retention.ms` / `retention.bytes` expire and advances the log start
    /// (file engine: only when `cleanup.policy` includes delete).
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        dispatch!(self, log => log.enforce_retention(now_ms).await)
    }

    /// One log-cleaner pass if `cleanup.policy` includes compact and the log is due (dirty
    /// ratio reached, or tombstones past their delete horizon); `None` when nothing ran.
    /// Runs in the background of the shard: reads and rewrites closed segments in bounded
    /// steps, yielding between batches, and swaps each cleaned segment in crash-safely while
    /// appends and reads go on. `key_map_bytes_max` bounds the key map (the broker passes
    /// `COMPACTION_KEY_MAP_BYTES_MAX`). The memory engine does not compact (always `None`).
    pub async fn compact(
        &self,
        now_ms: i64,
        key_map_bytes_max: usize,
    ) -> Result<Option<CompactionOutcome>, StorageError> {
        match &self.engine {
            Engine::File(log) => log.compact(now_ms, key_map_bytes_max).await,
            Engine::Memory(_) => Ok(None),
        }
    }

    /// Applies new settings; an `engine` change is kept in the config but only takes effect
    /// for a log opened afterwards.
    pub fn set_config(&self, config: LogConfig) {
        let config = config.normalized();
        if config.engine != self.engine() {
            tracing::warn!(
                running = self.engine().name(),
                configured = config.engine.name(),
                "storage.engine changes apply only to partitions opened afterwards"
            );
        }
        dispatch!(self, log => log.set_config(config))
    }

    pub fn config(&self) -> LogConfig {
        dispatch!(self, log => log.config())
    }

    /// Bytes stored (appended-but-unwritten bytes included).
    pub fn size_bytes(&self) -> u64 {
        dispatch!(self, log => log.size_bytes())
    }

    pub fn stats(&self) -> LogStats {
        dispatch!(self, log => log.stats())
    }
}
