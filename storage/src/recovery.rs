//! Recovery at open: rebuilds the in-memory state of a partition log from its directory.
//!
//! For each segment: trust the sparse index up to its last entry that points at a valid batch
//! (right offset, right CRC), then scan forward validating each batch's length, offset
//! continuity and CRC32C. The first torn or invalid batch, or the zero padding left by aligned
//! writes, ends the segment: the file is cut there and a warning names file, position and
//! bytes. A segment cut short that is not the last makes every later segment unreachable, so
//! they are deleted. The last `RECOVERY_PRODUCER_SEGMENTS` segments are scanned in full to
//! rebuild idempotent-producer state and exact timestamps. Batches follow each other with
//! increasing offsets; gaps are where the log cleaner removed batches.
//!
//! First, an interrupted cleaner swap is settled (`log_cleaner.rs`): a `.cleaned` file is
//! deleted (the segments it would replace are intact); a `.swap` file is complete and durable,
//! so the segments it replaces are deleted and it is renamed into place.
//!
//! Concurrency contract: runs before the log exists (or under its IO lock during truncation);
//! owns every file it opens until it hands the segments over.

use crate::constants::{
    OFFSET_INDEX_ENTRY_BYTES, RECOVERY_PRODUCER_SEGMENTS, SECTOR_BYTES, SEGMENTS_MAX,
    TIME_INDEX_ENTRY_BYTES,
};
use crate::error::StorageError;
use crate::log::LogConfig;
use crate::log_writer::checkpoint_entries;
use crate::producer_state::ProducerStateManager;
use crate::recovery_checkpoint::{read_checkpoint, write_checkpoint, CheckpointEntry};
use crate::segment::{
    parse_compaction_temp_name, remove_if_exists, segment_path, sync_directory, Segment,
    SegmentFiles, CLEANED_EXTENSION, LOG_EXTENSION, OFFSET_INDEX_EXTENSION, SWAP_EXTENSION,
    TIME_INDEX_EXTENSION,
};
use crate::segment_appender::SegmentAppender;
use crate::segment_index::{decode_entries, IndexEntry, SegmentIndex};
use crate::segment_reader::{BaseOffsetCheck, BatchScanner, ScanStep};
use bytes::Bytes;
use std::path::Path;

pub(crate) struct RecoveredLog {
    pub(crate) segments: Vec<Segment>,
    pub(crate) producers: ProducerStateManager,
    pub(crate) next_offset: i64,
    pub(crate) max_timestamp: Option<(i64, i64)>,
}

/// Base offsets of the `.log` files in `dir`, sorted. Other files are ignored.
fn list_segment_bases(dir: &Path) -> Result<Vec<i64>, StorageError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(LOG_EXTENSION) {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        match stem.parse::<i64>() {
            Ok(base) if base >= 0 && stem.len() == 20 => bases.push(base),
            _ => tracing::warn!(file = %path.display(), "ignoring file with a non-segment name"),
        }
        if bases.len() > SEGMENTS_MAX {
            return Err(StorageError::Corrupt(format!(
                "{}: more than {SEGMENTS_MAX} segments",
                dir.display()
            )));
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Settles a cleaner swap a crash interrupted (see the module comment).
fn finish_interrupted_compaction(dir: &Path) -> Result<(), StorageError> {
    let mut swaps = Vec::new();
    let mut changed = false;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some(CLEANED_EXTENSION) => {
                tracing::warn!(file = %path.display(), "deleting an unfinished cleaned segment");
                remove_if_exists(&path)?;
                changed = true;
            }
            Some(SWAP_EXTENSION) => match parse_compaction_temp_name(&path) {
                Some((first, end)) => swaps.push((first, end, path)),
                None => {
                    tracing::warn!(file = %path.display(), "ignoring a swap file with a bad name")
                }
            },
            _ => {}
        }
    }
    swaps.sort();
    for (first, end, swap) in swaps {
        for base in list_segment_bases(dir)?
            .into_iter()
            .filter(|base| (first..end).contains(base))
        {
            for extension in [LOG_EXTENSION, OFFSET_INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
                if base != first || extension != LOG_EXTENSION {
                    remove_if_exists(&segment_path(dir, base, extension))?;
                }
            }
        }
        remove_if_exists(&segment_path(dir, first, OFFSET_INDEX_EXTENSION))?;
        remove_if_exists(&segment_path(dir, first, TIME_INDEX_EXTENSION))?;
        std::fs::rename(&swap, segment_path(dir, first, LOG_EXTENSION))?;
        tracing::warn!(file = %swap.display(), first, end, "finished an interrupted cleaner swap");
        changed = true;
    }
    if changed {
        sync_directory(dir)?;
    }
    Ok(())
}

