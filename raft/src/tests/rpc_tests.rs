//! Raft groups over the real RPC: each node on its own thread and glommio executor, with its
//! own data directory, `RpcServer` on 127.0.0.1 port 0 and `RpcClient`; the test's thread
//! drives the nodes through commands (closures run on the node's executor). A shared
//! `LinkFilter` cuts links for the partition test. Every wait is openraft's metrics wait with
//! a deadline; no fixed sleeps. The scenarios run one at a time (`CLUSTER_LOCK`): each starts
//! up to four executors on a small machine.

use super::{log_config, stored_headers, test_dir};
use crate::constants::RUNTIME_IO_MEMORY_BYTES;
use crate::rpc::{LinkFilter, RaftGroups, RpcClient, RpcServer};
use crate::runtime::GlommioRuntime;
use crate::{DigestStateMachine, PartitionLogStore, PartitionRaft, RecordBatch};
use futures_lite::future::BoxedLocal;
use glommio::{LocalExecutorBuilder, Placement};
use openraft::metrics::RaftMetrics;
use openraft::rt::WatchReceiver;
use openraft::{AsyncRuntime, BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use rmq_storage::{probe_direct_io, Offset, PartitionLog};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Node = Raft<PartitionRaft, DigestStateMachine>;

/// The Raft group every test node serves.
const GROUP_ID: u64 = 1;

/// Deadline for an election, a catch-up or replication to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Deadline of one attempt to see the nodes agree on a leader.
const AGREE_TIMEOUT: Duration = Duration::from_secs(3);

/// Deadline for one command to a node's executor to answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Client writes a node keeps in flight at once while writing a run of batches.
const WRITES_IN_FLIGHT: usize = 100;

/// One cluster scenario at a time.
static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

/// What a node's executor hands each command.
struct NodeContext {
    raft: Node,
    log: Rc<PartitionLog>,
}

type Command = Box<dyn FnOnce(Rc<NodeContext>) -> BoxedLocal<()> + Send>;

/// A node running on its own thread; dropping it stops the node (Raft shut down, server and
/// client closed, log closed) and joins the thread.
struct TestNode {
    id: u64,
    addr: SocketAddr,
    dir: PathBuf,
    commands: Option<flume::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// Timeouts generous enough for a loaded 2-core machine; no snapshots unless asked.
fn raft_config() -> Config {
    Config {
        heartbeat_interval: 100,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        ..Config::default()
    }
}

impl TestNode {
    /// Starts node `id` over `dir` (created or reopened), listening on `bind`.
    fn start(id: u64, dir: PathBuf, bind: String, filter: LinkFilter) -> TestNode {
        TestNode::start_with(id, dir, bind, filter, raft_config())
    }

    /// `start` with a Raft config of the test's choosing.
    fn start_with(
        id: u64,
        dir: PathBuf,
        bind: String,
        filter: LinkFilter,
        config: Config,
    ) -> TestNode {
        let config = Arc::new(config.validate().expect("config"));
        let (addr_sender, addr_receiver) = flume::bounded(1);
        let (commands, command_receiver) = flume::bounded::<Command>(16);
        let node_dir = dir.clone();
        let thread = std::thread::spawn(move || {
            let executor = LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(RUNTIME_IO_MEMORY_BYTES)
                .make()
                .expect("executor");
            executor.run(async move {
                rmq_storage::reactor_tick::spawn_reactor_tick();
                std::fs::create_dir_all(&node_dir).expect("node dir");
                probe_direct_io(&node_dir).await.expect("direct IO probe");
                let log = PartitionLog::open(node_dir.clone(), log_config())
                    .await
                    .expect("open partition log");
                let store = PartitionLogStore::open(log.clone(), node_dir.clone())
                    .await
                    .expect("log store");
                let groups: Rc<RaftGroups<DigestStateMachine>> = Rc::new(RaftGroups::default());
                let server =
                    RpcServer::bind(&bind, id, groups.clone(), Some(filter.clone())).expect("bind");
                let client = RpcClient::new(id, Some(filter));
                let raft = Raft::new(
                    id,
                    config,
                    client.network_factory(GROUP_ID),
                    store,
                    DigestStateMachine::default(),
                )
                .await
                .expect("raft node");
                groups.insert(GROUP_ID, raft.clone());
                addr_sender
                    .send(server.local_addr())
                    .expect("report address");
                let context = Rc::new(NodeContext {
                    raft: raft.clone(),
                    log: log.clone(),
                });
                while let Ok(command) = command_receiver.recv_async().await {
                    glommio::spawn_local(command(context.clone())).detach();
                }
                groups.remove(GROUP_ID);
                raft.shutdown().await.expect("shutdown");
                server.shutdown();
                client.shutdown();
                log.close().await.expect("close log");
            });
        });
        let addr = addr_receiver
            .recv_timeout(COMMAND_TIMEOUT)
            .expect("node started");
        TestNode {
            id,
            addr,
            dir,
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    fn basic_node(&self) -> BasicNode {
        BasicNode {
            addr: self.addr.to_string(),
        }
    }

    /// Runs `f` on the node's executor and returns its result.
    fn call<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(Rc<NodeContext>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (sender, receiver) = flume::bounded(1);
        let command: Command = Box::new(move |context| {
            Box::pin(async move {
                let _ = sender.send(f(context).await);
            })
        });
        self.commands
            .as_ref()
            .expect("node running")
            .send(command)
            .expect("node running");
        receiver
            .recv_timeout(COMMAND_TIMEOUT)
            .expect("node answered")
    }

    /// Waits (on the node) until its metrics satisfy `predicate`; false at the deadline.
    fn wait_for(
        &self,
        what: &'static str,
        predicate: impl Fn(&RaftMetrics<PartitionRaft>) -> bool + Send + 'static,
    ) -> bool {
        self.wait_within(SETTLE_TIMEOUT, what, predicate)
    }

    /// `wait_for` with its own deadline.
    fn wait_within(
        &self,
        timeout: Duration,
        what: &'static str,
        predicate: impl Fn(&RaftMetrics<PartitionRaft>) -> bool + Send + 'static,
    ) -> bool {
        self.call(move |context| async move {
            context
                .raft
                .wait(Some(timeout))
                .metrics(predicate, what)
                .await
                .is_ok()
        })
    }

    fn metric<T: Send + 'static>(
        &self,
        read: impl FnOnce(&RaftMetrics<PartitionRaft>) -> T + Send + 'static,
    ) -> T {
        self.call(move |context| async move { read(&context.raft.metrics().borrow_watched()) })
    }

    /// Writes `batches` through this node, `WRITES_IN_FLIGHT` at a time; each one's outcome:
    /// `Err(None)` if this node refused it as not (yet) the leader (nothing was appended, so it
    /// may be retried), `Err(Some(error))` for any other failure.
    fn write(&self, batches: Vec<RecordBatch>) -> Vec<Result<(), Option<String>>> {
        self.call(move |context| async move {
            let mut outcomes = Vec::new();
            for chunk in batches.chunks(WRITES_IN_FLIGHT) {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|batch| {
                        let raft = context.raft.clone();
                        let batch = batch.clone();
                        glommio::spawn_local(async move {
                            match raft.client_write(batch).await {
                                Ok(response) if response.data.base_offset.is_some() => Ok(()),
                                Ok(response) => Err(Some(format!("no offset: {response:?}"))),
                                Err(error) if error.forward_to_leader().is_some() => Err(None),
                                Err(error) => Err(Some(error.to_string())),
                            }
                        })
                        .detach()
                    })
                    .collect();
                for handle in handles {
                    outcomes.push(
                        handle
                            .await
                            .unwrap_or_else(|| Err(Some("cancelled".to_string()))),
                    );
                }
            }
            outcomes
        })
    }

    /// One write that must not commit within `timeout`: `Ok` if it did.
    fn write_within(&self, batch: RecordBatch, timeout: Duration) -> Result<(), String> {
        self.call(move |context| async move {
            match GlommioRuntime::timeout(timeout, context.raft.client_write(batch)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        })
    }

    /// Every byte of the node's partition log, and the CRCs of its record batches (not
    /// control batches) in log order.
    fn log_contents(&self) -> (Vec<u8>, Vec<u32>) {
        self.call(|context| async move {
            let log = &context.log;
            let headers = stored_headers(log).await;
            let crcs = headers
                .iter()
                .filter(|header| !header.is_control())
                .map(|header| header.crc)
                .collect();
            let mut bytes = Vec::new();
            let mut offset = log.log_start_offset().0;
            let end = log.log_end_offset().0;
            while offset < end {
                let chunk = log
                    .read_uncommitted(Offset(offset), 1 << 20)
                    .await
                    .expect("read");
                for header in rmq_storage::validate_stored_batches(&chunk, 1 << 20).expect("valid")
                {
                    offset = header.last_offset() + 1;
                }
                bytes.extend_from_slice(&chunk);
            }
            (bytes, crcs)
        })
    }

    /// (high watermark, log end): what Kafka readers see of the node's log, and what it holds.
    fn watermarks(&self) -> (i64, i64) {
        self.call(|context| async move {
            let log = &context.log;
            (log.high_watermark().0, log.log_end_offset().0)
        })
    }

    /// Stops the node (as `drop` does) and returns its id, address and directory.
    fn stop(mut self) -> (u64, SocketAddr, PathBuf) {
        self.shutdown();
        (self.id, self.addr, self.dir.clone())
    }

    fn shutdown(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("node thread");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Do not wait on a node that may be stuck; the process is failing anyway.
            self.commands.take();
            return;
        }
        self.shutdown();
    }
}

/// A cluster of nodes 1..=count, initialized with all of them as voters.
fn start_cluster(
    name: &str,
    count: u64,
    filter: &LinkFilter,
) -> (PathBuf, BTreeMap<u64, TestNode>) {
    start_cluster_with(name, count, filter, raft_config())
}

/// `start_cluster` with a Raft config of the test's choosing.
fn start_cluster_with(
    name: &str,
    count: u64,
    filter: &LinkFilter,
    config: Config,
) -> (PathBuf, BTreeMap<u64, TestNode>) {
    let dir = test_dir(name);
    let nodes: BTreeMap<u64, TestNode> = (1..=count)
        .map(|id| {
            (
                id,
                TestNode::start_with(
                    id,
                    dir.join(format!("node-{id}")),
                    "127.0.0.1:0".to_string(),
                    filter.clone(),
                    config.clone(),
                ),
            )
        })
        .collect();
    let members: BTreeMap<u64, BasicNode> = nodes
        .values()
        .map(|node| (node.id, node.basic_node()))
        .collect();
    nodes[&1].call(move |context| async move {
        context.raft.initialize(members).await.expect("initialize");
    });
    (dir, nodes)
}

/// Waits until every node in `ids` names the same leader, one of `ids`. A node that just
/// restarted may still name a stale leader (itself, from its stored vote), so a disagreement
/// starts the check over until `SETTLE_TIMEOUT`.
fn agreed_leader(nodes: &BTreeMap<u64, TestNode>, ids: &[u64]) -> u64 {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no agreed leader among {ids:?}");
        let candidates: Vec<u64> = ids.to_vec();
        let leader = ids.iter().find_map(|id| {
            let candidates = candidates.clone();
            nodes[id]
                .wait_within(AGREE_TIMEOUT, "a leader among the given nodes", move |m| {
                    m.current_leader
                        .is_some_and(|leader| candidates.contains(&leader))
                })
                .then(|| nodes[id].metric(|m| m.current_leader))
                .flatten()
        });
        let Some(leader) = leader else { continue };
        let agreed = ids.iter().all(|id| {
            nodes[id].wait_within(AGREE_TIMEOUT, "agree on the leader", move |m| {
                m.current_leader == Some(leader) && m.state != ServerState::Candidate
            })
        });
        if agreed
            && nodes[&leader]
                .wait_within(AGREE_TIMEOUT, "leader", |m| m.state == ServerState::Leader)
        {
            return leader;
        }
    }
}

/// Waits until every node in `ids` has applied the leader's last log index; returns it.
fn settle(nodes: &BTreeMap<u64, TestNode>, leader: u64, ids: &[u64]) -> u64 {
    let last = nodes[&leader]
        .metric(|m| m.last_log_index)
        .expect("leader log");
    for id in ids {
        assert!(
            nodes[id].wait_for("applied the leader's log", move |m| m
                .last_applied
                .is_some_and(|applied| applied.index >= last)
                && m.last_log_index == Some(last)),
            "node {id} did not catch up to {last}"
        );
    }
    last
}

/// Record batches with distinct contents (8-byte values holding `first + i`).
fn batches(first: u32, count: u32) -> Vec<RecordBatch> {
    (first..first + count)
        .map(|n| RecordBatch::new(numbered_batch(n)).expect("batch"))
        .collect()
}

fn numbered_batch(n: u32) -> bytes::Bytes {
    let mut bytes = super::produced_batch(1, 0).to_vec();
    // The single record's value is the last 9 bytes before the headers count: overwrite it
    // with `n` twice, then recompute the CRC.
    let value_end = bytes.len() - 1;
    bytes[value_end - 8..value_end - 4].copy_from_slice(&n.to_be_bytes());
    bytes[value_end - 4..value_end].copy_from_slice(&n.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes::Bytes::from(bytes)
}

fn crcs_of(batches: &[RecordBatch]) -> Vec<u32> {
    batches.iter().map(|batch| batch.header().crc).collect()
}

/// Writes every batch through the current leader of `ids`, as a Kafka client would: batches
/// refused with "not the leader" (right after an election, before the new leader committed
/// its first entry) are retried on the current leader until `SETTLE_TIMEOUT`; every batch
/// must commit.
fn write_all(nodes: &BTreeMap<u64, TestNode>, ids: &[u64], batches: Vec<RecordBatch>) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut pending = batches;
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} writes found no leader",
            pending.len()
        );
        let leader = agreed_leader(nodes, ids);
        let outcomes = nodes[&leader].write(pending.clone());
        let mut retry = Vec::new();
        for (batch, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => {}
                Err(None) => retry.push(batch),
                Err(Some(error)) => panic!("write through leader {leader} failed: {error}"),
            }
        }
        pending = retry;
    }
}

