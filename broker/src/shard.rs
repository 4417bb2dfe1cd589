//! One shard: the state a core owns (its partition logs, its metadata snapshot, its request
//! budget) and the operations other shards ask of it through the bounded channel mesh.
//!
//! Concurrency contract: a `Shard` lives on one executor thread (`Rc`). Work for another shard
//! travels as a `ShardOp` (which is `Send`; payloads are `Bytes`, never copied) through
//! `Shard::send`, and the owner asserts it owns every partition it is asked about. Appends run
//! synchronously as an op is received, so ops from one sender are appended in the order sent;
//! only the waiting (durability, long-poll) happens in spawned tasks.
//!
//! The mesh is one bounded SPSC-used flume channel per ordered pair of shards, built before the
//! executors start. It replaced glommio's `channel_mesh`, whose join handshake hung about one
//! start in twelve with `--cores 16` on 2 busy CPUs (executors spin re-polling connection
//! wakers while one parks unwoken); pre-built channels need no handshake.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use rmq_protocols::kernel::{
    Acks, AppendedRange, KernelError, NodeInfo, ReadInput, ReadOutput, TopicPartition,
    LIST_OFFSETS_EARLIEST, LIST_OFFSETS_LATEST, LIST_OFFSETS_MAX_TIMESTAMP,
};
use rmq_raft::rpc::{FaultCode, RpcFault, RpcRequest, RpcResponse};
use rmq_storage::{
    AppendOutcome, BatchError, BatchHeader, LogManager, Offset, PartitionLog, StorageError,
};
use tracing::{error, warn};

use crate::budget::RequestBudget;
use crate::cluster::replica::{Replica, ReplicaManager};
use crate::cluster::ClusterView;
use crate::config::NodeConfig;
use crate::constants::REQUEST_MEMORY_PER_SHARD_BYTES;
use crate::controller::{Controller, ControllerReply, ControllerRequest};
use crate::group::{GroupCoordinator, GroupRequest};
use crate::metadata::ClusterMetadata;
use crate::metrics::ShardMetrics;
use crate::topic_config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// Batches for one partition, already validated (CRC, size) on the connection's shard.
pub struct ProduceItem {
    pub partition: TopicPartition,
    pub records: Bytes,
    pub headers: Vec<BatchHeader>,
}

pub type ProduceResult = Result<AppendedRange, KernelError>;

/// Work one shard asks of another. Every op carries its own reply channel.
pub enum ShardOp {
    Produce {
        acks: Acks,
        timeout_ms: u32,
        items: Vec<ProduceItem>,
        reply: flume::Sender<Vec<ProduceResult>>,
    },
    Read {
        items: Vec<ReadInput>,
        reply: flume::Sender<Vec<ReadOutput>>,
    },
    WaitForData {
        positions: Vec<(TopicPartition, i64)>,
        timeout_ms: u32,
        reply: flume::Sender<()>,
    },
    ListOffset {
        partition: TopicPartition,
        timestamp: i64,
        reply: flume::Sender<Result<(i64, i64), KernelError>>,
    },
    /// Bytes stored per partition (`None`: not stored here), in input order.
    PartitionSizes {
        partitions: Vec<TopicPartition>,
        reply: flume::Sender<Vec<Option<u64>>>,
    },
    ApplyMetadata {
        metadata: Arc<ClusterMetadata>,
        reply: flume::Sender<()>,
    },
    Controller {
        request: ControllerRequest,
        reply: flume::Sender<ControllerReply>,
    },
    /// A Raft RPC for a partition group this shard hosts (the node's RPC server runs on
    /// shard 0 and hands requests for other shards' groups over the mesh).
    Raft {
        group_id: u64,
        request: RpcRequest,
        reply: flume::Sender<Result<RpcResponse, RpcFault>>,
    },
    /// For the group coordinator of this shard (it carries its own reply channel).
    Group(GroupRequest),
    /// For this shard's MQTT state (subscription routing, sessions, retained messages).
    Mqtt(crate::mqtt::MqttOp),
}

