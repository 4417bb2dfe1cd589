//! Sparse offset and time indexes of one segment, kept in memory and mirrored to the
//! `.index` and `.timeindex` files.
//!
//! One entry is added before a batch whose position is at least `index_interval_bytes` past
//! the previous entry. Entry k records, for the batch starting at `position`:
//! `.index`: relative offset u32 + position u32 (big endian);
//! `.timeindex`: the largest batch max_timestamp seen *before* `position` (i64) + the same
//! relative offset u32. So if that timestamp is below a target, no earlier batch can match and
//! a timestamp lookup may start scanning at `position`.
//! Entries are strictly increasing in relative offset and position (> 0), so the zero padding
//! left by aligned writes never decodes as an entry.
//!
//! Concurrency contract: plain data owned by its segment inside the log's state; the writer
//! copies encoded entries out before awaiting a write.

use crate::constants::{INDEX_ENTRIES_MAX, OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
    pub(crate) max_timestamp_before: i64,
}

#[derive(Debug)]
pub(crate) struct SegmentIndex {
    entries: Vec<IndexEntry>,
    /// Entries already handed to the index files.
    entries_persisted: usize,
    interval_bytes: u32,
}

impl SegmentIndex {
    pub(crate) fn new(interval_bytes: u32) -> SegmentIndex {
        SegmentIndex {
            entries: Vec::new(),
            entries_persisted: 0,
            interval_bytes: interval_bytes.max(1),
        }
    }

    #[cfg(test)]
    pub(crate) fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub(crate) fn set_interval_bytes(&mut self, interval_bytes: u32) {
        self.interval_bytes = interval_bytes.max(1);
    }

    /// Called before appending a batch at `position`; adds an entry if the interval passed.
    pub(crate) fn maybe_add(
        &mut self,
        relative_offset: u32,
        position: u32,
        max_timestamp_before: i64,
    ) {
        let last_position = self.entries.last().map_or(0, |entry| entry.position);
        if position == 0 || position - last_position < self.interval_bytes {
            return;
        }
        if self.entries.len() >= INDEX_ENTRIES_MAX {
            return;
        }
        if let Some(last) = self.entries.last() {
            assert!(last.relative_offset < relative_offset && last.position < position);
        }
        self.entries.push(IndexEntry {
            relative_offset,
            position,
            max_timestamp_before,
        });
    }

    /// The entry with the largest relative offset <= `relative_offset`, if any.
    pub(crate) fn floor(&self, relative_offset: u32) -> Option<IndexEntry> {
        let after = self
            .entries
            .partition_point(|entry| entry.relative_offset <= relative_offset);
        after.checked_sub(1).map(|index| self.entries[index])
    }

    /// Position to start scanning for the first batch with max_timestamp >= `timestamp_ms`.
    pub(crate) fn timestamp_floor_position(&self, timestamp_ms: i64) -> u32 {
        let after = self
            .entries
            .partition_point(|entry| entry.max_timestamp_before < timestamp_ms);
        after
            .checked_sub(1)
            .map_or(0, |index| self.entries[index].position)
    }

    pub(crate) fn set_persisted(&mut self, count: usize) {
        assert!(count <= self.entries.len());
        self.entries_persisted = count;
    }

    pub(crate) fn unpersisted_count(&self) -> usize {
        self.entries.len() - self.entries_persisted
    }

    pub(crate) fn persisted_count(&self) -> usize {
        self.entries_persisted
    }

    /// Encodes the entries not yet persisted: (offset index bytes, time index bytes, count).
    pub(crate) fn encode_unpersisted(&self) -> (Vec<u8>, Vec<u8>, usize) {
        let new_entries = &self.entries[self.entries_persisted..];
        let mut offsets = Vec::with_capacity(new_entries.len() * OFFSET_INDEX_ENTRY_BYTES);
        let mut times = Vec::with_capacity(new_entries.len() * TIME_INDEX_ENTRY_BYTES);
        for entry in new_entries {
            offsets.extend_from_slice(&entry.relative_offset.to_be_bytes());
            offsets.extend_from_slice(&entry.position.to_be_bytes());
            times.extend_from_slice(&entry.max_timestamp_before.to_be_bytes());
            times.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        (offsets, times, self.entries.len())
    }
}

/// Decodes the longest valid prefix of both index files. Untrusted input: stops at the first
/// entry that is zero, not increasing, beyond `log_size_bytes`, or disagrees between files.
pub(crate) fn decode_entries(
    offset_bytes: &[u8],
    time_bytes: &[u8],
    log_size_bytes: u64,
) -> Vec<IndexEntry> {
    let count = (offset_bytes.len() / OFFSET_INDEX_ENTRY_BYTES)
        .min(time_bytes.len() / TIME_INDEX_ENTRY_BYTES)
        .min(INDEX_ENTRIES_MAX);
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(count);
    for index in 0..count {
        let o = &offset_bytes[index * OFFSET_INDEX_ENTRY_BYTES..];
        let t = &time_bytes[index * TIME_INDEX_ENTRY_BYTES..];
        let relative_offset = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
        let position = u32::from_be_bytes([o[4], o[5], o[6], o[7]]);
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&t[..8]);
        let max_timestamp_before = i64::from_be_bytes(timestamp);
        let time_relative_offset = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        let increasing = entries.last().is_none_or(|last| {
            last.relative_offset < relative_offset
                && last.position < position
                && last.max_timestamp_before <= max_timestamp_before
        });
        let valid = relative_offset > 0
            && position > 0
            && u64::from(position) < log_size_bytes
            && time_relative_offset == relative_offset
            && increasing;
        if !valid {
            break;
        }
        entries.push(IndexEntry {
            relative_offset,
            position,
            max_timestamp_before,
        });
    }
    entries
}

impl SegmentIndex {
    pub(crate) fn from_entries(interval_bytes: u32, entries: Vec<IndexEntry>) -> SegmentIndex {
        let entries_persisted = entries.len();
        SegmentIndex {
            entries,
            entries_persisted,
            interval_bytes: interval_bytes.max(1),
        }
    }
}