/// A sealed segment as the checkpoint recorded it; its files stay closed and its index is
/// loaded on first use.
fn trusted_segment(entry: &CheckpointEntry, interval_bytes: u32) -> Segment {
    let mut segment = Segment::new(entry.base_offset, interval_bytes);
    segment.next_offset = entry.next_offset;
    segment.size_bytes = entry.sizes.log;
    segment.max_timestamp = entry.max_timestamp;
    segment.max_timestamp_offset = entry.max_timestamp_offset;
    segment.index_loaded = false;
    segment.closed_sizes = Some(entry.sizes);
    segment.checkpointed = true;
    segment
}

pub(crate) async fn recover_log(
    dir: &Path,
    config: &LogConfig,
) -> Result<RecoveredLog, StorageError> {
    finish_interrupted_compaction(dir)?;
    let bases = list_segment_bases(dir)?;
    let checkpoint = read_checkpoint(dir);
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
    let mut producers = ProducerStateManager::default();
    let mut checkpoint_changed = false;
    for (index, base) in bases.iter().copied().enumerate() {
        if let Some(previous) = segments.last() {
            if base < previous.next_offset {
                return Err(StorageError::Corrupt(format!(
                    "{}: segment {base} overlaps the previous one ending at {}",
                    dir.display(),
                    previous.next_offset
                )));
            }
        }
        let full_scan = index + RECOVERY_PRODUCER_SEGMENTS >= bases.len();
        let next_base = bases.get(index + 1).copied();
        let trusted = checkpoint.get(&base).filter(|entry| {
            !full_scan
                && next_base.is_none_or(|next| entry.next_offset <= next)
                && entry.matches_disk(dir)
        });
        if let Some(entry) = trusted {
            segments.push(trusted_segment(entry, config.index_interval_bytes));
            continue;
        }
        checkpoint_changed |= checkpoint.contains_key(&base);
        let (mut segment, cut) = recover_segment(
            dir,
            base,
            config.index_interval_bytes,
            full_scan,
            &mut producers,
        )
        .await?;
        let sealed = !cut && index + 1 < bases.len() && !segment.is_empty();
        if let Some(files) = segment.files.take() {
            let synced = if sealed { files.finish().await } else { Ok(()) };
            segment.closed_sizes = Some(files.sizes());
            files.close().await;
            synced?;
            segment.checkpointed = sealed;
            checkpoint_changed |= sealed;
        }
        segments.push(segment);
        if cut && index + 1 < bases.len() {
            remove_later_segments(dir, &bases[index + 1..]);
            checkpoint_changed = true;
            break;
        }
    }
    checkpoint_changed |= checkpoint.len() != segments.iter().filter(|s| s.checkpointed).count();
    if checkpoint_changed {
        write_checkpoint(dir, &checkpoint_entries(dir, &segments)?)?;
    }
    if segments.is_empty() {
        segments.push(Segment::new(0, config.index_interval_bytes));
    }
    let last = segments.last().map_or(0, |segment| segment.next_offset);
    let max_timestamp = segments
        .iter()
        .filter(|segment| segment.max_timestamp >= 0)
        .max_by_key(|segment| segment.max_timestamp)
        .map(|segment| (segment.max_timestamp_offset, segment.max_timestamp));
    Ok(RecoveredLog {
        segments,
        producers,
        next_offset: last,
        max_timestamp,
    })
}

fn remove_later_segments(dir: &Path, bases: &[i64]) {
    for base in bases {
        for extension in [LOG_EXTENSION, OFFSET_INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
            let path = segment_path(dir, *base, extension);
            tracing::warn!(file = %path.display(), "deleting segment after a torn segment");
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), %error, "could not delete");
            }
        }
    }
}

/// Recovers one segment; returns it and whether its log was torn (cut beyond padding).
async fn recover_segment(
    dir: &Path,
    base: i64,
    interval_bytes: u32,
    full_scan: bool,
    producers: &mut ProducerStateManager,
) -> Result<(Segment, bool), StorageError> {
    let files = SegmentFiles::open(dir, base, false).await?;
    let log_size = files.log.size_bytes();
    let entries = if full_scan {
        Vec::new()
    } else {
        load_index(&files, log_size).await?
    };
    let (kept, start_position) = trusted_prefix(&files, base, &entries, log_size).await?;
    let mut segment = Segment::new(base, interval_bytes);
    segment.index = SegmentIndex::from_entries(interval_bytes, entries[..kept].to_vec());
    if let Some(entry) = kept.checked_sub(1).map(|k| entries[k]) {
        segment.next_offset = base + i64::from(entry.relative_offset);
        segment.max_timestamp = entry.max_timestamp_before;
    }
    let producers = if full_scan { Some(producers) } else { None };
    let cut = scan_segment(&files, &mut segment, start_position, producers).await?;
    segment.size_bytes = files.log.size_bytes();
    rewrite_index(&files, &mut segment).await?;
    segment.files = Some(files);
    Ok((segment, cut))
}

async fn read_whole(appender: &SegmentAppender, max_bytes: usize) -> Result<Vec<u8>, StorageError> {
    let len = (appender.size_bytes() as usize).min(max_bytes);
    if len == 0 {
        return Ok(Vec::new());
    }
    Ok(appender.file().read_at(0, len).await?.to_vec())
}

