//! Cluster formation and the controller Raft group (`--seeds`).
//!
//! Shard 0 of every seed node runs the controller group (Raft group `CONTROLLER_GROUP_ID`):
//! its log is a partition log in `<data_dir>/__controller/0`, its state machine the replicated
//! cluster metadata (`state_machine`): brokers, topics, configs and placement. Shard 0 also
//! runs the node's `RpcServer` (on `--rpc-addr`) and `RpcClient`; other shards do not yet.
//!
//! - Formation: the lowest-id seed initializes the membership (every seed a voter) once;
//!   openraft refuses a second initialization, so restarts are idempotent. Each node then
//!   registers itself (a `RegisterBroker` command) until the replicated state shows it.
//! - Proposals: any node may change the metadata. It validates against its replicated state,
//!   writes the command itself when it leads, else forwards it over RPC (`FrameKind::Forward`)
//!   to the leader, which proposes it and answers with the entry's log index. The proposer
//!   waits until it has applied and merged that index, then checks the state for the outcome
//!   (commands are compare-and-set). Without a leader for `CONTROLLER_PROPOSE_TIMEOUT_MS` the
//!   request fails with NOT_CONTROLLER (Kafka clients retry it).
//! - Apply: every node applies committed commands in log order; a merger task folds the
//!   replicated state into the node's metadata (`Controller::merge_replicated`), which is
//!   persisted and broadcast to every shard's ShardTable as on a single node.
//! - Status: a task publishes the controller id and the group's replication progress in a
//!   `ClusterView` that every shard (Metadata, DescribeCluster) and the admin HTTP thread
//!   (`/v1/cluster`) read.
//!
//! Concurrency contract: `ClusterNode` is `!Send` and lives on shard 0; `RefCell` borrows never
//! span an await. `ClusterView` is the only part shared across threads (atomics and a mutex
//! held only to copy a value in or out).

pub mod replica;
pub mod state_machine;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_lite::future::BoxedLocal;
use openraft::rt::WatchReceiver;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use rmq_protocols::kernel::{KernelError, TopicPartition};
use rmq_raft::rpc::{
    Dispatcher, FaultCode, LinkFilter, RaftGroups, RpcClient, RpcFault, RpcRequest,
};
use rmq_raft::rpc::{RpcResponse, RpcServer};
use rmq_raft::{DigestStateMachine, PartitionLogStore, PartitionRaft};
use rmq_storage::{LogConfig, PartitionLog};
use serde_json::json;
use tracing::{info, warn};

use crate::constants::{
    BROKER_REGISTER_RETRY_MS, CLUSTER_STATUS_REFRESH_MS, CONTROLLER_COMMAND_BYTES_MAX,
    CONTROLLER_ELECTION_TIMEOUT_MAX_MS, CONTROLLER_ELECTION_TIMEOUT_MIN_MS,
    CONTROLLER_FORWARD_TIMEOUT_MS, CONTROLLER_GROUP_ID, CONTROLLER_HEARTBEAT_INTERVAL_MS,
    CONTROLLER_MERGE_POLL_MS, CONTROLLER_PROPOSE_TIMEOUT_MS, CONTROLLER_RETRY_INTERVAL_MS,
    LEADER_GOSSIP_GROUP_ID, LEADER_GOSSIP_TTL_MS,
};
use crate::metadata::{BrokerMeta, ClusterMetadata, TopicMeta};
use crate::shard::{now_ms, Shard, ShardId, ShardOp};
use replica::{ReplicaManager, ReplicaStatus};
use state_machine::{
    command_batch, decode_command, encode_command, ControllerCommand, ControllerShared,
    ControllerStateMachine,
};

pub type ControllerRaft = Raft<PartitionRaft, ControllerStateMachine>;

/// Answer bytes of a forwarded proposal: `FORWARD_OK` + the entry's log index (u64 BE), or
/// `FORWARD_ERROR` + a UTF-8 reason.
const FORWARD_OK: u8 = 0;
const FORWARD_ERROR: u8 = 1;

