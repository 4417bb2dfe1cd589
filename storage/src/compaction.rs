//! Log compaction rules (Kafka's `cleanup.policy=compact`), independent of any engine: the
//! key map built over a log's dirty section, and the decision for one batch of a segment being
//! cleaned. The file engine's cleaner pass (`log_cleaner.rs`) reads segments, applies these
//! rules and swaps the cleaned segment in.
//!
//! The rules, as Kafka's LogCleaner applies them:
//! - The key map holds, for every key of the dirty section `[first_dirty, map_end)`, the offset
//!   of its latest record there. A record below `map_end` is removed when the map has a later
//!   offset for its key; the section below `first_dirty` already holds one record per key.
//!   Records at or after `map_end` are never touched.
//! - Records without a key are removed (Kafka counts them as invalid in a compacted log).
//! - Tombstones (null value) that survive get a delete horizon, `now + delete.retention.ms`,
//!   stamped into their batch (KIP-534: attribute bit 6, `base_timestamp` = horizon, record
//!   timestamp deltas re-encoded so every record keeps its timestamp). Once a later pass runs
//!   past the horizon, the tombstones of that batch are removed. A tombstone gets its horizon
//!   only in a pass where it is the latest record of its key, so every older record of that
//!   key is gone before the tombstone can go.
//! - A thinned batch keeps its base offset, last offset delta, producer id, epoch, base
//!   sequence and max timestamp; only records count, length and CRC change, so offsets stay
//!   monotonic and idempotent-producer state stays derivable. A batch left with no records is
//!   dropped, unless it ends the cleaned group (which keeps the segment's end offset, hence
//!   the log end across restarts) or is the last batch of a producer the log still tracks
//!   (Kafka keeps those too): then it stays as an empty batch.
//! - Control and transactional batches, and batches whose records cannot be read (corrupt, an
//!   unknown codec, or decompressing past `COMPACTION_DECOMPRESSED_BYTES_MAX`) are opaque:
//!   kept whole, their keys never entered in the map, so they cause no removal either.
//!
//! Concurrency contract: plain data and pure functions; the cleaner owns one `KeyMap` at a
//! time per shard.

use crate::batch::BatchHeader;
use crate::constants::KEY_MAP_ENTRY_OVERHEAD_BYTES;
use crate::records::{build_batch, parse_records, records_section, RecordView};
use std::borrow::Cow;
use std::collections::HashMap;

/// Key -> offset of its latest record in the dirty section, bounded by bytes.
pub(crate) struct KeyMap {
    latest: HashMap<Box<[u8]>, i64>,
    bytes: usize,
    bytes_max: usize,
}

impl KeyMap {
    pub(crate) fn new(bytes_max: usize) -> KeyMap {
        KeyMap {
            latest: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    fn entry_bytes(key: &[u8]) -> usize {
        key.len() + KEY_MAP_ENTRY_OVERHEAD_BYTES
    }

    /// Enters the keys of one batch, all or none: false (map unchanged) when they might not
    /// fit. `keys` are (key, offset) in offset order.
    pub(crate) fn add_batch(&mut self, keys: &[(&[u8], i64)]) -> bool {
        let needed: usize = keys
            .iter()
            .filter(|(key, _)| !self.latest.contains_key(*key))
            .map(|(key, _)| KeyMap::entry_bytes(key))
            .sum();
        if self.bytes + needed > self.bytes_max {
            return false;
        }
        for (key, offset) in keys {
            match self.latest.get_mut(*key) {
                Some(latest) => {
                    assert!(*latest < *offset, "keys enter the map in offset order");
                    *latest = *offset;
                }
                None => {
                    self.bytes += KeyMap::entry_bytes(key);
                    self.latest.insert(Box::from(*key), *offset);
                }
            }
        }
        assert!(self.bytes <= self.bytes_max);
        true
    }

    pub(crate) fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(key).copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.latest.len()
    }
}

/// The decompressed records section of a batch the cleaner may look into, or None for an
/// opaque batch (see the module comment).
fn open_batch<'a>(batch: &'a [u8], header: &BatchHeader) -> Option<Cow<'a, [u8]>> {
    if header.is_control() || header.is_transactional() {
        return None;
    }
    records_section(batch, header).ok()
}

