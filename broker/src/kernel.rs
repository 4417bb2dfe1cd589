//! `ShardKernel`: the protocols' `Kernel` over the shards. Each request is split by owning
//! shard, so a request costs one mesh hop per shard it touches, never one per record: work for
//! this shard runs in place, work for others travels as one `ShardOp` per shard. Record
//! batches are validated (CRC32C, size) here, on the connection's shard, which spreads that
//! work over the cores that accept connections.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::future::BoxedLocal;
use rmq_protocols::kernel::{
    Acks, AppendedRange, CommitOffsetsInput, CommittedOffset, ConfigChange, ConfigEntry,
    GroupDescription, GroupItemResults, GroupListing, JoinGroupInput, JoinGroupOutput, Kernel,
    KernelError, LeavingMember, LogDirDescription, MemberGeneration, NodeInfo, PartitionState,
    ProduceInput, ReadInput, ReadOutput, SyncGroupInput, SyncGroupOutput, TopicInfo,
    TopicPartition, TopicSpec, LIST_OFFSETS_LATEST,
};
use rmq_storage::validate_batches;

use crate::budget::RequestPermit;
use crate::cluster::replica;
use crate::constants::{
    DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS, DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS,
    DEFAULT_OFFSETS_TOPIC_PARTITIONS, OFFSET_METADATA_MAX_BYTES,
};
use crate::controller::{topic_info, ControllerReply, ControllerRequest};
use crate::group::{coordinator_partition, offsets_partition, GroupRequest};
use crate::shard::{batch_error, ProduceItem, ProduceResult, Shard, ShardId, ShardOp};
use crate::topic_config;

const CONTROLLER_SHARD: ShardId = ShardId(0);

#[derive(Clone)]
pub struct ShardKernel {
    shard: Rc<Shard>,
}

/// Where a consumer group is coordinated (`ShardKernel::coordinator`).
enum Coordinator {
    /// Here, by this shard (the owner of the group's `__consumer_offsets` partition).
    Shard(ShardId),
    /// By another node (a seed).
    Node(i32),
}

impl ShardKernel {
    pub fn new(shard: Rc<Shard>) -> ShardKernel {
        ShardKernel { shard }
    }

