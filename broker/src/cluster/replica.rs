//! Replicated partitions: every partition of a topic with replication factor > 1 is a Raft
//! group over its replicas (`TopicMeta::partition_replicas`), hosted on the partition's shard
//! of each replica node; every shard of a cluster node has a `ReplicaManager` with its own RPC
//! client (connections per peer node and shard), and the node's RPC server on shard 0 hands
//! requests for other shards' groups over the mesh (`ShardOp::Raft`). The Raft log IS the partition log
//! (`rmq_raft::PartitionLogStore`): entries are the producers' record batches, the term goes in
//! `partitionLeaderEpoch`, and readers see committed entries only (the log's commit limit is
//! the high watermark).
//!
//! - Lifecycle: `ReplicaManager::sync` starts a group for every local replica the metadata
//!   names (the preferred leader, the first replica, initializes the membership once) and stops
//!   the groups of deleted or recreated topics before their logs are removed.
//! - Produce: only the leader that heard from a quorum within an election timeout proposes;
//!   anything else answers NOT_LEADER_OR_FOLLOWER before proposing, so the client refreshes
//!   its metadata, and so does a proposal Raft refused or truncated (it is not written). A
//!   batch's idempotent sequence is checked against the log before it is proposed; produce
//!   requests check and submit in arrival order (a FIFO turn, so a connection's pipelined
//!   requests keep their order); one producer's batches are proposed one at a time (a retry
//!   waits for the proposal it repeats),
//!   so the log never meets a duplicate. A retry of a batch already in the log is answered
//!   with its offsets once they are committed, or with NOT_LEADER_OR_FOLLOWER once a new
//!   leader truncated it (`wait_fate`). acks=all answers after the quorum commit; acks=1
//!   answers once the leader's log store appended every batch (`RecordBatch::
//!   with_append_notice`), before any follower has it (Kafka's acks=1: lost if the leader dies
//!   before replicating); acks=0 answers nothing.
//! - Status: a task per replica copies its Raft metrics into the node's `ClusterView`
//!   (`ReplicaStatus`), which every shard reads for Metadata (leader, term as leader epoch,
//!   replicas, in-sync replicas) and the admin thread for `/v1/cluster`. Each node also tells
//!   the others which partitions it leads (`gossip_leaders`), so a node hosting no replica of a
//!   partition still names its leader.
//!
//! Concurrency contract: `ReplicaManager` and `Replica` are `!Send` and live on their shard;
//! `RefCell` borrows never span an await. Other shards reach a replica through the mesh (Kafka
//! requests are routed to the partition's shard as for any partition). `ReplicaStatus` values
//! cross threads inside `ClusterView`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::BoxedLocal;
use futures_lite::StreamExt;
use openraft::error::ClientWriteError;
use openraft::rt::WatchReceiver;
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use rmq_protocols::kernel::{Acks, AppendedRange, KernelError, TopicPartition};
use rmq_raft::rpc::{Dispatcher, RaftGroups, RpcClient, RpcFault, RpcRequest, RpcResponse};
use rmq_raft::{DigestStateMachine, PartitionLogStore, PartitionRaft, RecordBatch};
use rmq_storage::{BatchHeader, Offset, PartitionLog};
use tracing::{info, warn};

use super::{restart_safe_config, within, ClusterView};
use crate::constants::{
    CONTROLLER_GROUP_ID, LEADER_BALANCE_INTERVAL_MS, LEADER_GOSSIP_GROUP_ID,
    LEADER_GOSSIP_INTERVAL_MS, LEADER_GOSSIP_PARTITIONS_MAX, PARTITION_PRODUCER_WAIT_POLL_MS,
    PARTITION_PROPOSE_TIMEOUT_DEFAULT_MS,
};
use crate::metadata::{ClusterMetadata, TopicMeta};
use crate::shard::{batch_error, storage_error, ProduceItem, ProduceResult, Shard};

pub type PartitionGroupRaft = Raft<PartitionRaft, DigestStateMachine>;

