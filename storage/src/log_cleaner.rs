//! The log cleaner of a file-engine partition log (Kafka's LogCleaner, one pass per call).
//!
//! A pass, when `cleanup.policy` includes compact and the log is due (dirty bytes / closed
//! bytes >= `min.cleanable.dirty.ratio`, or a tombstone's delete horizon has passed):
//! 1. Snapshot the cleanable segments: closed, fully written, older than
//!    `min.compaction.lag.ms`. The active segment is never touched.
//! 2. Build the key map over the dirty section `[first_dirty, map_end)`, stopping before the
//!    batch whose keys would push it past `key_map_bytes_max`.
//! 3. Clean every segment below `map_end` in groups of consecutive segments whose sizes add up
//!    to at most `segment.bytes` (so small cleaned segments merge): each group is written to
//!    `<first>.<end>.cleaned` with the rules of `compaction.rs`, fdatasynced, then swapped in.
//!    A single-segment group that comes out unchanged is discarded instead.
//! 4. The dirty section now starts at `map_end`.
//!
//! The swap, under `io_lock` and only if the group is still what the pass read (no truncation,
//! retention or close since): rename `.cleaned` -> `.swap` and fsync the directory (the new
//! contents are now decided); delete the group's index files and the later segments' files;
//! rename `.swap` -> `<first>.log` and fsync the directory; write the rebuilt index; replace
//! the group's segments in memory. Recovery deletes a `.cleaned` file and finishes a `.swap`
//! (`recovery.rs`), so a crash at any step leaves either the old segments or the new one. An
//! IO error after the first rename poisons the log, so nothing runs against half-swapped files
//! until a restart lets recovery finish the swap.
//!
//! Concurrency contract: runs as a background task on the owning shard, one pass per log at a
//! time (`compacting`). It reads segments through its own `Rc` handles, never holds a state
//! borrow across an await, and yields between batches, so appends (synchronous) and the
//! writer go on. Readers that planned a read before a swap keep reading the old files through
//! their handles (unlinked files stay readable), readers after it see the new segment: never
//! a mix. The dirty section is kept in memory only: after a restart the first pass re-reads
//! every closed segment (and rewrites only what changes).

use crate::batch::BatchHeader;
use crate::compaction::{batch_keys, clean_batch, BatchAction, CleanRules, KeyMap};
use crate::constants::{SEGMENT_RELATIVE_OFFSET_MAX, WRITE_CHUNK_BYTES};
use crate::error::StorageError;
use crate::file_log::{FileLog, LogState};
use crate::log::CompactionOutcome;
use crate::open_files;
use crate::segment::{
    compaction_temp_path, remove_if_exists, segment_path, sync_directory, Segment, SegmentFiles,
    CLEANED_EXTENSION, LOG_EXTENSION, OFFSET_INDEX_EXTENSION, SWAP_EXTENSION, TIME_INDEX_EXTENSION,
};
use crate::segment_appender::SegmentAppender;
use crate::segment_index::SegmentIndex;
use crate::segment_reader::{BaseOffsetCheck, BatchScanner, ScanStep};
use crate::Offset;
use bytes::Bytes;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// What the cleaner remembers about a log between passes (in memory only).
#[derive(Clone, Debug)]
pub(crate) struct CleanerState {
    /// Below this offset every key has at most one record (Kafka's first dirty offset).
    pub(crate) first_dirty_offset: i64,
    /// The earliest delete horizon among the cleaned batches: a pass is due once it passes.
    pub(crate) delete_horizon_min_ms: Option<i64>,
}

impl CleanerState {
    pub(crate) fn new(log_start: i64) -> CleanerState {
        CleanerState {
            first_dirty_offset: log_start,
            delete_horizon_min_ms: None,
        }
    }
}

/// A cleanable segment as the pass saw it when it started.
struct SegmentSnapshot {
    base_offset: i64,
    next_offset: i64,
    size_bytes: u64,
    /// Where the key map scan starts in this segment (the index entry before first_dirty).
    dirty_position: u64,
    files: SegmentFiles,
}

/// Everything a pass decided when it started.
struct CompactionPass {
    segments: Vec<SegmentSnapshot>,
    first_dirty: i64,
    truncations: u64,
    /// Producer id -> last offset it wrote: the batch ending there is kept (maybe empty).
    producer_last_offsets: HashMap<i64, i64>,
    delete_retention_ms: i64,
    segment_bytes: u64,
    index_interval_bytes: u32,
}

