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

/// Default pause between log-cleaner rounds on each shard (Kafka's `log.cleaner.backoff.ms`,
/// 15 s); TOML key `log_cleaner_interval_ms`. A round is one pass per compacted partition that
/// is due (`min.cleanable.dirty.ratio` reached or a tombstone horizon passed).
pub const LOG_CLEANER_INTERVAL_MS_DEFAULT: u64 = 15_000;

/// Shortest `log_cleaner_interval_ms` accepted: 10 ms, so a misconfigured 0 cannot spin.
pub const LOG_CLEANER_INTERVAL_MS_MIN: u64 = 10;

/// Shares of the log cleaner's task queue against glommio's default of 1000: under
/// contention the cleaner gets 100 / 1100 ~= 9% of a shard's core and requests the rest.
pub const LOG_CLEANER_TASK_QUEUE_SHARES: usize = 100;

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

/// Partitions of `__consumer_offsets` (Kafka's `offsets.topic.num.partitions` is 50; 16 spreads
/// group coordination over up to 16 shards while keeping startup and the per-partition writer
/// tasks cheap on small nodes).
pub const DEFAULT_OFFSETS_TOPIC_PARTITIONS: i32 = 16;

/// `segment.bytes` of `__consumer_offsets` (Kafka's `offsets.topic.segment.bytes`): 100 MiB.
pub const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 100 * 1024 * 1024;

/// Kafka's `group.min.session.timeout.ms` default: 6 s.
pub const DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS: i32 = 6_000;

/// Kafka's `group.max.session.timeout.ms` default: 30 min.
pub const DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS: i32 = 30 * 60 * 1_000;

/// How often each shard expires group sessions and completes due rebalances. Session
/// timeouts are at least `group.min.session.timeout.ms` (seconds), so 100 ms of lateness is
/// under 2% of the shortest one.
pub const GROUP_TICK_INTERVAL_MS: u64 = 100;

/// Kafka's `offset.metadata.max.bytes`: a commit's metadata string is at most 4 KiB.
pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;

/// Groups one shard coordinates. Each costs its members and offsets (about 100 bytes per
/// committed partition): 100,000 groups x 10 partitions x 100 bytes = 100 MiB per shard.
pub const GROUPS_PER_SHARD_MAX: usize = 100_000;

/// Members (and KIP-394 pending members) of one group: 1,000 members x 12 KiB of protocol
/// metadata and assignment at most bounds one group near 12 MiB.
pub const MEMBERS_PER_GROUP_MAX: usize = 1_000;

/// Bytes read per step when a `__consumer_offsets` partition is read back at startup: 1 MiB
/// keeps the read buffer small and costs one read per ~10,000 commit records.
pub const OFFSETS_LOAD_READ_BYTES: usize = 1024 * 1024;

/// Kafka API keys counted in `/metrics`: every key the protocol defines is below 128.
pub const METRICS_API_KEYS_MAX: usize = 128;

/// Upper bounds of the request latency histogram buckets, in microseconds (Prometheus `le`),
/// from 100 us (a local produce with acks=1) to 10 s (a long poll); beyond that is `+Inf`.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 1_000_000, 10_000_000,
];

/// Default admin HTTP listener (`/metrics`, `/v1/...`).
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9644";

/// How often each shard refreshes its gauges (partitions, groups, storage counters) for
/// `/metrics`; a scrape every 10-15 s sees values at most this old.
pub const METRICS_REFRESH_INTERVAL_MS: u64 = 1_000;

/// How long an MQTT publish a bridge rule matched waits for its Kafka append (the produce
/// timeout of acks=-1) before the publisher is told it failed.
pub const BRIDGE_APPEND_TIMEOUT_MS: u32 = 30_000;

/// Most bytes one read of a bridged partition returns to its Kafka -> MQTT tailer (a batch
/// larger than this is still returned whole, as Kafka's Fetch does).
pub const BRIDGE_READ_MAX_BYTES: usize = 1024 * 1024;

/// How long a bridge tailer waits for new records before it checks for shutdown again.
pub const BRIDGE_WAIT_TIMEOUT_MS: u32 = 1_000;

/// Pause of a bridge tailer after a failed read, so a broken partition does not spin.
pub const BRIDGE_ERROR_BACKOFF_MS: u64 = 1_000;

/// Default `--rpc-addr`: the internal RPC listener of a cluster node.
pub const DEFAULT_RPC_ADDR: &str = "0.0.0.0:33145";

