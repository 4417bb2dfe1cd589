//! The background writer of one file-engine partition log, and `close`.
//!
//! One task per log loops: take every pending append, write them per segment with the
//! segment appender (aligned direct IO, tail sector rewritten), advance the high watermark and
//! wake `wait_written` / `wait_for_data`; persist index entries once `INDEX_PERSIST_ENTRIES`
//! have accumulated (or the segment rolled); then fdatasync every segment written since the
//! last sync if a `wait_durable` / `flush` asked for it or the topic's `flush.messages` /
//! `flush.ms` trigger fired, and advance the durable offset to the high watermark as it was
//! when the sync started. Appends that arrive while a write or fdatasync is in flight wait for
//! the next round: one fdatasync covers every producer that appended before it started (group
//! commit).
//!
//! ENOSPC / EDQUOT does not poison the log: the failed writes go back to the front of the
//! queue (the file is cut back to where they start), appends and waiters beyond the high
//! watermark get `NoSpace`, and the round is retried every `NO_SPACE_RETRY_MS`. Once a retry
//! succeeds, appends are accepted again. At close on a still-full disk the unwritten (and so
//! never acknowledged) appends are dropped.
//!
//! Concurrency contract: the writer holds `io_lock` for a whole round, so truncation,
//! retention deletes and close never overlap a write; it never holds a state borrow across an
//! await. Any other IO error poisons the log (`failure`): every waiter and later call gets it.

use crate::constants::{INDEX_PERSIST_ENTRIES, NO_SPACE_RETRY_MS};
use crate::error::StorageError;
use crate::file_log::{FileLog, Lifecycle, LogState, PendingWrite};
use crate::open_files;
use crate::recovery_checkpoint::{write_checkpoint, CheckpointEntry};
use crate::segment::{sync_directory, Segment, SegmentFiles};
use bytes::Bytes;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Consecutive pending appends to one segment, written with one appender call.
struct Run {
    segment_base: i64,
    writes: Vec<PendingWrite>,
    bytes: u64,
    batches: u64,
    end_offset: i64,
}

impl LogState {
    fn writer_has_work(&self, now: Instant) -> bool {
        let retry_due = self.no_space_retry_at.is_some_and(|at| now >= at);
        (!self.pending.is_empty() && self.no_space_retry_at.is_none())
            || retry_due
            || self.sync_wanted.min(self.high_watermark) > self.durable_offset
            || self.flush_due(now)
            || self.lifecycle == Lifecycle::Closing
            || self.failure.is_some()
    }

    fn writer_should_stop(&self) -> bool {
        let drained = self.pending.is_empty() && self.sync_wanted <= self.durable_offset;
        self.failure.is_some() || (self.lifecycle == Lifecycle::Closing && drained)
    }