pub struct Shard {
    pub id: ShardId,
    pub shard_count: usize,
    pub config: Arc<NodeConfig>,
    pub logs: LogManager,
    pub budget: RequestBudget,
    pub controller: Option<Controller>,
    pub groups: GroupCoordinator,
    pub metrics: Arc<ShardMetrics>,
    pub connections: Cell<usize>,
    /// The cluster as shard 0 publishes it; `None` on a single node (no `--seeds`).
    pub cluster_view: Option<Arc<ClusterView>>,
    /// Shard 0 of a cluster node: its replicas of replicated partitions (set once the
    /// cluster node started).
    pub replicas: RefCell<Option<Rc<ReplicaManager>>>,
    metadata: RefCell<Arc<ClusterMetadata>>,
    /// `mesh[peer]` sends to shard `peer`; `None` at this shard's own index.
    mesh: Vec<Option<flume::Sender<ShardOp>>>,
    node: RefCell<Option<NodeInfo>>,
    /// Dropped at shutdown: every clone of `stop_receiver` then wakes with an error.
    stop_sender: RefCell<Option<flume::Sender<()>>>,
    stop_receiver: flume::Receiver<()>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn storage_error(e: StorageError) -> KernelError {
    match e {
        StorageError::OffsetOutOfRange { .. } => KernelError::OffsetOutOfRange,
        StorageError::OutOfOrderSequence { .. } => KernelError::OutOfOrderSequence(e.to_string()),
        StorageError::InvalidProducerEpoch { .. } => {
            KernelError::InvalidProducerEpoch(e.to_string())
        }
        StorageError::Batch(batch) => batch_error(batch),
        StorageError::Closed => KernelError::ShuttingDown,
        // Both clear on their own (the writer catches up, the truncation ends): the producer
        // retries, and nothing was appended, so sequences stay intact.
        StorageError::Backpressure { .. } | StorageError::TruncateInProgress => {
            KernelError::RequestTimedOut
        }
        other => KernelError::Storage(other.to_string()),
    }
}

/// A batch the storage format rejects, as the kernel reports it.
pub fn batch_error(e: BatchError) -> KernelError {
    match e {
        BatchError::TooLarge {
            size_bytes,
            max_bytes,
        } => KernelError::MessageTooLarge {
            size_bytes,
            max_bytes,
        },
        other => KernelError::CorruptMessage(other.to_string()),
    }
}

impl Shard {
    pub fn new(
        id: ShardId,
        config: Arc<NodeConfig>,
        metadata: Arc<ClusterMetadata>,
        mesh: Vec<Option<flume::Sender<ShardOp>>>,
        controller: Option<Controller>,
        metrics: Arc<ShardMetrics>,
        cluster_view: Option<Arc<ClusterView>>,
    ) -> Shard {
        assert_eq!(mesh.len(), config.cores, "one mesh channel per shard");
        assert!(
            mesh[usize::from(id.0)].is_none(),
            "no mesh channel to itself"
        );
        let (stop_sender, stop_receiver) = flume::bounded(1);
        assert_eq!(
            controller.is_some(),
            id.0 == 0,
            "the controller runs on shard 0"
        );
        Shard {
            id,
            shard_count: config.cores,
            logs: LogManager::new(config.data_dir.clone()),
            groups: GroupCoordinator::new(config.group),
            metrics,
            config,
            budget: RequestBudget::new(REQUEST_MEMORY_PER_SHARD_BYTES),
            controller,
            connections: Cell::new(0),
            cluster_view,
            replicas: RefCell::new(None),
            metadata: RefCell::new(Arc::new(ClusterMetadata::default())),
            mesh,
            node: RefCell::new(None),
            stop_sender: RefCell::new(Some(stop_sender)),
            stop_receiver,
        }
        .with_metadata(metadata)
    }

    fn with_metadata(self, metadata: Arc<ClusterMetadata>) -> Shard {
        *self.metadata.borrow_mut() = metadata;
        self
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.borrow().clone()
    }

    pub fn set_node(&self, node: NodeInfo) {
        *self.node.borrow_mut() = Some(node);
    }

    pub fn node(&self) -> NodeInfo {
        self.node.borrow().clone().unwrap_or(NodeInfo {
            node_id: self.config.node_id,
            host: "127.0.0.1".to_string(),
            port: 0,
        })
    }

