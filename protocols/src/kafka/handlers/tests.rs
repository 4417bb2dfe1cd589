//! Every registered API answers at every version it advertises, against an in-memory kernel:
//! a response field set outside its version makes the encoder fail, which these tests catch
//! before a client does.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    alter_configs_request::AlterConfigsResource as AlterResource,
    alter_configs_request::AlterableConfig as AlterConfig,
    incremental_alter_configs_request::AlterConfigsResource as IncrementalResource,
    incremental_alter_configs_request::AlterableConfig as IncrementalConfig, AlterConfigsRequest,
    DescribeClusterRequest, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::{
    create_partitions_request::CreatePartitionsTopic, create_topics_request::CreatableTopic,
    delete_topics_request::DeleteTopicState, describe_configs_request::DescribeConfigsResource,
    fetch_request::FetchPartition, fetch_request::FetchTopic,
    list_offsets_request::ListOffsetsPartition, list_offsets_request::ListOffsetsTopic,
    metadata_request::MetadataRequestTopic, produce_request::PartitionProduceData,
    produce_request::TopicProduceData, ApiKey, ApiVersionsRequest, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, FetchRequest,
    InitProducerIdRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest, RequestHeader,
    TopicName,
};
use kafka_protocol::messages::{
    delete_records_request::DeleteRecordsPartition, delete_records_request::DeleteRecordsTopic,
    DeleteRecordsRequest,
};
use kafka_protocol::messages::{
    describe_log_dirs_request::DescribableLogDirTopic, DescribeLogDirsRequest,
    DescribeLogDirsResponse, ResponseHeader,
};
use kafka_protocol::messages::{
    join_group_request::JoinGroupRequestProtocol, leave_group_request::MemberIdentity,
    offset_commit_request::OffsetCommitRequestPartition,
    offset_commit_request::OffsetCommitRequestTopic,
    offset_delete_request::OffsetDeleteRequestPartition,
    offset_delete_request::OffsetDeleteRequestTopic, offset_fetch_request::OffsetFetchRequestGroup,
    offset_fetch_request::OffsetFetchRequestTopic, offset_fetch_request::OffsetFetchRequestTopics,
    sync_group_request::SyncGroupRequestAssignment, DeleteGroupsRequest, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest,
    SyncGroupRequest,
};
use kafka_protocol::messages::{
    offset_for_leader_epoch_request::OffsetForLeaderPartition,
    offset_for_leader_epoch_request::OffsetForLeaderTopic, OffsetForLeaderEpochRequest,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, StrBytes, VersionRange,
};

use super::{describe_log_dirs, dispatch, DispatchError, SUPPORTED_APIS};
use crate::kafka::codec::peek_request_prefix;
use crate::kernel::{
    Acks, AppendedRange, CommitOffsetsInput, CommittedOffset, ConfigChange, ConfigEntry,
    GroupDescription, GroupItemResults, GroupListing, JoinGroupInput, JoinGroupOutput,
    JoinedMember, Kernel, KernelError, LeavingMember, LogDirDescription, MemberDescription,
    MemberGeneration, NodeInfo, ProduceInput, ReadInput, ReadOutput, SyncGroupInput,
    SyncGroupOutput, TopicInfo, TopicPartition, TopicSpec,
};

/// A kernel with one topic, `orders`, of two partitions; appends and reads are canned.
struct MemoryKernel {
    produced: RefCell<usize>,
    /// Reads return no records (an idle partition), to exercise the long-poll loop.
    idle_partitions: bool,
    stopping: bool,
    reads: RefCell<usize>,
}

impl MemoryKernel {
    fn new() -> MemoryKernel {
        MemoryKernel {
            produced: RefCell::new(0),
            idle_partitions: false,
            stopping: false,
            reads: RefCell::new(0),
        }
    }
}

fn orders() -> TopicInfo {
    TopicInfo {
        name: "orders".to_string(),
        id: [9; 16],
        partition_count: 2,
        leader_epoch: 0,
        internal: false,
    }
}