/// The records of an opened batch, or None when they do not parse (opaque).
fn readable_records<'a>(
    section: &'a Option<Cow<'_, [u8]>>,
    header: &BatchHeader,
) -> Option<Vec<RecordView<'a>>> {
    parse_records(section.as_deref()?, header).ok()
}

/// (key, offset) of every keyed record of a batch, for the key map; empty for opaque batches.
pub(crate) fn batch_keys(batch: &[u8], header: &BatchHeader) -> Vec<(Vec<u8>, i64)> {
    let section = open_batch(batch, header);
    let Some(records) = readable_records(&section, header) else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|record| {
            let key = record.key?;
            Some((
                key.to_vec(),
                header.base_offset + i64::from(record.offset_delta),
            ))
        })
        .collect()
}

/// What one pass knows when it decides about a batch.
pub(crate) struct CleanRules<'a> {
    pub(crate) map: &'a KeyMap,
    pub(crate) map_end: i64,
    pub(crate) now_ms: i64,
    pub(crate) delete_retention_ms: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BatchAction {
    Keep,
    Drop,
    Rewrite(Vec<u8>),
}

/// The decision for one batch, and how many records it removed.
#[derive(Debug)]
pub(crate) struct CleanedBatch {
    pub(crate) action: BatchAction,
    pub(crate) records_removed: u64,
}

fn keep_whole() -> CleanedBatch {
    CleanedBatch {
        action: BatchAction::Keep,
        records_removed: 0,
    }
}

/// Decides about one stored batch (already CRC-checked). `must_retain`: the batch may lose its
/// records but not disappear (it ends the group or is a producer's last batch).
pub(crate) fn clean_batch(
    batch: &[u8],
    header: &BatchHeader,
    rules: &CleanRules,
    must_retain: bool,
) -> CleanedBatch {
    assert_eq!(batch.len(), header.total_size_bytes());
    if header.base_offset >= rules.map_end {
        return keep_whole();
    }
    let section = open_batch(batch, header);
    let Some(records) = readable_records(&section, header) else {
        return keep_whole();
    };
    let horizon_before = header.delete_horizon_ms();
    let tombstones_expired = horizon_before.is_some_and(|horizon| rules.now_ms >= horizon);
    let kept: Vec<RecordView> = records
        .iter()
        .filter(|record| {
            let Some(key) = record.key else {
                return false;
            };
            let offset = header.base_offset + i64::from(record.offset_delta);
            if rules.map.latest(key).is_some_and(|latest| offset < latest) {
                return false;
            }
            !(record.is_tombstone && tombstones_expired)
        })
        .copied()
        .collect();
    let removed = (records.len() - kept.len()) as u64;
    let has_tombstones = kept.iter().any(|record| record.is_tombstone);
    let horizon_after = has_tombstones.then(|| {
        horizon_before.unwrap_or_else(|| rules.now_ms.saturating_add(rules.delete_retention_ms))
    });
    if kept.is_empty() && !must_retain {
        return CleanedBatch {
            action: BatchAction::Drop,
            records_removed: removed,
        };
    }
    if removed == 0 && horizon_after == horizon_before {
        return keep_whole();
    }
    let base_timestamp = match (horizon_after, horizon_before, kept.first()) {
        (Some(horizon), _, _) => horizon,
        // The old base was a horizon: go back to the first kept record's own timestamp.
        (None, Some(_), Some(first)) => header.base_timestamp.wrapping_add(first.timestamp_delta),
        (None, Some(_), None) => header.max_timestamp,
        (None, None, _) => header.base_timestamp,
    };
    match build_batch(
        header,
        batch,
        &kept,
        base_timestamp,
        horizon_after.is_some(),
    ) {
        Ok(rebuilt) => CleanedBatch {
            action: BatchAction::Rewrite(rebuilt),
            records_removed: removed,
        },
        Err(error) => {
            tracing::warn!(base_offset = header.base_offset, %error, "cannot rebuild batch; kept whole");
            keep_whole()
        }
    }
}
