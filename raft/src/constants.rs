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

/// Largest RPC frame after its length field: one maximum entry (64 MiB) plus 1 MiB for the
/// frame header and the rkyv encoding around it. A longer length field closes the connection;
/// the client splits AppendEntries so each frame stays below `RPC_APPEND_BUDGET_BYTES`.
pub const RPC_FRAME_MAX_BYTES: usize = ENTRY_BYTES_MAX + 1024 * 1024;

/// Payload bytes of entries the client puts in one AppendEntries frame: 1 MiB of headroom
/// below `RPC_FRAME_MAX_BYTES` for the other fields; a request with more is sent as a prefix
/// (at least one entry) and answered with `PartialSuccess`.
pub const RPC_APPEND_BUDGET_BYTES: usize = RPC_FRAME_MAX_BYTES - 1024 * 1024;

/// Bytes counted per entry beyond its payload when splitting AppendEntries (log id, enum tag,
/// rkyv relative pointers and padding): 64, a generous upper bound.
pub const RPC_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Requests one server connection serves at once; the reader stops reading (TCP pushes back
/// on the peer) until one completes. 64: openraft sends one AppendEntries stream per group
/// and target, so this is 64 groups' worth of concurrent traffic between two shards.
pub const RPC_SERVER_IN_FLIGHT_MAX: usize = 64;

/// Encoded responses queued for one server connection's writer: `RPC_SERVER_IN_FLIGHT_MAX`,
/// since each in-flight request produces at most one.
pub const RPC_SERVER_WRITE_QUEUE_FRAMES: usize = RPC_SERVER_IN_FLIGHT_MAX;

/// Connections one `RpcServer` keeps open: 1,024 (peers x shards); more are refused (closed
/// at accept) with one log line.
pub const RPC_SERVER_CONNECTIONS_MAX: usize = 1024;

/// Encoded requests queued for one client connection's writer (the bounded send queue): 64.
/// A request that cannot be queued within its soft TTL fails with `Timeout`.
pub const RPC_CLIENT_SEND_QUEUE_FRAMES: usize = 64;

/// Requests one client connection keeps waiting for a response: 256; beyond that a request
/// fails with `Unreachable` at once rather than growing the table.
pub const RPC_CLIENT_PENDING_MAX: usize = 256;

/// First reconnect delay after a failed connect or a dropped connection: 50 ms, doubled per
/// consecutive failure up to `RPC_RECONNECT_BACKOFF_MAX`.
pub const RPC_RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest reconnect delay: 2 s, so a peer that comes back is reached within 2 s of it
/// listening again.
pub const RPC_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A TCP connect (SYN to established) that takes longer than this fails: 1 s.
pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