/// All of `ids` hold byte-identical logs; returns the record batch CRCs of that log.
fn identical_logs(nodes: &BTreeMap<u64, TestNode>, ids: &[u64]) -> Vec<u32> {
    for id in ids {
        let (high_watermark, end) = nodes[id].watermarks();
        assert_eq!(
            high_watermark, end,
            "node {id}: everything settled is committed and visible"
        );
    }
    let (bytes, crcs) = nodes[&ids[0]].log_contents();
    assert!(!bytes.is_empty());
    for id in &ids[1..] {
        let (other_bytes, other_crcs) = nodes[id].log_contents();
        assert_eq!(
            other_crcs, crcs,
            "node {id}'s batches differ from node {}",
            ids[0]
        );
        assert!(
            other_bytes == bytes,
            "node {id}'s log bytes differ from node {} ({} vs {} bytes)",
            ids[0],
            other_bytes.len(),
            bytes.len()
        );
    }
    crcs
}

fn sorted(mut crcs: Vec<u32>) -> Vec<u32> {
    crcs.sort_unstable();
    crcs
}

fn cleanup(dir: PathBuf, nodes: BTreeMap<u64, TestNode>) {
    drop(nodes);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rpc_three_nodes_commit_1000_writes_with_identical_logs() {
    let _serial = CLUSTER_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let filter = LinkFilter::new();
    let (dir, nodes) = start_cluster("rpc-three-nodes", 3, &filter);
    let ids = [1, 2, 3];
    let written = batches(0, 1000);
    let expected = crcs_of(&written);
    write_all(&nodes, &ids, written);
    let leader = agreed_leader(&nodes, &ids);
    settle(&nodes, leader, &ids);
    let crcs = identical_logs(&nodes, &ids);
    assert_eq!(crcs.len(), 1000);
    assert_eq!(sorted(crcs), sorted(expected));
    cleanup(dir, nodes);
}

#[test]
fn rpc_leader_killed_new_leader_elected_and_restarted_node_catches_up() {
    let _serial = CLUSTER_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let filter = LinkFilter::new();
    let (dir, mut nodes) = start_cluster("rpc-failover", 3, &filter);
    let ids = [1, 2, 3];
    let first = batches(0, 200);
    let mut expected = crcs_of(&first);
    write_all(&nodes, &ids, first);
    let old_leader = agreed_leader(&nodes, &ids);
    settle(&nodes, old_leader, &ids);
    let old_term = nodes[&old_leader].metric(|m| m.current_term);

    // Stop the leader's executor and thread; the two others elect a new leader.
    let killed_at = Instant::now();
    let (id, addr, node_dir) = nodes.remove(&old_leader).expect("leader").stop();
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != old_leader).collect();
    let new_leader = agreed_leader(&nodes, &survivors);
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, old_leader);
    assert!(failover < SETTLE_TIMEOUT, "failover took {failover:?}");
    assert!(nodes[&new_leader].metric(|m| m.current_term) > old_term);
    println!(
        "failover: new leader {new_leader} after {} ms",
        failover.as_millis()
    );

    // Writes continue on the majority.
    let second = batches(1000, 200);
    expected.extend(crcs_of(&second));
    write_all(&nodes, &survivors, second);

    // The old leader restarts from its data directory at its address and catches up.
    nodes.insert(
        id,
        TestNode::start(id, node_dir, addr.to_string(), filter.clone()),
    );
    let leader = agreed_leader(&nodes, &ids);
    settle(&nodes, leader, &ids);
    let crcs = identical_logs(&nodes, &ids);
    assert_eq!(sorted(crcs), sorted(expected));
    cleanup(dir, nodes);
}

