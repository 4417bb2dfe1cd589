//! Every limit of the broker crate, named once, with the arithmetic behind it.

/// Capacity of each SPSC queue of the shard mesh, in messages. A message is one request's
/// worth of work for one shard (all its partitions on that shard), so 1024 in flight per pair
/// of shards is far above what one connection-shard issues at once (one request per
/// connection at a time) while bounding queued work to 1024 x the request memory budget share.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Kafka's `socket.request.max.bytes` default: 100 MiB. Larger frames are refused before any
/// allocation and the connection is closed.
pub const DEFAULT_SOCKET_REQUEST_MAX_BYTES: usize = 100 * 1024 * 1024;

/// Request memory budget per shard: 256 MiB. Must hold at least one maximum-size request
/// (asserted below), otherwise such a request would wait forever.
pub const REQUEST_MEMORY_PER_SHARD_BYTES: usize = 256 * 1024 * 1024;
const _: () = assert!(REQUEST_MEMORY_PER_SHARD_BYTES >= DEFAULT_SOCKET_REQUEST_MAX_BYTES);

/// Open client connections per shard; more are accepted and closed at once (logged). 10,000
/// per shard x 16 KiB of socket buffers and state each stays under 160 MiB per shard.
pub const MAX_CONNECTIONS_PER_SHARD: usize = 10_000;

/// How often each shard applies retention (`retention.ms`, `retention.bytes`) to its logs.
pub const RETENTION_CHECK_INTERVAL_MS: u64 = 5_000;

/// How long shutdown waits for in-flight requests before closing the logs anyway; with the
/// log flush this stays inside the 5 s shutdown promise.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 3_000;

/// Producer ids are reserved from the persisted metadata in blocks of this many, so a restart
/// never hands out an id twice and InitProducerId rarely writes metadata.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1_000;

/// glommio IO memory per shard (DMA buffers): 8 MiB keeps locked memory modest (root here has
/// CAP_IPC_LOCK but not CAP_SYS_RESOURCE) even with 16 shards.
pub const SHARD_IO_MEMORY_BYTES: usize = 8 * 1024 * 1024;

/// Maximum length of a topic name (Kafka's limit).
pub const TOPIC_NAME_MAX_BYTES: usize = 249;

/// Largest partition count of one topic on this node.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 100_000;