    async fn controller(&self, request: ControllerRequest) -> Result<ControllerReply, KernelError> {
        if self.shard.id == CONTROLLER_SHARD {
            let controller = self
                .shard
                .controller
                .as_ref()
                .ok_or(KernelError::ShuttingDown)?;
            return Ok(controller.handle(&self.shard, request).await);
        }
        let (reply, receiver) = flume::bounded(1);
        self.shard
            .send(CONTROLLER_SHARD, ShardOp::Controller { request, reply })
            .await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| KernelError::ShuttingDown)
    }

    /// Where `group_id` is coordinated. Alone: here. In a cluster every node keeps its own
    /// `__consumer_offsets` (not replicated yet), so the seeds take its partitions in turn,
    /// partition p going to the (p mod seeds)-th seed by node id: every node names the same
    /// coordinator for a group, whichever node a client asks, and the group's members and
    /// offsets live on that one node.
    fn coordinator(&self, group_id: &str) -> Result<Coordinator, KernelError> {
        let partition = coordinator_partition(&self.shard, group_id)?;
        let seeds = &self.shard.config.seeds;
        if !seeds.is_empty() {
            let seed = seeds[usize::try_from(partition).unwrap_or(0) % seeds.len()].node_id;
            if seed != self.shard.config.node_id {
                return Ok(Coordinator::Node(seed));
            }
        }
        self.shard
            .owner_of(&offsets_partition(partition))
            .map(Coordinator::Shard)
            .ok_or(KernelError::CoordinatorNotAvailable)
    }

    /// The shard coordinating `group_id` here: the owner of its `__consumer_offsets`
    /// partition; NOT_COORDINATOR when another node coordinates it.
    fn coordinator_shard(&self, group_id: &str) -> Result<ShardId, KernelError> {
        match self.coordinator(group_id)? {
            Coordinator::Shard(shard) => Ok(shard),
            Coordinator::Node(_) => Err(KernelError::NotCoordinator),
        }
    }

    /// Runs a group request on its coordinator shard (one mesh hop, or in place) and waits
    /// for the answer it sends back.
    async fn group_call<T>(
        &self,
        group_id: &str,
        request: impl FnOnce(flume::Sender<T>) -> GroupRequest,
    ) -> Result<T, KernelError> {
        let coordinator = self.coordinator_shard(group_id)?;
        let (reply, receiver) = flume::bounded(1);
        self.run_group_request(coordinator, request(reply)).await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| KernelError::CoordinatorNotAvailable)
    }

    async fn run_group_request(
        &self,
        coordinator: ShardId,
        request: GroupRequest,
    ) -> Result<(), KernelError> {
        if coordinator == self.shard.id {
            self.shard.groups.handle(&self.shard, request).await;
            return Ok(());
        }
        self.shard.send(coordinator, ShardOp::Group(request)).await
    }

    /// Checks one produce input and finds its owner.
    fn prepare(&self, input: ProduceInput) -> Result<(ShardId, ProduceItem), KernelError> {
        let owner = self
            .shard
            .owner_of(&input.partition)
            .ok_or_else(|| self.shard.not_owned_error(&input.partition))?;
        let metadata = self.shard.metadata();
        let configs = metadata
            .topics
            .get(&input.partition.topic)
            .map(|t| &t.configs)
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        let max_bytes = topic_config::max_message_bytes(configs);
        let headers = validate_batches(&input.records, max_bytes).map_err(batch_error)?;
        Ok((
            owner,
            ProduceItem {
                partition: input.partition,
                records: input.records,
                headers,
            },
        ))
    }

    /// Every partition of every topic in this shard's metadata snapshot.
    fn all_partitions(&self) -> BTreeSet<TopicPartition> {
        let metadata = self.shard.metadata();
        let mut partitions = BTreeSet::new();
        for (name, topic) in &metadata.topics {
            for partition in 0..topic.partition_shards.len() {
                let Ok(partition) = i32::try_from(partition) else {
                    break;
                };
                partitions.insert(TopicPartition {
                    topic: name.clone(),
                    partition,
                });
            }
        }
        partitions
    }

    /// Bytes stored per partition, asked of each owning shard once; partitions without an
    /// owner or a local log are left out.
    async fn partition_sizes(
        &self,
        partitions: BTreeSet<TopicPartition>,
    ) -> Vec<(TopicPartition, u64)> {
        let routed = partitions
            .into_iter()
            .enumerate()
            .filter_map(|(index, partition)| {
                self.shard
                    .owner_of(&partition)
                    .map(|owner| (index, owner, partition))
            })
            .collect();
        let mut sizes = Vec::new();
        let mut remote = Vec::new();
        for (owner, group) in group_by_shard(routed) {
            let partitions: Vec<TopicPartition> = group.into_iter().map(|(_, p)| p).collect();
            if owner == self.shard.id {
                let local = self.shard.partition_sizes_local(&partitions);
                sizes.extend(stored_sizes(partitions, local));
                continue;
            }
            let (reply, receiver) = flume::bounded(1);
            let op = ShardOp::PartitionSizes {
                partitions: partitions.clone(),
                reply,
            };
            if self.shard.send(owner, op).await.is_ok() {
                remote.push((partitions, receiver));
            }
        }
        for (partitions, receiver) in remote {
            let answered = receiver.recv_async().await.unwrap_or_default();
            sizes.extend(stored_sizes(partitions, answered));
        }
        sizes.sort();
        sizes
    }
}

/// Pairs each partition with its size, dropping those the shard does not store.
fn stored_sizes(
    partitions: Vec<TopicPartition>,
    sizes: Vec<Option<u64>>,
) -> impl Iterator<Item = (TopicPartition, u64)> {
    partitions
        .into_iter()
        .zip(sizes)
        .filter_map(|(partition, size_bytes)| size_bytes.map(|s| (partition, s)))
}

/// The total and usable (free to unprivileged writers) bytes of the volume holding `path`.
fn volume_bytes(path: &Path) -> Option<(u64, u64)> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `stats` is a valid place for one statvfs record.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled in `stats`.
    let stats = unsafe { stats.assume_init() };
    // All three are u64 on the 64-bit Linux targets glommio runs on.
    let fragment_bytes = stats.f_frsize;
    let total_bytes = stats.f_blocks.checked_mul(fragment_bytes)?;
    let usable_bytes = stats.f_bavail.checked_mul(fragment_bytes)?;
    Some((total_bytes, usable_bytes))
}