/// A cleaned group, written to its `.cleaned` file.
struct CleanedGroup {
    index: SegmentIndex,
    size_bytes: u64,
    max_timestamp: i64,
    max_timestamp_offset: i64,
    /// One past the last offset of the last batch written.
    end_offset: i64,
    records_removed: u64,
    delete_horizon_min_ms: Option<i64>,
    changed: bool,
}

impl CleanedGroup {
    fn new(index_interval_bytes: u32, base_offset: i64) -> CleanedGroup {
        CleanedGroup {
            index: SegmentIndex::new(index_interval_bytes),
            size_bytes: 0,
            max_timestamp: -1,
            max_timestamp_offset: base_offset,
            end_offset: base_offset,
            records_removed: 0,
            delete_horizon_min_ms: None,
            changed: false,
        }
    }

    /// Accounts for one output batch at the current end of the cleaned file. The scan already
    /// checked that offsets increase and stay inside the group.
    fn add(&mut self, group_base: i64, header: &BatchHeader) -> Result<(), StorageError> {
        let relative = header.base_offset - group_base;
        assert!((0..=SEGMENT_RELATIVE_OFFSET_MAX).contains(&relative));
        assert!(header.base_offset >= self.end_offset, "offsets increase");
        let end = self.size_bytes + header.total_size_bytes() as u64;
        if end > u64::from(u32::MAX) {
            return Err(StorageError::InvalidArgument(format!(
                "cleaned segment at {group_base} would exceed u32 positions"
            )));
        }
        self.index
            .maybe_add(relative as u32, self.size_bytes as u32, self.max_timestamp);
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_offset = header.base_offset;
        }
        if let Some(horizon) = header.delete_horizon_ms() {
            let min = self.delete_horizon_min_ms.get_or_insert(horizon);
            *min = (*min).min(horizon);
        }
        self.size_bytes = end;
        self.end_offset = header.last_offset() + 1;
        Ok(())
    }
}

/// How a group's cleaning ended.
enum GroupResult {
    /// Swapped in (or unchanged and discarded): the segments before and after, bytes after.
    Done(CleanedGroup, usize),
    /// The log changed under the pass (truncation, retention, close): the pass stops.
    Aborted,
}