    /// The next instant a timer must wake the writer: an ENOSPC retry or a `flush.ms` sync.
    fn writer_deadline(&self) -> Option<Instant> {
        match (self.no_space_retry_at, self.flush_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn flush_deadline(&self) -> Option<Instant> {
        if self.config.sync_every_record() || self.config.flush_ms == i64::MAX {
            return None;
        }
        let flush_ms = u64::try_from(self.config.flush_ms).ok()?;
        self.first_unsynced_at?
            .checked_add(Duration::from_millis(flush_ms))
    }

    /// True when the `flush.messages` / `flush.ms` policy asks for an fdatasync now.
    fn flush_due(&self, now: Instant) -> bool {
        if self.config.sync_every_record() || self.high_watermark <= self.durable_offset {
            return false;
        }
        let unsynced = self.high_watermark - self.durable_offset;
        unsynced >= self.config.flush_messages || self.flush_deadline().is_some_and(|at| now >= at)
    }

    fn take_runs(&mut self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for write in self.pending.drain(..) {
            match runs.last_mut() {
                Some(run) if run.segment_base == write.segment_base => {
                    assert!(write.end_offset > run.end_offset);
                    run.bytes += write.bytes.len() as u64;
                    run.batches += write.batches;
                    run.end_offset = write.end_offset;
                    run.writes.push(write);
                }
                _ => runs.push(Run {
                    segment_base: write.segment_base,
                    bytes: write.bytes.len() as u64,
                    batches: write.batches,
                    end_offset: write.end_offset,
                    writes: vec![write],
                }),
            }
        }
        runs
    }

    /// Puts runs that were not written back at the front of the queue, in order.
    fn requeue(&mut self, runs: Vec<Run>) {
        for run in runs.into_iter().rev() {
            for write in run.writes.into_iter().rev() {
                self.pending.push_front(write);
            }
        }
    }

    /// A round failed with ENOSPC. While closing, the queue is dropped: nothing in it was
    /// acknowledged, and waiting for space would hang the shutdown.
    fn note_no_space(&mut self, now: Instant) {
        self.stats.no_space_errors += 1;
        self.no_space_retry_at = Some(now + Duration::from_millis(NO_SPACE_RETRY_MS));
        if self.lifecycle == Lifecycle::Closing {
            self.pending.clear();
            self.pending_bytes = 0;
            self.sync_wanted = self.sync_wanted.min(self.high_watermark);
        }
    }
}

impl FileLog {
    pub(crate) async fn run_writer(log: Rc<FileLog>) {
        loop {
            log.wait_for_work().await;
            if log.state.borrow().writer_should_stop() {
                break;
            }
            if !log.state.borrow().writer_has_work(Instant::now()) {
                continue;
            }
            let Ok(permit) = log.io_lock.acquire_permit(1).await else {
                break;
            };
            let result = log.write_round().await;
            drop(permit);
            match result {
                Ok(()) => {}
                Err(StorageError::NoSpace) => {
                    if log.state.borrow().no_space_retry_at.is_none() {
                        tracing::warn!(dir = %log.dir.display(), "no space left: appends refused, retrying every {NO_SPACE_RETRY_MS} ms");
                    }
                    log.state.borrow_mut().note_no_space(Instant::now());
                    log.wake_everyone();
                }
                Err(error) => {
                    tracing::error!(dir = %log.dir.display(), %error, "partition log writer failed");
                    log.state.borrow_mut().failure = Some(error.to_string());
                    break;
                }
            }
        }
        log.state.borrow_mut().writer_running = false;
        log.wake_everyone();
    }

    /// Waits until there is work or a timer (ENOSPC retry, `flush.ms`) is due.
    async fn wait_for_work(&self) {
        let deadline = self.state.borrow().writer_deadline();
        let has_work = self
            .writer_waiters
            .wait_until(|| self.state.borrow().writer_has_work(Instant::now()));
        match deadline {
            None => has_work.await,
            Some(at) => {
                let timer = glommio::timer::sleep(at.saturating_duration_since(Instant::now()));
                futures_lite::future::or(has_work, timer).await;
            }
        }
    }

    async fn write_round(&self) -> Result<(), StorageError> {
        let (mut runs, retrying) = {
            let mut state = self.state.borrow_mut();
            let paused = state.lifecycle == Lifecycle::Open
                && state
                    .no_space_retry_at
                    .is_some_and(|at| Instant::now() < at);
            if paused {
                (Vec::new(), false)
            } else {
                (state.take_runs(), state.no_space_retry_at.is_some())
            }
        };
        let mut touched: Vec<(i64, SegmentFiles)> = Vec::new();
        for index in 0..runs.len() {
            match self.write_run(&runs[index]).await {
                Ok(files) => touched.push((runs[index].segment_base, files)),
                Err(error) => {
                    let unwritten = runs.split_off(index);
                    self.state.borrow_mut().requeue(unwritten);
                    return Err(error);
                }
            }
        }
        if retrying {
            self.state.borrow_mut().no_space_retry_at = None;
            tracing::info!(dir = %self.dir.display(), "space available again: writes resumed");
        }
        for (base, files) in touched {
            self.persist_index(base, &files).await?;
        }
        self.sync_if_due().await?;
        self.checkpoint_sealed().await
    }

    /// Writes one run; on failure the file is cut back to where the run started, so a retry
    /// rewrites it at the same position.
    async fn write_run(&self, run: &Run) -> Result<SegmentFiles, StorageError> {
        let files = self.segment_files(run.segment_base).await?;
        let start = files.log.size_bytes();
        let parts: Vec<Bytes> = run.writes.iter().map(|w| w.bytes.clone()).collect();
        if let Err(error) = files.log.append(&parts).await {
            if files.log.size_bytes() != start {
                files.log.truncate(start).await?;
            }
            return Err(error);
        }
        assert_eq!(files.log.size_bytes(), start + run.bytes);
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        assert!(run.end_offset > state.high_watermark);
        if state.high_watermark == state.durable_offset {
            state.first_unsynced_at = Some(Instant::now());
        }
        state.high_watermark = run.end_offset;
        state.pending_bytes -= run.bytes;
        state.written_batches += run.batches;
        for list in [&mut state.unsynced_segments, &mut state.padded_segments] {
            if list.last() != Some(&run.segment_base) {
                list.push(run.segment_base);
            }
        }
        drop(guard);
        self.written_waiters.wake_all();
        Ok(files)
    }

    /// The files of a segment: opened if they exist (closed by the open-file cache, or since
    /// recovery), created on its first write otherwise.
    async fn segment_files(&self, base_offset: i64) -> Result<SegmentFiles, StorageError> {
        let exists = {
            let state = self.state.borrow();
            let segment = state
                .segment(base_offset)
                .expect("pending writes target live segments");
            segment.has_files()
        };
        if exists {
            return self.segment_ready(base_offset).await?.ok_or_else(|| {
                StorageError::Corrupt(format!("segment {base_offset} vanished under its writer"))
            });
        }
        let files = SegmentFiles::open(&self.dir, base_offset, true).await?;
        // The new file's directory entry must be durable, or an fdatasync of its data is lost
        // with the name after a crash.
        sync_directory(&self.dir)?;
        {
            let mut state = self.state.borrow_mut();
            let segment = state.segment_mut(base_offset).ok_or_else(|| {
                StorageError::Corrupt(format!("segment {base_offset} vanished under its writer"))
            })?;
            assert!(!segment.has_files());
            segment.files = Some(files.clone());
        }
        open_files::touch(self.id, base_offset, &self.me);
        open_files::evict_over_limit().await;
        Ok(files)
    }

    /// Appends the index entries added since they were last persisted to the index files,
    /// once `INDEX_PERSIST_ENTRIES` accumulated or the segment is no longer the active one.
    async fn persist_index(
        &self,
        base_offset: i64,
        files: &SegmentFiles,
    ) -> Result<(), StorageError> {
        let (offsets, times, count) = {
            let state = self.state.borrow();
            let Some(segment) = state.segment(base_offset) else {
                return Ok(());
            };
            let rolled = state.segments.last().map(|s| s.base_offset) != Some(base_offset);
            let unpersisted = segment.index.unpersisted_count();
            let closing = state.lifecycle != Lifecycle::Open;
            if unpersisted == 0 || (unpersisted < INDEX_PERSIST_ENTRIES && !rolled && !closing) {
                return Ok(());
            }
            segment.index.encode_unpersisted()
        };
        files.offset_index.append(&[Bytes::from(offsets)]).await?;
        files.time_index.append(&[Bytes::from(times)]).await?;
        let mut state = self.state.borrow_mut();
        if let Some(segment) = state.segment_mut(base_offset) {
            segment.index.set_persisted(count);
        }
        Ok(())
    }

    /// Group commit: one fdatasync per written segment covers everything written so far.
    /// Runs when a waiter asked for it, or when the topic's flush policy says it is time.
    async fn sync_if_due(&self) -> Result<(), StorageError> {
        let (target, batches, files) = {
            let mut state = self.state.borrow_mut();
            let wanted = state.sync_wanted.min(state.high_watermark) > state.durable_offset;
            if !wanted && !state.flush_due(Instant::now()) {
                return Ok(());
            }
            let bases = std::mem::take(&mut state.unsynced_segments);
            state.first_unsynced_at = None;
            (state.high_watermark, state.written_batches, bases)
        };
        let mut synced_files = 0;
        for base in files {
            if let Some(segment_files) = self.segment_ready(base).await? {
                segment_files.log.sync().await?;
                synced_files += 1;
            }
        }
        let mut state = self.state.borrow_mut();
        assert!(target >= state.durable_offset);
        state.durable_offset = target;
        state.stats.fsyncs += synced_files;
        state.stats.fsynced_batches += batches - state.synced_batches;
        state.synced_batches = batches;
        drop(state);
        self.durable_waiters.wake_all();
        Ok(())
    }

    /// Flushes everything, persists the remaining index entries, cuts the padding of every
    /// file written since open, closes the files. Later appends and reads get `Closed`.
    pub async fn close(&self) -> Result<(), StorageError> {
        {
            let mut state = self.state.borrow_mut();
            match state.lifecycle {
                Lifecycle::Closed => return Ok(()),
                Lifecycle::Truncating => return Err(StorageError::TruncateInProgress),
                Lifecycle::Open | Lifecycle::Closing => {}
            }
            state.lifecycle = Lifecycle::Closing;
            state.sync_wanted = state.next_offset;
        }
        self.writer_waiters.wake_all();
        self.writer_stopped
            .wait_until(|| !self.state.borrow().writer_running)
            .await;
        let _permit = self.io_lock.acquire_permit(1).await?;
        if self.state.borrow().lifecycle == Lifecycle::Closed {
            return Ok(());
        }
        let padded: Vec<i64> = self.state.borrow().padded_segments.clone();
        let mut result = Ok(());
        for base in padded {
            let files = match self.segment_ready(base).await {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(error) => {
                    result = Err(error);
                    continue;
                }
            };
            let finished = match self.persist_index(base, &files).await {
                Ok(()) => files.finish().await,
                Err(error) => Err(error),
            };
            if let Err(error) = finished {
                result = Err(error);
            }
        }
        if result.is_ok() {
            result = self.checkpoint_sealed().await;
        }
        let (open, failure) = {
            let mut state = self.state.borrow_mut();
            state.lifecycle = Lifecycle::Closed;
            let mut open = Vec::new();
            for segment in state.segments.iter_mut() {
                if let Some(files) = segment.files.take() {
                    segment.closed_sizes = Some(files.sizes());
                    open.push((segment.base_offset, files));
                }
            }
            (open, state.failure_error())
        };
        for (base, files) in open {
            open_files::forget(self.id, base);
            files.close().await;
        }
        self.wake_everyone();
        failure.map_or(result, Err)
    }
}

impl FileLog {
    /// Seals segments for the recovery checkpoint: every closed segment that is fully written
    /// and not yet checkpointed gets its padding cut and its three files fdatasynced, then the
    /// checkpoint is rewritten. Runs under `io_lock` (writer round, close); one ftruncate and
    /// fdatasync per file per rolled segment.
    pub(crate) async fn checkpoint_sealed(&self) -> Result<(), StorageError> {
        let bases: Vec<i64> = {
            let state = self.state.borrow();
            let Some((_active, closed)) = state.segments.split_last() else {
                return Ok(());
            };
            if state.failure.is_some() {
                return Ok(());
            }
            closed
                .iter()
                .filter(|s| {
                    !s.checkpointed && s.next_offset <= state.high_watermark && s.has_files()
                })
                .map(|s| s.base_offset)
                .collect()
        };
        if bases.is_empty() {
            return Ok(());
        }
        for base in bases {
            // A failed (or test-abandoned) log does no more file IO.
            if self.state.borrow().failure.is_some() {
                return Ok(());
            }
            let Some(files) = self.segment_ready(base).await? else {
                continue;
            };
            // A segment rolled after its last write round still holds unpersisted entries.
            self.persist_index(base, &files).await?;
            files.finish().await?;
            let mut state = self.state.borrow_mut();
            state.padded_segments.retain(|padded| *padded != base);
            if let Some(segment) = state.segment_mut(base) {
                segment.checkpointed = true;
            }
        }
        self.write_checkpoint_from_state()
    }

    /// Rewrites the checkpoint from the checkpointed segments in memory.
    pub(crate) fn write_checkpoint_from_state(&self) -> Result<(), StorageError> {
        let state = self.state.borrow();
        let entries = checkpoint_entries(&self.dir, &state.segments)?;
        write_checkpoint(&self.dir, &entries)
    }
}

/// Checkpoint entries of the sealed segments marked `checkpointed` (the active one never is).
pub(crate) fn checkpoint_entries(
    dir: &std::path::Path,
    segments: &[Segment],
) -> Result<Vec<CheckpointEntry>, StorageError> {
    let mut entries = Vec::new();
    for segment in segments.iter().filter(|s| s.checkpointed) {
        let sizes = match (&segment.files, segment.closed_sizes) {
            (Some(files), _) => files.sizes(),
            (None, Some(sizes)) => sizes,
            (None, None) => continue,
        };
        entries.push(CheckpointEntry::for_segment(dir, segment, sizes)?);
    }
    Ok(entries)
}
