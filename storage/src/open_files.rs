//! The shard's open-file cache: a bounded LRU of the segments whose three files (log, offset
//! index, time index) are open. A partition keeps no descriptor while idle: segment files are
//! opened on demand (`FileLog::segment_ready`, the writer's first write) and registered here;
//! once more than `OPEN_SEGMENTS_PER_SHARD_MAX` segments are open, the least recently used
//! idle ones are closed explicitly (`DmaFile::close`) and reopened with their remembered
//! logical sizes when next needed.
//!
//! A segment whose files are in use (any task holds a clone: a write, sync or read in flight,
//! a cleaner pass) is never evicted; if every open segment is in use the cache stays over its
//! limit until one is released, so the limit is soft by at most the segments with IO in flight.
//!
//! Concurrency contract: one cache per thread, i.e. per shard executor (thread-local), used
//! only from that executor's tasks. No borrow of the cache or of a log's state is held across
//! an await: victims are taken out of their logs synchronously, then closed.

use crate::constants::OPEN_SEGMENTS_PER_SHARD_MAX;
use crate::file_log::FileLog;
use crate::segment::SegmentFiles;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Weak;

/// (log id, segment base offset).
type Key = (u64, i64);

#[derive(Default)]
struct OpenFileCache {
    next_tick: u64,
    /// Key -> tick of its last use.
    ticks: HashMap<Key, u64>,
    /// Tick -> key and its log, oldest first.
    order: BTreeMap<u64, (Key, Weak<FileLog>)>,
}

thread_local! {
    static CACHE: RefCell<OpenFileCache> = RefCell::new(OpenFileCache::default());
    static NEXT_LOG_ID: Cell<u64> = const { Cell::new(1) };
    static LIMIT: Cell<usize> = const { Cell::new(OPEN_SEGMENTS_PER_SHARD_MAX) };
}

/// Test-only: a smaller limit for this thread's cache, so tests reach it with few logs.
#[cfg(test)]
pub(crate) fn set_limit(limit: usize) {
    LIMIT.with(|cell| cell.set(limit));
}

/// A fresh id for a log opened on this thread (the cache's key).
pub(crate) fn next_log_id() -> u64 {
    NEXT_LOG_ID.with(|next| {
        let id = next.get();
        next.set(id + 1);
        id
    })
}

/// Marks the open segment `(log_id, base)` as just used, adding it if new.
pub(crate) fn touch(log_id: u64, base: i64, log: &Weak<FileLog>) {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let tick = cache.next_tick;
        cache.next_tick += 1;
        if let Some(old) = cache.ticks.insert((log_id, base), tick) {
            cache.order.remove(&old);
        }
        cache.order.insert(tick, ((log_id, base), log.clone()));
    });
}

/// Forgets `(log_id, base)` (its files were closed or removed by their log).
pub(crate) fn forget(log_id: u64, base: i64) {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(tick) = cache.ticks.remove(&(log_id, base)) {
            cache.order.remove(&tick);
        }
    });
}

/// Segments registered as open on this shard.
#[cfg(test)]
pub(crate) fn open_segments() -> usize {
    CACHE.with(|cache| cache.borrow().ticks.len())
}

/// Closes least recently used idle segments until at most `OPEN_SEGMENTS_PER_SHARD_MAX` are
/// open (or only segments in use remain). `OPEN_SEGMENTS_PER_SHARD_MAX` unless a test lowered
/// it.
pub(crate) async fn evict_over_limit() {
    let victims = take_victims(LIMIT.with(Cell::get));
    for files in victims {
        files.close().await;
    }
}

fn take_victims(limit: usize) -> Vec<SegmentFiles> {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let mut victims = Vec::new();
        if cache.ticks.len() <= limit {
            return victims;
        }
        let mut excess = cache.ticks.len() - limit;
        let mut drop_ticks = Vec::new();
        for (tick, (key, log)) in cache.order.iter() {
            if excess == 0 {
                break;
            }
            match log.upgrade().map(|log| log.take_idle_files(key.1)) {
                // Log gone, or the segment no longer has open files: a stale entry.
                None | Some(IdleFiles::NotOpen) => {}
                Some(IdleFiles::InUse) => continue,
                Some(IdleFiles::Taken(files)) => victims.push(files),
            }
            drop_ticks.push((*tick, *key));
            excess -= 1;
        }
        for (tick, key) in drop_ticks {
            cache.order.remove(&tick);
            cache.ticks.remove(&key);
        }
        victims
    })
}

/// What `FileLog::take_idle_files` found.
pub(crate) enum IdleFiles {
    /// The files, taken out of the segment, which now remembers their sizes.
    Taken(SegmentFiles),
    InUse,
    NotOpen,
}
