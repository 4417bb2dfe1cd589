//! One segment of a partition log: `<base_offset:020>.log` with its `.index` and `.timeindex`,
//! plus the in-memory bookkeeping the log needs to append, roll, read and expire it.
//!
//! Concurrency contract: owned by the log's state (`RefCell`); its files are `Rc`s so the
//! writer and readers clone them out and await without holding a borrow. Files are created by
//! the writer on first write (a roll in the synchronous `append` cannot await); existing files
//! are opened on demand (`FileLog::segment_ready`) and closed again by the shard's open-file
//! cache (`open_files.rs`) once they are idle and the cache is over its limit.

use crate::error::StorageError;
use crate::segment_appender::SegmentAppender;
use crate::segment_index::SegmentIndex;
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub(crate) const LOG_EXTENSION: &str = "log";
pub(crate) const OFFSET_INDEX_EXTENSION: &str = "index";
pub(crate) const TIME_INDEX_EXTENSION: &str = "timeindex";

/// A cleaned segment being written; deleted by recovery (the old segments are intact).
pub(crate) const CLEANED_EXTENSION: &str = "cleaned";
/// A cleaned segment complete and durable; recovery finishes its swap.
pub(crate) const SWAP_EXTENSION: &str = "swap";

/// `<dir>/<base_offset:020>.<extension>`.
pub(crate) fn segment_path(dir: &Path, base_offset: i64, extension: &str) -> PathBuf {
    assert!(base_offset >= 0);
    dir.join(format!("{base_offset:020}.{extension}"))
}

/// `<dir>/<first_base:020>.<end_offset:020>.<extension>`: the cleaned replacement of the
/// segments holding offsets `[first_base, end_offset)`.
pub(crate) fn compaction_temp_path(
    dir: &Path,
    first_base: i64,
    end_offset: i64,
    extension: &str,
) -> PathBuf {
    assert!(0 <= first_base && first_base < end_offset);
    dir.join(format!("{first_base:020}.{end_offset:020}.{extension}"))
}

/// The `[first_base, end_offset)` a compaction temp file's name gives, if it is one.
pub(crate) fn parse_compaction_temp_name(path: &Path) -> Option<(i64, i64)> {
    let stem = path.file_stem()?.to_str()?;
    let (first, end) = stem.split_once('.')?;
    let parse = |text: &str| {
        let value = text.parse::<i64>().ok()?;
        (text.len() == 20 && value >= 0).then_some(value)
    };
    let (first, end) = (parse(first)?, parse(end)?);
    (first < end).then_some((first, end))
}

/// Makes directory entries (a new segment, a rename) durable. Blocking, but rare: once per
/// roll and twice per cleaned segment group.
pub(crate) fn sync_directory(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Removes a file; one that is already gone is fine.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// Logical sizes (padding excluded) of a segment's three files, remembered while they are
/// closed so a reopen neither trusts the file size (which may include zero padding) nor
/// needs a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileSizes {
    pub(crate) log: u64,
    pub(crate) offset_index: u64,
    pub(crate) time_index: u64,
}

/// Removes the three files of a segment whose files are not open.
pub(crate) fn remove_segment_paths(dir: &Path, base_offset: i64) -> Result<(), StorageError> {
    for extension in [LOG_EXTENSION, OFFSET_INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
        remove_if_exists(&segment_path(dir, base_offset, extension))?;
    }
    Ok(())
}

/// The three open files of a segment.
#[derive(Clone)]
pub(crate) struct SegmentFiles {
    pub(crate) log: Rc<SegmentAppender>,
    pub(crate) offset_index: Rc<SegmentAppender>,
    pub(crate) time_index: Rc<SegmentAppender>,
}

impl SegmentFiles {
    /// Opens the three files; `fresh` truncates whatever was there.
    pub(crate) async fn open(
        dir: &Path,
        base_offset: i64,
        fresh: bool,
    ) -> Result<SegmentFiles, StorageError> {
        let log =
            SegmentAppender::open(&segment_path(dir, base_offset, LOG_EXTENSION), fresh).await?;
        let offset_index = SegmentAppender::open(
            &segment_path(dir, base_offset, OFFSET_INDEX_EXTENSION),
            fresh,
        )
        .await?;
        let time_index =
            SegmentAppender::open(&segment_path(dir, base_offset, TIME_INDEX_EXTENSION), fresh)
                .await?;
        Ok(SegmentFiles {
            log: Rc::new(log),
            offset_index: Rc::new(offset_index),
            time_index: Rc::new(time_index),
        })
    }