fn unexpected_reply() -> KernelError {
    KernelError::InvalidRequest("controller answered a different request".to_string())
}

/// Splits `items` by owning shard, keeping each item's index in the request.
fn group_by_shard<T>(items: Vec<(usize, ShardId, T)>) -> BTreeMap<ShardId, Vec<(usize, T)>> {
    let mut groups: BTreeMap<ShardId, Vec<(usize, T)>> = BTreeMap::new();
    for (index, shard, item) in items {
        groups.entry(shard).or_default().push((index, item));
    }
    groups
}

impl Kernel for ShardKernel {
    type RequestPermit = RequestPermit;

    fn node(&self) -> NodeInfo {
        self.shard.node()
    }

    fn cluster_id(&self) -> String {
        self.shard.metadata().cluster_id.clone()
    }

    /// In a cluster: every registered broker, and this node until it has registered.
    fn brokers(&self) -> Vec<NodeInfo> {
        let node = self.shard.node();
        let metadata = self.shard.metadata();
        if metadata.brokers.is_empty() {
            return vec![node];
        }
        let mut brokers: Vec<NodeInfo> = metadata
            .brokers
            .values()
            .map(|broker| NodeInfo {
                node_id: broker.node_id,
                host: broker.host.clone(),
                port: broker.port,
            })
            .collect();
        if !metadata.brokers.contains_key(&node.node_id) {
            brokers.push(node);
            brokers.sort_by_key(|broker| broker.node_id);
        }
        brokers
    }

    /// In a cluster: the controller group's leader. While there is none (an election), this
    /// node: every node serves admin requests (it forwards proposals to the leader once there
    /// is one), and a client told "no controller" (-1) would stall until its next periodic
    /// metadata refresh. KRaft brokers answer the same way.
    fn controller_id(&self) -> i32 {
        match &self.shard.cluster_view {
            Some(view) if view.controller_id() >= 0 => view.controller_id(),
            _ => self.shard.config.node_id,
        }
    }

    fn partition_leader(&self, topic: &str, partition: i32) -> i32 {
        let node_id = self.shard.config.node_id;
        self.shard
            .metadata()
            .leader_of(topic, partition, node_id)
            .unwrap_or(node_id)
    }

    /// A replicated partition: its replicas from the metadata; leader, epoch (the Raft term)
    /// and in-sync replicas from this node's replica when it hosts one. A node that hosts no
    /// replica names the leader the leader itself last reported (gossip), else the preferred
    /// leader with an unknown epoch (-1), so clients do not prefer that guess over a hosting
    /// node's answer; a wrong guess costs one NOT_LEADER_OR_FOLLOWER and a refresh.
    fn partition_state(&self, topic: &TopicInfo, partition: i32) -> PartitionState {
        let node_id = self.shard.config.node_id;
        let metadata = self.shard.metadata();
        let replicas = metadata
            .topics
            .get(&topic.name)
            .and_then(|meta| meta.replicas_of(partition))
            .map(<[i32]>::to_vec);
        let Some(replicas) = replicas else {
            let leader = self.partition_leader(&topic.name, partition);
            return PartitionState {
                leader,
                leader_epoch: topic.leader_epoch,
                replicas: vec![leader],
                in_sync: vec![leader],
            };
        };
        let key = TopicPartition {
            topic: topic.name.clone(),
            partition,
        };
        let status = self
            .shard
            .cluster_view
            .as_ref()
            .and_then(|view| view.replica(&key).map(|status| (view.clone(), status)));
        match status {
            Some((view, status)) => {
                let leader = status
                    .serving_leader(node_id, view.election_timeout_ms)
                    .unwrap_or(-1);
                let in_sync = if status.leader == Some(node_id) {
                    status.in_sync.clone()
                } else {
                    replicas.clone()
                };
                PartitionState {
                    leader,
                    leader_epoch: i32::try_from(status.term).unwrap_or(i32::MAX),
                    replicas,
                    in_sync,
                }
            }
            None => {
                let reported = metadata.topics.get(&topic.name).and_then(|meta| {
                    let view = self.shard.cluster_view.as_ref()?;
                    view.remote_leader(replica::group_id(&meta.id, partition))
                });
                let (leader, leader_epoch) = match reported {
                    Some((leader, term)) => (leader, i32::try_from(term).unwrap_or(i32::MAX)),
                    None => (replicas.first().copied().unwrap_or(-1), -1),
                };
                PartitionState {
                    leader,
                    leader_epoch,
                    in_sync: replicas.clone(),
                    replicas,
                }
            }
        }
    }