/// What every shard and the admin HTTP thread know about the cluster.
pub struct ClusterView {
    /// The controller leader's node id; -1 while there is none (or none known).
    controller_id: AtomicI32,
    /// `/v1/cluster`'s body but "partitions", refreshed by shard 0 every
    /// `CLUSTER_STATUS_REFRESH_MS`.
    status: Mutex<serde_json::Value>,
    /// The replicated partitions hosted here, as their Raft groups last reported.
    replicas: Mutex<BTreeMap<TopicPartition, ReplicaStatus>>,
    /// This node's id.
    pub node_id: i32,
    /// `--raft-election-timeout-ms`: partition groups' election timeout.
    pub election_timeout_ms: u64,
    /// `--fault-injection`: the RPC links the admin endpoint may cut; `None` without it.
    pub link_filter: Option<LinkFilter>,
    /// Leaderships other nodes reported (`replica::ReplicaManager::gossip_leaders`): by
    /// partition group id, the leader, its term and when it was heard.
    remote_leaders: Mutex<HashMap<u64, (i32, u64, Instant)>>,
}

impl ClusterView {
    pub fn new(
        node_id: i32,
        election_timeout_ms: u64,
        link_filter: Option<LinkFilter>,
    ) -> ClusterView {
        ClusterView {
            node_id,
            controller_id: AtomicI32::new(-1),
            status: Mutex::new(json!({"mode": "cluster", "controller": null})),
            replicas: Mutex::new(BTreeMap::new()),
            election_timeout_ms,
            link_filter,
            remote_leaders: Mutex::new(HashMap::new()),
        }
    }

    /// Records a leadership report of `node`: a report never replaces a newer term, and
    /// entries not heard of for `LEADER_GOSSIP_TTL_MS` are dropped.
    pub fn record_leaderships(&self, node: i32, leaderships: &[(u64, u64)]) {
        let Ok(mut leaders) = self.remote_leaders.lock() else {
            return;
        };
        let now = Instant::now();
        let ttl = Duration::from_millis(LEADER_GOSSIP_TTL_MS);
        leaders.retain(|_, (_, _, heard)| now.duration_since(*heard) <= ttl);
        for (group, term) in leaderships {
            match leaders.get(group) {
                Some((_, known, _)) if known > term => {}
                _ => {
                    leaders.insert(*group, (node, *term, now));
                }
            }
        }
    }

    /// The leader and term of partition group `group` as another node last reported them.
    pub fn remote_leader(&self, group: u64) -> Option<(i32, u64)> {
        let leaders = self.remote_leaders.lock().ok()?;
        let (leader, term, heard) = leaders.get(&group)?;
        (heard.elapsed() <= Duration::from_millis(LEADER_GOSSIP_TTL_MS)).then_some((*leader, *term))
    }

    pub fn set_replica(&self, partition: TopicPartition, status: ReplicaStatus) {
        if let Ok(mut replicas) = self.replicas.lock() {
            replicas.insert(partition, status);
        }
    }

    pub fn remove_replica(&self, partition: &TopicPartition) {
        if let Ok(mut replicas) = self.replicas.lock() {
            replicas.remove(partition);
        }
    }

    /// The status of a replica hosted here.
    pub fn replica(&self, partition: &TopicPartition) -> Option<ReplicaStatus> {
        self.replicas
            .lock()
            .ok()
            .and_then(|replicas| replicas.get(partition).cloned())
    }

    /// Every replica hosted here, for `/v1/cluster`.
    pub fn replicas_json(&self, node_id: i32) -> serde_json::Value {
        let Ok(replicas) = self.replicas.lock() else {
            return json!([]);
        };
        let entries: Vec<serde_json::Value> = replicas
            .iter()
            .map(|(partition, status)| {
                json!({
                    "topic": partition.topic,
                    "partition": partition.partition,
                    "shard": status.shard,
                    "replicas": status.replicas,
                    "in_sync": status.in_sync,
                    "leader": status.leader,
                    "serving_leader": status.serving_leader(node_id, self.election_timeout_ms),
                    "term": status.term,
                    "role": status.role,
                    "committed_index": status.committed_index,
                    "last_log_index": status.last_log_index,
                })
            })
            .collect();
        json!(entries)
    }