impl Kernel for MemoryKernel {
    type RequestPermit = ();
    fn node(&self) -> NodeInfo {
        NodeInfo {
            node_id: 0,
            host: "127.0.0.1".to_string(),
            port: 9092,
        }
    }
    fn cluster_id(&self) -> String {
        "test-cluster".to_string()
    }
    fn auto_create_topics(&self) -> bool {
        false
    }
    fn max_request_bytes(&self) -> usize {
        1 << 20
    }
    fn accepting_requests(&self) -> bool {
        !self.stopping
    }
    async fn reserve_request_bytes(&self, _size_bytes: usize) {}
    fn topics(&self) -> Vec<TopicInfo> {
        vec![orders()]
    }
    fn topic(&self, name: &str) -> Option<TopicInfo> {
        (name == "orders").then(orders)
    }
    async fn create_topics(
        &self,
        specs: Vec<TopicSpec>,
        _validate_only: bool,
    ) -> Vec<Result<TopicInfo, KernelError>> {
        specs.iter().map(|_| Ok(orders())).collect()
    }
    async fn delete_topics(&self, names: Vec<String>) -> Vec<Result<(), KernelError>> {
        names
            .iter()
            .map(|_| Err(KernelError::UnknownTopicOrPartition))
            .collect()
    }
    async fn create_partitions(&self, _: String, _: i32, _: bool) -> Result<(), KernelError> {
        Ok(())
    }
    fn describe_topic_configs(&self, _name: &str) -> Result<Vec<ConfigEntry>, KernelError> {
        Ok(vec![ConfigEntry {
            name: "retention.ms".to_string(),
            value: Some("1000".to_string()),
            is_default: false,
            read_only: false,
        }])
    }
    fn describe_broker_configs(&self) -> Vec<ConfigEntry> {
        Vec::new()
    }
    async fn alter_topic_configs(
        &self,
        _name: String,
        changes: Vec<ConfigChange>,
        _replace_all: bool,
        _validate_only: bool,
    ) -> Result<(), KernelError> {
        match changes.first() {
            Some(ConfigChange::Set { .. }) => Ok(()),
            _ => Err(KernelError::InvalidConfig("no change".to_string())),
        }
    }
    async fn produce(
        &self,
        _acks: Acks,
        _timeout_ms: u32,
        inputs: Vec<ProduceInput>,
    ) -> Vec<Result<AppendedRange, KernelError>> {
        *self.produced.borrow_mut() += inputs.len();
        inputs
            .iter()
            .map(|_| {
                Ok(AppendedRange {
                    base_offset: 5,
                    last_offset: 5,
                    log_start_offset: 0,
                })
            })
            .collect()
    }
    async fn read(&self, inputs: Vec<ReadInput>) -> Vec<ReadOutput> {
        *self.reads.borrow_mut() += 1;
        let records = if self.idle_partitions {
            Bytes::new()
        } else {
            Bytes::from_static(b"batch")
        };
        inputs
            .iter()
            .map(|_| ReadOutput {
                records: Ok(records.clone()),
                high_watermark: 6,
                log_start_offset: 0,
            })
            .collect()
    }
    async fn wait_for_data(&self, _: Vec<(TopicPartition, i64)>, _: u32) {}
    async fn list_offset(&self, _: TopicPartition, _: i64) -> Result<(i64, i64), KernelError> {
        Ok((6, -1))
    }
    async fn init_producer_id(&self) -> Result<(i64, i16), KernelError> {
        Ok((1, 0))
    }
    async fn delete_records(
        &self,
        partitions: Vec<(TopicPartition, i64)>,
    ) -> Vec<Result<i64, KernelError>> {
        partitions.iter().map(|(_, offset)| Ok(*offset)).collect()
    }
    async fn describe_log_dirs(
        &self,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Vec<LogDirDescription> {
        let all = (0..orders().partition_count).map(|partition| TopicPartition {
            topic: "orders".to_string(),
            partition,
        });
        let stored = all
            .filter(|p| partitions.as_ref().is_none_or(|asked| asked.contains(p)))
            .map(|p| (p, 4096))
            .collect();
        vec![LogDirDescription {
            path: "/var/lib/rmq".to_string(),
            volume_total_bytes: Some(1 << 30),
            volume_usable_bytes: Some(1 << 29),
            partitions: stored,
        }]
    }
    fn group_coordinator(&self, _group_id: &str) -> Result<NodeInfo, KernelError> {
        Ok(self.node())
    }
    async fn join_group(&self, input: JoinGroupInput) -> JoinGroupOutput {
        // Every field a join answer can carry is set, so version gating is exercised.
        JoinGroupOutput {
            error: None,
            generation_id: 1,
            protocol_type: Some(input.protocol_type),
            protocol_name: input.protocols.first().map(|p| p.name.clone()),
            leader: "m-1".to_string(),
            member_id: "m-1".to_string(),
            members: vec![JoinedMember {
                member_id: "m-1".to_string(),
                group_instance_id: Some("i-1".to_string()),
                metadata: Bytes::from_static(b"meta"),
            }],
        }
    }
    async fn sync_group(&self, input: SyncGroupInput) -> SyncGroupOutput {
        SyncGroupOutput {
            error: None,
            protocol_type: Some("consumer".to_string()),
            protocol_name: Some("range".to_string()),
            assignment: input
                .assignments
                .first()
                .map(|(_, a)| a.clone())
                .unwrap_or_default(),
        }
    }
    async fn heartbeat(&self, _member: MemberGeneration) -> Result<(), KernelError> {
        Err(KernelError::RebalanceInProgress)
    }
    async fn leave_group(
        &self,
        _group_id: String,
        members: Vec<LeavingMember>,
    ) -> GroupItemResults {
        Ok(members
            .iter()
            .map(|_| Err(KernelError::UnknownMemberId))
            .collect())
    }
    async fn commit_offsets(&self, input: CommitOffsetsInput) -> GroupItemResults {
        Ok(input.offsets.iter().map(|_| Ok(())).collect())
    }
    async fn fetch_offsets(
        &self,
        _group_id: String,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, KernelError> {
        let committed = CommittedOffset {
            offset: 3,
            leader_epoch: 0,
            metadata: Some("m".to_string()),
        };
        Ok(partitions
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p, Some(committed.clone())))
            .collect())
    }
    async fn list_groups(&self) -> Vec<GroupListing> {
        vec![GroupListing {
            group_id: "g".to_string(),
            protocol_type: "consumer".to_string(),
            state: "Stable".to_string(),
        }]
    }
    async fn describe_group(&self, group_id: String) -> Result<GroupDescription, KernelError> {
        Ok(GroupDescription {
            group_id,
            state: "Stable".to_string(),
            protocol_type: "consumer".to_string(),
            protocol_name: "range".to_string(),
            members: vec![MemberDescription {
                member_id: "m-1".to_string(),
                group_instance_id: Some("i-1".to_string()),
                client_id: "c".to_string(),
                client_host: "127.0.0.1".to_string(),
                metadata: Bytes::from_static(b"meta"),
                assignment: Bytes::from_static(b"assignment"),
            }],
        })
    }
    async fn delete_group(&self, _group_id: String) -> Result<(), KernelError> {
        Err(KernelError::NonEmptyGroup)
    }
    async fn delete_offsets(
        &self,
        _group_id: String,
        partitions: Vec<TopicPartition>,
    ) -> GroupItemResults {
        Ok(partitions.iter().map(|_| Ok(())).collect())
    }
}

