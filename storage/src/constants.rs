//! Every limit of the storage crate, named once, with the arithmetic that justifies it.
//!
//! Concurrency contract: plain constants, shared freely.

/// Direct-IO alignment: the logical block size we align every DMA write and read to.
/// 4096 covers 512-byte and 4 KiB sector devices alike.
pub const SECTOR_BYTES: u64 = 4096;

/// Largest DMA buffer one write round hands to the kernel: 1 MiB = 256 sectors.
/// A round with more pending bytes is written in several chunks, one in flight at a time,
/// so a shard with P partitions pins at most P * 1 MiB of DMA memory for writes.
pub const WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest DMA read issued by a scan (recovery, timestamp lookup, truncation): 1 MiB.
/// A batch larger than this is read with one read of exactly its size, bounded by
/// `MESSAGE_BYTES_MAX`.
pub const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest single record batch we accept from configuration: 64 MiB.
/// Kafka's default `max.message.bytes` is 1 MiB + 12 = 1_048_588; 64 MiB leaves room for
/// operators who raise it while keeping one read buffer bounded.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest fetch read served from disk in one call: 8 MiB. Kafka's default
/// `fetch.max.bytes` is 50 MiB across partitions and `max.partition.fetch.bytes` is 1 MiB;
/// 8 MiB per partition per call keeps the read buffer bounded. At least one whole batch is
/// always returned, which can exceed this up to `MESSAGE_BYTES_MAX`.
pub const FETCH_READ_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest segment: positions in the offset index are u32, so a segment must stay below
/// 4 GiB; we cap at 2 GiB = 2^31 bytes (Kafka caps `segment.bytes` at i32::MAX).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;

/// Smallest segment accepted from configuration: 4 sectors = 16 KiB (tests roll often).
pub const SEGMENT_BYTES_MIN: u64 = 4 * SECTOR_BYTES;

/// Offsets within a segment are u32 relative to its base offset; we roll well before the
/// relative offset could overflow: i32::MAX keeps the relative offset positive as in Kafka.
pub const SEGMENT_RELATIVE_OFFSET_MAX: i64 = i32::MAX as i64;

/// Bytes appended but not yet written to disk, per partition: 64 MiB = 64 write chunks.
/// Past this, `append` returns `StorageError::Backpressure`; the caller should wait on
/// `wait_written` and retry (Kafka's equivalent is a retriable error to the producer).
pub const PENDING_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Recently appended batches kept in memory for tail reads, per partition: 4 MiB.
/// 1000 partitions on a shard therefore pin at most 4 GB; the broker sizes partitions per
/// shard with that in mind.
pub const READ_CACHE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Offset-index entries kept per segment: 2^20 entries * 8 bytes = 8 MiB offset index plus
/// 2^20 * 12 = 12 MiB time index at most. With the default 4096-byte interval a 1 GiB segment
/// needs 2^30 / 2^12 = 2^18 entries, well inside the bound; past it, lookups scan further.
pub const INDEX_ENTRIES_MAX: usize = 1 << 20;

/// Bytes of one offset-index entry: relative offset u32 + file position u32.
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;

/// Bytes of one time-index entry: timestamp i64 + relative offset u32.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// Batches remembered per producer id for duplicate detection: 5, as Kafka
/// (`max.in.flight.requests.per.connection` <= 5 with idempotence).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Producer ids tracked per partition: 16384 ids * (5 * 24 + ~40) bytes ~= 2.6 MB worst case.
/// Past it the producer with the oldest last write is forgotten and treated as new if it
/// comes back (Kafka expires idle producers after `transactional.id.expiration.ms`).
pub const PRODUCERS_MAX: usize = 16384;

/// Segments per partition: 100_000. A partition with more files than this is refused at
/// open; 100_000 * 1 GiB = 100 TB, well past any disk here.
pub const SEGMENTS_MAX: usize = 100_000;

/// Segments scanned at recovery to rebuild producer state: the active one plus one before it,
/// so a roll right before a crash does not forget producers.
pub const RECOVERY_PRODUCER_SEGMENTS: usize = 2;

/// Offset-index entries the writer lets accumulate before appending them to the index files:
/// 512 entries = 4 KiB of `.index` (one sector) and 6 KiB of `.timeindex`. Index files are
/// not needed for durability (recovery validates every entry and scans the active segments in
/// full), so persisting them in sector-sized batches instead of every write round takes two
/// small direct-IO writes off the acks=all path: measured here, ~170 us of a ~550 us round at
/// 50 MB/s. A rolled segment and `close` persist the rest.
pub const INDEX_PERSIST_ENTRIES: usize = 512;