    fn auto_create_topics(&self) -> bool {
        self.shard.config.auto_create_topics_enable
    }

    fn max_request_bytes(&self) -> usize {
        self.shard.config.socket_request_max_bytes
    }

    fn accepting_requests(&self) -> bool {
        !self.shard.is_stopping()
    }

    fn observe_request(&self, api_key: i16, bytes_in: usize, bytes_out: usize, latency_us: u64) {
        self.shard
            .metrics
            .observe_request(api_key, bytes_in, bytes_out, latency_us);
    }

    async fn reserve_request_bytes(&self, size_bytes: usize) -> RequestPermit {
        self.shard.budget.reserve(size_bytes).await
    }

    fn topics(&self) -> Vec<TopicInfo> {
        let metadata = self.shard.metadata();
        metadata
            .topics
            .iter()
            .map(|(name, meta)| topic_info(name, meta))
            .collect()
    }

    fn topic(&self, name: &str) -> Option<TopicInfo> {
        let metadata = self.shard.metadata();
        metadata.topics.get(name).map(|meta| topic_info(name, meta))
    }

    async fn create_topics(
        &self,
        specs: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<Result<TopicInfo, KernelError>> {
        let count = specs.len();
        match self
            .controller(ControllerRequest::CreateTopics {
                specs,
                validate_only,
            })
            .await
        {
            Ok(ControllerReply::CreateTopics(results)) => results,
            Ok(_) => vec![Err(unexpected_reply()); count],
            Err(e) => vec![Err(e); count],
        }
    }

    async fn delete_topics(&self, names: Vec<String>) -> Vec<Result<(), KernelError>> {
        let count = names.len();
        match self
            .controller(ControllerRequest::DeleteTopics { names })
            .await
        {
            Ok(ControllerReply::DeleteTopics(results)) => results,
            Ok(_) => vec![Err(unexpected_reply()); count],
            Err(e) => vec![Err(e); count],
        }
    }

    async fn create_partitions(
        &self,
        name: String,
        partition_count: i32,
        validate_only: bool,
    ) -> Result<(), KernelError> {
        let request = ControllerRequest::CreatePartitions {
            name,
            partition_count,
            validate_only,
        };
        match self.controller(request).await? {
            ControllerReply::CreatePartitions(result) => result,
            _ => Err(unexpected_reply()),
        }
    }

    fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>, KernelError> {
        let metadata = self.shard.metadata();
        let topic = metadata
            .topics
            .get(name)
            .ok_or(KernelError::UnknownTopicOrPartition)?;
        Ok(topic_config::describe(&topic.configs))
    }

    async fn alter_topic_configs(
        &self,
        name: String,
        changes: Vec<ConfigChange>,
        replace_all: bool,
        validate_only: bool,
    ) -> Result<(), KernelError> {
        let request = ControllerRequest::AlterTopicConfigs {
            name,
            changes,
            replace_all,
            validate_only,
        };
        match self.controller(request).await? {
            ControllerReply::AlterTopicConfigs(result) => result,
            _ => Err(unexpected_reply()),
        }
    }

    fn describe_broker_configs(&self) -> Vec<ConfigEntry> {
        let config = &self.shard.config;
        let entry = |name: &str, value: String| ConfigEntry {
            name: name.to_string(),
            value: Some(value),
            is_default: false,
            read_only: true,
        };
        let with_default = |name: &str, value: String, default: String| ConfigEntry {
            is_default: value == default,
            ..entry(name, value)
        };
        let group = &config.group;
        vec![
            with_default(
                "group.initial.rebalance.delay.ms",
                group.initial_rebalance_delay_ms.to_string(),
                "0".to_string(),
            ),
            with_default(
                "group.min.session.timeout.ms",
                group.min_session_timeout_ms.to_string(),
                DEFAULT_GROUP_MIN_SESSION_TIMEOUT_MS.to_string(),
            ),
            with_default(
                "group.max.session.timeout.ms",
                group.max_session_timeout_ms.to_string(),
                DEFAULT_GROUP_MAX_SESSION_TIMEOUT_MS.to_string(),
            ),
            with_default(
                "offsets.topic.num.partitions",
                config.offsets_topic_num_partitions.to_string(),
                DEFAULT_OFFSETS_TOPIC_PARTITIONS.to_string(),
            ),
            with_default(
                "offset.metadata.max.bytes",
                OFFSET_METADATA_MAX_BYTES.to_string(),
                OFFSET_METADATA_MAX_BYTES.to_string(),
            ),
            entry("broker.id", config.node_id.to_string()),
            entry(
                "auto.create.topics.enable",
                config.auto_create_topics_enable.to_string(),
            ),
            entry("num.partitions", config.num_partitions.to_string()),
            entry(
                "socket.request.max.bytes",
                config.socket_request_max_bytes.to_string(),
            ),
            entry("log.dirs", config.data_dir.display().to_string()),
        ]
    }

    async fn produce(
        &self,
        acks: Acks,
        timeout_ms: u32,
        inputs: Vec<ProduceInput>,
    ) -> Vec<Result<AppendedRange, KernelError>> {
        self.produce_submit(acks, timeout_ms, inputs).await.await
    }

    /// Local items are appended (or proposed) before this returns; items for other shards are
    /// in those shards' mesh queues, which they serve in order.
    async fn produce_submit(
        &self,
        acks: Acks,
        timeout_ms: u32,
        inputs: Vec<ProduceInput>,
    ) -> BoxedLocal<Vec<Result<AppendedRange, KernelError>>> {
        let mut results: Vec<ProduceResult> = vec![Err(KernelError::ShuttingDown); inputs.len()];
        let mut routed = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.into_iter().enumerate() {
            match self.prepare(input) {
                Ok((owner, item)) => routed.push((index, owner, item)),
                Err(e) => results[index] = Err(e),
            }
        }
        let mut remote = Vec::new();
        let mut local = None;
        for (owner, group) in group_by_shard(routed) {
            let (indexes, items): (Vec<usize>, Vec<ProduceItem>) = group.into_iter().unzip();
            if owner == self.shard.id {
                local = Some((indexes, self.shard.produce_local(acks, timeout_ms, items)));
                continue;
            }
            let (reply, receiver) = flume::bounded(1);
            let op = ShardOp::Produce {
                acks,
                timeout_ms,
                items,
                reply,
            };
            match self.shard.send(owner, op).await {
                Ok(()) => remote.push((indexes, receiver)),
                Err(e) => indexes.iter().for_each(|i| results[*i] = Err(e.clone())),
            }
        }
        Box::pin(async move {
            if let Some((indexes, produced)) = local {
                let outputs = produced.await;
                for (index, output) in indexes.into_iter().zip(outputs) {
                    results[index] = output;
                }
            }
            for (indexes, receiver) in remote {
                let outputs = receiver.recv_async().await.unwrap_or_default();
                for (position, index) in indexes.into_iter().enumerate() {
                    results[index] = outputs
                        .get(position)
                        .cloned()
                        .unwrap_or(Err(KernelError::ShuttingDown));
                }
            }
            results
        })
    }

    async fn read(&self, inputs: Vec<ReadInput>) -> Vec<ReadOutput> {
        let unowned = |partition: &TopicPartition| ReadOutput {
            records: Err(self.shard.not_owned_error(partition)),
            high_watermark: -1,
            log_start_offset: -1,
        };
        let mut outputs: Vec<ReadOutput> = inputs
            .iter()
            .map(|input| unowned(&input.partition))
            .collect();
        let routed = inputs
            .into_iter()
            .enumerate()
            .filter_map(|(index, input)| {
                self.shard
                    .owner_of(&input.partition)
                    .map(|owner| (index, owner, input))
            })
            .collect();
        let mut remote = Vec::new();
        let mut local = None;
        for (owner, group) in group_by_shard(routed) {
            let (indexes, items): (Vec<usize>, Vec<ReadInput>) = group.into_iter().unzip();
            if owner == self.shard.id {
                local = Some((indexes, items));
                continue;
            }
            let (reply, receiver) = flume::bounded(1);
            if self
                .shard
                .send(owner, ShardOp::Read { items, reply })
                .await
                .is_ok()
            {
                remote.push((indexes, receiver));
            }
        }
        if let Some((indexes, items)) = local {
            let read = self.shard.read_local(items).await;
            for (index, output) in indexes.into_iter().zip(read) {
                outputs[index] = output;
            }
        }
        for (indexes, receiver) in remote {
            let read = receiver.recv_async().await.unwrap_or_default();
            for (index, output) in indexes.into_iter().zip(read) {
                outputs[index] = output;
            }
        }
        outputs
    }

    async fn wait_for_data(&self, positions: Vec<(TopicPartition, i64)>, timeout_ms: u32) {
        // Every shard involved signals one shared channel; the first signal (or the timeout)
        // ends the wait. Waiters left on other shards end by their own timeout.
        let (reply, receiver) = flume::bounded(1);
        let routed = positions
            .into_iter()
            .enumerate()
            .filter_map(|(index, (partition, offset))| {
                self.shard
                    .owner_of(&partition)
                    .map(|owner| (index, owner, (partition, offset)))
            })
            .collect();
        for (owner, group) in group_by_shard(routed) {
            let positions: Vec<(TopicPartition, i64)> = group.into_iter().map(|(_, p)| p).collect();
            if owner == self.shard.id {
                self.shard.wait_local(positions, timeout_ms, reply.clone());
                continue;
            }
            let op = ShardOp::WaitForData {
                positions,
                timeout_ms,
                reply: reply.clone(),
            };
            let _ = self.shard.send(owner, op).await;
        }
        drop(reply);
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let stopped = self.shard.stopped();
        let wait = future::or(
            async {
                if receiver.recv_async().await.is_err() {
                    // Nobody is waiting (no known partition): wait out the timeout instead of
                    // letting the caller poll in a loop.
                    glommio::timer::sleep(timeout).await;
                }
            },
            glommio::timer::sleep(timeout),
        );
        future::or(wait, stopped).await;
    }

    async fn list_offset(
        &self,
        partition: TopicPartition,
        timestamp: i64,
    ) -> Result<(i64, i64), KernelError> {
        let owner = self
            .shard
            .owner_of(&partition)
            .ok_or_else(|| self.shard.not_owned_error(&partition))?;
        if owner == self.shard.id {
            return self.shard.list_offset_local(&partition, timestamp).await;
        }
        let (reply, receiver) = flume::bounded(1);
        let op = ShardOp::ListOffset {
            partition,
            timestamp,
            reply,
        };
        self.shard.send(owner, op).await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| KernelError::ShuttingDown)?
    }

