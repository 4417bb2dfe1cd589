//! The seam between protocols and the runtime: the operations every protocol needs, in
//! protocol-agnostic terms (partitions, offsets, record batches as bytes).
//!
//! Concurrency contract: a `Kernel` value is used from one shard's thread; its futures need not
//! be `Send`. Operations on partitions owned by other shards are routed by the implementation.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use futures_lite::future::BoxedLocal;

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
    MessageTooLarge {
        size_bytes: usize,
        max_bytes: usize,
    },
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
    /// The group coordinator cannot serve yet (its offsets partition is missing or loading).
    CoordinatorNotAvailable,
    /// Another node coordinates this group (the client asks FindCoordinator again).
    NotCoordinator,
    InvalidGroupId,
    UnknownMemberId,
    /// KIP-394: the first JoinGroup (v4+) of a dynamic member gets an id and must rejoin with it.
    MemberIdRequired,
    IllegalGeneration,
    RebalanceInProgress,
    InconsistentGroupProtocol,
    /// A static member (group.instance.id) was replaced by a newer instance with the same id.
    FencedInstanceId,
    InvalidSessionTimeout(String),
    GroupIdNotFound,
    NonEmptyGroup,
    GroupSubscribedToTopic,
    OffsetMetadataTooLarge {
        size_bytes: usize,
        max_bytes: usize,
    },
    /// An operation this node does not offer (yet), e.g. transaction coordinators.
    Unsupported(String),
    /// The partition exists but another node leads it (the client refreshes its metadata).
    NotLeaderOrFollower,
    /// The cluster has no controller right now (no quorum, or an election is under way).
    NotController,
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
            KernelError::CoordinatorNotAvailable => write!(f, "group coordinator not available"),
            KernelError::NotCoordinator => write!(f, "another node coordinates this group"),
            KernelError::InvalidGroupId => write!(f, "invalid (empty) group id"),
            KernelError::UnknownMemberId => write!(f, "unknown member id"),
            KernelError::MemberIdRequired => write!(f, "rejoin with the member id given"),
            KernelError::IllegalGeneration => write!(f, "illegal generation"),
            KernelError::RebalanceInProgress => write!(f, "rebalance in progress"),
            KernelError::InconsistentGroupProtocol => write!(f, "inconsistent group protocol"),
            KernelError::FencedInstanceId => write!(f, "static member fenced by a newer instance"),
            KernelError::InvalidSessionTimeout(m) | KernelError::Unsupported(m) => write!(f, "{m}"),
            KernelError::GroupIdNotFound => write!(f, "group not found"),
            KernelError::NotLeaderOrFollower => write!(f, "another node leads this partition"),
            KernelError::NotController => {
                write!(f, "no controller is available (no quorum or an election)")
            }
            KernelError::NonEmptyGroup => write!(f, "group has active members"),
            KernelError::GroupSubscribedToTopic => write!(f, "group is subscribed to the topic"),
            KernelError::OffsetMetadataTooLarge {
                size_bytes,
                max_bytes,
            } => write!(
                f,
                "offset metadata of {size_bytes} bytes exceeds {max_bytes} bytes"
            ),
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

/// Who serves one partition: its leader (-1 while there is none, e.g. during an election),
/// the leader's epoch (the Raft term of a replicated partition), its replicas and the
/// replicas in sync with the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
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

/// One change to a topic config (IncrementalAlterConfigs semantics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    Set {
        name: String,
        value: String,
    },
    /// Back to the default.
    Delete {
        name: String,
    },
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

/// One protocol a group member supports (e.g. `range`, `roundrobin`, `cooperative-sticky`)
/// with its opaque subscription metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupProtocol {
    pub name: String,
    pub metadata: Bytes,
}

/// A member asking to join (or rejoin) a group: the classic rebalance protocol.
#[derive(Clone, Debug)]
pub struct JoinGroupInput {
    pub group_id: String,
    /// Empty on a first join.
    pub member_id: String,
    /// Static membership (KIP-345).
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<GroupProtocol>,
    /// KIP-394 (JoinGroup v4+): a first dynamic join gets `MemberIdRequired` and an id.
    pub require_known_member_id: bool,
}

