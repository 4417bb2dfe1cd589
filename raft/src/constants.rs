//! Every limit of the Raft crate, named once, with its arithmetic.

use std::time::Duration;

/// glommio IO memory of a test runtime's executor (`GlommioRuntime::new`): 8 MiB, as a broker
/// shard, so tests never lock more memory than production does.
pub const RUNTIME_IO_MEMORY_BYTES: usize = 8 * 1024 * 1024;

/// Longest single timer: 30 days. Longer sleeps (openraft passes `Duration::MAX`-like values
/// for "never") are clamped so `Instant::now() + duration` cannot overflow; a caller that
/// really waits longer simply re-arms.
pub const SLEEP_DURATION_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Bytes asked of the partition log per read while decoding entries (and at open, while
/// rebuilding the entry index): 1 MiB, the storage write chunk; a read returns at least one
/// whole batch even if it is larger.
pub const LOG_READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest entry payload the log store accepts: the storage limit on one batch (64 MiB).
pub const ENTRY_BYTES_MAX: usize = rmq_storage::constants::MESSAGE_BYTES_MAX;

/// Members (voters and learners) a membership entry may name: 1,024, far above any partition's
/// replication factor or controller quorum; bounds decoding of untrusted bytes.
pub const MEMBERSHIP_NODES_MAX: usize = 1024;

/// Configs in a joint membership: openraft uses at most 2 (old and new).
pub const MEMBERSHIP_CONFIGS_MAX: usize = 2;

/// Bytes of a node address in a membership entry: 255 (a host name is at most 253).
pub const NODE_ADDRESS_BYTES_MAX: usize = 255;

/// The committed log id is written to the sidecar at most this often: 100 ms. A committed id
/// that lags on disk is safe (openraft re-learns it from the leader); writing it on every
/// commit would cost two fsyncs per commit.
pub const COMMITTED_PERSIST_INTERVAL: Duration = Duration::from_millis(100);