    /// The shard owning `partition`, if the topic and partition exist.
    pub fn owner_of(&self, partition: &TopicPartition) -> Option<ShardId> {
        self.metadata
            .borrow()
            .shard_of(
                &partition.topic,
                partition.partition,
                self.config.node_id,
                self.shard_count,
            )
            .map(ShardId)
    }

    /// Whether `partition` exists (on this node or, in a cluster, on another).
    pub fn partition_exists(&self, partition: &TopicPartition) -> bool {
        self.metadata
            .borrow()
            .leader_of(&partition.topic, partition.partition, self.config.node_id)
            .is_some()
    }

    /// Why a partition without a local owner is not served here: another node leads it
    /// (`NotLeaderOrFollower`), or it does not exist.
    pub fn not_owned_error(&self, partition: &TopicPartition) -> KernelError {
        match self.metadata.borrow().leader_of(
            &partition.topic,
            partition.partition,
            self.config.node_id,
        ) {
            Some(node) if node != self.config.node_id => KernelError::NotLeaderOrFollower,
            _ => KernelError::UnknownTopicOrPartition,
        }
    }

    /// Sends `op` to another shard over the mesh (waits while that queue is full).
    pub async fn send(&self, to: ShardId, op: ShardOp) -> Result<(), KernelError> {
        assert_ne!(to, self.id, "local work must not go through the mesh");
        let sender = self
            .mesh
            .get(usize::from(to.0))
            .and_then(Option::as_ref)
            .ok_or(KernelError::ShuttingDown)?;
        sender
            .send_async(op)
            .await
            .map_err(|_| KernelError::ShuttingDown)
    }

    /// Starts shutdown: connections read no new requests, parked long-polls end now.
    pub fn begin_shutdown(&self) {
        self.stop_sender.borrow_mut().take();
    }

    pub fn is_stopping(&self) -> bool {
        self.stop_sender.borrow().is_none()
    }

    /// Resolves once shutdown has begun.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + 'static {
        let receiver = self.stop_receiver.clone();
        async move {
            let _ = receiver.recv_async().await;
        }
    }

    fn owned_log(&self, partition: &TopicPartition) -> Result<Rc<PartitionLog>, KernelError> {
        if let Some(owner) = self.owner_of(partition) {
            assert_eq!(
                owner, self.id,
                "partition {partition:?} routed to the wrong shard"
            );
        }
        if self.is_replicated(partition) {
            // Only the serving leader reads a replicated partition (its log's commit limit is
            // the high watermark); appends go through its Raft group (`produce_local`).
            return match self.replica(partition) {
                Some(replica) if replica.serves_reads() => Ok(replica.log().clone()),
                _ => Err(KernelError::NotLeaderOrFollower),
            };
        }
        self.logs
            .get(&partition.topic, partition.partition)
            .ok_or(KernelError::UnknownTopicOrPartition)
    }

    /// Whether `partition` belongs to a replicated topic (a Raft group per partition).
    pub fn is_replicated(&self, partition: &TopicPartition) -> bool {
        self.metadata
            .borrow()
            .topics
            .get(&partition.topic)
            .is_some_and(|topic| topic.replicas_of(partition.partition).is_some())
    }

    /// This node's replica of `partition`, when it hosts one (shard 0 of a cluster node).
    pub fn replica(&self, partition: &TopicPartition) -> Option<Rc<Replica>> {
        self.replicas
            .borrow()
            .as_ref()
            .and_then(|replicas| replicas.get(partition))
    }