    pub fn controller_id(&self) -> i32 {
        self.controller_id.load(Ordering::Relaxed)
    }

    /// `/v1/cluster`'s body: the last published node status with "partitions" read now, so
    /// a replica that Metadata already reports is never missing from it.
    pub fn status(&self) -> serde_json::Value {
        let mut status = self
            .status
            .lock()
            .map(|status| status.clone())
            .unwrap_or_else(|_| json!({"error": "cluster status unavailable"}));
        if let Some(body) = status.as_object_mut() {
            body.insert("partitions".to_owned(), self.replicas_json(self.node_id));
        }
        status
    }

    fn publish(&self, controller_id: i32, status: serde_json::Value) {
        self.controller_id.store(controller_id, Ordering::Relaxed);
        if let Ok(mut slot) = self.status.lock() {
            *slot = status;
        }
    }
}

/// Routes the controller group's Raft messages to its Raft and forwarded proposals to the node.
struct ControllerDispatcher {
    groups: RaftGroups<ControllerStateMachine>,
    /// The partition groups hosted on this shard (`replica`).
    partitions: Rc<RaftGroups<DigestStateMachine>>,
    node: RefCell<Weak<ClusterNode>>,
    /// Shard 0, to hand other shards' partition groups their requests over the mesh.
    shard: Weak<Shard>,
}

impl ControllerDispatcher {
    /// A request for a partition group: served here if shard 0 hosts it, else sent to the
    /// shard that does.
    fn dispatch_partition(
        &self,
        group_id: u64,
        request: RpcRequest,
    ) -> BoxedLocal<Result<RpcResponse, RpcFault>> {
        if self.partitions.get(group_id).is_some() {
            return self.partitions.dispatch(group_id, request);
        }
        let owner = self
            .node
            .borrow()
            .upgrade()
            .and_then(|node| node.replicas.shard_of_group(group_id));
        let shard = self.shard.upgrade();
        Box::pin(async move {
            let unknown = || {
                RpcFault::new(
                    FaultCode::UnknownGroup,
                    format!("no Raft group {group_id} here"),
                )
            };
            let (Some(owner), Some(shard)) = (owner, shard) else {
                return Err(unknown());
            };
            if owner == shard.id.0 {
                return Err(unknown());
            }
            let (reply, answer) = flume::bounded(1);
            let op = ShardOp::Raft {
                group_id,
                request,
                reply,
            };
            shard
                .send(ShardId(owner), op)
                .await
                .map_err(|e| RpcFault::new(FaultCode::UnknownGroup, e.to_string()))?;
            answer
                .recv_async()
                .await
                .map_err(|_| RpcFault::new(FaultCode::UnknownGroup, "the shard stopped"))?
        })
    }
}

impl Dispatcher for ControllerDispatcher {
    fn dispatch(
        &self,
        group_id: u64,
        request: RpcRequest,
    ) -> BoxedLocal<Result<RpcResponse, RpcFault>> {
        match request {
            RpcRequest::Forward(bytes) => {
                let node = self.node.borrow().upgrade();
                Box::pin(async move {
                    match node {
                        Some(node) if group_id == CONTROLLER_GROUP_ID => {
                            Ok(RpcResponse::Forward(node.serve_forward(&bytes).await))
                        }
                        Some(node) if group_id == LEADER_GOSSIP_GROUP_ID => {
                            match replica::decode_leaderships(&bytes) {
                                Some((from, leaderships)) => {
                                    node.view.record_leaderships(from, &leaderships);
                                    Ok(RpcResponse::Forward(Vec::new()))
                                }
                                None => Err(RpcFault::new(
                                    FaultCode::BadRequest,
                                    "malformed leadership report",
                                )),
                            }
                        }
                        _ => Err(RpcFault::new(
                            FaultCode::UnknownGroup,
                            format!("no controller group {group_id} here"),
                        )),
                    }
                })
            }
            other if group_id == CONTROLLER_GROUP_ID => self.groups.dispatch(group_id, other),
            other => self.dispatch_partition(group_id, other),
        }
    }
}