fn group_id() -> GroupId {
    GroupId(StrBytes::from_static_str("g"))
}

fn group_request_frame(api_key: ApiKey, version: i16) -> Option<Bytes> {
    let body = match api_key {
        ApiKey::FindCoordinator => {
            let mut request = FindCoordinatorRequest::default();
            if version >= 4 {
                request.coordinator_keys = vec![StrBytes::from_static_str("g")];
            } else {
                request.key = StrBytes::from_static_str("g");
            }
            frame(api_key, version, &request)
        }
        ApiKey::JoinGroup => {
            let mut protocol = JoinGroupRequestProtocol::default();
            protocol.name = StrBytes::from_static_str("range");
            protocol.metadata = Bytes::from_static(b"meta");
            let mut request = JoinGroupRequest::default();
            request.group_id = group_id();
            request.session_timeout_ms = 10_000;
            request.protocol_type = StrBytes::from_static_str("consumer");
            request.protocols = vec![protocol];
            frame(api_key, version, &request)
        }
        ApiKey::SyncGroup => {
            let mut assignment = SyncGroupRequestAssignment::default();
            assignment.member_id = StrBytes::from_static_str("m-1");
            assignment.assignment = Bytes::from_static(b"assignment");
            let mut request = SyncGroupRequest::default();
            request.group_id = group_id();
            request.assignments = vec![assignment];
            frame(api_key, version, &request)
        }
        ApiKey::Heartbeat => {
            let mut request = HeartbeatRequest::default();
            request.group_id = group_id();
            frame(api_key, version, &request)
        }
        ApiKey::LeaveGroup => {
            let mut request = LeaveGroupRequest::default();
            request.group_id = group_id();
            if version >= 3 {
                let mut member = MemberIdentity::default();
                member.member_id = StrBytes::from_static_str("m-1");
                request.members = vec![member];
            } else {
                request.member_id = StrBytes::from_static_str("m-1");
            }
            frame(api_key, version, &request)
        }
        ApiKey::OffsetCommit => {
            let mut partition = OffsetCommitRequestPartition::default();
            partition.committed_offset = 3;
            partition.committed_metadata = Some(StrBytes::from_static_str("m"));
            let mut topic = OffsetCommitRequestTopic::default();
            topic.name = topic_name();
            topic.partitions = vec![partition];
            let mut request = OffsetCommitRequest::default();
            request.group_id = group_id();
            request.topics = vec![topic];
            frame(api_key, version, &request)
        }
        ApiKey::OffsetFetch => {
            let mut request = OffsetFetchRequest::default();
            if version >= 8 {
                let mut topic = OffsetFetchRequestTopics::default();
                topic.name = topic_name();
                topic.partition_indexes = vec![0, 1];
                let mut group = OffsetFetchRequestGroup::default();
                group.group_id = group_id();
                group.topics = Some(vec![topic]);
                request.groups = vec![group];
            } else {
                let mut topic = OffsetFetchRequestTopic::default();
                topic.name = topic_name();
                topic.partition_indexes = vec![0, 1];
                request.group_id = group_id();
                request.topics = Some(vec![topic]);
            }
            frame(api_key, version, &request)
        }
        ApiKey::DescribeGroups => {
            let mut request = DescribeGroupsRequest::default();
            request.groups = vec![group_id()];
            frame(api_key, version, &request)
        }
        ApiKey::ListGroups => frame(api_key, version, &ListGroupsRequest::default()),
        ApiKey::DeleteGroups => {
            let mut request = DeleteGroupsRequest::default();
            request.groups_names = vec![group_id()];
            frame(api_key, version, &request)
        }
        ApiKey::AlterConfigs => {
            let mut config = AlterConfig::default();
            config.name = StrBytes::from_static_str("retention.ms");
            config.value = Some(StrBytes::from_static_str("1000"));
            let mut resource = AlterResource::default();
            resource.resource_type = 2;
            resource.resource_name = StrBytes::from_static_str("orders");
            resource.configs = vec![config];
            let mut request = AlterConfigsRequest::default();
            request.resources = vec![resource];
            frame(api_key, version, &request)
        }
        ApiKey::IncrementalAlterConfigs => {
            let mut config = IncrementalConfig::default();
            config.name = StrBytes::from_static_str("retention.ms");
            config.value = Some(StrBytes::from_static_str("1000"));
            let mut resource = IncrementalResource::default();
            resource.resource_type = 2;
            resource.resource_name = StrBytes::from_static_str("orders");
            resource.configs = vec![config];
            let mut request = IncrementalAlterConfigsRequest::default();
            request.resources = vec![resource];
            frame(api_key, version, &request)
        }
        ApiKey::DescribeCluster => frame(api_key, version, &DescribeClusterRequest::default()),
        ApiKey::OffsetForLeaderEpoch => {
            let mut topic = OffsetForLeaderTopic::default();
            topic.topic = topic_name();
            topic.partitions = vec![OffsetForLeaderPartition::default()];
            let mut request = OffsetForLeaderEpochRequest::default();
            request.topics = vec![topic];
            frame(api_key, version, &request)
        }
        ApiKey::DeleteRecords => {
            let mut partition = DeleteRecordsPartition::default();
            partition.offset = 4;
            let mut topic = DeleteRecordsTopic::default();
            topic.name = topic_name();
            topic.partitions = vec![partition];
            let mut request = DeleteRecordsRequest::default();
            request.topics = vec![topic];
            frame(api_key, version, &request)
        }
        ApiKey::OffsetDelete => {
            let mut topic = OffsetDeleteRequestTopic::default();
            topic.name = topic_name();
            topic.partitions = vec![OffsetDeleteRequestPartition::default()];
            let mut request = OffsetDeleteRequest::default();
            request.group_id = group_id();
            request.topics = vec![topic];
            frame(api_key, version, &request)
        }
        _ => return None,
    };
    Some(body)
}