    /// Produces `items` on this shard: unreplicated partitions are appended now, in order
    /// (before the returned future is first polled); replicated ones are proposed to their
    /// Raft groups, concurrently. Answers in item order.
    pub fn produce_local(
        &self,
        acks: Acks,
        timeout_ms: u32,
        items: Vec<ProduceItem>,
    ) -> impl std::future::Future<Output = Vec<ProduceResult>> + 'static {
        let count = items.len();
        let mut plain = Vec::with_capacity(count);
        let mut plain_indexes = Vec::with_capacity(count);
        let mut proposals = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            if self.is_replicated(&item.partition) {
                match self.replica(&item.partition) {
                    Some(replica) => proposals.push((
                        index,
                        glommio::spawn_local(replica.produce(item, acks, timeout_ms)).detach(),
                    )),
                    None => proposals.push((
                        index,
                        glommio::spawn_local(async { Err(KernelError::NotLeaderOrFollower) })
                            .detach(),
                    )),
                }
            } else {
                plain_indexes.push(index);
                plain.push(item);
            }
        }
        let appended = self.append_local(plain);
        async move {
            let mut results: Vec<ProduceResult> = vec![Err(KernelError::ShuttingDown); count];
            let outputs = await_appends(acks, timeout_ms, appended).await;
            for (index, output) in plain_indexes.into_iter().zip(outputs) {
                results[index] = output;
            }
            for (index, proposal) in proposals {
                results[index] = proposal.await.unwrap_or(Err(KernelError::ShuttingDown));
            }
            results
        }
    }

    /// Appends every item now, in order; returns what to wait on for each.
    pub fn append_local(
        &self,
        items: Vec<ProduceItem>,
    ) -> Vec<Result<(Rc<PartitionLog>, AppendedRange), KernelError>> {
        let now = now_ms();
        let epoch = 0;
        items
            .into_iter()
            .map(|item| {
                if self.is_replicated(&item.partition) {
                    return Err(KernelError::NotLeaderOrFollower);
                }
                let log = self.owned_log(&item.partition)?;
                let records = BytesMut::from(&item.records[..]);
                let outcome = log
                    .append(records, &item.headers, epoch, now)
                    .map_err(storage_error)?;
                let (base, last) = match outcome {
                    AppendOutcome::Appended {
                        base_offset,
                        last_offset,
                    }
                    | AppendOutcome::Duplicate {
                        base_offset,
                        last_offset,
                    } => (base_offset, last_offset),
                };
                let range = AppendedRange {
                    base_offset: base.0,
                    last_offset: last.0,
                    log_start_offset: self.log_start(&item.partition, &log),
                };
                Ok((log, range))
            })
            .collect()
    }

    /// The first readable offset: the storage log start or, if larger, the DeleteRecords
    /// start kept in the metadata.
    pub fn log_start(&self, partition: &TopicPartition, log: &PartitionLog) -> i64 {
        let deleted_before = self
            .metadata
            .borrow()
            .topics
            .get(&partition.topic)
            .map_or(0, |t| t.log_start_override(partition.partition));
        log.log_start_offset().0.max(deleted_before)
    }

    pub async fn read_local(&self, items: Vec<ReadInput>) -> Vec<ReadOutput> {
        let mut outputs = Vec::with_capacity(items.len());
        for item in items {
            let output = match self.owned_log(&item.partition) {
                Err(e) => ReadOutput {
                    records: Err(e),
                    high_watermark: -1,
                    log_start_offset: -1,
                },
                Ok(log) => {
                    let log_start_offset = self.log_start(&item.partition, &log);
                    let records = if item.offset < log_start_offset {
                        Err(KernelError::OffsetOutOfRange)
                    } else {
                        log.read(Offset(item.offset), item.max_bytes)
                            .await
                            .map_err(storage_error)
                    };
                    ReadOutput {
                        records,
                        high_watermark: log.high_watermark().0,
                        log_start_offset,
                    }
                }
            };
            outputs.push(output);
        }
        outputs
    }

    /// Signals `reply` once any local partition has data past its position, or at the timeout.
    pub fn wait_local(
        &self,
        positions: Vec<(TopicPartition, i64)>,
        timeout_ms: u32,
        reply: flume::Sender<()>,
    ) {
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        for (partition, offset) in positions {
            let Ok(log) = self.owned_log(&partition) else {
                continue;
            };
            if log.high_watermark().0 > offset {
                let _ = reply.try_send(());
                return;
            }
            let reply = reply.clone();
            let stopped = self.stopped();
            glommio::spawn_local(async move {
                let data_or_stop = future::or(log.wait_for_data(Offset(offset)), stopped);
                future::or(data_or_stop, glommio::timer::sleep(timeout)).await;
                let _ = reply.try_send(());
            })
            .detach();
        }
    }

    pub async fn list_offset_local(
        &self,
        partition: &TopicPartition,
        timestamp: i64,
    ) -> Result<(i64, i64), KernelError> {
        let log = self.owned_log(partition)?;
        let log_start = self.log_start(partition, &log);
        match timestamp {
            LIST_OFFSETS_LATEST => Ok((log.high_watermark().0, -1)),
            LIST_OFFSETS_EARLIEST => Ok((log_start, -1)),
            LIST_OFFSETS_MAX_TIMESTAMP => Ok(log
                .max_timestamp()
                .map_or((-1, -1), |(offset, ts)| (offset.0, ts))),
            ts if ts >= 0 => Ok(log
                .offset_for_timestamp(ts)
                .await
                .map_err(storage_error)?
                .map_or((-1, -1), |(offset, ts)| (offset.0.max(log_start), ts))),
            other => Err(KernelError::InvalidRequest(format!(
                "unsupported ListOffsets timestamp {other}"
            ))),
        }
    }

    /// Bytes of record batches each local partition holds (`None`: not stored here). A
    /// partition this shard's metadata places elsewhere (a snapshot newer or older than the
    /// asker's) counts as not stored: a size query is no reason to stop the node.
    pub fn partition_sizes_local(&self, partitions: &[TopicPartition]) -> Vec<Option<u64>> {
        partitions
            .iter()
            .map(|p| {
                if self.owner_of(p) != Some(self.id) {
                    return None;
                }
                self.logs
                    .get(&p.topic, p.partition)
                    .map(|log| log.size_bytes())
            })
            .collect()
    }

    /// Installs a new metadata snapshot: opens the partitions this shard now owns before the
    /// snapshot becomes visible, removes the logs of deleted topics after.
    pub async fn apply_metadata(&self, new: Arc<ClusterMetadata>) {
        let old = self.metadata();
        if new.version < old.version {
            warn!(
                shard = self.id.0,
                old = old.version,
                new = new.version,
                "stale metadata ignored"
            );
            return;
        }
        let replicas = self.replicas.borrow().clone();
        if let Some(replicas) = &replicas {
            replicas.stop_stale(&new).await;
        }
        for (name, topic) in &new.topics {
            let recreated = old.topics.get(name).is_some_and(|t| t.id != topic.id);
            if recreated {
                self.remove_topic_logs(name, old.topics[name].partition_shards.len())
                    .await;
            }
            let mut config = topic_config::log_config(&topic.configs);
            if topic.is_replicated() {
                config = topic_config::replicated_log_config(config);
            }
            for partition in 0..topic.partition_shards.len() {
                let Ok(index) = i32::try_from(partition) else {
                    break;
                };
                if new.shard_of(name, index, self.config.node_id, self.shard_count)
                    != Some(self.id.0)
                {
                    continue;
                }
                match self.logs.get(name, index) {
                    Some(log) => {
                        if log.config() != config {
                            log.set_config(config.clone());
                        }
                    }
                    None => {
                        if let Err(e) = self.logs.open(name, index, config.clone()).await {
                            error!(topic = %name, partition = index, error = %e, "cannot open partition log");
                        }
                    }
                }
            }
        }
        *self.metadata.borrow_mut() = new.clone();
        if let Some(replicas) = &replicas {
            replicas.start_new(self, &new).await;
        }
        for (name, topic) in &old.topics {
            if !new.topics.contains_key(name) {
                self.remove_topic_logs(name, topic.partition_shards.len())
                    .await;
            }
        }
    }

    async fn remove_topic_logs(&self, name: &str, partition_count: usize) {
        for partition in 0..partition_count {
            let Ok(index) = i32::try_from(partition) else {
                break;
            };
            if self.logs.get(name, index).is_some() {
                if let Err(e) = self.logs.remove(name, index).await {
                    error!(topic = %name, partition = index, error = %e, "cannot remove partition log");
                }
            }
        }
    }
}