/// This node's member of the controller group; see the module comment.
pub struct ClusterNode {
    node_id: i32,
    raft: ControllerRaft,
    shared: Rc<ControllerShared>,
    client: RpcClient,
    server: RefCell<Option<RpcServer>>,
    log: Rc<PartitionLog>,
    /// Highest controller log index this node has merged into its metadata (or found merged
    /// already at startup).
    merged_index: Cell<u64>,
    view: Arc<ClusterView>,
    /// This node's replicas of replicated partitions.
    pub replicas: Rc<ReplicaManager>,
    /// The seeds to ask while no controller leader is known (a joining node).
    seeds: Vec<(u64, String)>,
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
}

/// The controller log: kept forever (no retention), room for the largest command.
fn controller_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024 * 1024,
        retention_ms: -1,
        retention_bytes: -1,
        max_message_bytes: CONTROLLER_COMMAND_BYTES_MAX + 1024 * 1024,
        ..LogConfig::default()
    }
}

fn raft_config() -> anyhow::Result<Arc<Config>> {
    let config = Config {
        cluster_name: "rmq-controller".to_string(),
        heartbeat_interval: CONTROLLER_HEARTBEAT_INTERVAL_MS,
        election_timeout_min: CONTROLLER_ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: CONTROLLER_ELECTION_TIMEOUT_MAX_MS,
        // The log is the whole history of the metadata and stays small; the state machine is
        // rebuilt from it at startup.
        snapshot_policy: SnapshotPolicy::Never,
        ..restart_safe_config()
    };
    Ok(Arc::new(config.validate().map_err(|e| {
        anyhow::anyhow!("controller Raft config: {e}")
    })?))
}

/// openraft's defaults with the two settings every group of ours needs for restarts:
///
/// - **Pre-vote.** A node that comes back (or was cut off) campaigns only once a quorum would
///   vote for it, i.e. once their leader's lease ran out. Without it the restarted node's
///   first election timeout raised the term of every group it hosts, each live leader stepped
///   down on seeing the higher term, and the partitions had no leader for an election (then
///   the balancer moved them back: two leader changes per partition per restart).
/// - **No leader restore.** A leader that restarts must win an election again instead of
///   resuming in its old term: openraft replicates an entry once the local append is
///   submitted, before it is durable here, so after a kill -9 followers can hold entries of
///   that term this node lost, and a resumed leader would write different entries under the
///   same (term, index), which followers take as already present.
pub(crate) fn restart_safe_config() -> Config {
    Config {
        enable_pre_vote: Some(true),
        enable_leader_restore: Some(false),
        ..Config::default()
    }
}

/// Waits for `future` at most `timeout`; `None` past it.
pub(crate) async fn within<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await
}

fn node_u64(node_id: i32) -> u64 {
    u64::try_from(node_id).unwrap_or(0)
}

