//! The recovery checkpoint of a partition directory (`RECOVERY_CHECKPOINT_FILE`): one line per
//! sealed segment whose files were fdatasynced after it was fully written (Kafka's recovery
//! point, per segment). Recovery trusts a listed segment whose `.log` still has the recorded
//! inode and size and whose index files are at least the recorded sizes: it neither opens nor
//! scans it, and its index is loaded on first use. Anything else (no checkpoint, a bad CRC,
//! a mismatch, the last `RECOVERY_PRODUCER_SEGMENTS` segments) takes the full recovery path.
//!
//! Written whenever a segment is sealed (by the writer) and at the end of recovery, with a
//! write to a temporary name and a rename; not fdatasynced: a lost or torn checkpoint fails
//! its CRC or lists segments that are still valid (sealed segments never change in place:
//! the cleaner swaps in a new inode, retention deletes files, and truncation removes the
//! checkpoint before it cuts anything).
//!
//! Concurrency contract: called by the log's writer under its IO lock, or by recovery before
//! the log exists; blocking file IO of a few KiB (one line per sealed segment).

use crate::constants::RECOVERY_CHECKPOINT_FILE;
use crate::error::StorageError;
use crate::segment::{FileSizes, Segment};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const HEADER: &str = "rmq-recovery-checkpoint 1";

/// Suffix of the temporary file a checkpoint is written to before its rename.
const TEMP_SUFFIX: &str = ".tmp";

/// One sealed segment as the checkpoint recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CheckpointEntry {
    pub(crate) base_offset: i64,
    pub(crate) next_offset: i64,
    pub(crate) sizes: FileSizes,
    pub(crate) inode: u64,
    pub(crate) max_timestamp: i64,
    pub(crate) max_timestamp_offset: i64,
}

impl CheckpointEntry {
    /// The entry for a sealed segment whose files are closed or open (`sizes` = logical).
    pub(crate) fn for_segment(
        dir: &Path,
        segment: &Segment,
        sizes: FileSizes,
    ) -> Result<CheckpointEntry, StorageError> {
        let path =
            crate::segment::segment_path(dir, segment.base_offset, crate::segment::LOG_EXTENSION);
        Ok(CheckpointEntry {
            base_offset: segment.base_offset,
            next_offset: segment.next_offset,
            sizes,
            inode: std::fs::metadata(path)?.ino(),
            max_timestamp: segment.max_timestamp,
            max_timestamp_offset: segment.max_timestamp_offset,
        })
    }

    fn encode(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "{} {} {} {} {} {} {} {}",
            self.base_offset,
            self.next_offset,
            self.sizes.log,
            self.sizes.offset_index,
            self.sizes.time_index,
            self.inode,
            self.max_timestamp,
            self.max_timestamp_offset
        );
    }

    fn decode(line: &str) -> Option<CheckpointEntry> {
        let fields: Vec<&str> = line.split(' ').collect();
        let [base, next, log, offset_index, time_index, inode, max_ts, max_ts_offset] =
            fields.as_slice()
        else {
            return None;
        };
        let entry = CheckpointEntry {
            base_offset: base.parse().ok()?,
            next_offset: next.parse().ok()?,
            sizes: FileSizes {
                log: log.parse().ok()?,
                offset_index: offset_index.parse().ok()?,
                time_index: time_index.parse().ok()?,
            },
            inode: inode.parse().ok()?,
            max_timestamp: max_ts.parse().ok()?,
            max_timestamp_offset: max_ts_offset.parse().ok()?,
        };
        let sane = entry.base_offset >= 0
            && entry.next_offset > entry.base_offset
            && entry.sizes.log > 0
            && entry.max_timestamp_offset >= entry.base_offset;
        sane.then_some(entry)
    }

    /// True if the segment's files on disk are still the ones recorded.
    pub(crate) fn matches_disk(&self, dir: &Path) -> bool {
        use crate::segment::{
            segment_path, LOG_EXTENSION, OFFSET_INDEX_EXTENSION, TIME_INDEX_EXTENSION,
        };
        let base = self.base_offset;
        let log = std::fs::metadata(segment_path(dir, base, LOG_EXTENSION));
        let offsets = std::fs::metadata(segment_path(dir, base, OFFSET_INDEX_EXTENSION));
        let times = std::fs::metadata(segment_path(dir, base, TIME_INDEX_EXTENSION));
        match (log, offsets, times) {
            (Ok(log), Ok(offsets), Ok(times)) => {
                log.ino() == self.inode
                    && log.len() == self.sizes.log
                    && offsets.len() >= self.sizes.offset_index
                    && times.len() >= self.sizes.time_index
            }
            _ => false,
        }
    }
}

/// The checkpoint's entries by base offset; empty if there is none or it does not verify.
pub(crate) fn read_checkpoint(dir: &Path) -> HashMap<i64, CheckpointEntry> {
    let path = dir.join(RECOVERY_CHECKPOINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), %error, "unreadable recovery checkpoint ignored");
            }
            return HashMap::new();
        }
    };
    match decode(&text) {
        Some(entries) => entries
            .into_iter()
            .map(|entry| (entry.base_offset, entry))
            .collect(),
        None => {
            tracing::warn!(file = %path.display(), "corrupt recovery checkpoint ignored: full recovery");
            HashMap::new()
        }
    }
}

fn decode(text: &str) -> Option<Vec<CheckpointEntry>> {
    let body_end = text.trim_end_matches('\n').rfind('\n')? + 1;
    let (body, crc_line) = text.split_at(body_end);
    let crc: u32 = crc_line.trim_end().strip_prefix("crc ")?.parse().ok()?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != HEADER {
        return None;
    }
    lines.map(CheckpointEntry::decode).collect()
}

/// Replaces the checkpoint with `entries` (sorted by base offset).
pub(crate) fn write_checkpoint(
    dir: &Path,
    entries: &[CheckpointEntry],
) -> Result<(), StorageError> {
    let mut body = String::with_capacity(64 + entries.len() * 96);
    body.push_str(HEADER);
    body.push('\n');
    for entry in entries {
        entry.encode(&mut body);
    }
    let crc = crc32c::crc32c(body.as_bytes());
    body.push_str(&format!("crc {crc}\n"));
    let path = dir.join(RECOVERY_CHECKPOINT_FILE);
    let temp = dir.join(format!("{RECOVERY_CHECKPOINT_FILE}{TEMP_SUFFIX}"));
    std::fs::write(&temp, body)?;
    std::fs::rename(&temp, &path)?;
    Ok(())
}

/// Removes the checkpoint (before a truncation cuts segments it may list).
pub(crate) fn remove_checkpoint(dir: &Path) -> Result<(), StorageError> {
    crate::segment::remove_if_exists(&dir.join(RECOVERY_CHECKPOINT_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let entry = CheckpointEntry {
            base_offset: 100,
            next_offset: 250,
            sizes: FileSizes {
                log: 4096,
                offset_index: 16,
                time_index: 24,
            },
            inode: 77,
            max_timestamp: 1_700_000_000_000,
            max_timestamp_offset: 200,
        };
        let mut body = String::from(HEADER);
        body.push('\n');
        entry.encode(&mut body);
        let text = format!("{body}crc {}\n", crc32c::crc32c(body.as_bytes()));
        assert_eq!(decode(&text), Some(vec![entry]));
        let flipped = text.replacen("250", "251", 1);
        assert_eq!(decode(&flipped), None);
        assert_eq!(decode(&text[..text.len() - 3]), None);
        assert_eq!(decode(""), None);
    }
}