/// Waits for every appended item as `acks` asks, with the request's timeout (0 = none).
pub async fn await_appends(
    acks: Acks,
    timeout_ms: u32,
    appended: Vec<Result<(Rc<PartitionLog>, AppendedRange), KernelError>>,
) -> Vec<ProduceResult> {
    let mut results = Vec::with_capacity(appended.len());
    for item in appended {
        let result = match item {
            Err(e) => Err(e),
            Ok((log, range)) => {
                let last = Offset(range.last_offset);
                let wait = async {
                    match acks {
                        Acks::All => log.wait_durable(last).await.map_err(storage_error),
                        Acks::Leader => log.wait_written(last).await.map_err(storage_error),
                        Acks::None => Ok(()),
                    }
                };
                let waited = if timeout_ms == 0 {
                    wait.await
                } else {
                    let timeout = Duration::from_millis(u64::from(timeout_ms));
                    future::or(wait, async {
                        glommio::timer::sleep(timeout).await;
                        Err(KernelError::RequestTimedOut)
                    })
                    .await
                };
                waited.map(|()| range)
            }
        };
        results.push(result);
    }
    results
}

/// Serves the ops other shards send to `shard`, one receive loop per peer.
pub fn spawn_mesh_receivers(shard: &Rc<Shard>, receivers: Vec<flume::Receiver<ShardOp>>) {
    for receiver in receivers {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Ok(op) = receiver.recv_async().await {
                handle_op(&shard, op);
                // Fairness: while a peer keeps the queue non-empty (a cross-shard QoS 0
                // publisher at full speed) every receive completes at once, so without this the
                // loop would keep the shard and the writers of the connections it fills would
                // starve until their outboxes overflow (measured with batched MQTT forwards:
                // 1.4M QoS 0 messages of 6M dropped in 10 s; none with it). One yield per op.
                future::yield_now().await;
            }
        })
        .detach();
    }
}