#[test]
fn rpc_isolated_leader_cannot_commit_and_is_truncated_after_heal() {
    let _serial = CLUSTER_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let filter = LinkFilter::new();
    let (dir, nodes) = start_cluster("rpc-partition", 3, &filter);
    let ids = [1, 2, 3];
    let first = batches(0, 50);
    let mut expected = crcs_of(&first);
    write_all(&nodes, &ids, first);
    let old_leader = agreed_leader(&nodes, &ids);
    settle(&nodes, old_leader, &ids);
    let majority: Vec<u64> = ids.iter().copied().filter(|id| *id != old_leader).collect();

    // Cut the leader off: its write is appended locally but never commits.
    filter.isolate(old_leader, &majority);
    let lost = batches(5000, 1).remove(0);
    let lost_crc = lost.header().crc;
    let outcome = nodes[&old_leader].write_within(lost, Duration::from_secs(3));
    assert!(outcome.is_err(), "an isolated leader committed a write");
    assert!(
        nodes[&old_leader].metric(|m| m.last_log_index)
            > nodes[&majority[0]].metric(|m| m.last_log_index),
        "the isolated leader holds the uncommitted entry"
    );
    let (high_watermark, end) = nodes[&old_leader].watermarks();
    assert!(
        high_watermark < end,
        "readers of the isolated leader see its uncommitted entry ({high_watermark} of {end})"
    );

    // The majority elects a new leader and commits.
    let new_leader = agreed_leader(&nodes, &majority);
    assert_ne!(new_leader, old_leader);
    let second = batches(1000, 50);
    expected.extend(crcs_of(&second));
    write_all(&nodes, &majority, second);

    // Healed: the old leader follows the new one and its uncommitted entry is truncated.
    filter.heal_all();
    assert!(
        nodes[&old_leader].wait_for("old leader follows the new one", move |m| m.current_leader
            == Some(new_leader)
            && m.state == ServerState::Follower),
        "old leader did not step down"
    );
    settle(&nodes, new_leader, &ids);
    let crcs = identical_logs(&nodes, &ids);
    assert!(!crcs.contains(&lost_crc), "uncommitted entry survived");
    assert_eq!(sorted(crcs), sorted(expected), "a committed entry was lost");
    cleanup(dir, nodes);
}