/// One local replica as the node's `ClusterView` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The shard of this node hosting the replica.
    pub shard: u16,
    pub replicas: Vec<i32>,
    /// The leader this replica knows of.
    pub leader: Option<i32>,
    pub term: u64,
    /// openraft's server state: Leader, Follower, Candidate, Learner, Shutdown.
    pub role: String,
    pub committed_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// On a leader: the replicas whose log matches within `ISR_LAG_ENTRIES_MAX` entries.
    pub in_sync: Vec<i32>,
    /// On a leader: when a quorum last acknowledged it (`None`: never, or not a leader).
    pub quorum_acked_at: Option<Instant>,
}

/// A replica more entries behind than this is out of the in-sync set Metadata reports.
const ISR_LAG_ENTRIES_MAX: u64 = 1_000;

impl ReplicaStatus {
    /// The leader clients should use: `None` while unknown, or when this node leads but has
    /// not heard from a quorum for an election timeout.
    pub fn serving_leader(&self, node_id: i32, election_timeout_ms: u64) -> Option<i32> {
        let leader = self.leader?;
        if leader != node_id {
            return Some(leader);
        }
        (self.role == "Leader" && quorum_fresh(self.quorum_acked_at, election_timeout_ms))
            .then_some(leader)
    }
}

/// The leader lease of a partition group for `--raft-election-timeout-ms T`: T/2, openraft's
/// `election_timeout_max`. Voters refuse candidates until it ran out since the leader last
/// reached them, so a dead leader is replaced between T/2 and T after its last heartbeat.
pub fn leader_lease_ms(election_timeout_ms: u64) -> u64 {
    (election_timeout_ms / 2).max(20)
}

/// The serving rule both the produce path (live metrics) and Metadata (the published status)
/// apply: a leader serves while a quorum acknowledged it within the leader lease (after that
/// it may be partitioned away and the majority side may elect another); `None`: just elected,
/// nothing acknowledged yet.
fn quorum_fresh(acked_at: Option<Instant>, election_timeout_ms: u64) -> bool {
    acked_at.is_none_or(|at| {
        at.elapsed() <= Duration::from_millis(leader_lease_ms(election_timeout_ms))
    })
}