    async fn delete_records(
        &self,
        partitions: Vec<(TopicPartition, i64)>,
    ) -> Vec<Result<i64, KernelError>> {
        // Offsets are checked against the high watermark first (on the owning shards); it only
        // grows, so the check still holds when the controller applies them.
        let mut results = Vec::with_capacity(partitions.len());
        let mut checked = Vec::new();
        for (index, (partition, offset)) in partitions.into_iter().enumerate() {
            let high_watermark = match self
                .list_offset(partition.clone(), LIST_OFFSETS_LATEST)
                .await
            {
                Ok((high_watermark, _)) => high_watermark,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let target = if offset == -1 { high_watermark } else { offset };
            if !(0..=high_watermark).contains(&target) {
                results.push(Err(KernelError::OffsetOutOfRange));
                continue;
            }
            results.push(Ok(target));
            checked.push((index, partition, target));
        }
        if checked.is_empty() {
            return results;
        }
        let request = ControllerRequest::DeleteRecords {
            partitions: checked
                .iter()
                .map(|(_, partition, target)| (partition.clone(), *target))
                .collect(),
        };
        let applied = match self.controller(request).await {
            Ok(ControllerReply::DeleteRecords(applied)) => applied,
            Ok(_) => vec![Err(unexpected_reply()); checked.len()],
            Err(e) => vec![Err(e); checked.len()],
        };
        for ((index, _, _), result) in checked.into_iter().zip(applied) {
            results[index] = result;
        }
        results
    }

    async fn describe_log_dirs(
        &self,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Vec<LogDirDescription> {
        let asked = match partitions {
            Some(partitions) => partitions.into_iter().collect(),
            None => self.all_partitions(),
        };
        let data_dir = &self.shard.config.data_dir;
        let volume = volume_bytes(data_dir);
        let path = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone());
        vec![LogDirDescription {
            path: path.display().to_string(),
            volume_total_bytes: volume.map(|(total, _)| total),
            volume_usable_bytes: volume.map(|(_, usable)| usable),
            partitions: self.partition_sizes(asked).await,
        }]
    }

    async fn init_producer_id(&self) -> Result<(i64, i16), KernelError> {
        match self.controller(ControllerRequest::InitProducerId).await? {
            ControllerReply::InitProducerId(result) => result,
            _ => Err(unexpected_reply()),
        }
    }

    fn group_coordinator(&self, group_id: &str) -> Result<NodeInfo, KernelError> {
        let node = match self.coordinator(group_id)? {
            Coordinator::Shard(_) => return Ok(self.shard.node()),
            Coordinator::Node(node) => node,
        };
        // Another seed: named once it has registered its Kafka address.
        let metadata = self.shard.metadata();
        let broker = metadata
            .brokers
            .get(&node)
            .ok_or(KernelError::CoordinatorNotAvailable)?;
        Ok(NodeInfo {
            node_id: node,
            host: broker.host.clone(),
            port: broker.port,
        })
    }

    async fn join_group(&self, input: JoinGroupInput) -> JoinGroupOutput {
        let group_id = input.group_id.clone();
        let member_id = input.member_id.clone();
        self.group_call(&group_id, |reply| GroupRequest::Join(input, reply))
            .await
            .unwrap_or_else(|e| JoinGroupOutput {
                error: Some(e),
                generation_id: -1,
                member_id,
                ..JoinGroupOutput::default()
            })
    }

    async fn sync_group(&self, input: SyncGroupInput) -> SyncGroupOutput {
        let group_id = input.member.group_id.clone();
        self.group_call(&group_id, |reply| GroupRequest::Sync(input, reply))
            .await
            .unwrap_or_else(|e| SyncGroupOutput {
                error: Some(e),
                ..SyncGroupOutput::default()
            })
    }

    async fn heartbeat(&self, member: MemberGeneration) -> Result<(), KernelError> {
        let group_id = member.group_id.clone();
        self.group_call(&group_id, |reply| GroupRequest::Heartbeat(member, reply))
            .await?
    }

    async fn leave_group(&self, group_id: String, members: Vec<LeavingMember>) -> GroupItemResults {
        let id = group_id.clone();
        self.group_call(&id, |reply| GroupRequest::Leave {
            group_id,
            members,
            reply,
        })
        .await?
    }

    async fn commit_offsets(&self, input: CommitOffsetsInput) -> GroupItemResults {
        let group_id = input.member.group_id.clone();
        self.group_call(&group_id, |reply| GroupRequest::Commit(input, reply))
            .await?
    }

    async fn fetch_offsets(
        &self,
        group_id: String,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, KernelError> {
        let id = group_id.clone();
        self.group_call(&id, |reply| GroupRequest::Fetch {
            group_id,
            partitions,
            reply,
        })
        .await?
    }

    async fn list_groups(&self) -> Vec<GroupListing> {
        let mut receivers = Vec::with_capacity(self.shard.shard_count);
        for index in 0..self.shard.shard_count {
            let Ok(shard) = u16::try_from(index).map(ShardId) else {
                break;
            };
            let (reply, receiver) = flume::bounded(1);
            if self
                .run_group_request(shard, GroupRequest::List(reply))
                .await
                .is_ok()
            {
                receivers.push(receiver);
            }
        }
        let mut groups = Vec::new();
        for receiver in receivers {
            groups.extend(receiver.recv_async().await.unwrap_or_default());
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups
    }

    async fn describe_group(&self, group_id: String) -> Result<GroupDescription, KernelError> {
        let id = group_id.clone();
        self.group_call(&id, |reply| GroupRequest::Describe { group_id, reply })
            .await?
    }

    async fn delete_group(&self, group_id: String) -> Result<(), KernelError> {
        let id = group_id.clone();
        self.group_call(&id, |reply| GroupRequest::Delete { group_id, reply })
            .await?
    }

    async fn delete_offsets(
        &self,
        group_id: String,
        partitions: Vec<TopicPartition>,
    ) -> GroupItemResults {
        let id = group_id.clone();
        self.group_call(&id, |reply| GroupRequest::DeleteOffsets {
            group_id,
            partitions,
            reply,
        })
        .await?
    }
}