impl ClusterNode {
    /// Opens the controller log, binds the RPC server, starts the controller Raft (and
    /// initializes the membership on the lowest seed), then the merger, status and
    /// registration tasks. Returns the node and the bound RPC address. Shard 0 only, after
    /// the Kafka listener is bound (registration advertises it).
    pub async fn start(
        shard: &Rc<Shard>,
        view: Arc<ClusterView>,
    ) -> anyhow::Result<(Rc<ClusterNode>, SocketAddr)> {
        let config = &shard.config;
        let node_id = config.node_id;
        let dir = config
            .data_dir
            .join("__controller")
            .join(CONTROLLER_GROUP_ID.to_string());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let log = PartitionLog::open(dir.clone(), controller_log_config())
            .await
            .with_context(|| format!("cannot open the controller log in {}", dir.display()))?;
        let store = PartitionLogStore::open(log.clone(), dir.clone())
            .await
            .with_context(|| format!("cannot open the controller Raft log {}", dir.display()))?;
        let (shared, changed) = ControllerShared::new();
        let partitions = Rc::new(RaftGroups::default());
        let dispatcher = Rc::new(ControllerDispatcher {
            groups: RaftGroups::default(),
            partitions: partitions.clone(),
            node: RefCell::new(Weak::new()),
            shard: Rc::downgrade(shard),
        });
        let server = RpcServer::bind(
            &config.rpc_addr,
            node_u64(node_id),
            dispatcher.clone(),
            view.link_filter.clone(),
        )
        .with_context(|| format!("--rpc-addr: cannot listen on {}", config.rpc_addr))?;
        let rpc_addr = server.local_addr();
        let client = RpcClient::new(node_u64(node_id), view.link_filter.clone());
        let replicas = Rc::new(ReplicaManager::new(
            node_id,
            client.clone(),
            partitions,
            view.clone(),
            view.election_timeout_ms,
        )?);
        let raft = Raft::new(
            node_u64(node_id),
            raft_config()?,
            client.network_factory(CONTROLLER_GROUP_ID),
            store,
            ControllerStateMachine::new(shared.clone()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the controller Raft: {e}"))?;
        dispatcher.groups.insert(CONTROLLER_GROUP_ID, raft.clone());
        let lowest = config.seeds.iter().map(|seed| seed.node_id).min();
        if lowest == Some(node_id) {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| anyhow::anyhow!("controller Raft: {e}"))?;
            if !initialized {
                let members: BTreeMap<u64, BasicNode> = config
                    .seeds
                    .iter()
                    .map(|seed| (node_u64(seed.node_id), BasicNode::new(&seed.rpc_addr)))
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => info!(
                        seeds = config.seeds.len(),
                        "controller group initialized with every seed as a voter"
                    ),
                    // Another start got there first (the log is not empty): nothing to do.
                    Err(error) => warn!(%error, "controller group initialization skipped"),
                }
            }
        }
        let merged = shard
            .controller
            .as_ref()
            .map_or(0, |controller| controller.state().controller_applied_index);
        let node = Rc::new(ClusterNode {
            node_id,
            raft,
            shared,
            client,
            server: RefCell::new(Some(server)),
            log,
            merged_index: Cell::new(merged),
            view,
            replicas: replicas.clone(),
            seeds: config
                .seeds
                .iter()
                .filter(|seed| seed.node_id != node_id)
                .map(|seed| (node_u64(seed.node_id), seed.rpc_addr.clone()))
                .collect(),
            tasks: RefCell::new(Vec::new()),
        });
        *dispatcher.node.borrow_mut() = Rc::downgrade(&node);
        *shard.replicas.borrow_mut() = Some(replicas.clone());
        replicas.start_new(shard, &shard.metadata()).await;
        let tasks = vec![
            glommio::spawn_local(merge_loop(shard.clone(), Rc::downgrade(&node), changed)).detach(),
            glommio::spawn_local(status_loop(shard.clone(), Rc::downgrade(&node))).detach(),
            glommio::spawn_local(replicas.clone().balance_leaders()).detach(),
            glommio::spawn_local(replicas.clone().gossip_leaders(shard.clone())).detach(),
            glommio::spawn_local(register(shard.clone(), Rc::downgrade(&node), rpc_addr)).detach(),
        ];
        *node.tasks.borrow_mut() = tasks;
        info!(node = node_id, rpc = %rpc_addr, "controller group member started");
        Ok((node, rpc_addr))
    }

    /// Stops the tasks, the Raft, the RPC server and client, and closes the controller log.
    pub async fn shutdown(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
        self.replicas.shutdown().await;
        if let Err(error) = self.raft.shutdown().await {
            warn!(%error, "controller Raft shutdown failed");
        }
        if let Some(server) = self.server.borrow_mut().take() {
            server.shutdown();
        }
        self.client.shutdown();
        if let Err(error) = self.log.close().await {
            warn!(%error, "closing the controller log failed");
        }
    }

    /// The replicated topics and brokers as this node has applied them.
    pub fn replicated_topics_and_brokers(
        &self,
    ) -> (BTreeMap<String, TopicMeta>, BTreeMap<i32, BrokerMeta>) {
        let state = self.shared.state.borrow();
        (state.topics.clone(), state.brokers.clone())
    }

