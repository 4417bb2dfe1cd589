//! Three Raft nodes on one glommio executor, each with its own partition log, talking through
//! an in-process network: each RPC goes into the target node's `Raft` handle, i.e. through its
//! API channels to its core task. Waits poll openraft's metrics with deadlines.

use super::{open_log, produced_batch, run, stored_headers};
use crate::{DigestStateMachine, PartitionLogStore, PartitionRaft, PartitionVote, RecordBatch};
use openraft::errors::ReplicationClosed;
use openraft::errors::{RPCError, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::rt::WatchReceiver;
use openraft::storage::Snapshot;
use openraft::type_config::alias::CommittedLeaderIdOf;
use openraft::{BasicNode, Config, Raft, RaftNetworkFactory, RaftNetworkV2, SnapshotPolicy};
use rmq_storage::PartitionLog;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Node = Raft<PartitionRaft, DigestStateMachine>;

/// Deadline for an election or for replication to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// An RPC to a node that is shut down.
#[derive(Debug)]
struct NodeDown(u64);

impl std::fmt::Display for NodeDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} is down", self.0)
    }
}

impl std::error::Error for NodeDown {}

/// The nodes that are up, by id.
#[derive(Clone, Default)]
struct Router {
    nodes: Rc<RefCell<BTreeMap<u64, Node>>>,
}

impl Router {
    fn node(&self, id: u64) -> Option<Node> {
        self.nodes.borrow().get(&id).cloned()
    }
}

struct Connection {
    router: Router,
    target: u64,
}

impl Connection {
    fn target(&self) -> Result<Node, Unreachable<PartitionRaft>> {
        self.router
            .node(self.target)
            .ok_or_else(|| Unreachable::new(&NodeDown(self.target)))
    }
}

impl RaftNetworkFactory<PartitionRaft> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetworkV2<PartitionRaft> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<PartitionRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<PartitionRaft>, RPCError<PartitionRaft>> {
        let node = self.target()?;
        node.append_entries(request)
            .await
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))
    }

    async fn vote(
        &mut self,
        request: VoteRequest<PartitionRaft>,
        _option: RPCOption,
    ) -> Result<VoteResponse<PartitionRaft>, RPCError<PartitionRaft>> {
        let node = self.target()?;
        node.vote(request)
            .await
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))
    }

    async fn pre_vote(
        &mut self,
        request: VoteRequest<PartitionRaft>,
        _option: RPCOption,
    ) -> Result<VoteResponse<PartitionRaft>, RPCError<PartitionRaft>> {
        let node = self.target()?;
        node.pre_vote(request)
            .await
            .map_err(|error| RPCError::Unreachable(Unreachable::new(&error)))
    }

    async fn full_snapshot(
        &mut self,
        vote: PartitionVote,
        snapshot: Snapshot<CommittedLeaderIdOf<PartitionRaft>, u64, BasicNode, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<PartitionRaft>, StreamingError<PartitionRaft>> {
        let node = self.target()?;
        node.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|error| StreamingError::Unreachable(Unreachable::new(&error)))
    }
}

/// Waits until every node in `ids` names the same leader, one of `ids`.
async fn agreed_leader(router: &Router, ids: &[u64]) -> u64 {
    let first = router.node(ids[0]).expect("node up");
    let metrics = first
        .wait(Some(SETTLE_TIMEOUT))
        .metrics(
            |m| m.current_leader.is_some_and(|leader| ids.contains(&leader)),
            "a leader among the live nodes",
        )
        .await
        .expect("leader elected");
    let leader = metrics.current_leader.expect("leader");
    for id in ids {
        let node = router.node(*id).expect("node up");
        node.wait(Some(SETTLE_TIMEOUT))
            .metrics(|m| m.current_leader == Some(leader), "agree on the leader")
            .await
            .expect("nodes agree");
    }
    leader
}

async fn wait_applied(router: &Router, ids: &[u64], index: u64) {
    for id in ids {
        let node = router.node(*id).expect("node up");
        node.wait(Some(SETTLE_TIMEOUT))
            .applied_index_at_least(Some(index), "replicated and applied")
            .await
            .expect("applied");
    }
}

/// The CRCs of the record batches (not control batches) in a node's partition log, in order,
/// with their base offsets: the Kafka consumer's view.
async fn kafka_view(log: &PartitionLog) -> Vec<(i64, u32)> {
    stored_headers(log)
        .await
        .iter()
        .filter(|header| !header.is_control())
        .map(|header| (header.base_offset, header.crc))
        .collect()
}