fn topic_name() -> TopicName {
    TopicName(StrBytes::from_static_str("orders"))
}

fn frame<R: Encodable + HeaderVersion>(api_key: ApiKey, version: i16, request: &R) -> Bytes {
    let mut header = RequestHeader::default();
    header.request_api_key = api_key as i16;
    header.request_api_version = version;
    header.correlation_id = 42;
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, R::header_version(version))
        .expect("header encodes");
    request.encode(&mut buf, version).expect("request encodes");
    buf.freeze()
}

/// A DescribeLogDirs frame; v0 has v1's wire format, below the codec's floor.
fn describe_log_dirs_frame(version: i16, request: &DescribeLogDirsRequest) -> Bytes {
    let codec_version = version.max(describe_log_dirs::CODEC_FLOOR_VERSION);
    let body = frame(ApiKey::DescribeLogDirs, codec_version, request);
    let mut body = BytesMut::from(&body[..]);
    body[2..4].copy_from_slice(&version.to_be_bytes());
    body.freeze()
}

fn request_frame(api_key: ApiKey, version: i16) -> Bytes {
    match api_key {
        ApiKey::ApiVersions => frame(api_key, version, &ApiVersionsRequest::default()),
        ApiKey::Metadata => {
            let mut request = MetadataRequest::default();
            let mut topic = MetadataRequestTopic::default();
            topic.name = Some(topic_name());
            request.topics = Some(vec![topic]);
            frame(api_key, version, &request)
        }
        ApiKey::Produce => {
            let mut partition = PartitionProduceData::default();
            partition.records = Some(Bytes::from_static(b"batch"));
            let mut topic = TopicProduceData::default();
            topic.name = topic_name();
            topic.partition_data = vec![partition];
            let mut request = ProduceRequest::default();
            request.acks = -1;
            request.topic_data = vec![topic];
            frame(api_key, version, &request)
        }
        ApiKey::Fetch => {
            let mut topic = FetchTopic::default();
            topic.topic = topic_name();
            topic.partitions = vec![FetchPartition::default()];
            let mut request = FetchRequest::default();
            request.topics = vec![topic];
            request.max_bytes = 1 << 20;
            frame(api_key, version, &request)
        }
        ApiKey::ListOffsets => {
            let mut topic = ListOffsetsTopic::default();
            topic.name = topic_name();
            topic.partitions = vec![ListOffsetsPartition::default()];
            let mut request = ListOffsetsRequest::default();
            request.topics = vec![topic];
            frame(api_key, version, &request)
        }
        ApiKey::CreateTopics => {
            let mut topic = CreatableTopic::default();
            topic.name = topic_name();
            topic.num_partitions = 2;
            topic.replication_factor = 1;
            let mut request = CreateTopicsRequest::default();
            request.topics = vec![topic];
            frame(api_key, version, &request)
        }
        ApiKey::DeleteTopics => {
            let mut request = DeleteTopicsRequest::default();
            if version >= 6 {
                let mut state = DeleteTopicState::default();
                state.name = Some(topic_name());
                request.topics = vec![state];
            } else {
                request.topic_names = vec![topic_name()];
            }
            frame(api_key, version, &request)
        }
        ApiKey::CreatePartitions => {
            let mut topic = CreatePartitionsTopic::default();
            topic.name = topic_name();
            topic.count = 3;
            let mut request = CreatePartitionsRequest::default();
            request.topics = vec![topic];
            frame(api_key, version, &request)
        }
        ApiKey::InitProducerId => frame(api_key, version, &InitProducerIdRequest::default()),
        ApiKey::DescribeConfigs => {
            let mut resource = DescribeConfigsResource::default();
            resource.resource_type = 2;
            resource.resource_name = StrBytes::from_static_str("orders");
            let mut request = DescribeConfigsRequest::default();
            request.resources = vec![resource];
            frame(api_key, version, &request)
        }
        ApiKey::DescribeLogDirs => {
            let mut topic = DescribableLogDirTopic::default();
            topic.topic = topic_name();
            topic.partitions = vec![0, 1, 7];
            let mut request = DescribeLogDirsRequest::default();
            request.topics = Some(vec![topic]);
            describe_log_dirs_frame(version, &request)
        }
        other => group_request_frame(other, version)
            .unwrap_or_else(|| panic!("no request builder for registered api {other:?}")),
    }
}