/// Seeds `--seeds` may name: 7. The controller group's voters are the seeds; more than 7
/// voters only slow every commit (a quorum of 4) without adding useful fault tolerance.
pub const SEEDS_MAX: usize = 7;

/// In a cluster, a producer id carries its node's id above this bit: each node hands out ids
/// from its own range of 2^40 (a trillion; a block of `PRODUCER_ID_BLOCK_SIZE` is reserved per
/// thousand), so ids stay unique without a controller round trip.
pub const PRODUCER_ID_NODE_SHIFT: u32 = 40;

/// Raft group id of the controller group (partition groups hash to ids with the top bit set).
pub const CONTROLLER_GROUP_ID: u64 = 0;

/// Controller group heartbeat: 150 ms; a follower that hears nothing for an election timeout
/// (1,000..2,000 ms, below) starts an election, so failover takes about 1-2.5 s on a loaded
/// 2-core machine. The timeouts leave room for a busy shard 0 answering late.
pub const CONTROLLER_HEARTBEAT_INTERVAL_MS: u64 = 150;
pub const CONTROLLER_ELECTION_TIMEOUT_MIN_MS: u64 = 1_000;
pub const CONTROLLER_ELECTION_TIMEOUT_MAX_MS: u64 = 2_000;

/// How long a metadata change (a proposal, forwarded to the leader if needed, then merged on
/// this node) may take before the request fails with NOT_CONTROLLER / REQUEST_TIMED_OUT:
/// 10 s, several election timeouts, so a change survives one failover.
pub const CONTROLLER_PROPOSE_TIMEOUT_MS: u64 = 10_000;

/// One forwarded proposal's round trip to the leader (commit included) at most: 5 s.
pub const CONTROLLER_FORWARD_TIMEOUT_MS: u64 = 5_000;

/// Pause between attempts while there is no leader or the leader is unreachable: 100 ms.
pub const CONTROLLER_RETRY_INTERVAL_MS: u64 = 100;

/// Poll interval while a proposer waits for this node to merge its committed entry: 5 ms.
pub const CONTROLLER_MERGE_POLL_MS: u64 = 5;

/// How often shard 0 refreshes the cluster view (controller id, lags) other shards and the
/// admin HTTP thread read: 200 ms.
pub const CLUSTER_STATUS_REFRESH_MS: u64 = 200;

/// Pause between a node's attempts to register itself with the controller group: 500 ms.
pub const BROKER_REGISTER_RETRY_MS: u64 = 500;

/// Largest controller command accepted from the network or the log: 16 MiB (a topic with the
/// maximum partition count and its configs is far smaller).
pub const CONTROLLER_COMMAND_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Partition Raft groups' election timeout (`--raft-election-timeout-ms`): 1 s by default,
/// as Redpanda's 1.5 s it leaves room for a busy shard answering heartbeats late; bounded so
/// heartbeats (a tenth of it) stay at 5 ms or more and failover below a minute.
pub const RAFT_ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1_000;
pub const RAFT_ELECTION_TIMEOUT_MS_MIN: u64 = 50;
pub const RAFT_ELECTION_TIMEOUT_MS_MAX: u64 = 60_000;

/// A produce to a replicated partition without a request timeout (0) waits this long for the
/// quorum commit: 30 s, librdkafka's default request timeout.
pub const PARTITION_PROPOSE_TIMEOUT_DEFAULT_MS: u64 = 30_000;

/// How often a producer's next batch re-checks whether its previous proposal was answered:
/// 1 ms (one producer's proposals go one at a time; this is only hit by retries that overtake
/// the proposal they repeat).
pub const PARTITION_PRODUCER_WAIT_POLL_MS: u64 = 1;

/// How often a node hands leadership of partitions it leads back to their caught-up preferred
/// replicas: 5 s (a handover costs clients one metadata refresh, so not more often).
pub const LEADER_BALANCE_INTERVAL_MS: u64 = 5_000;

/// The pseudo group id of leadership reports between nodes (`Forward` frames; never a Raft
/// group: partition groups have the top bit set, the controller is 0).
pub const LEADER_GOSSIP_GROUP_ID: u64 = 1;

/// How often a node reports the partitions it leads to the other nodes: 250 ms.
pub const LEADER_GOSSIP_INTERVAL_MS: u64 = 250;

/// Partitions in one leadership report at most (16 bytes each: 1 MiB).
pub const LEADER_GOSSIP_PARTITIONS_MAX: usize = 65_536;

/// A reported leadership is trusted this long without a newer report: 2 s (eight reports).
pub const LEADER_GOSSIP_TTL_MS: u64 = 2_000;