    /// Proposes what changed between `base` (the replicated topics an operation started
    /// from) and `next`, one topic at a time, each answered once merged here.
    pub async fn propose_diff(
        &self,
        base: &ClusterMetadata,
        next: &ClusterMetadata,
    ) -> Result<(), KernelError> {
        let mut commands = Vec::new();
        for (name, meta) in &next.topics {
            let expected = base.topics.get(name);
            if expected != Some(meta) {
                commands.push(ControllerCommand::PutTopic {
                    name: name.clone(),
                    expected: expected.cloned(),
                    meta: meta.clone(),
                });
            }
        }
        for (name, meta) in &base.topics {
            if !next.topics.contains_key(name) {
                commands.push(ControllerCommand::DeleteTopic {
                    name: name.clone(),
                    id: meta.id,
                });
            }
        }
        for command in commands {
            self.propose_and_wait(command).await?;
        }
        Ok(())
    }

    /// Proposes `command`, waits until this node has merged it, and checks it took effect.
    async fn propose_and_wait(&self, command: ControllerCommand) -> Result<(), KernelError> {
        let bytes =
            encode_command(&command).map_err(|e| KernelError::InvalidRequest(format!("{e}")))?;
        let index = self.propose(bytes).await?;
        let deadline = Instant::now() + Duration::from_millis(CONTROLLER_PROPOSE_TIMEOUT_MS);
        while self.merged_index.get() < index {
            if Instant::now() > deadline {
                return Err(KernelError::RequestTimedOut);
            }
            glommio::timer::sleep(Duration::from_millis(CONTROLLER_MERGE_POLL_MS)).await;
        }
        if self.shared.state.borrow().reflects(&command) {
            Ok(())
        } else {
            Err(KernelError::InvalidRequest(
                "the cluster metadata changed concurrently; retry the request".to_string(),
            ))
        }
    }

    /// Gets `command_bytes` committed through the current leader; its log index.
    async fn propose(&self, command_bytes: Vec<u8>) -> Result<u64, KernelError> {
        let deadline = Instant::now() + Duration::from_millis(CONTROLLER_PROPOSE_TIMEOUT_MS);
        loop {
            let (leader, leader_addr) = {
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow_watched();
                let leader = metrics.current_leader;
                let addr = leader.and_then(|id| {
                    metrics
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .map(|node| node.addr.clone())
                });
                (leader, addr)
            };
            let outcome = match (leader, leader_addr) {
                (Some(leader), _) if leader == node_u64(self.node_id) => {
                    self.write_local(command_bytes.clone()).await
                }
                (Some(leader), Some(addr)) => self
                    .client
                    .forward(
                        leader,
                        &addr,
                        CONTROLLER_GROUP_ID,
                        command_bytes.clone(),
                        Duration::from_millis(CONTROLLER_FORWARD_TIMEOUT_MS),
                    )
                    .await
                    .and_then(|answer| decode_forward_answer(&answer)),
                // No leader known (a joining node that is not a member yet): ask the seeds
                // in turn; a seed that leads admits this node and writes the command.
                _ => self.forward_to_seeds(&command_bytes).await,
            };
            match outcome {
                Ok(index) => return Ok(index),
                Err(reason) => {
                    if Instant::now() > deadline {
                        warn!(%reason, "controller proposal failed");
                        return Err(KernelError::NotController);
                    }
                }
            }
            glommio::timer::sleep(Duration::from_millis(CONTROLLER_RETRY_INTERVAL_MS)).await;
        }
    }