/// A member as the group leader sees it in its JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The answer to a JoinGroup, sent when the rebalance completes (or at once on an error).
#[derive(Clone, Debug, Default)]
pub struct JoinGroupOutput {
    pub error: Option<KernelError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol; only the leader gets them.
    pub members: Vec<JoinedMember>,
}

/// Identifies a member in a generation (SyncGroup, Heartbeat, OffsetCommit).
#[derive(Clone, Debug, Default)]
pub struct MemberGeneration {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SyncGroupInput {
    pub member: MemberGeneration,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment: (member id, opaque assignment); empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, Default)]
pub struct SyncGroupOutput {
    pub error: Option<KernelError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// A member leaving: by member id, or by group.instance.id for static members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeavingMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// A committed position of a group in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CommitOffsetsInput {
    /// Generation -1 with an empty member id: a commit from a consumer that assigns itself.
    pub member: MemberGeneration,
    pub offsets: Vec<(TopicPartition, CommittedOffset)>,
}

/// A group as ListGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    /// Kafka's names: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberDescription>,
}

/// One log directory of this node (DescribeLogDirs): the partitions stored in it with their
/// sizes, and the volume it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogDirDescription {
    /// Absolute path of the directory.
    pub path: String,
    /// Size of the volume holding the directory; `None` if it cannot be read.
    pub volume_total_bytes: Option<u64>,
    /// Bytes of that volume this process may still write; `None` if it cannot be read.
    pub volume_usable_bytes: Option<u64>,
    /// Bytes of record batches each stored partition holds, sorted by partition.
    pub partitions: Vec<(TopicPartition, u64)>,
}

/// Per-item results of a group operation, or one error for the whole group.
pub type GroupItemResults = Result<Vec<Result<(), KernelError>>, KernelError>;

/// The protocol-agnostic operations of the broker kernel.
pub trait Kernel {
    /// Memory reserved for one request; released when dropped.
    type RequestPermit;

    fn node(&self) -> NodeInfo;
    fn cluster_id(&self) -> String;
    /// Every broker of the cluster (this node alone unless it runs in a cluster).
    fn brokers(&self) -> Vec<NodeInfo> {
        vec![self.node()]
    }
    /// The node id of the controller; -1 when there is none right now.
    fn controller_id(&self) -> i32 {
        self.node().node_id
    }
    /// The node leading `partition` of `topic` (this node unless it runs in a cluster).
    fn partition_leader(&self, topic: &str, partition: i32) -> i32 {
        let _ = (topic, partition);
        self.node().node_id
    }
    /// Who serves `partition` of `topic`, as Metadata reports it. Unreplicated partitions:
    /// their one node, the topic's epoch.
    fn partition_state(&self, topic: &TopicInfo, partition: i32) -> PartitionState {
        let leader = self.partition_leader(&topic.name, partition);
        PartitionState {
            leader,
            leader_epoch: topic.leader_epoch,
            replicas: vec![leader],
            in_sync: vec![leader],
        }
    }
    /// Whether Metadata requests create unknown topics (`auto_create_topics_enable`).
    fn auto_create_topics(&self) -> bool;
    /// `socket.request.max.bytes`: larger frames are refused before any allocation.
    fn max_request_bytes(&self) -> usize;
    /// False once the node is shutting down: connections stop reading new requests.
    fn accepting_requests(&self) -> bool;
    /// Counts one answered request (for metrics): its frame sizes and how long it took.
    fn observe_request(&self, api_key: i16, bytes_in: usize, bytes_out: usize, latency_us: u64) {
        let _ = (api_key, bytes_in, bytes_out, latency_us);
    }
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
    /// Changes a topic's configs; they take effect on every shard before this resolves.
    /// `replace_all` (AlterConfigs) resets every config not named to its default.
    fn alter_topic_configs(
        &self,
        name: String,
        changes: Vec<ConfigChange>,
        replace_all: bool,
        validate_only: bool,
    ) -> impl Future<Output = Result<(), KernelError>>;
    fn describe_broker_configs(&self) -> Vec<ConfigEntry>;