/// The Raft group id of a partition: FNV-1a over the topic id and partition, top bit set (the
/// controller group is 0). Every node computes the same id from the replicated metadata.
pub fn group_id(topic_id: &[u8; 16], partition: i32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in topic_id.iter().chain(partition.to_be_bytes().iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    let id = hash | (1 << 63);
    assert_ne!(id, CONTROLLER_GROUP_ID);
    assert_ne!(id, LEADER_GOSSIP_GROUP_ID);
    id
}

/// One local replica of a partition.
pub struct Replica {
    pub partition: TopicPartition,
    pub topic_id: [u8; 16],
    pub group_id: u64,
    pub replicas: Vec<i32>,
    shard: u16,
    raft: PartitionGroupRaft,
    log: Rc<PartitionLog>,
    node_id: i32,
    election_timeout_ms: u64,
    /// Proposals Raft has not answered yet, per idempotent producer id.
    in_flight: RefCell<HashMap<i64, usize>>,
    /// One produce at a time checks and submits its batches, in arrival order.
    propose_turn: glommio::sync::Semaphore,
    status_task: RefCell<Option<glommio::task::JoinHandle<()>>>,
    stopped: Cell<bool>,
}

/// The partition groups of this node (shard 0); see the module comment.
pub struct ReplicaManager {
    node_id: i32,
    client: RpcClient,
    groups: Rc<RaftGroups<DigestStateMachine>>,
    replicas: RefCell<BTreeMap<TopicPartition, Rc<Replica>>>,
    /// Every partition group this node hosts, with its shard (for the RPC server on shard 0).
    group_shards: RefCell<HashMap<u64, u16>>,
    view: Arc<ClusterView>,
    raft_config: Arc<Config>,
    election_timeout_ms: u64,
}

fn partition_raft_config(election_timeout_ms: u64) -> anyhow::Result<Arc<Config>> {
    let config = Config {
        cluster_name: "rmq-partition".to_string(),
        // A follower campaigns after a random T/4..T/2 without a heartbeat; openraft grants
        // votes once the old leader's lease (election_timeout_max = T/2) ran out, so the first
        // campaign is refused and the second, another T/4..T/2 later, wins: a dead leader is
        // replaced between T/2 and T after its last heartbeat (with the lease at T, this took
        // T..2T: 1.85 s median for T = 1 s). Heartbeats every T/10 leave five of them per
        // lease on a busy shard.
        heartbeat_interval: (election_timeout_ms / 10).max(5),
        election_timeout_min: (election_timeout_ms / 4).max(10),
        election_timeout_max: leader_lease_ms(election_timeout_ms),
        // The log is the data: a snapshot could not carry it, and purging would let a lagging
        // follower need one. Entries leave the log only with the partition.
        snapshot_policy: SnapshotPolicy::Never,
        ..restart_safe_config()
    };
    Ok(Arc::new(config.validate().map_err(|e| {
        anyhow::anyhow!("partition Raft config: {e}")
    })?))
}

fn node_u64(node_id: i32) -> u64 {
    u64::try_from(node_id).unwrap_or(0)
}

fn role_name(state: ServerState) -> String {
    format!("{state:?}")
}

impl ReplicaManager {
    pub fn new(
        node_id: i32,
        client: RpcClient,
        groups: Rc<RaftGroups<DigestStateMachine>>,
        view: Arc<ClusterView>,
        election_timeout_ms: u64,
    ) -> anyhow::Result<ReplicaManager> {
        Ok(ReplicaManager {
            node_id,
            client,
            groups,
            replicas: RefCell::new(BTreeMap::new()),
            group_shards: RefCell::new(HashMap::new()),
            view,
            raft_config: partition_raft_config(election_timeout_ms)?,
            election_timeout_ms,
        })
    }

    pub fn get(&self, partition: &TopicPartition) -> Option<Rc<Replica>> {
        self.replicas.borrow().get(partition).cloned()
    }

    /// Serves a Raft RPC for one of this shard's groups.
    pub fn dispatch(
        &self,
        group_id: u64,
        request: RpcRequest,
    ) -> BoxedLocal<Result<RpcResponse, RpcFault>> {
        self.groups.dispatch(group_id, request)
    }

    /// The shard of this node hosting partition group `group_id`, per the metadata last
    /// applied (`start_new`).
    pub fn shard_of_group(&self, group_id: u64) -> Option<u16> {
        self.group_shards.borrow().get(&group_id).copied()
    }

    /// Stops the groups `metadata` no longer names here (deleted or recreated topics, moved
    /// replicas). Runs before their logs are removed.
    pub async fn stop_stale(&self, metadata: &ClusterMetadata) {
        let stale: Vec<Rc<Replica>> = self
            .replicas
            .borrow()
            .values()
            .filter(|replica| !self.names(metadata, replica))
            .cloned()
            .collect();
        for replica in stale {
            self.replicas.borrow_mut().remove(&replica.partition);
            self.stop(&replica).await;
        }
    }

    fn names(&self, metadata: &ClusterMetadata, replica: &Replica) -> bool {
        metadata
            .topics
            .get(&replica.partition.topic)
            .filter(|topic| topic.id == replica.topic_id)
            .and_then(|topic| topic.replicas_of(replica.partition.partition))
            .is_some_and(|replicas| replicas.contains(&self.node_id))
    }

    /// Starts a group for every replica `metadata` places on this shard that is not running
    /// yet. The partition logs are open (the shard opened them from the same metadata).
    pub async fn start_new(&self, shard: &Shard, metadata: &ClusterMetadata) {
        let mut group_shards = HashMap::new();
        for (name, topic) in &metadata.topics {
            for (index, replicas) in topic.partition_replicas.iter().enumerate() {
                let Ok(partition) = i32::try_from(index) else {
                    break;
                };
                if !replicas.contains(&self.node_id) {
                    continue;
                }
                let Some(owner) =
                    metadata.shard_of(name, partition, self.node_id, shard.shard_count)
                else {
                    continue;
                };
                group_shards.insert(group_id(&topic.id, partition), owner);
                if owner != shard.id.0 {
                    continue;
                }
                let key = TopicPartition {
                    topic: name.clone(),
                    partition,
                };
                if self.replicas.borrow().contains_key(&key) {
                    continue;
                }
                match self
                    .start(shard, metadata, topic, key.clone(), replicas)
                    .await
                {
                    Ok(replica) => {
                        self.replicas.borrow_mut().insert(key, replica);
                    }
                    Err(error) => {
                        warn!(topic = %name, partition, error = %format!("{error:#}"), "cannot start the partition's Raft group");
                    }
                }
            }
        }
        *self.group_shards.borrow_mut() = group_shards;
    }

    async fn start(
        &self,
        shard: &Shard,
        metadata: &ClusterMetadata,
        topic: &TopicMeta,
        partition: TopicPartition,
        replicas: &[i32],
    ) -> anyhow::Result<Rc<Replica>> {
        let log = shard
            .logs
            .get(&partition.topic, partition.partition)
            .ok_or_else(|| anyhow::anyhow!("the partition log is not open"))?;
        let dir = shard
            .logs
            .partition_dir(&partition.topic, partition.partition);
        let store = PartitionLogStore::open(log.clone(), dir)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the Raft log: {e}"))?;
        let group_id = group_id(&topic.id, partition.partition);
        let raft = Raft::new(
            node_u64(self.node_id),
            self.raft_config.clone(),
            self.client.network_factory(group_id),
            store,
            DigestStateMachine::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the Raft group: {e}"))?;
        self.groups.insert(group_id, raft.clone());
        if replicas.first() == Some(&self.node_id) {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| anyhow::anyhow!("partition Raft: {e}"))?;
            if !initialized {
                let members: BTreeMap<u64, BasicNode> = replicas
                    .iter()
                    .map(|node| {
                        let addr = metadata
                            .brokers
                            .get(node)
                            .map(|broker| broker.rpc_addr.clone())
                            .unwrap_or_default();
                        (node_u64(*node), BasicNode::new(addr))
                    })
                    .collect();
                if let Err(error) = raft.initialize(members).await {
                    warn!(%error, topic = %partition.topic, partition = partition.partition, "partition group initialization skipped");
                }
            }
        }
        let replica = Rc::new(Replica {
            partition: partition.clone(),
            topic_id: topic.id,
            group_id,
            replicas: replicas.to_vec(),
            shard: shard.id.0,
            raft,
            log,
            node_id: self.node_id,
            election_timeout_ms: self.election_timeout_ms,
            in_flight: RefCell::new(HashMap::new()),
            propose_turn: glommio::sync::Semaphore::new(1),
            status_task: RefCell::new(None),
            stopped: Cell::new(false),
        });
        let task = glommio::spawn_local(publish_status(Rc::downgrade(&replica), self.view.clone()))
            .detach();
        *replica.status_task.borrow_mut() = Some(task);
        info!(topic = %partition.topic, partition = partition.partition, group = group_id, replicas = ?replicas, "partition Raft group started");
        Ok(replica)
    }

    async fn stop(&self, replica: &Replica) {
        replica.stopped.set(true);
        if let Some(task) = replica.status_task.borrow_mut().take() {
            task.cancel();
        }
        self.groups.remove(replica.group_id);
        if let Err(error) = replica.raft.shutdown().await {
            warn!(%error, topic = %replica.partition.topic, "partition Raft shutdown failed");
        }
        self.view.remove_replica(&replica.partition);
    }

    /// Hands leadership back to preferred leaders (the first replica of each partition, chosen
    /// at placement so that leaders spread over the nodes) once they have caught up: after a
    /// failover the survivors lead everything, and the restarted node would otherwise serve
    /// nothing. Runs every `LEADER_BALANCE_INTERVAL_MS`, as Redpanda's leader balancer does.
    pub async fn balance_leaders(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(LEADER_BALANCE_INTERVAL_MS)).await;
            let replicas: Vec<Rc<Replica>> = self.replicas.borrow().values().cloned().collect();
            for replica in replicas {
                let Some(&preferred) = replica.replicas.first() else {
                    continue;
                };
                if preferred == self.node_id || replica.serving_term().is_err() {
                    continue;
                }
                let caught_up = {
                    let metrics = replica.raft.metrics();
                    let m = metrics.borrow_watched();
                    let last = m.last_log_index;
                    m.replication.as_ref().is_some_and(|replication| {
                        replication
                            .get(&node_u64(preferred))
                            .is_some_and(|matched| matched.as_ref().map(|id| id.index) == last)
                    })
                };
                if caught_up {
                    info!(topic = %replica.partition.topic, partition = replica.partition.partition, to = preferred, "handing leadership back to the preferred replica");
                    if let Err(error) = replica
                        .raft
                        .trigger()
                        .transfer_leader(node_u64(preferred))
                        .await
                    {
                        warn!(%error, "leadership transfer failed");
                    }
                }
            }
        }
    }

    /// Stops every group (node shutdown), before the logs close.
    pub async fn shutdown(&self) {
        let replicas: Vec<Rc<Replica>> = std::mem::take(&mut *self.replicas.borrow_mut())
            .into_values()
            .collect();
        for replica in replicas {
            self.stop(&replica).await;
        }
    }
}