    async fn forward_to_seeds(&self, command_bytes: &[u8]) -> Result<u64, String> {
        let mut last_error = "no controller leader".to_string();
        for (seed, addr) in &self.seeds {
            let answer = self
                .client
                .forward(
                    *seed,
                    addr,
                    CONTROLLER_GROUP_ID,
                    command_bytes.to_vec(),
                    Duration::from_millis(CONTROLLER_FORWARD_TIMEOUT_MS),
                )
                .await
                .and_then(|answer| decode_forward_answer(&answer));
            match answer {
                Ok(index) => return Ok(index),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// A broker registering that is not in the controller group yet (it joined by pointing at
    /// a seed) becomes a learner: it receives the log and applies it like every member.
    async fn admit(&self, command: &ControllerCommand) -> Result<(), String> {
        let ControllerCommand::RegisterBroker { broker, .. } = command else {
            return Ok(());
        };
        let id = node_u64(broker.node_id);
        let known = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            if metrics.current_leader != Some(node_u64(self.node_id)) {
                return Ok(());
            }
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .is_some()
        };
        if known {
            return Ok(());
        }
        let timeout = Duration::from_millis(CONTROLLER_FORWARD_TIMEOUT_MS);
        match within(
            timeout,
            self.raft
                .add_learner(id, BasicNode::new(&broker.rpc_addr), false),
        )
        .await
        {
            Some(Ok(_)) => {
                info!(node = broker.node_id, rpc = %broker.rpc_addr, "node joined the controller group as a learner");
                Ok(())
            }
            Some(Err(error)) => Err(error.to_string()),
            None => Err("adding the learner timed out".to_string()),
        }
    }

    /// Appends a command as the leader and waits for its commit and apply; its log index.
    async fn write_local(&self, command_bytes: Vec<u8>) -> Result<u64, String> {
        let batch = command_batch(command_bytes, now_ms()).map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(CONTROLLER_FORWARD_TIMEOUT_MS);
        match within(timeout, self.raft.client_write(batch)).await {
            Some(Ok(response)) => Ok(response.log_id.index),
            Some(Err(error)) => Err(error.to_string()),
            None => Err("the controller write timed out".to_string()),
        }
    }

    /// A proposal forwarded by another node: checked, written if this node leads.
    async fn serve_forward(&self, bytes: &[u8]) -> Vec<u8> {
        let outcome = match decode_command(bytes) {
            Err(error) => Err(format!("rejected: {error}")),
            Ok(command) => match self.admit(&command).await {
                Ok(()) => self.write_local(bytes.to_vec()).await,
                Err(error) => Err(error),
            },
        };
        match outcome {
            Ok(index) => {
                let mut answer = vec![FORWARD_OK];
                answer.extend_from_slice(&index.to_be_bytes());
                answer
            }
            Err(reason) => {
                let mut answer = vec![FORWARD_ERROR];
                answer.extend_from_slice(reason.as_bytes());
                answer
            }
        }
    }
}

fn decode_forward_answer(answer: &[u8]) -> Result<u64, String> {
    match answer.split_first() {
        Some((&FORWARD_OK, index)) => index
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| "malformed forward answer".to_string()),
        Some((&FORWARD_ERROR, reason)) => Err(String::from_utf8_lossy(reason).into_owned()),
        _ => Err("malformed forward answer".to_string()),
    }
}

/// Folds the replicated state into the node's metadata whenever it changed.
async fn merge_loop(shard: Rc<Shard>, node: Weak<ClusterNode>, changed: flume::Receiver<()>) {
    // The state machine starts empty (content version 0) and replays the log.
    let mut merged_content = 0u64;
    while changed.recv_async().await.is_ok() {
        let Some(node) = node.upgrade() else { return };
        let applied = node.shared.applied_index.get();
        let content = node.shared.content_version.get();
        if content != merged_content {
            let state = node.shared.state.borrow().clone();
            if let Some(controller) = shard.controller.as_ref() {
                let merged = controller
                    .merge_replicated(
                        &shard,
                        state.cluster_id,
                        state.topics,
                        state.brokers,
                        applied,
                    )
                    .await;
                if let Err(error) = merged {
                    warn!(%error, "cannot merge the controller state; retrying");
                    glommio::timer::sleep(Duration::from_millis(CONTROLLER_RETRY_INTERVAL_MS))
                        .await;
                    node.shared.wake();
                    continue;
                }
            }
            merged_content = content;
        }
        if applied > node.merged_index.get() {
            node.merged_index.set(applied);
        }
    }
}

/// Registers this node (advertised Kafka address, RPC address) until the state shows it.
/// A seed registers the address its seed entry names; a joining node the host of --rpc-addr
/// (the advertised Kafka host when that is a wildcard) with the port it bound.
async fn register(shard: Rc<Shard>, node: Weak<ClusterNode>, bound: SocketAddr) {
    let config = shard.config.clone();
    let kafka = shard.node();
    let rpc_addr = config
        .seeds
        .iter()
        .find(|seed| seed.node_id == config.node_id)
        .map(|seed| seed.rpc_addr.clone())
        .unwrap_or_else(|| {
            let host = config.rpc_addr.rsplit_once(':').map_or("", |(host, _)| {
                host.trim_start_matches('[').trim_end_matches(']')
            });
            let host = match host {
                "" | "0.0.0.0" | "::" => kafka.host.as_str(),
                specific => specific,
            };
            if host.contains(':') {
                format!("[{host}]:{}", bound.port())
            } else {
                format!("{host}:{}", bound.port())
            }
        });
    let command = ControllerCommand::RegisterBroker {
        broker: BrokerMeta {
            node_id: config.node_id,
            host: kafka.host,
            port: kafka.port,
            rpc_addr,
        },
        cluster_id: shard.metadata().cluster_id.clone(),
    };
    loop {
        let Some(live) = node.upgrade() else { return };
        if live.shared.state.borrow().reflects(&command) {
            info!(
                node = config.node_id,
                "registered with the controller group"
            );
            return;
        }
        if let Err(error) = live.propose_and_wait(command.clone()).await {
            tracing::debug!(%error, "broker registration not done yet");
        }
        drop(live);
        glommio::timer::sleep(Duration::from_millis(BROKER_REGISTER_RETRY_MS)).await;
    }
}

/// Publishes the controller id and replication progress in the `ClusterView`.
async fn status_loop(shard: Rc<Shard>, node: Weak<ClusterNode>) {
    loop {
        let Some(live) = node.upgrade() else { return };
        let (controller_id, status) = live.status(&shard);
        live.view.publish(controller_id, status);
        drop(live);
        glommio::timer::sleep(Duration::from_millis(CLUSTER_STATUS_REFRESH_MS)).await;
    }
}

impl ClusterNode {
    fn status(&self, shard: &Shard) -> (i32, serde_json::Value) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader.and_then(|id| i32::try_from(id).ok());
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let metadata = shard.metadata();
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        let mut ids: Vec<i32> = metadata.brokers.keys().copied().collect();
        for voter in &voters {
            if let Ok(id) = i32::try_from(*voter) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        let nodes: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                let broker = metadata.brokers.get(id);
                let matched = if *id == self.node_id {
                    Some(last_log_index)
                } else {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(&node_u64(*id)))
                        .map(|matched| matched.as_ref().map_or(0, |log_id| log_id.index))
                };
                json!({
                    "node_id": id,
                    "host": broker.map(|b| b.host.clone()),
                    "port": broker.map(|b| b.port),
                    "rpc_addr": broker.map(|b| b.rpc_addr.clone()),
                    "registered": broker.is_some(),
                    "voter": voters.contains(&node_u64(*id)),
                    "matched_index": matched,
                    "lag": matched.map(|m| last_log_index.saturating_sub(m)),
                })
            })
            .collect();
        let status = json!({
            "mode": "cluster",
            "node_id": self.node_id,
            "cluster_id": metadata.cluster_id,
            "controller": leader,
            "state": format!("{:?}", metrics.state),
            "term": metrics.current_term,
            "last_log_index": last_log_index,
            "committed_index": metrics.local_committed.map(|id| id.index),
            "applied_index": metrics.last_applied.map(|id| id.index),
            "merged_index": self.merged_index.get(),
            // Lags are known to the leader only; a follower reports its own progress.
            "lag_reported_by": if leader == Some(self.node_id) { "leader" } else { "follower" },
            "nodes": nodes,
        });
        (leader.unwrap_or(-1), status)
    }
}