fn run(body: Bytes) -> Result<Option<Bytes>, DispatchError> {
    run_on(&MemoryKernel::new(), body)
}

fn run_on(kernel: &MemoryKernel, body: Bytes) -> Result<Option<Bytes>, DispatchError> {
    let prefix = peek_request_prefix(&body).expect("prefix");
    futures_lite::future::block_on(dispatch(kernel, prefix, body, "127.0.0.1"))
}

#[test]
fn long_poll_fetch_answers_at_once_when_the_kernel_is_stopping() {
    // The kernel's waits return immediately at shutdown; the handler must not poll in a loop
    // (on a shard executor that loop never yields and the shard cannot stop).
    let kernel = MemoryKernel {
        idle_partitions: true,
        stopping: true,
        ..MemoryKernel::new()
    };
    let mut topic = FetchTopic::default();
    topic.topic = topic_name();
    topic.partitions = vec![FetchPartition::default()];
    let mut request = FetchRequest::default();
    request.topics = vec![topic];
    request.max_bytes = 1 << 20;
    request.min_bytes = 1;
    request.max_wait_ms = 30_000;
    let response = run_on(&kernel, frame(ApiKey::Fetch, 12, &request)).expect("answered");
    assert!(response.is_some());
    assert_eq!(
        *kernel.reads.borrow(),
        1,
        "fetch polled again after shutdown began"
    );
}

