//! The memory engine of a partition log: a ring of record batches bounded by bytes
//! (`retention.bytes`, else `MEMORY_LOG_BYTES_DEFAULT`). The oldest batches are dropped on
//! append to stay within the bound, advancing the log start; the newest batch is always kept.
//! Offsets, reads, timestamp lookups, truncation and idempotent-producer checks behave as in
//! the file engine; a batch is readable and "durable" as soon as `append` returns, and nothing
//! survives a restart (the partition reopens empty at offset 0). The memory engine does not
//! compact: with `cleanup.policy=compact` it keeps every batch until its byte bound evicts it
//! (the broker refuses that combination at topic creation).
//!
//! Concurrency contract: single-threaded; all state sits in one `RefCell` that no method holds
//! across an await (only `wait_for_data` awaits).

use crate::batch::{assign_offset, BatchHeader};
use crate::constants::FETCH_READ_BYTES_MAX;
use crate::error::StorageError;
use crate::log::{check_payload, AppendOutcome, LogConfig, LogStats};
use crate::producer_state::{ProducerStateManager, SequenceCheck};
use crate::waiters::WaiterList;
use crate::Offset;
use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;

/// One stored batch; `header.base_offset` is the assigned offset.
struct StoredBatch {
    header: BatchHeader,
    bytes: Bytes,
}

struct MemoryState {
    config: LogConfig,
    batches: VecDeque<StoredBatch>,
    bytes: u64,
    log_start: i64,
    next_offset: i64,
    producers: ProducerStateManager,
    /// (base offset, max_timestamp) of the batch with the largest timestamp ever appended.
    max_timestamp: Option<(i64, i64)>,
    closed: bool,
    stats: LogStats,
}

pub(crate) struct MemoryLog {
    /// Where the partition would live on disk; named in log lines only.
    dir: PathBuf,
    state: RefCell<MemoryState>,
    /// Woken by appends (wait_for_data), truncation and close.
    data_waiters: WaiterList,
}