impl LogState {
    /// The closed segments a pass may clean now, oldest first: below the high watermark, not
    /// empty, and older than `min.compaction.lag.ms`.
    fn cleanable_segments(&self, now_ms: i64) -> impl Iterator<Item = &Segment> + '_ {
        let lag_ms = self.config.min_compaction_lag_ms;
        let closed = &self.segments[..self.segments.len() - 1];
        closed.iter().take_while(move |s| {
            s.next_offset <= self.high_watermark
                && s.size_bytes > 0
                && (lag_ms == 0 || s.max_timestamp <= now_ms.saturating_sub(lag_ms))
        })
    }

    /// Whether cleaning segments of these `(next_offset, size_bytes)` is due: enough dirty
    /// bytes past `first_dirty` (`min.cleanable.dirty.ratio`), or a tombstone horizon passed.
    fn compaction_due(
        &self,
        segments: impl Iterator<Item = (i64, u64)>,
        first_dirty: i64,
        now_ms: i64,
    ) -> bool {
        let (mut total_bytes, mut dirty_bytes) = (0u64, 0u64);
        for (next_offset, size_bytes) in segments {
            total_bytes += size_bytes;
            if next_offset > first_dirty {
                dirty_bytes += size_bytes;
            }
        }
        let ratio = self.config.min_cleanable_dirty_ratio;
        let dirty_due = dirty_bytes > 0 && dirty_bytes as f64 >= ratio * total_bytes as f64;
        let horizon_due = self
            .cleaner
            .delete_horizon_min_ms
            .is_some_and(|horizon| now_ms >= horizon);
        dirty_due || horizon_due
    }

    fn first_dirty(&self) -> i64 {
        self.cleaner.first_dirty_offset.max(self.log_start())
    }

    /// Base offsets of the closed segments a pass would clean now, empty if none is due (the
    /// same choice as `plan_compaction`, without needing open files).
    fn compaction_candidates(&self, now_ms: i64) -> Vec<i64> {
        if !self.config.cleanup_policy.compacts() {
            return Vec::new();
        }
        let sizes = self
            .cleanable_segments(now_ms)
            .map(|s| (s.next_offset, s.size_bytes));
        if !self.compaction_due(sizes, self.first_dirty(), now_ms) {
            return Vec::new();
        }
        self.cleanable_segments(now_ms)
            .map(|s| s.base_offset)
            .collect()
    }

    /// The pass to run now, if the log is compacted and due (over the leading cleanable
    /// segments whose files are open).
    fn plan_compaction(&self, now_ms: i64) -> Option<CompactionPass> {
        if !self.config.cleanup_policy.compacts() {
            return None;
        }
        let first_dirty = self.first_dirty();
        let segments: Vec<SegmentSnapshot> = self
            .cleanable_segments(now_ms)
            .map_while(|s| {
                Some(SegmentSnapshot {
                    base_offset: s.base_offset,
                    next_offset: s.next_offset,
                    size_bytes: s.size_bytes,
                    dirty_position: if s.base_offset < first_dirty {
                        s.position_for(first_dirty)
                    } else {
                        0
                    },
                    files: s.files.clone()?,
                })
            })
            .collect();
        let sizes = segments.iter().map(|s| (s.next_offset, s.size_bytes));
        if segments.is_empty() || !self.compaction_due(sizes, first_dirty, now_ms) {
            return None;
        }
        Some(CompactionPass {
            segments,
            first_dirty,
            truncations: self.truncations,
            producer_last_offsets: self.producers.last_offsets(),
            delete_retention_ms: self.config.delete_retention_ms,
            segment_bytes: self.config.segment_bytes,
            index_interval_bytes: self.config.index_interval_bytes,
        })
    }

    /// True while nothing the pass relies on changed: open, no truncation since it started.
    fn pass_is_current(&self, pass: &CompactionPass) -> bool {
        self.ensure_open().is_ok() && self.truncations == pass.truncations
    }

    /// True when every segment of `group` is still in the log exactly as the pass read it.
    fn group_is_current(&self, pass: &CompactionPass, group: &[SegmentSnapshot]) -> bool {
        self.pass_is_current(pass)
            && group.iter().all(|snapshot| {
                self.segment(snapshot.base_offset).is_some_and(|segment| {
                    segment.next_offset == snapshot.next_offset
                        && segment
                            .files
                            .as_ref()
                            .is_some_and(|files| Rc::ptr_eq(&files.log, &snapshot.files.log))
                })
            })
    }
}