/// Copies the replica's Raft metrics into the view whenever they change.
async fn publish_status(replica: std::rc::Weak<Replica>, view: Arc<ClusterView>) {
    let Some(live) = replica.upgrade() else {
        return;
    };
    let mut metrics = live.raft.metrics();
    drop(live);
    loop {
        let Some(live) = replica.upgrade() else {
            return;
        };
        let status = {
            let m = metrics.borrow_watched();
            let leader = m.current_leader.and_then(|id| i32::try_from(id).ok());
            let last = m.last_log_index.unwrap_or(0);
            let in_sync = match &m.replication {
                Some(replication) => live
                    .replicas
                    .iter()
                    .copied()
                    .filter(|node| {
                        *node == live.node_id
                            || replication.get(&node_u64(*node)).is_some_and(|matched| {
                                last.saturating_sub(matched.as_ref().map_or(0, |id| id.index))
                                    <= ISR_LAG_ENTRIES_MAX
                            })
                    })
                    .collect(),
                None => live.replicas.clone(),
            };
            ReplicaStatus {
                shard: live.shard,
                replicas: live.replicas.clone(),
                leader,
                term: m.current_term,
                role: role_name(m.state),
                committed_index: m.local_committed.map(|id| id.index),
                last_log_index: m.last_log_index,
                in_sync,
                quorum_acked_at: m.last_quorum_acked.as_deref().copied(),
            }
        };
        view.set_replica(live.partition.clone(), status);
        drop(live);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// A leadership report: the sender's node id (i32 BE), then (group id u64 BE, term u64 BE)
/// per partition it serves as leader.
pub fn encode_leaderships(node_id: i32, leaderships: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + leaderships.len() * 16);
    out.extend_from_slice(&node_id.to_be_bytes());
    for (group, term) in leaderships {
        out.extend_from_slice(&group.to_be_bytes());
        out.extend_from_slice(&term.to_be_bytes());
    }
    out
}

/// Decodes untrusted report bytes; `None` when malformed or too long.
pub fn decode_leaderships(bytes: &[u8]) -> Option<(i32, Vec<(u64, u64)>)> {
    let (node, rest) = bytes.split_first_chunk::<4>()?;
    if rest.len() % 16 != 0 || rest.len() / 16 > LEADER_GOSSIP_PARTITIONS_MAX {
        return None;
    }
    let pairs = rest
        .chunks_exact(16)
        .filter_map(|chunk| {
            let (group, term) = chunk.split_at(8);
            Some((
                u64::from_be_bytes(group.try_into().ok()?),
                u64::from_be_bytes(term.try_into().ok()?),
            ))
        })
        .collect();
    Some((i32::from_be_bytes(*node), pairs))
}

impl ReplicaManager {
    /// Tells every other registered broker, every `LEADER_GOSSIP_INTERVAL_MS`, which partitions
    /// this node serves as leader (and in which term): a node hosting no replica of a
    /// partition then names its real leader in Metadata instead of a guess.
    pub async fn gossip_leaders(self: Rc<Self>, shard: Rc<Shard>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(LEADER_GOSSIP_INTERVAL_MS)).await;
            let leaderships: Vec<(u64, u64)> = self
                .replicas
                .borrow()
                .values()
                .filter_map(|replica| {
                    replica
                        .serving_term()
                        .ok()
                        .map(|term| (replica.group_id, term))
                })
                .take(LEADER_GOSSIP_PARTITIONS_MAX)
                .collect();
            if leaderships.is_empty() {
                continue;
            }
            let report = encode_leaderships(self.node_id, &leaderships);
            let brokers = shard.metadata().brokers.clone();
            for (node, broker) in brokers {
                if node == self.node_id {
                    continue;
                }
                let client = self.client.clone();
                let report = report.clone();
                // Fire and forget: a lost report is replaced by the next one.
                glommio::spawn_local(async move {
                    let _ = client
                        .forward(
                            node_u64(node),
                            &broker.rpc_addr,
                            LEADER_GOSSIP_GROUP_ID,
                            report,
                            Duration::from_millis(LEADER_GOSSIP_INTERVAL_MS * 4),
                        )
                        .await;
                })
                .detach();
            }
        }
    }
}