async fn load_index(files: &SegmentFiles, log_size: u64) -> Result<Vec<IndexEntry>, StorageError> {
    use crate::constants::INDEX_ENTRIES_MAX;
    let offsets = read_whole(
        &files.offset_index,
        INDEX_ENTRIES_MAX * OFFSET_INDEX_ENTRY_BYTES,
    )
    .await?;
    let times = read_whole(
        &files.time_index,
        INDEX_ENTRIES_MAX * TIME_INDEX_ENTRY_BYTES,
    )
    .await?;
    Ok(decode_entries(&offsets, &times, log_size))
}

/// How many index entries to keep, and where scanning starts: the last entry whose batch is
/// valid, walking back from the end of the index.
async fn trusted_prefix(
    files: &SegmentFiles,
    base: i64,
    entries: &[IndexEntry],
    log_size: u64,
) -> Result<(usize, u64), StorageError> {
    for (index, entry) in entries.iter().enumerate().rev() {
        let position = u64::from(entry.position);
        let mut scanner = BatchScanner::new(files.log.file(), position, log_size);
        let expected = base + i64::from(entry.relative_offset);
        if let ScanStep::Batch { .. } = scanner
            .next(BaseOffsetCheck::Exactly(expected), true)
            .await?
        {
            return Ok((index + 1, position));
        }
    }
    Ok((0, 0))
}

/// Scans from `start_position`, extending the index, timestamps and (for full scans) producer
/// state; cuts the log at the first invalid batch. Returns whether the cut removed more than
/// zero padding.
async fn scan_segment(
    files: &SegmentFiles,
    segment: &mut Segment,
    start_position: u64,
    mut producers: Option<&mut ProducerStateManager>,
) -> Result<bool, StorageError> {
    let log_size = files.log.size_bytes();
    let mut scanner = BatchScanner::new(files.log.file(), start_position, log_size);
    let (valid_end, reason) = loop {
        match scanner
            .next(BaseOffsetCheck::AtLeast(segment.next_offset), true)
            .await?
        {
            ScanStep::Batch { position, header } => {
                let relative = header.last_offset() - segment.base_offset;
                if position > u64::from(u32::MAX) || relative > i64::from(u32::MAX) {
                    break (
                        position,
                        "segment exceeds u32 positions or offsets".to_string(),
                    );
                }
                let base_relative = (header.base_offset - segment.base_offset) as u32;
                segment
                    .index
                    .maybe_add(base_relative, position as u32, segment.max_timestamp);
                if header.max_timestamp > segment.max_timestamp {
                    segment.max_timestamp = header.max_timestamp;
                    segment.max_timestamp_offset = header.base_offset;
                }
                if let Some(producers) = producers.as_deref_mut() {
                    producers.record(&header);
                }
                segment.next_offset = header.last_offset() + 1;
            }
            ScanStep::End => break (log_size, String::new()),
            ScanStep::Invalid { position, reason } => break (position, reason),
        }
    };
    if valid_end == log_size {
        return Ok(false);
    }
    let padding_only = is_zero_padding(files, valid_end, log_size).await?;
    tracing::warn!(
        file = %files.log.path().display(),
        position = valid_end,
        bytes = log_size - valid_end,
        reason = %reason,
        padding_only,
        "truncating segment tail"
    );
    files.log.truncate(valid_end).await?;
    Ok(!padding_only)
}

/// True if `[from, end)` is the zero padding of an aligned write: shorter than a sector,
/// ending on a sector boundary, all zeros. Anything else is a torn or corrupt write.
async fn is_zero_padding(files: &SegmentFiles, from: u64, end: u64) -> Result<bool, StorageError> {
    if end - from >= SECTOR_BYTES || !end.is_multiple_of(SECTOR_BYTES) {
        return Ok(false);
    }
    let rest = files
        .log
        .file()
        .read_at(from, (end - from) as usize)
        .await?;
    Ok(rest.len() as u64 == end - from && rest.iter().all(|byte| *byte == 0))
}

/// Cuts both index files to the entries recovery trusted, then appends the rebuilt ones.
async fn rewrite_index(files: &SegmentFiles, segment: &mut Segment) -> Result<(), StorageError> {
    let persisted = segment.index.persisted_count();
    let offset_bytes = (persisted * OFFSET_INDEX_ENTRY_BYTES) as u64;
    let time_bytes = (persisted * TIME_INDEX_ENTRY_BYTES) as u64;
    if files.offset_index.size_bytes() != offset_bytes {
        files.offset_index.truncate(offset_bytes).await?;
    }
    if files.time_index.size_bytes() != time_bytes {
        files.time_index.truncate(time_bytes).await?;
    }
    let (offsets, times, count) = segment.index.encode_unpersisted();
    if count > persisted {
        files.offset_index.append(&[Bytes::from(offsets)]).await?;
        files.time_index.append(&[Bytes::from(times)]).await?;
        files.offset_index.trim_padding().await?;
        files.time_index.trim_padding().await?;
        segment.index.set_persisted(count);
    }
    Ok(())
}
