//! rmq-storage: the partition log. Kafka RecordBatch v2 bytes stored exactly as produced, by
//! one of two engines chosen per topic: `file` (direct-IO segment files with sparse offset and
//! time indexes, optionally compacted by the log cleaner) or `memory` (a byte-bounded ring of
//! batches).
//!
//! Concurrency contract: everything here is single-threaded and `!Send`; each shard owns its
//! `LogManager` and the `PartitionLog`s in it, and must run inside a glommio executor.

pub mod batch;
mod compaction;
pub mod constants;
pub mod error;
mod file_log;
pub mod log;
mod log_cleaner;
pub mod log_manager;
mod log_writer;
mod memory_log;
mod open_files;
mod producer_state;
pub mod reactor_tick;
mod records;
mod recovery;
mod recovery_checkpoint;
mod segment;
mod segment_appender;
mod segment_index;
mod segment_reader;
mod waiters;

#[cfg(test)]
mod compaction_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;

pub use batch::{
    validate_batches, validate_stored_batches, BatchError, BatchHeader, RECORD_BATCH_HEADER_BYTES,
};
pub use error::StorageError;
pub use log::{
    AppendOutcome, CleanupPolicy, CompactionOutcome, LogConfig, LogStats, PartitionLog,
    StorageEngine,
};
pub use log_manager::{probe_direct_io, LogManager};
pub use records::write_varlong;

/// A Kafka offset within one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);
