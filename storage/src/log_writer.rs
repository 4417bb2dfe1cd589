//! The background writer of one partition log, and `close`.
//!
//! One task per log loops: take every pending append, write them per segment with the
//! segment appender (aligned direct IO, tail sector rewritten), persist new index entries,
//! advance the high watermark and wake `wait_written` / `wait_for_data`; then, if any
//! `wait_durable` or `flush` asked for it, fdatasync every segment written since the last sync
//! and advance the durable offset to the high watermark as it was when the sync started.
//! Appends that arrive while a write or fdatasync is in flight wait for the next round: one
//! fdatasync covers every producer that appended before it started (group commit).
//!
//! Concurrency contract: the writer holds `io_lock` for a whole round, so truncation,
//! retention deletes and close never overlap a write; it never holds a state borrow across an
//! await. An IO error poisons the log (`failure`): every waiter and later call gets it.

use crate::error::StorageError;
use crate::log::{Lifecycle, LogState, PartitionLog};
use crate::segment::SegmentFiles;
use bytes::Bytes;
use std::rc::Rc;

/// Consecutive pending appends to one segment, written with one appender call.
struct Run {
    segment_base: i64,
    parts: Vec<Bytes>,
    bytes: u64,
    end_offset: i64,
}

impl LogState {
    fn writer_has_work(&self) -> bool {
        !self.pending.is_empty()
            || self.sync_wanted > self.durable_offset
            || self.lifecycle == Lifecycle::Closing
            || self.failure.is_some()
    }

    fn writer_should_stop(&self) -> bool {
        let drained = self.pending.is_empty() && self.sync_wanted <= self.durable_offset;
        self.failure.is_some() || (self.lifecycle == Lifecycle::Closing && drained)
    }

    fn take_runs(&mut self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for write in self.pending.drain(..) {
            match runs.last_mut() {
                Some(run) if run.segment_base == write.segment_base => {
                    assert!(write.end_offset > run.end_offset);
                    run.bytes += write.bytes.len() as u64;
                    run.parts.push(write.bytes);
                    run.end_offset = write.end_offset;
                }
                _ => runs.push(Run {
                    segment_base: write.segment_base,
                    bytes: write.bytes.len() as u64,
                    parts: vec![write.bytes],
                    end_offset: write.end_offset,
                }),
            }
        }
        runs
    }
}

/// Makes a new segment's directory entry durable, so an fdatasync of its data is not lost
/// with the file name after a crash. Blocking, but once per roll (every `segment_bytes`).
fn sync_directory(dir: &std::path::Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl PartitionLog {
    pub(crate) async fn run_writer(log: Rc<PartitionLog>) {
        loop {
            log.writer_waiters
                .wait_until(|| log.state.borrow().writer_has_work())
                .await;
            if log.state.borrow().writer_should_stop() {
                break;
            }
            let Ok(permit) = log.io_lock.acquire_permit(1).await else {
                break;
            };
            let result = log.write_round().await;
            drop(permit);
            if let Err(error) = result {
                tracing::error!(dir = %log.dir.display(), %error, "partition log writer failed");
                log.state.borrow_mut().failure = Some(error.to_string());
                break;
            }
        }
        log.state.borrow_mut().writer_running = false;
        log.wake_everyone();
    }

    async fn write_round(&self) -> Result<(), StorageError> {
        let runs = self.state.borrow_mut().take_runs();
        for run in runs {
            let files = self.segment_files(run.segment_base).await?;
            files.log.append(&run.parts).await?;
            self.persist_index(run.segment_base, &files).await?;
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            assert!(run.end_offset > state.high_watermark);
            state.high_watermark = run.end_offset;
            state.pending_bytes -= run.bytes;
            for list in [&mut state.unsynced_segments, &mut state.padded_segments] {
                if list.last() != Some(&run.segment_base) {
                    list.push(run.segment_base);
                }
            }
            drop(guard);
            self.written_waiters.wake_all();
        }
        self.sync_if_wanted().await
    }

    /// The files of a segment, created on its first write.
    async fn segment_files(&self, base_offset: i64) -> Result<SegmentFiles, StorageError> {
        let existing = {
            let state = self.state.borrow();
            let segment = state
                .segment(base_offset)
                .expect("pending writes target live segments");
            segment.files.clone()
        };
        if let Some(files) = existing {
            return Ok(files);
        }
        let files = SegmentFiles::open(&self.dir, base_offset, true).await?;
        sync_directory(&self.dir)?;
        let mut state = self.state.borrow_mut();
        let segment = state
            .segment_mut(base_offset)
            .expect("segment outlives its writes");
        assert!(segment.files.is_none());
        segment.files = Some(files.clone());
        Ok(files)
    }

    /// Appends the index entries added since the last round to the index files.
    async fn persist_index(
        &self,
        base_offset: i64,
        files: &SegmentFiles,
    ) -> Result<(), StorageError> {
        let (offsets, times, count) = {
            let state = self.state.borrow();
            let segment = state
                .segment(base_offset)
                .expect("segment outlives its writes");
            segment.index.encode_unpersisted()
        };
        if offsets.is_empty() {
            return Ok(());
        }
        files.offset_index.append(&[Bytes::from(offsets)]).await?;
        files.time_index.append(&[Bytes::from(times)]).await?;
        let mut state = self.state.borrow_mut();
        if let Some(segment) = state.segment_mut(base_offset) {
            segment.index.set_persisted(count);
        }
        Ok(())
    }

    /// Group commit: one fdatasync per written segment covers everything written so far.
    async fn sync_if_wanted(&self) -> Result<(), StorageError> {
        let (target, files) = {
            let mut state = self.state.borrow_mut();
            if state.sync_wanted <= state.durable_offset {
                return Ok(());
            }
            let bases = std::mem::take(&mut state.unsynced_segments);
            let files: Vec<SegmentFiles> = bases
                .iter()
                .filter_map(|base| state.segment(*base).and_then(|s| s.files.clone()))
                .collect();
            (state.high_watermark, files)
        };
        for segment_files in files {
            segment_files.log.sync().await?;
        }
        let mut state = self.state.borrow_mut();
        assert!(target >= state.durable_offset);
        state.durable_offset = target;
        drop(state);
        self.durable_waiters.wake_all();
        Ok(())
    }

    /// Flushes everything, cuts the padding of every file written since open, closes the
    /// files. Later appends and reads get `Closed`.
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
        let padded: Vec<SegmentFiles> = {
            let state = self.state.borrow();
            state
                .padded_segments
                .iter()
                .filter_map(|base| state.segment(*base).and_then(|s| s.files.clone()))
                .collect()
        };
        let mut result = Ok(());
        for files in padded {
            if let Err(error) = files.finish().await {
                result = Err(error);
            }
        }
        let mut state = self.state.borrow_mut();
        state.lifecycle = Lifecycle::Closed;
        state
            .segments
            .iter_mut()
            .for_each(|segment| segment.files = None);
        let failure = state.failure_error();
        drop(state);
        self.wake_everyone();
        failure.map_or(result, Err)
    }
}