#[test]
fn rpc_fourth_node_joins_as_learner_then_voter_and_catches_up() {
    let _serial = CLUSTER_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let filter = LinkFilter::new();
    let (dir, mut nodes) = start_cluster("rpc-join", 3, &filter);
    let first = batches(0, 100);
    let mut expected = crcs_of(&first);
    write_all(&nodes, &[1, 2, 3], first);
    let leader = agreed_leader(&nodes, &[1, 2, 3]);

    let fourth = TestNode::start(4, dir.join("node-4"), "127.0.0.1:0".to_string(), filter);
    let fourth_node = fourth.basic_node();
    nodes.insert(4, fourth);
    nodes[&leader].call(move |context| async move {
        context
            .raft
            .add_learner(4, fourth_node, true)
            .await
            .expect("add learner");
    });
    assert!(
        nodes[&4].wait_for("learner", |m| m.state == ServerState::Learner),
        "node 4 is not a learner"
    );
    nodes[&leader].call(|context| async move {
        context
            .raft
            .change_membership(BTreeSet::from([1, 2, 3, 4]), false)
            .await
            .expect("change membership");
    });
    let ids = [1, 2, 3, 4];
    let second = batches(1000, 100);
    expected.extend(crcs_of(&second));
    write_all(&nodes, &ids, second);
    let leader = agreed_leader(&nodes, &ids);
    settle(&nodes, leader, &ids);
    let voters: Vec<u64> =
        nodes[&4].metric(|m| m.membership_config.membership().voter_ids().collect());
    assert_eq!(voters, vec![1, 2, 3, 4]);
    let crcs = identical_logs(&nodes, &ids);
    assert_eq!(sorted(crcs), sorted(expected));
    cleanup(dir, nodes);
}