    /// Reopens the files of a segment known to exist with these logical sizes (after an
    /// eviction from the open-file cache, or a recovery that closed them).
    pub(crate) async fn open_existing(
        dir: &Path,
        base_offset: i64,
        sizes: FileSizes,
    ) -> Result<SegmentFiles, StorageError> {
        let log = SegmentAppender::open_existing(
            &segment_path(dir, base_offset, LOG_EXTENSION),
            sizes.log,
        )
        .await?;
        let offset_index = match SegmentAppender::open_existing(
            &segment_path(dir, base_offset, OFFSET_INDEX_EXTENSION),
            sizes.offset_index,
        )
        .await
        {
            Ok(file) => file,
            Err(error) => {
                log.close().await;
                return Err(error);
            }
        };
        let time_index = match SegmentAppender::open_existing(
            &segment_path(dir, base_offset, TIME_INDEX_EXTENSION),
            sizes.time_index,
        )
        .await
        {
            Ok(file) => file,
            Err(error) => {
                log.close().await;
                offset_index.close().await;
                return Err(error);
            }
        };
        Ok(SegmentFiles {
            log: Rc::new(log),
            offset_index: Rc::new(offset_index),
            time_index: Rc::new(time_index),
        })
    }

    pub(crate) fn sizes(&self) -> FileSizes {
        FileSizes {
            log: self.log.size_bytes(),
            offset_index: self.offset_index.size_bytes(),
            time_index: self.time_index.size_bytes(),
        }
    }

    /// True while any task holds a clone of these files or of one of their `DmaFile`s: a
    /// write, sync, read or cleaner pass may be in flight, so the files must stay open.
    pub(crate) fn in_use(&self) -> bool {
        [&self.log, &self.offset_index, &self.time_index]
            .iter()
            .any(|appender| Rc::strong_count(appender) > 1 || appender.file_in_use())
    }

    /// Closes the three files explicitly (glommio frees a dropped `DmaFile`'s descriptor only
    /// when its executor gets around to it). A file still shared elsewhere is just dropped:
    /// its last holder frees it.
    pub(crate) async fn close(self) {
        for appender in [self.log, self.offset_index, self.time_index] {
            if let Ok(appender) = Rc::try_unwrap(appender) {
                appender.close().await;
            }
        }
    }

    /// Cuts padding and makes all three files durable (at close).
    pub(crate) async fn finish(&self) -> Result<(), StorageError> {
        self.log.finish().await?;
        self.offset_index.finish().await?;
        self.time_index.finish().await
    }

    pub(crate) async fn remove(&self) -> Result<(), StorageError> {
        self.log.remove().await?;
        self.offset_index.remove().await?;
        self.time_index.remove().await
    }
}

pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    /// One past the last offset appended to this segment (pending writes included).
    pub(crate) next_offset: i64,
    /// Bytes appended to this segment (pending writes included).
    pub(crate) size_bytes: u64,
    /// Largest batch max_timestamp in the segment, -1 if none.
    pub(crate) max_timestamp: i64,
    /// Offset of the batch holding `max_timestamp` (its base offset; approximate for segments
    /// recovered from the index without a full scan).
    pub(crate) max_timestamp_offset: i64,
    /// Wall time of the first append since open, for `segment_ms` rolls.
    pub(crate) first_append_ms: Option<i64>,
    pub(crate) index: SegmentIndex,
    /// False while `index` was not read from the index files yet (a sealed segment trusted
    /// from the recovery checkpoint); `FileLog::segment_ready` loads it on first use.
    pub(crate) index_loaded: bool,
    /// The open files, if open. At most one of `files` and `closed_sizes` is set; neither
    /// means the files were never created (a segment with no write yet).
    pub(crate) files: Option<SegmentFiles>,
    /// The files exist but are closed (evicted from the open-file cache, or not opened since
    /// recovery), with these logical sizes.
    pub(crate) closed_sizes: Option<FileSizes>,
    /// Sealed, fully written and fdatasynced, so the recovery checkpoint may list it.
    pub(crate) checkpointed: bool,
}

impl Segment {
    pub(crate) fn new(base_offset: i64, index_interval_bytes: u32) -> Segment {
        assert!(base_offset >= 0);
        Segment {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            max_timestamp: -1,
            max_timestamp_offset: base_offset,
            first_append_ms: None,
            index: SegmentIndex::new(index_interval_bytes),
            index_loaded: true,
            files: None,
            closed_sizes: None,
            checkpointed: false,
        }
    }

    /// True if the segment's files exist on disk (open or not).
    pub(crate) fn has_files(&self) -> bool {
        self.files.is_some() || self.closed_sizes.is_some()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// Position to start scanning for `offset` (from the sparse index).
    pub(crate) fn position_for(&self, offset: i64) -> u64 {
        let relative = offset
            .saturating_sub(self.base_offset)
            .clamp(0, i64::from(u32::MAX));
        self.index
            .floor(relative as u32)
            .map_or(0, |entry| u64::from(entry.position))
    }
}