fn handle_op(shard: &Rc<Shard>, op: ShardOp) {
    match op {
        ShardOp::Produce {
            acks,
            timeout_ms,
            items,
            reply,
        } => {
            // Appended (or proposed) here, before any await, so ops are appended in the order
            // they arrive.
            let produced = shard.produce_local(acks, timeout_ms, items);
            glommio::spawn_local(async move {
                let results = produced.await;
                let _ = reply.send_async(results).await;
            })
            .detach();
        }
        ShardOp::Read { items, reply } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send_async(shard.read_local(items).await).await;
            })
            .detach();
        }
        ShardOp::WaitForData {
            positions,
            timeout_ms,
            reply,
        } => shard.wait_local(positions, timeout_ms, reply),
        ShardOp::ListOffset {
            partition,
            timestamp,
            reply,
        } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let result = shard.list_offset_local(&partition, timestamp).await;
                let _ = reply.send_async(result).await;
            })
            .detach();
        }
        ShardOp::PartitionSizes { partitions, reply } => {
            let _ = reply.try_send(shard.partition_sizes_local(&partitions));
        }
        ShardOp::ApplyMetadata { metadata, reply } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                shard.apply_metadata(metadata).await;
                let _ = reply.send_async(()).await;
            })
            .detach();
        }
        ShardOp::Controller { request, reply } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let Some(controller) = shard.controller.as_ref() else {
                    unreachable!("controller ops are sent to shard 0 only");
                };
                let result = controller.handle(&shard, request).await;
                let _ = reply.send_async(result).await;
            })
            .detach();
        }
        ShardOp::Mqtt(op) => crate::mqtt::handle_op(shard, op),
        ShardOp::Raft {
            group_id,
            request,
            reply,
        } => {
            let served = shard
                .replicas
                .borrow()
                .as_ref()
                .map(|replicas| replicas.dispatch(group_id, request));
            glommio::spawn_local(async move {
                let answer = match served {
                    Some(served) => served.await,
                    None => Err(RpcFault::new(
                        FaultCode::UnknownGroup,
                        format!("no Raft group {group_id} on this shard"),
                    )),
                };
                let _ = reply.send_async(answer).await;
            })
            .detach();
        }
        ShardOp::Group(request) => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                shard.groups.handle(&shard, request).await;
            })
            .detach();
        }
    }
}