#[test]
fn rpc_new_node_behind_a_purged_log_installs_a_snapshot_over_tcp() {
    let _serial = CLUSTER_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let filter = LinkFilter::new();
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..raft_config()
    };
    let (dir, mut nodes) = start_cluster_with("rpc-snapshot", 3, &filter, config.clone());
    write_all(&nodes, &[1, 2, 3], batches(0, 100));
    let leader = agreed_leader(&nodes, &[1, 2, 3]);
    assert!(
        nodes[&leader].wait_for("log purged after a snapshot", |m| m.purged.is_some()),
        "the leader never purged"
    );

    // Node 4 needs entries the leader no longer has: it gets the snapshot (full_snapshot RPC),
    // then the entries after it.
    let fourth = TestNode::start_with(
        4,
        dir.join("node-4"),
        "127.0.0.1:0".to_string(),
        filter,
        config,
    );
    let fourth_node = fourth.basic_node();
    nodes.insert(4, fourth);
    nodes[&leader].call(move |context| async move {
        context
            .raft
            .add_learner(4, fourth_node, true)
            .await
            .expect("add learner");
    });
    write_all(&nodes, &[1, 2, 3], batches(1000, 10));
    let ids = [1, 2, 3, 4];
    settle(&nodes, leader, &ids);
    assert!(
        nodes[&4].metric(|m| m.snapshot.is_some()),
        "node 4 installed no snapshot"
    );
    // Its log holds only what followed the snapshot: the rest came by full_snapshot.
    let (_, fourth_crcs) = nodes[&4].log_contents();
    assert!(
        fourth_crcs.len() < 110,
        "node 4 got all {} batches by AppendEntries",
        fourth_crcs.len()
    );
    let states: Vec<_> = ids
        .iter()
        .map(|id| {
            nodes[id].call(|context| async move {
                context
                    .raft
                    .with_state_machine(|sm: &mut DigestStateMachine| {
                        let state = sm.state().clone();
                        Box::pin(async move { state })
                    })
                    .await
                    .expect("state machine")
            })
        })
        .collect();
    assert_eq!(states[0].applied_batches, 110);
    for state in &states[1..] {
        assert_eq!(
            (state.applied_batches, state.digest, state.last_applied),
            (
                states[0].applied_batches,
                states[0].digest,
                states[0].last_applied
            )
        );
    }
    cleanup(dir, nodes);
}