impl MemoryState {
    fn ensure_open(&self) -> Result<(), StorageError> {
        if self.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    fn push(&mut self, header: BatchHeader, bytes: Bytes) {
        assert_eq!(header.base_offset, self.next_offset);
        assert_eq!(header.total_size_bytes(), bytes.len());
        self.producers.record(&header);
        if self
            .max_timestamp
            .is_none_or(|(_, ts)| header.max_timestamp > ts)
        {
            self.max_timestamp = Some((header.base_offset, header.max_timestamp));
        }
        self.next_offset = header.last_offset() + 1;
        self.bytes += bytes.len() as u64;
        self.batches.push_back(StoredBatch { header, bytes });
    }

    /// Drops the oldest batches while more than the byte bound is stored (keeping the newest).
    fn evict_to_bound(&mut self) {
        let bytes_max = self.config.memory_bytes_max();
        while self.bytes > bytes_max && self.batches.len() > 1 {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let evicted = self.batches.pop_front().expect("caller checked");
        self.bytes -= evicted.bytes.len() as u64;
        self.stats.evicted_batches += 1;
        self.log_start = self
            .batches
            .front()
            .map_or(self.next_offset, |batch| batch.header.base_offset);
        assert!(self.log_start <= self.next_offset);
    }

    fn out_of_range(&self, requested: i64) -> StorageError {
        StorageError::OffsetOutOfRange {
            requested,
            log_start: self.log_start,
            log_end: self.next_offset,
        }
    }

    /// Rebuilds producer state and the max timestamp from the batches kept (after truncation).
    fn rebuild_derived_state(&mut self) {
        self.producers = ProducerStateManager::default();
        self.max_timestamp = None;
        for batch in &self.batches {
            self.producers.record(&batch.header);
            if self
                .max_timestamp
                .is_none_or(|(_, ts)| batch.header.max_timestamp > ts)
            {
                self.max_timestamp = Some((batch.header.base_offset, batch.header.max_timestamp));
            }
        }
    }
}

impl MemoryLog {
    pub(crate) fn new(dir: PathBuf, config: LogConfig) -> MemoryLog {
        if config.cleanup_policy.compacts() {
            tracing::warn!(dir = %dir.display(), "the memory engine does not compact: cleanup.policy=compact keeps every batch until retention.bytes evicts it");
        }
        MemoryLog {
            dir,
            state: RefCell::new(MemoryState {
                config,
                batches: VecDeque::new(),
                bytes: 0,
                log_start: 0,
                next_offset: 0,
                producers: ProducerStateManager::default(),
                max_timestamp: None,
                closed: false,
                stats: LogStats::default(),
            }),
            data_waiters: WaiterList::default(),
        }
    }

    pub(crate) fn check_sequence(
        &self,
        headers: &[BatchHeader],
    ) -> Result<Option<(Offset, Offset)>, StorageError> {
        self.state.borrow().producers.duplicate_of(headers)
    }

    pub(crate) fn append(
        &self,
        mut records: BytesMut,
        headers: &[BatchHeader],
        leader_epoch: i32,
        _now_ms: i64,
    ) -> Result<AppendOutcome, StorageError> {
        let mut state = self.state.borrow_mut();
        state.ensure_open()?;
        let offsets = check_payload(&records, headers)?;
        if state.next_offset.checked_add(offsets).is_none() {
            return Err(StorageError::InvalidArgument("offset overflow".into()));
        }
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
        let mut position = 0usize;
        let mut offset = base_offset;
        for header in headers {
            assign_offset(&mut records[position..], offset, leader_epoch);
            position += header.total_size_bytes();
            offset += i64::from(header.last_offset_delta) + 1;
        }
        let bytes = records.freeze();
        let mut position = 0usize;
        for header in headers {
            let size = header.total_size_bytes();
            let mut assigned = *header;
            assigned.base_offset = state.next_offset;
            assigned.partition_leader_epoch = leader_epoch;
            state.push(assigned, bytes.slice(position..position + size));
            position += size;
        }
        state.stats.appended_batches += headers.len() as u64;
        state.stats.appended_bytes += bytes.len() as u64;
        state.evict_to_bound();
        assert_eq!(state.next_offset, offset);
        drop(state);
        self.data_waiters.wake_all();
        Ok(AppendOutcome::Appended {
            base_offset: Offset(base_offset),
            last_offset: Offset(offset - 1),
        })
    }

    /// Appended means readable: resolves at once unless the log is closed.
    pub(crate) async fn wait_written(&self, _last: Offset) -> Result<(), StorageError> {
        self.state.borrow().ensure_open()
    }

    /// The memory engine's durability is "appended": resolves at once unless closed.
    pub(crate) async fn wait_durable(&self, _last: Offset) -> Result<(), StorageError> {
        self.state.borrow().ensure_open()
    }

    pub(crate) fn log_start_offset(&self) -> Offset {
        Offset(self.state.borrow().log_start)
    }

    pub(crate) fn log_end_offset(&self) -> Offset {
        Offset(self.state.borrow().next_offset)
    }

    pub(crate) fn high_watermark(&self) -> Offset {
        Offset(self.state.borrow().next_offset)
    }

    /// Whole batches from the one containing `from`, up to `max_bytes` (capped at
    /// `FETCH_READ_BYTES_MAX`) but at least one; empty at the end.
    pub(crate) async fn read(&self, from: Offset, max_bytes: usize) -> Result<Bytes, StorageError> {
        let state = self.state.borrow();
        state.ensure_open()?;
        if from.0 < state.log_start || from.0 > state.next_offset {
            return Err(state.out_of_range(from.0));
        }
        let first = state
            .batches
            .partition_point(|batch| batch.header.last_offset() < from.0);
        let Some(first_batch) = state.batches.get(first) else {
            return Ok(Bytes::new());
        };
        let budget = max_bytes
            .min(FETCH_READ_BYTES_MAX)
            .max(first_batch.bytes.len());
        let mut parts: Vec<&Bytes> = Vec::new();
        let mut total = 0usize;
        for batch in state.batches.range(first..) {
            if total + batch.bytes.len() > budget {
                break;
            }
            total += batch.bytes.len();
            parts.push(&batch.bytes);
        }
        assert!(!parts.is_empty());
        if let [only] = parts.as_slice() {
            return Ok((*only).clone());
        }
        let mut joined = BytesMut::with_capacity(total);
        parts.iter().for_each(|part| joined.extend_from_slice(part));
        Ok(joined.freeze())
    }

    /// Closed: no more data will come.
    pub(crate) fn is_stopped(&self) -> bool {
        self.state.borrow().closed
    }

    pub(crate) async fn wait_for_data(&self, from: Offset) {
        self.data_waiters
            .wait_until(|| {
                let state = self.state.borrow();
                state.next_offset > from.0 || state.closed
            })
            .await;
    }

    pub(crate) async fn offset_for_timestamp(
        &self,
        ts_ms: i64,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        let state = self.state.borrow();
        state.ensure_open()?;
        Ok(state
            .batches
            .iter()
            .find(|batch| batch.header.max_timestamp >= ts_ms)
            .map(|batch| (Offset(batch.header.base_offset), batch.header.max_timestamp)))
    }

    pub(crate) fn max_timestamp(&self) -> Option<(Offset, i64)> {
        self.state
            .borrow()
            .max_timestamp
            .map(|(offset, timestamp)| (Offset(offset), timestamp))
    }

    pub(crate) async fn truncate(&self, to: Offset) -> Result<(), StorageError> {
        let mut state = self.state.borrow_mut();
        state.ensure_open()?;
        if to.0 >= state.next_offset {
            return Ok(());
        }
        if to.0 < state.log_start {
            return Err(state.out_of_range(to.0));
        }
        while let Some(last) = state.batches.back() {
            if last.header.last_offset() < to.0 {
                break;
            }
            let removed = state.batches.pop_back().expect("back exists");
            state.bytes -= removed.bytes.len() as u64;
            state.next_offset = removed.header.base_offset;
        }
        assert!(state.next_offset >= state.log_start);
        state.rebuild_derived_state();
        tracing::info!(dir = %self.dir.display(), to = to.0, end = state.next_offset, "truncated memory log");
        drop(state);
        self.data_waiters.wake_all();
        Ok(())
    }

    /// Nothing to write: a memory log has no durability beyond the process.
    pub(crate) async fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    pub(crate) async fn close(&self) -> Result<(), StorageError> {
        self.state.borrow_mut().closed = true;
        self.data_waiters.wake_all();
        Ok(())
    }

    /// Drops batches older than `retention.ms` (by their max_timestamp) when `cleanup.policy`
    /// includes delete, keeping the newest, and re-applies the byte bound (it may have been
    /// lowered by `set_config`; it bounds memory whatever the policy).
    pub(crate) async fn enforce_retention(&self, now_ms: i64) -> Result<(), StorageError> {
        let mut state = self.state.borrow_mut();
        state.ensure_open()?;
        let retention_ms = if state.config.cleanup_policy.deletes() {
            state.config.retention_ms
        } else {
            -1
        };
        while retention_ms >= 0 && state.batches.len() > 1 {
            let oldest = &state.batches[0];
            if now_ms.saturating_sub(oldest.header.max_timestamp) <= retention_ms {
                break;
            }
            state.drop_oldest();
        }
        state.evict_to_bound();
        Ok(())
    }

    pub(crate) fn set_config(&self, config: LogConfig) {
        self.state.borrow_mut().config = config;
    }

    pub(crate) fn config(&self) -> LogConfig {
        self.state.borrow().config.clone()
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.state.borrow().bytes
    }

    pub(crate) fn stats(&self) -> LogStats {
        self.state.borrow().stats
    }
}