#[test]
fn every_registered_api_answers_at_every_advertised_version() {
    for support in SUPPORTED_APIS {
        for version in support.min_version..=support.max_version {
            let body = request_frame(support.api_key, version);
            let response = run(body)
                .unwrap_or_else(|e| panic!("{:?} v{version} was refused: {e:?}", support.api_key));
            let frame = response
                .unwrap_or_else(|| panic!("{:?} v{version} sent no response", support.api_key));
            let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            assert_eq!(
                size as usize,
                frame.len() - 4,
                "{:?} v{version}",
                support.api_key
            );
            let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            assert_eq!(correlation_id, 42, "{:?} v{version}", support.api_key);
        }
    }
}

#[test]
fn describe_log_dirs_lists_stored_partitions_only_and_volume_bytes_from_v4() {
    for version in [0, 1, 3, 4] {
        let frame = run(request_frame(ApiKey::DescribeLogDirs, version))
            .expect("answered")
            .expect("a response");
        let codec_version = version.max(describe_log_dirs::CODEC_FLOOR_VERSION);
        let mut body = frame.slice(4..);
        let header_version = DescribeLogDirsResponse::header_version(codec_version);
        let header = ResponseHeader::decode(&mut body, header_version).expect("header");
        assert_eq!(header.correlation_id, 42);
        let response =
            DescribeLogDirsResponse::decode(&mut body, codec_version).expect("v{version} body");
        assert!(body.is_empty(), "v{version}: trailing bytes");
        let [dir] = &response.results[..] else {
            panic!(
                "v{version}: one log dir expected, got {:?}",
                response.results
            );
        };
        assert_eq!(dir.log_dir.as_str(), "/var/lib/rmq");
        let [topic] = &dir.topics[..] else {
            panic!("v{version}: one topic expected, got {:?}", dir.topics);
        };
        assert_eq!(topic.name.0.as_str(), "orders");
        let sizes: Vec<(i32, i64)> = topic
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.partition_size))
            .collect();
        assert_eq!(
            sizes,
            vec![(0, 4096), (1, 4096)],
            "v{version}: partition 7 is not stored"
        );
        // Before v4 the fields are not on the wire; the decoder fills in Kafka's default -1.
        let volume = if version >= 4 {
            (1 << 30, 1 << 29)
        } else {
            (-1, -1)
        };
        assert_eq!((dir.total_bytes, dir.usable_bytes), volume, "v{version}");
    }
}