fn idempotent_producers(headers: &[BatchHeader]) -> Vec<i64> {
    let mut ids: Vec<i64> = headers
        .iter()
        .filter(|header| header.producer_id >= 0)
        .map(|header| header.producer_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Releases a proposal's producers when dropped (answered, failed or cancelled).
struct InFlight {
    replica: Rc<Replica>,
    producers: Vec<i64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.replica.in_flight.borrow_mut();
        for producer in &self.producers {
            if let Some(count) = in_flight.get_mut(producer) {
                *count -= 1;
                if *count == 0 {
                    in_flight.remove(producer);
                }
            }
        }
    }
}

/// A proposal Raft refused or dropped. Both cases mean the records were not written, which
/// NOT_LEADER_OR_FOLLOWER tells the client (an idempotent producer then re-sends them, under
/// a new epoch if librdkafka must): `ForwardToLeader` refuses before the entry is appended,
/// and `LogEntryDiscarded` reports our entry (term, index) truncated by a new leader, whose
/// log holds another entry at that index; Raft never truncates a committed entry and a log
/// holds one entry per index, so the discarded one is not and will never be committed.
fn write_error(error: &ClientWriteError<PartitionRaft>) -> KernelError {
    match error {
        ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_) => {
            KernelError::NotLeaderOrFollower
        }
        other => KernelError::Storage(other.to_string()),
    }
}

