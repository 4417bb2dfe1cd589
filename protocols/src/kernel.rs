//! The seam between protocols and the runtime: the operations every protocol needs, in
//! protocol-agnostic terms (partitions, offsets, record batches as bytes).
//!
//! Concurrency contract: a `Kernel` value is used from one shard's thread; its futures need not
//! be `Send`. Operations on partitions owned by other shards are routed by the implementation.

use std::fmt;
use std::future::Future;

use bytes::Bytes;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

/// Errors a kernel operation reports; each protocol maps them onto its own codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    UnknownTopicOrPartition,
    CorruptMessage(String),
    MessageTooLarge { size_bytes: usize, max_bytes: usize },
    OutOfOrderSequence(String),
    InvalidProducerEpoch(String),
    OffsetOutOfRange,
    Storage(String),
    TopicAlreadyExists,
    InvalidTopic(String),
    InvalidPartitions(String),
    InvalidReplicationFactor(String),
    InvalidConfig(String),
    InvalidRequest(String),
    RequestTimedOut,
    ShuttingDown,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::UnknownTopicOrPartition => write!(f, "unknown topic or partition"),
            KernelError::CorruptMessage(m) => write!(f, "corrupt record batch: {m}"),
            KernelError::MessageTooLarge {
                size_bytes,
                max_bytes,
            } => write!(
                f,
                "record batch of {size_bytes} bytes exceeds max.message.bytes {max_bytes}"
            ),
            KernelError::OutOfOrderSequence(m) => write!(f, "out of order sequence: {m}"),
            KernelError::InvalidProducerEpoch(m) => write!(f, "invalid producer epoch: {m}"),
            KernelError::OffsetOutOfRange => write!(f, "offset out of range"),
            KernelError::Storage(m) => write!(f, "storage error: {m}"),
            KernelError::TopicAlreadyExists => write!(f, "topic already exists"),
            KernelError::InvalidTopic(m)
            | KernelError::InvalidPartitions(m)
            | KernelError::InvalidReplicationFactor(m)
            | KernelError::InvalidConfig(m)
            | KernelError::InvalidRequest(m) => write!(f, "{m}"),
            KernelError::RequestTimedOut => write!(f, "request timed out"),
            KernelError::ShuttingDown => write!(f, "broker is shutting down"),
        }
    }
}

/// The node clients should connect to (advertised address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

/// A topic as the protocols see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub id: [u8; 16],
    pub partition_count: i32,
    pub leader_epoch: i32,
    pub internal: bool,
}

/// A topic to create; `-1` means "broker default" as in Kafka's CreateTopics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partition_count: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, Option<String>)>,
}

/// One configuration value of a topic or the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub is_default: bool,
    pub read_only: bool,
}

/// How much durability a producer waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// No response at all.
    None,
    /// Answer once the leader has written the batch to its segment file.
    Leader,
    /// Answer once the batch is durable under the topic's policy (fdatasync today).
    All,
}

/// Record batches (Kafka RecordBatch v2 bytes, one or more back to back) for one partition.
#[derive(Clone, Debug)]
pub struct ProduceInput {
    pub partition: TopicPartition,
    pub records: Bytes,
}

/// Offsets assigned to an appended (or recognised duplicate) produce input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendedRange {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
}

#[derive(Clone, Debug)]
pub struct ReadInput {
    pub partition: TopicPartition,
    pub offset: i64,
    pub max_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct ReadOutput {
    /// Whole stored batches, exactly as they were produced (offsets assigned).
    pub records: Result<Bytes, KernelError>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// ListOffsets special timestamps (Kafka semantics).
pub const LIST_OFFSETS_LATEST: i64 = -1;
pub const LIST_OFFSETS_EARLIEST: i64 = -2;
pub const LIST_OFFSETS_MAX_TIMESTAMP: i64 = -3;

/// The protocol-agnostic operations of the broker kernel.
pub trait Kernel {
    /// Memory reserved for one request; released when dropped.
    type RequestPermit;

    fn node(&self) -> NodeInfo;
    fn cluster_id(&self) -> String;
    /// Whether Metadata requests create unknown topics (`auto_create_topics_enable`).
    fn auto_create_topics(&self) -> bool;
    /// `socket.request.max.bytes`: larger frames are refused before any allocation.
    fn max_request_bytes(&self) -> usize;
    /// False once the node is shutting down: connections stop reading new requests.
    fn accepting_requests(&self) -> bool;
    /// Waits until `size_bytes` fit in this shard's request memory budget.
    fn reserve_request_bytes(&self, size_bytes: usize)
        -> impl Future<Output = Self::RequestPermit>;

    fn topics(&self) -> Vec<TopicInfo>;
    fn topic(&self, name: &str) -> Option<TopicInfo>;
    fn create_topics(
        &self,
        specs: Vec<TopicSpec>,
        validate_only: bool,
    ) -> impl Future<Output = Vec<Result<TopicInfo, KernelError>>>;
    fn delete_topics(
        &self,
        names: Vec<String>,
    ) -> impl Future<Output = Vec<Result<(), KernelError>>>;
    fn create_partitions(
        &self,
        name: String,
        partition_count: i32,
        validate_only: bool,
    ) -> impl Future<Output = Result<(), KernelError>>;
    fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, KernelError>;
    fn describe_broker_configs(&self) -> Vec<ConfigEntry>;

    /// Appends every input to its partition (each input is validated: CRC, size, sequence);
    /// answers once each is durable as `acks` asks, in input order.
    fn produce(
        &self,
        acks: Acks,
        timeout_ms: u32,
        inputs: Vec<ProduceInput>,
    ) -> impl Future<Output = Vec<Result<AppendedRange, KernelError>>>;
    /// Reads stored batches; answers in input order.
    fn read(&self, inputs: Vec<ReadInput>) -> impl Future<Output = Vec<ReadOutput>>;
    /// Resolves when any of the partitions has data at or past its offset, or after `timeout_ms`.
    fn wait_for_data(
        &self,
        positions: Vec<(TopicPartition, i64)>,
        timeout_ms: u32,
    ) -> impl Future<Output = ()>;
    /// Offset for a timestamp, or one of the `LIST_OFFSETS_*` specials: (offset, timestamp).
    fn list_offset(
        &self,
        partition: TopicPartition,
        timestamp: i64,
    ) -> impl Future<Output = Result<(i64, i64), KernelError>>;
    /// A new idempotent producer id and epoch, unique across restarts of this node.
    fn init_producer_id(&self) -> impl Future<Output = Result<(i64, i16), KernelError>>;
}