    /// Appends every input to its partition (each input is validated: CRC, size, sequence);
    /// answers once each is durable as `acks` asks, in input order.
    fn produce(
        &self,
        acks: Acks,
        timeout_ms: u32,
        inputs: Vec<ProduceInput>,
    ) -> impl Future<Output = Vec<Result<AppendedRange, KernelError>>>;
    /// `produce` in two steps, so that a connection can pipeline produce requests: the
    /// returned future resolves once every input is submitted (appended, or proposed to its
    /// Raft group, in input order; a later call submits after it), to the answers' future,
    /// which borrows nothing. The default submits and answers in one step.
    // Yielding a future is the point: the outer one is the submission, the inner the answer.
    #[allow(clippy::async_yields_async)]
    fn produce_submit(
        &self,
        acks: Acks,
        timeout_ms: u32,
        inputs: Vec<ProduceInput>,
    ) -> impl Future<Output = BoxedLocal<Vec<Result<AppendedRange, KernelError>>>> {
        async move {
            let results = self.produce(acks, timeout_ms, inputs).await;
            Box::pin(std::future::ready(results)) as BoxedLocal<_>
        }
    }
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
    /// DeleteRecords: makes each partition start at its offset (`-1`: the high watermark);
    /// answers the new log start offsets, in input order.
    fn delete_records(
        &self,
        partitions: Vec<(TopicPartition, i64)>,
    ) -> impl Future<Output = Vec<Result<i64, KernelError>>>;
    /// The log directories of this node with the sizes of the partitions asked for (`None`:
    /// every partition); partitions that do not exist or are not stored here are left out.
    fn describe_log_dirs(
        &self,
        partitions: Option<Vec<TopicPartition>>,
    ) -> impl Future<Output = Vec<LogDirDescription>>;
    /// A new idempotent producer id and epoch, unique across restarts of this node.
    fn init_producer_id(&self) -> impl Future<Output = Result<(i64, i16), KernelError>>;

    /// The node coordinating `group_id` (this node while it runs alone).
    fn group_coordinator(&self, group_id: &str) -> Result<NodeInfo, KernelError>;
    /// Joins (or rejoins) a group; resolves when the rebalance completes.
    fn join_group(&self, input: JoinGroupInput) -> impl Future<Output = JoinGroupOutput>;
    /// Hands out (leader) or collects (followers) the assignment of a generation.
    fn sync_group(&self, input: SyncGroupInput) -> impl Future<Output = SyncGroupOutput>;
    fn heartbeat(&self, member: MemberGeneration) -> impl Future<Output = Result<(), KernelError>>;
    /// Removes members; one result per member, in input order.
    fn leave_group(
        &self,
        group_id: String,
        members: Vec<LeavingMember>,
    ) -> impl Future<Output = GroupItemResults>;
    /// Stores offsets durably; one result per offset, in input order.
    fn commit_offsets(&self, input: CommitOffsetsInput) -> impl Future<Output = GroupItemResults>;
    /// Committed offsets of the partitions asked for (`None`: every partition with one).
    fn fetch_offsets(
        &self,
        group_id: String,
        partitions: Option<Vec<TopicPartition>>,
    ) -> impl Future<Output = Result<Vec<(TopicPartition, Option<CommittedOffset>)>, KernelError>>;
    fn list_groups(&self) -> impl Future<Output = Vec<GroupListing>>;
    fn describe_group(
        &self,
        group_id: String,
    ) -> impl Future<Output = Result<GroupDescription, KernelError>>;
    /// Deletes an empty group and its committed offsets.
    fn delete_group(&self, group_id: String) -> impl Future<Output = Result<(), KernelError>>;
    /// Deletes committed offsets of partitions the group is not consuming.
    fn delete_offsets(
        &self,
        group_id: String,
        partitions: Vec<TopicPartition>,
    ) -> impl Future<Output = GroupItemResults>;
}