/// Consecutive segments below `map_end`, grouped so each group's bytes stay within
/// `segment_bytes` and its offsets within a segment's u32 relative range.
fn group_segments(
    segments: &[SegmentSnapshot],
    map_end: i64,
    segment_bytes: u64,
) -> Vec<Range<usize>> {
    let cleanable = segments
        .iter()
        .take_while(|s| s.base_offset < map_end)
        .count();
    let mut groups = Vec::new();
    let mut start = 0;
    while start < cleanable {
        let mut end = start + 1;
        let mut bytes = segments[start].size_bytes;
        while end < cleanable {
            let next = &segments[end];
            let span = next.next_offset - segments[start].base_offset;
            if bytes + next.size_bytes > segment_bytes || span > SEGMENT_RELATIVE_OFFSET_MAX {
                break;
            }
            bytes += next.size_bytes;
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

/// The next batch of a cleanable segment, CRC-checked, starting at or after `min_base` and
/// ending inside the segment (base offsets are not covered by the CRC: a flipped bit there
/// must be an error, not a broken invariant). None at the end of the segment.
async fn next_batch(
    scanner: &mut BatchScanner,
    segment: &SegmentSnapshot,
    min_base: i64,
) -> Result<Option<(u64, BatchHeader)>, StorageError> {
    match scanner
        .next(BaseOffsetCheck::AtLeast(min_base), true)
        .await?
    {
        ScanStep::Batch { position, header } if header.last_offset() < segment.next_offset => {
            Ok(Some((position, header)))
        }
        ScanStep::Batch { position, header } => Err(corrupt(
            segment,
            position,
            &format!("batch ends at {} past the segment", header.last_offset()),
        )),
        ScanStep::End => Ok(None),
        ScanStep::Invalid { position, reason } => Err(corrupt(segment, position, &reason)),
    }
}

fn corrupt(segment: &SegmentSnapshot, position: u64, reason: &str) -> StorageError {
    tracing::error!(base_offset = segment.base_offset, position, %reason, "log cleaner found a corrupt batch; pass abandoned");
    StorageError::Corrupt(format!(
        "segment {} at position {position}: {reason}",
        segment.base_offset
    ))
}

impl FileLog {
    /// One cleaner pass if the log is due; see the module comment.
    pub(crate) async fn compact(
        &self,
        now_ms: i64,
        key_map_bytes_max: usize,
    ) -> Result<Option<CompactionOutcome>, StorageError> {
        if self.compacting.replace(true) {
            return Ok(None);
        }
        let result = self.compact_pass(now_ms, key_map_bytes_max).await;
        assert!(self.compacting.replace(false));
        result
    }

    async fn compact_pass(
        &self,
        now_ms: i64,
        key_map_bytes_max: usize,
    ) -> Result<Option<CompactionOutcome>, StorageError> {
        let candidates = {
            let state = self.state.borrow();
            state.ensure_open()?;
            state.compaction_candidates(now_ms)
        };
        if candidates.is_empty() {
            return Ok(None);
        }
        // Open the candidates' files (and load their indexes) and hold them while planning.
        let mut held = Vec::with_capacity(candidates.len());
        for base in candidates {
            if let Some(files) = self.segment_ready(base).await? {
                held.push(files);
            }
        }
        let pass = {
            let state = self.state.borrow();
            state.ensure_open()?;
            state.plan_compaction(now_ms)
        };
        drop(held);
        let Some(pass) = pass else {
            return Ok(None);
        };
        let Some((map, map_end)) = self.build_key_map(&pass, key_map_bytes_max).await? else {
            return Ok(None);
        };
        assert!(map_end >= pass.first_dirty);
        let rules = CleanRules {
            map: &map,
            map_end,
            now_ms,
            delete_retention_ms: pass.delete_retention_ms,
        };
        let mut outcome = CompactionOutcome {
            cleaned_end: Offset(map_end),
            ..CompactionOutcome::default()
        };
        let mut horizon_min: Option<i64> = None;
        for range in group_segments(&pass.segments, map_end, pass.segment_bytes) {
            let group = &pass.segments[range];
            let GroupResult::Done(cleaned, segments_after) =
                self.clean_group(&pass, group, &rules).await?
            else {
                return Ok(None);
            };
            outcome.segments_before += group.len();
            outcome.segments_after += segments_after;
            outcome.bytes_before += group.iter().map(|s| s.size_bytes).sum::<u64>();
            outcome.bytes_after += cleaned.size_bytes;
            outcome.records_removed += cleaned.records_removed;
            horizon_min = match (horizon_min, cleaned.delete_horizon_min_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let mut state = self.state.borrow_mut();
        if state.truncations == pass.truncations {
            state.cleaner.first_dirty_offset = map_end;
            state.cleaner.delete_horizon_min_ms = horizon_min;
        }
        state.stats.compactions += 1;
        state.stats.compacted_bytes_removed +=
            outcome.bytes_before.saturating_sub(outcome.bytes_after);
        drop(state);
        tracing::info!(
            dir = %self.dir.display(),
            cleaned_end = map_end,
            keys = map.len(),
            segments_before = outcome.segments_before,
            segments_after = outcome.segments_after,
            bytes_before = outcome.bytes_before,
            bytes_after = outcome.bytes_after,
            records_removed = outcome.records_removed,
            "log cleaner pass"
        );
        Ok(Some(outcome))
    }

    /// The key map over `[first_dirty, map_end)` and `map_end`; None if the log changed.
    async fn build_key_map(
        &self,
        pass: &CompactionPass,
        key_map_bytes_max: usize,
    ) -> Result<Option<(KeyMap, i64)>, StorageError> {
        let mut map = KeyMap::new(key_map_bytes_max);
        let dirty = pass
            .segments
            .iter()
            .filter(|s| s.next_offset > pass.first_dirty);
        for segment in dirty {
            if !self.state.borrow().pass_is_current(pass) {
                return Ok(None);
            }
            let file = segment.files.log.file();
            let mut scanner = BatchScanner::new(file, segment.dirty_position, segment.size_bytes);
            let mut min_base = segment.base_offset;
            while let Some((position, header)) = next_batch(&mut scanner, segment, min_base).await?
            {
                min_base = header.last_offset() + 1;
                if header.base_offset < pass.first_dirty {
                    continue;
                }
                let bytes = scanner.bytes(position, header.total_size_bytes());
                let keys = batch_keys(bytes, &header);
                let keys: Vec<(&[u8], i64)> = keys
                    .iter()
                    .map(|(key, offset)| (&key[..], *offset))
                    .collect();
                if !map.add_batch(&keys) {
                    if map.is_empty() {
                        tracing::warn!(dir = %self.dir.display(), base_offset = header.base_offset, keys = keys.len(), "the batch has more keys than the cleaner's key map holds: compaction cannot pass it");
                    }
                    return Ok(Some((map, header.base_offset)));
                }
                glommio::yield_if_needed().await;
            }
        }
        let end = pass
            .segments
            .last()
            .map_or(pass.first_dirty, |s| s.next_offset);
        Ok(Some((map, end)))
    }

    /// Cleans one group into a `.cleaned` file and swaps it in (or discards it unchanged).
    async fn clean_group(
        &self,
        pass: &CompactionPass,
        group: &[SegmentSnapshot],
        rules: &CleanRules<'_>,
    ) -> Result<GroupResult, StorageError> {
        let first = group[0].base_offset;
        let end = group[group.len() - 1].next_offset;
        let cleaned_path = compaction_temp_path(&self.dir, first, end, CLEANED_EXTENSION);
        // A closed or removed log gets no new file in its directory (LogManager::remove
        // deletes the directory right after close).
        if !self.state.borrow().pass_is_current(pass) {
            return Ok(GroupResult::Aborted);
        }
        let out = SegmentAppender::open(&cleaned_path, true).await?;
        let written = match self.write_cleaned(pass, group, rules, &out).await {
            Ok(Some(written)) if written.changed => written,
            other => {
                remove_if_exists(&cleaned_path)?;
                return match other {
                    Ok(Some(unchanged)) => Ok(GroupResult::Done(unchanged, group.len())),
                    Ok(None) => Ok(GroupResult::Aborted),
                    Err(error) => Err(error),
                };
            }
        };
        assert_eq!(written.end_offset, end, "the group's last batch is kept");
        if let Err(error) = out.finish().await {
            remove_if_exists(&cleaned_path)?;
            return Err(error);
        }
        drop(out);
        self.swap_in(pass, group, written, cleaned_path).await
    }

    /// Writes the cleaned batches of `group` to `out`; None if the log changed meanwhile.
    async fn write_cleaned(
        &self,
        pass: &CompactionPass,
        group: &[SegmentSnapshot],
        rules: &CleanRules<'_>,
        out: &SegmentAppender,
    ) -> Result<Option<CleanedGroup>, StorageError> {
        let first = group[0].base_offset;
        let end = group[group.len() - 1].next_offset;
        let mut written = CleanedGroup::new(pass.index_interval_bytes, first);
        written.changed = group.len() > 1;
        let mut pending: Vec<u8> = Vec::new();
        for segment in group {
            if !self.state.borrow().pass_is_current(pass) {
                return Ok(None);
            }
            let file = segment.files.log.file();
            let mut scanner = BatchScanner::new(file, 0, segment.size_bytes);
            let mut min_base = written.end_offset.max(segment.base_offset);
            while let Some((position, header)) = next_batch(&mut scanner, segment, min_base).await?
            {
                min_base = header.last_offset() + 1;
                let bytes = scanner.bytes(position, header.total_size_bytes());
                let producer_last = pass.producer_last_offsets.get(&header.producer_id);
                let must_retain = header.last_offset() + 1 == end
                    || (header.producer_id >= 0 && producer_last == Some(&header.last_offset()));
                let cleaned = clean_batch(bytes, &header, rules, must_retain);
                written.records_removed += cleaned.records_removed;
                match cleaned.action {
                    BatchAction::Keep => {
                        written.add(first, &header)?;
                        pending.extend_from_slice(bytes);
                    }
                    BatchAction::Drop => written.changed = true,
                    BatchAction::Rewrite(rebuilt) => {
                        let rebuilt_header = BatchHeader::parse(&rebuilt)?;
                        written.add(first, &rebuilt_header)?;
                        pending.extend_from_slice(&rebuilt);
                        written.changed = true;
                    }
                }
                if pending.len() >= WRITE_CHUNK_BYTES {
                    out.append(&[Bytes::from(std::mem::take(&mut pending))])
                        .await?;
                }
                glommio::yield_if_needed().await;
            }
        }
        out.append(&[Bytes::from(pending)]).await?;
        assert_eq!(out.size_bytes(), written.size_bytes);
        Ok(Some(written))
    }

    /// Swaps a cleaned, durable group in (see the module comment).
    async fn swap_in(
        &self,
        pass: &CompactionPass,
        group: &[SegmentSnapshot],
        mut written: CleanedGroup,
        cleaned_path: PathBuf,
    ) -> Result<GroupResult, StorageError> {
        let _permit = self.io_lock.acquire_permit(1).await?;
        if !self.state.borrow().group_is_current(pass, group) {
            remove_if_exists(&cleaned_path)?;
            return Ok(GroupResult::Aborted);
        }
        let files = match replace_files(&self.dir, group, &mut written, &cleaned_path).await {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "log cleaner swap failed; the log stops until a restart finishes it");
                self.state.borrow_mut().failure = Some(format!("log cleaner swap: {error}"));
                self.wake_everyone();
                return Err(error);
            }
        };
        let first = group[0].base_offset;
        let end = group[group.len() - 1].next_offset;
        let mut state = self.state.borrow_mut();
        let start = state.segments.partition_point(|s| s.base_offset < first);
        let replaced = start..start + group.len();
        let bases_match = state.segments[replaced.clone()]
            .iter()
            .zip(group)
            .all(|(segment, snapshot)| segment.base_offset == snapshot.base_offset);
        assert!(bases_match, "only io_lock holders change closed segments");
        assert!(
            replaced.end < state.segments.len(),
            "the active segment is never cleaned"
        );
        let segment = Segment {
            base_offset: first,
            next_offset: end,
            size_bytes: written.size_bytes,
            max_timestamp: written.max_timestamp,
            max_timestamp_offset: written.max_timestamp_offset,
            first_append_ms: None,
            index: std::mem::replace(&mut written.index, SegmentIndex::new(1)),
            index_loaded: true,
            files: Some(files),
            closed_sizes: None,
            // The cleaned log file was made durable before the swap.
            checkpointed: true,
        };
        let old: Vec<Segment> = state.segments.splice(replaced, [segment]).collect();
        state.cache_drop_before(end);
        drop(state);
        for segment in &old {
            open_files::forget(self.id, segment.base_offset);
        }
        // The pass's snapshots still hold the old files; they are freed with the pass.
        drop(old);
        open_files::touch(self.id, first, &self.me);
        self.write_checkpoint_from_state()?;
        Ok(GroupResult::Done(written, 1))
    }
}

/// The file steps of a swap (see the module comment); returns the new segment's files.
async fn replace_files(
    dir: &Path,
    group: &[SegmentSnapshot],
    written: &mut CleanedGroup,
    cleaned_path: &Path,
) -> Result<SegmentFiles, StorageError> {
    let first = group[0].base_offset;
    let end = group[group.len() - 1].next_offset;
    let swap_path = compaction_temp_path(dir, first, end, SWAP_EXTENSION);
    std::fs::rename(cleaned_path, &swap_path)?;
    sync_directory(dir)?;
    for (index, segment) in group.iter().enumerate() {
        remove_if_exists(&segment_path(
            dir,
            segment.base_offset,
            OFFSET_INDEX_EXTENSION,
        ))?;
        remove_if_exists(&segment_path(
            dir,
            segment.base_offset,
            TIME_INDEX_EXTENSION,
        ))?;
        if index > 0 {
            remove_if_exists(&segment_path(dir, segment.base_offset, LOG_EXTENSION))?;
        }
    }
    std::fs::rename(&swap_path, segment_path(dir, first, LOG_EXTENSION))?;
    sync_directory(dir)?;
    let files = SegmentFiles::open(dir, first, false).await?;
    if files.log.size_bytes() != written.size_bytes {
        return Err(StorageError::Corrupt(format!(
            "cleaned segment {first} has {} bytes, {} written",
            files.log.size_bytes(),
            written.size_bytes
        )));
    }
    let (offsets, times, count) = written.index.encode_unpersisted();
    files.offset_index.append(&[Bytes::from(offsets)]).await?;
    files.time_index.append(&[Bytes::from(times)]).await?;
    files.offset_index.trim_padding().await?;
    files.time_index.trim_padding().await?;
    written.index.set_persisted(count);
    Ok(files)
}

#[cfg(test)]
impl FileLog {
    /// (base offset, next offset) of every segment, the active one last.
    pub(crate) fn segment_ranges(&self) -> Vec<(i64, i64)> {
        let state = self.state.borrow();
        state
            .segments
            .iter()
            .map(|segment| (segment.base_offset, segment.next_offset))
            .collect()
    }
}