#[test]
fn api_versions_newer_than_ours_gets_a_v0_unsupported_version_answer() {
    let body = request_frame(ApiKey::ApiVersions, 3);
    let mut body = BytesMut::from(&body[..]);
    body[2..4].copy_from_slice(&127i16.to_be_bytes());
    let frame = run(body.freeze()).expect("answered").expect("a response");
    // size(4) correlation(4) then the v0 body: error_code first.
    let error_code = i16::from_be_bytes([frame[8], frame[9]]);
    assert_eq!(error_code, 35, "UNSUPPORTED_VERSION");
    let api_count = i32::from_be_bytes([frame[10], frame[11], frame[12], frame[13]]);
    assert_eq!(api_count as usize, SUPPORTED_APIS.len());
}

#[test]
fn unsupported_version_of_another_api_closes_the_connection() {
    let body = request_frame(ApiKey::Produce, 3);
    let mut body = BytesMut::from(&body[..]);
    body[2..4].copy_from_slice(&99i16.to_be_bytes());
    assert!(matches!(run(body.freeze()), Err(DispatchError::Refused(_))));
}

#[test]
fn unknown_api_key_and_garbage_close_the_connection() {
    let garbage = Bytes::from_static(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    assert!(matches!(run(garbage), Err(DispatchError::Refused(_))));
    let truncated = request_frame(ApiKey::Metadata, 9).slice(..12);
    assert!(matches!(run(truncated), Err(DispatchError::Refused(_))));
}

fn codec_range(api_key: ApiKey) -> VersionRange {
    match api_key {
        ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
        ApiKey::Metadata => MetadataRequest::VERSIONS,
        ApiKey::Produce => ProduceRequest::VERSIONS,
        ApiKey::Fetch => FetchRequest::VERSIONS,
        ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
        ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
        ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
        ApiKey::CreatePartitions => CreatePartitionsRequest::VERSIONS,
        ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
        ApiKey::DescribeConfigs => DescribeConfigsRequest::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
        ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
        ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
        ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
        ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
        ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
        ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
        ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS,
        ApiKey::ListGroups => ListGroupsRequest::VERSIONS,
        ApiKey::DeleteGroups => DeleteGroupsRequest::VERSIONS,
        ApiKey::OffsetDelete => OffsetDeleteRequest::VERSIONS,
        ApiKey::AlterConfigs => AlterConfigsRequest::VERSIONS,
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::VERSIONS,
        ApiKey::DescribeCluster => DescribeClusterRequest::VERSIONS,
        ApiKey::DeleteRecords => DeleteRecordsRequest::VERSIONS,
        ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochRequest::VERSIONS,
        // v0 is served as v1 (same wire format), one below the codec's floor.
        ApiKey::DescribeLogDirs => VersionRange {
            min: DescribeLogDirsRequest::VERSIONS.min - 1,
            max: DescribeLogDirsRequest::VERSIONS.max,
        },
        other => panic!("no codec range for registered api {other:?}"),
    }
}

#[test]
fn registry_ranges_are_within_the_codec_ranges() {
    for support in SUPPORTED_APIS {
        let codec = codec_range(support.api_key);
        assert!(support.min_version <= support.max_version, "{support:?}");
        assert!(
            support.min_version >= codec.min,
            "{support:?} below {codec}"
        );
        assert!(
            support.max_version <= codec.max,
            "{support:?} above {codec}"
        );
    }
    let keys: std::collections::BTreeSet<i16> =
        SUPPORTED_APIS.iter().map(|s| s.api_key as i16).collect();
    assert_eq!(
        keys.len(),
        SUPPORTED_APIS.len(),
        "an api key is registered twice"
    );
}