/// Kafka `flush.messages` value that syncs every record before `wait_durable` resolves.
pub const FLUSH_MESSAGES_STRICT: i64 = 1;

/// Bytes a memory-engine partition keeps when `retention.bytes` is -1: 64 MiB, so a shard
/// with 64 memory partitions holds at most 4 GiB of records.
pub const MEMORY_LOG_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest `retention.bytes` a memory-engine partition honours: 1 GiB. The bound is exceeded
/// by at most the newest batch (<= `MESSAGE_BYTES_MAX`), which is always kept.
pub const MEMORY_LOG_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Pause between retries of a write round that failed with ENOSPC: 100 ms, so a full disk
/// costs at most 10 failed writes per second per partition, and writes resume within
/// 100 ms of space being freed. Appends are refused with `NoSpace` meanwhile.
pub const NO_SPACE_RETRY_MS: u64 = 100;

/// Memory the log cleaner's key map (key -> latest offset) may use per shard: 16 MiB. One
/// compaction runs at a time per shard (`LogManager::compact_all` is sequential), so this is
/// the shard's bound. An entry costs its key bytes plus `KEY_MAP_ENTRY_OVERHEAD_BYTES`: with
/// 100-byte keys (`__consumer_offsets` keys are ~40-120 bytes) one pass deduplicates ~100,000
/// keys; a dirty section with more keys is cleaned up to where the map filled, the rest on the
/// next pass. A 1 MiB batch (`max.message.bytes` default) of the smallest keyed records
/// (8 bytes) needs 131,072 x 65 ~= 8.1 MiB, so any default-sized batch fits an empty map.
pub const COMPACTION_KEY_MAP_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes one key-map entry costs beside its key: the boxed key (16), the offset (8), the hash
/// table slot and control byte (~9, at most half empty: x2) and the allocator's header (~16),
/// rounded up to 64.
pub const KEY_MAP_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Largest records section the cleaner decompresses from one batch: 16 MiB, a 1 MiB batch
/// compressed 16:1. A batch that expands further is kept whole and its keys are not indexed,
/// so it is never thinned and never causes a removal (a safe, documented miss).
pub const COMPACTION_DECOMPRESSED_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Kafka's `delete.retention.ms` default: tombstones stay readable for 1 day after the cleaner
/// first kept them as the latest record of their key.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 3600 * 1000;

/// Kafka's `min.cleanable.dirty.ratio` default: clean once half the closed bytes are dirty.
pub const MIN_CLEANABLE_DIRTY_RATIO_DEFAULT: f64 = 0.5;

const _: () = assert!((WRITE_CHUNK_BYTES as u64).is_multiple_of(SECTOR_BYTES));
const _: () = assert!((SCAN_CHUNK_BYTES as u64).is_multiple_of(SECTOR_BYTES));
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(SECTOR_BYTES));
const _: () = assert!(PENDING_BYTES_MAX >= MESSAGE_BYTES_MAX as u64);
const _: () = assert!(INDEX_PERSIST_ENTRIES <= INDEX_ENTRIES_MAX);
const _: () = assert!(MEMORY_LOG_BYTES_DEFAULT <= MEMORY_LOG_BYTES_MAX);
const _: () = assert!(COMPACTION_KEY_MAP_BYTES_MAX >= 131_072 * (8 + KEY_MAP_ENTRY_OVERHEAD_BYTES));
const _: () = assert!(COMPACTION_DECOMPRESSED_BYTES_MAX <= MESSAGE_BYTES_MAX);

/// Segments with open files per shard: 1024, i.e. 3072 descriptors (log, offset index, time
/// index each). The shard's open-file cache (`open_files.rs`) closes the least recently used
/// idle segments past it. With the 20,000-descriptor hard limit of a small host, 4 shards keep
/// 12,288 for segment files and leave the rest for sockets; one segment's appenders cost ~1 KiB
/// of memory while open, so the cache pins ~1 MiB per shard.
pub const OPEN_SEGMENTS_PER_SHARD_MAX: usize = 1024;

/// Name of the recovery checkpoint in a partition directory: the sealed, fdatasynced segments
/// (base, next offset, sizes, inode, max timestamp). Recovery trusts a listed segment whose
/// log file still has that inode and size, and does not open or scan it.
pub const RECOVERY_CHECKPOINT_FILE: &str = "recovery.checkpoint";