/// Writes `count` batches through whichever of `ids` leads, as a Kafka client would: a node
/// that answers "not the leader" (or "lease expired", right after an election) did not take
/// the write, so it is retried on the current leader until `SETTLE_TIMEOUT`. Returns the CRCs.
async fn write_batches(router: &Router, ids: &[u64], first_tag: u8, count: u8) -> Vec<u32> {
    let mut crcs = Vec::new();
    for tag in first_tag..first_tag + count {
        let batch = RecordBatch::new(produced_batch(1 + i32::from(tag % 3), tag)).expect("batch");
        crcs.push(batch.header().crc);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let leader = router
                .node(agreed_leader(router, ids).await)
                .expect("leader up");
            match leader.client_write(batch.clone()).await {
                Ok(response) => {
                    assert!(
                        response.data.base_offset.is_some(),
                        "a batch gets an offset"
                    );
                    break;
                }
                Err(error) if error.forward_to_leader().is_some() => {
                    assert!(Instant::now() < deadline, "no writable leader: {error}");
                }
                Err(error) => panic!("client write failed: {error}"),
            }
        }
    }
    crcs
}

#[test]
fn three_node_cluster_elects_replicates_and_survives_leader_shutdown() {
    run("three-nodes", |dir| async move {
        let config = Arc::new(
            Config {
                heartbeat_interval: 50,
                election_timeout_min: 300,
                election_timeout_max: 600,
                // Snapshots and purges happen during the test, on the partition log.
                snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
                max_in_snapshot_log_to_keep: 2,
                purge_batch_size: 1,
                ..Config::default()
            }
            .validate()
            .expect("config"),
        );
        let router = Router::default();
        let mut logs = BTreeMap::new();
        for id in 1..=3u64 {
            let node_dir = dir.join(format!("node-{id}"));
            let log = open_log(&node_dir).await;
            let store = PartitionLogStore::open(log.clone(), node_dir)
                .await
                .expect("log store");
            let node = Raft::new(
                id,
                config.clone(),
                router.clone(),
                store,
                DigestStateMachine::default(),
            )
            .await
            .expect("raft node");
            router.nodes.borrow_mut().insert(id, node);
            logs.insert(id, log);
        }
        let members: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|id| {
                (
                    id,
                    BasicNode {
                        addr: format!("node-{id}"),
                    },
                )
            })
            .collect();
        router
            .node(1)
            .expect("node 1")
            .initialize(members)
            .await
            .expect("initialize");

        let mut crcs = write_batches(&router, &[1, 2, 3], 0, 25).await;
        let old_leader = agreed_leader(&router, &[1, 2, 3]).await;
        let leader = router.node(old_leader).expect("leader");
        let last_index = leader
            .metrics()
            .borrow_watched()
            .last_log_index
            .expect("log");
        wait_applied(&router, &[1, 2, 3], last_index).await;
        let old_term = leader.metrics().borrow_watched().current_term;

        // Shut the leader down; the other two elect a new one.
        router.nodes.borrow_mut().remove(&old_leader);
        leader.shutdown().await.expect("shutdown");
        let survivors: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
        let new_leader = agreed_leader(&router, &survivors).await;
        assert_ne!(new_leader, old_leader);
        let node = router.node(new_leader).expect("new leader");
        assert!(node.metrics().borrow_watched().current_term > old_term);

        crcs.extend(write_batches(&router, &survivors, 100, 5).await);
        let last_index = node.metrics().borrow_watched().last_log_index.expect("log");
        wait_applied(&router, &survivors, last_index).await;

        // Snapshots every 10 entries purged the head of the Raft log (logically: the batches
        // stay in the partition log, which Kafka reads from its own start).
        for id in &survivors {
            let node = router.node(*id).expect("node");
            node.wait(Some(SETTLE_TIMEOUT))
                .metrics(|m| m.purged.is_some(), "log purged after a snapshot")
                .await
                .expect("purged");
        }

        // Every batch ever acknowledged is in both survivors' logs, in order, at the same
        // offsets; their state machines agree.
        let view = kafka_view(&logs[&new_leader]).await;
        let view_crcs: Vec<u32> = view.iter().map(|(_, crc)| *crc).collect();
        assert_eq!(view_crcs, crcs);
        for id in &survivors {
            assert_eq!(kafka_view(&logs[id]).await, view);
        }
        let mut states = Vec::new();
        for id in &survivors {
            let node = router.node(*id).expect("node");
            let state = node
                .with_state_machine(|sm: &mut DigestStateMachine| {
                    let state = sm.state().clone();
                    Box::pin(async move { state })
                })
                .await
                .expect("state machine");
            assert_eq!(state.applied_batches, crcs.len() as u64);
            states.push(state);
        }
        assert_eq!(states[0].digest, states[1].digest);

        for id in &survivors {
            let node = router.node(*id).expect("node");
            node.shutdown().await.expect("shutdown");
        }
        for log in logs.values() {
            log.close().await.expect("close");
        }
    });
}