impl Replica {
    /// The current term when this node leads and heard from a quorum within an election
    /// timeout; NOT_LEADER_OR_FOLLOWER otherwise.
    fn serving_term(&self) -> Result<u64, KernelError> {
        if self.stopped.get() {
            return Err(KernelError::NotLeaderOrFollower);
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leads =
            m.state == ServerState::Leader && m.current_leader == Some(node_u64(self.node_id));
        let fresh = quorum_fresh(
            m.last_quorum_acked.as_deref().copied(),
            self.election_timeout_ms,
        );
        if leads && fresh {
            Ok(m.current_term)
        } else {
            Err(KernelError::NotLeaderOrFollower)
        }
    }

    /// Whether reads are served here (this node is the serving leader).
    pub fn serves_reads(&self) -> bool {
        self.serving_term().is_ok()
    }

    pub fn log(&self) -> &Rc<PartitionLog> {
        &self.log
    }

    /// Learns the fate of a retried batch this log already holds at `base..=last`: committed
    /// (the commit point passed it and the producer state still places it there) or gone
    /// (truncated by a new leader: NOT_LEADER_OR_FOLLOWER, the retry may go to the new
    /// leader). Waits while neither is known; REQUEST_TIMED_OUT ("possibly persisted") at the
    /// deadline. Leadership may move meanwhile: a follower's log learns commits too.
    async fn wait_fate(
        &self,
        headers: &[BatchHeader],
        base: i64,
        last: i64,
        deadline: Instant,
    ) -> Result<(), KernelError> {
        loop {
            let still_here = matches!(
                self.log.check_sequence(headers),
                Ok(Some((b, l))) if b.0 == base && l.0 == last
            );
            if !still_here {
                return Err(KernelError::NotLeaderOrFollower);
            }
            if self.log.high_watermark().0 > last {
                return Ok(());
            }
            if self.stopped.get() {
                return Err(KernelError::RequestTimedOut);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(KernelError::RequestTimedOut);
            }
            let slice = (deadline - now).min(Duration::from_millis(self.election_timeout_ms));
            futures_lite::future::or(
                async {
                    let _ = self.log.wait_for_data(Offset(last)).await;
                },
                glommio::timer::sleep(slice),
            )
            .await;
        }
    }

    /// Appends one produce item through Raft; see the module comment.
    pub async fn produce(
        self: Rc<Self>,
        item: ProduceItem,
        acks: Acks,
        timeout_ms: u32,
    ) -> ProduceResult {
        let timeout_ms = if timeout_ms == 0 {
            PARTITION_PROPOSE_TIMEOUT_DEFAULT_MS
        } else {
            u64::from(timeout_ms)
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let producers = idempotent_producers(&item.headers);
        // Proposals leave in the order produce requests arrive (the semaphore is FIFO), so
        // pipelined requests of one connection keep their order.
        let turn = self
            .propose_turn
            .acquire_permit(1)
            .await
            .map_err(|_| KernelError::NotLeaderOrFollower)?;
        // One proposal at a time per producer: a retry waits for the proposal it repeats.
        loop {
            self.serving_term()?;
            let busy = {
                let in_flight = self.in_flight.borrow();
                producers.iter().any(|id| in_flight.contains_key(id))
            };
            if !busy {
                break;
            }
            if Instant::now() >= deadline {
                return Err(KernelError::RequestTimedOut);
            }
            glommio::timer::sleep(Duration::from_millis(PARTITION_PRODUCER_WAIT_POLL_MS)).await;
        }
        self.serving_term()?;
        let log_start_offset = self.log.log_start_offset().0;
        if let Some((base, last)) = self
            .log
            .check_sequence(&item.headers)
            .map_err(storage_error)?
        {
            drop(turn);
            self.wait_fate(&item.headers, base.0, last.0, deadline)
                .await?;
            return Ok(AppendedRange {
                base_offset: base.0,
                last_offset: last.0,
                log_start_offset,
            });
        }
        let mut batches = split_batches(&item.records, &item.headers)?;
        let batch_count = batches.len();
        // acks=1: the log store reports each batch's offsets once this node appended it (no
        // channel for the other acks).
        let appended = (acks == Acks::Leader).then(|| {
            let (notice, appended) = flume::bounded(batch_count);
            batches = std::mem::take(&mut batches)
                .into_iter()
                .map(|batch| batch.with_append_notice(notice.clone()))
                .collect();
            appended
        });
        let last_delta = item
            .headers
            .last()
            .map_or(0, |header| i64::from(header.last_offset_delta));
        {
            let mut in_flight = self.in_flight.borrow_mut();
            for id in &producers {
                *in_flight.entry(*id).or_default() += 1;
            }
        }
        let guard = InFlight {
            replica: self.clone(),
            producers,
        };
        let (reply, answer) = flume::bounded(1);
        // Submitted to Raft under the turn (the stream of answers comes later).
        let submitted = self.raft.client_write_many(batches).await;
        drop(turn);
        // Detached: the proposal stays counted until Raft answers it, even if the request
        // times out first (a retry must not propose the same batch again meanwhile).
        glommio::spawn_local(async move {
            let outcome = match submitted {
                Err(fatal) => Err(KernelError::Storage(fatal.to_string())),
                Ok(mut results) => {
                    let mut first = None;
                    let mut last = None;
                    let mut failed = None;
                    while let Some(result) = results.next().await {
                        match result {
                            Err(fatal) => failed = Some(KernelError::Storage(fatal.to_string())),
                            Ok(Err(error)) => failed = Some(write_error(&error)),
                            Ok(Ok(response)) => {
                                let base = response.response.base_offset;
                                first = first.or(base);
                                last = base.or(last);
                            }
                        }
                    }
                    match (failed, first, last) {
                        (Some(error), _, _) => Err(error),
                        (None, Some(first), Some(last)) => Ok((first.0, last.0)),
                        _ => Err(KernelError::Storage(
                            "a committed record batch reported no offset".to_string(),
                        )),
                    }
                }
            };
            drop(guard);
            let _ = reply.try_send(outcome);
        })
        .detach();
        if acks == Acks::None {
            return Ok(AppendedRange {
                base_offset: -1,
                last_offset: -1,
                log_start_offset,
            });
        }
        let committed = async {
            match answer.recv_async().await {
                Err(_) => Err(KernelError::ShuttingDown),
                Ok(outcome) => outcome.map(|(base, last_base)| (base, last_base + last_delta)),
            }
        };
        // acks=1 answers at the local append; a batch Raft refused before appending never
        // reports (its notice is dropped), and then the commit outcome answers.
        let locally_appended = async {
            let Some(appended) = appended else {
                return futures_lite::future::pending().await;
            };
            let mut range: Option<(i64, i64)> = None;
            for _ in 0..batch_count {
                let Ok((base, last)) = appended.recv_async().await else {
                    return futures_lite::future::pending().await;
                };
                range = Some(range.map_or((base, last), |(first, _)| (first, last)));
            }
            match range {
                Some(range) => Ok(range),
                None => futures_lite::future::pending().await,
            }
        };
        let answered = within(
            deadline.saturating_duration_since(Instant::now()),
            futures_lite::future::or(locally_appended, committed),
        )
        .await;
        match answered {
            None => Err(KernelError::RequestTimedOut),
            Some(outcome) => outcome.map(|(base, last)| AppendedRange {
                base_offset: base,
                last_offset: last,
                log_start_offset,
            }),
        }
    }
}

/// One Raft entry per record batch of the item.
fn split_batches(
    records: &Bytes,
    headers: &[BatchHeader],
) -> Result<Vec<RecordBatch>, KernelError> {
    let mut batches = Vec::with_capacity(headers.len());
    let mut position = 0usize;
    for header in headers {
        let end = position + header.total_size_bytes();
        let bytes = records
            .get(position..end)
            .ok_or_else(|| KernelError::CorruptMessage("batch beyond the records".to_string()))?;
        batches.push(RecordBatch::new(records.slice_ref(bytes)).map_err(batch_error)?);
        position = end;
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_reports_round_trip_and_reject_garbage() {
        let pairs = vec![(group_id(&[7; 16], 0), 3), (group_id(&[7; 16], 1), 9)];
        let bytes = encode_leaderships(2, &pairs);
        assert_eq!(decode_leaderships(&bytes), Some((2, pairs)));
        assert_eq!(
            decode_leaderships(&encode_leaderships(5, &[])),
            Some((5, vec![]))
        );
        assert_eq!(decode_leaderships(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_leaderships(&[0, 0, 1]), None);
    }

    #[test]
    fn group_ids_differ_per_partition_and_never_hit_the_reserved_ids() {
        let a = group_id(&[1; 16], 0);
        assert_ne!(a, group_id(&[1; 16], 1));
        assert_ne!(a, group_id(&[2; 16], 0));
        assert_eq!(a, group_id(&[1; 16], 0), "every node computes the same id");
        assert!(a >> 63 == 1);
    }

    #[test]
    fn a_leader_without_a_recent_quorum_does_not_serve() {
        let mut status = ReplicaStatus {
            shard: 0,
            replicas: vec![1, 2, 3],
            leader: Some(1),
            term: 4,
            role: "Leader".to_string(),
            committed_index: Some(10),
            last_log_index: Some(10),
            in_sync: vec![1, 2, 3],
            quorum_acked_at: Some(Instant::now()),
        };
        assert_eq!(status.serving_leader(1, 1_000), Some(1));
        assert_eq!(
            status.serving_leader(2, 1_000),
            Some(1),
            "followers name the leader"
        );
        status.quorum_acked_at = Instant::now().checked_sub(Duration::from_millis(700));
        assert_eq!(
            status.serving_leader(1, 1_000),
            None,
            "silent for longer than the lease (T/2)"
        );
        status.quorum_acked_at = Instant::now().checked_sub(Duration::from_millis(5_000));
        assert_eq!(status.serving_leader(1, 1_000), None);
        status.role = "Follower".to_string();
        status.leader = None;
        assert_eq!(status.serving_leader(1, 1_000), None);
    }
}
