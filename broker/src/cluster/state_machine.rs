//! The controller group's state machine: the replicated cluster metadata (the brokers, and the
//! topics with their configs and placement), changed only by `ControllerCommand`s applied in
//! log order. Commands are compare-and-set where a race matters (`PutTopic` applies only if
//! the topic is still what the proposer saw), so the outcome is the same on every node and a
//! proposer learns it by looking at the state once its entry is applied.
//!
//! A command travels as the value of the one record of a Kafka RecordBatch (the Raft log is a
//! partition log), rkyv-encoded. An entry that does not decode is skipped with a warning on
//! every node alike. The state lives in memory: after a restart openraft replays the log (the
//! controller log is never purged, `SnapshotPolicy::Never`); snapshots exist for openraft's
//! API and carry the whole state.
//!
//! Concurrency contract: `!Send`, on shard 0. `ControllerShared` is shared (`Rc`) with the
//! cluster node, which reads the state between awaits; openraft calls the state machine one
//! method at a time. Every change of the state bumps `content_version` and wakes the merger
//! through a bounded(1) channel (a wake-up that finds the channel full is already pending).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use futures_lite::StreamExt;
use kafka_protocol::records::RecordBatchDecoder;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::OptionalSend;
use rkyv::{Archive, Deserialize, Serialize};
use rmq_protocols::kafka::record_batch::{encode_plain_batch, PlainRecord};
use rmq_raft::{
    Applied, PartitionLogId, PartitionPayload, PartitionRaft, RecordBatch, StoredMembership,
};
use tracing::warn;

use crate::constants::CONTROLLER_COMMAND_BYTES_MAX;

/// Wake-ups queued for the merger: 1. It merges the latest state whenever it wakes, so one
/// pending wake-up covers any number of applied entries.
const MERGE_WAKEUPS_QUEUED: usize = 1;
use crate::metadata::{BrokerMeta, TopicMeta};

/// A change of the replicated metadata.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
// Commands are rare (metadata changes) and handled one at a time: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ControllerCommand {
    /// Adds or replaces a broker; sets the cluster id if none is set yet.
    RegisterBroker {
        broker: BrokerMeta,
        cluster_id: String,
    },
    /// Sets topic `name` to `meta` if it is `expected` now (`None`: absent).
    PutTopic {
        name: String,
        expected: Option<TopicMeta>,
        meta: TopicMeta,
    },
    /// Removes topic `name` if its id is `id`.
    DeleteTopic { name: String, id: [u8; 16] },
}

/// The replicated metadata.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ReplicatedState {
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    pub brokers: BTreeMap<i32, BrokerMeta>,
}

impl ReplicatedState {
    fn apply(&mut self, command: ControllerCommand) -> bool {
        match command {
            ControllerCommand::RegisterBroker { broker, cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id;
                }
                self.brokers.insert(broker.node_id, broker);
                true
            }
            ControllerCommand::PutTopic {
                name,
                expected,
                meta,
            } => {
                if self.topics.get(&name) != expected.as_ref() {
                    return false;
                }
                self.topics.insert(name, meta);
                true
            }
            ControllerCommand::DeleteTopic { name, id } => {
                if self.topics.get(&name).map(|topic| topic.id) != Some(id) {
                    return false;
                }
                self.topics.remove(&name);
                true
            }
        }
    }

    /// Whether the state shows `command` took effect (what its proposer wanted is there).
    pub fn reflects(&self, command: &ControllerCommand) -> bool {
        match command {
            ControllerCommand::RegisterBroker { broker, .. } => {
                self.brokers.get(&broker.node_id) == Some(broker)
            }
            ControllerCommand::PutTopic { name, meta, .. } => self.topics.get(name) == Some(meta),
            ControllerCommand::DeleteTopic { name, id } => {
                self.topics.get(name).map(|topic| topic.id) != Some(*id)
            }
        }
    }
}

pub fn encode_command(command: &ControllerCommand) -> io::Result<Vec<u8>> {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(command)
        .map_err(|e| io::Error::other(format!("cannot encode a controller command: {e}")))?;
    if bytes.len() > CONTROLLER_COMMAND_BYTES_MAX {
        return Err(io::Error::other(format!(
            "controller command of {} bytes exceeds {CONTROLLER_COMMAND_BYTES_MAX}",
            bytes.len()
        )));
    }
    Ok(bytes.to_vec())
}

/// Decodes untrusted command bytes (checked by rkyv's validation).
pub fn decode_command(bytes: &[u8]) -> io::Result<ControllerCommand> {
    if bytes.len() > CONTROLLER_COMMAND_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "controller command too large",
        ));
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<ControllerCommand, rkyv::rancor::Error>(&aligned)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad command: {e}")))
}

/// The Raft entry payload carrying `command_bytes`: one record, no key.
pub fn command_batch(command_bytes: Vec<u8>, now_ms: i64) -> io::Result<RecordBatch> {
    let record = PlainRecord {
        key: None,
        value: Some(Bytes::from(command_bytes)),
        headers: Default::default(),
    };
    let bytes =
        encode_plain_batch([record], now_ms).map_err(|e| io::Error::other(e.to_string()))?;
    RecordBatch::new(bytes.freeze()).map_err(|e| io::Error::other(e.to_string()))
}

fn command_of(batch: &RecordBatch) -> io::Result<ControllerCommand> {
    let mut bytes = batch.bytes().clone();
    let sets = RecordBatchDecoder::decode_all(&mut bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let value = sets
        .into_iter()
        .flat_map(|set| set.records)
        .find_map(|record| record.value)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no command record"))?;
    decode_command(&value)
}

/// What the state machine shares with the cluster node.
pub struct ControllerShared {
    pub state: RefCell<ReplicatedState>,
    /// Raft index of the last applied entry (0: none).
    pub applied_index: Cell<u64>,
    /// Bumped on every change of `state`.
    pub content_version: Cell<u64>,
    changed: flume::Sender<()>,
}

impl ControllerShared {
    /// The shared state and the receiver the merger waits on.
    pub fn new() -> (Rc<ControllerShared>, flume::Receiver<()>) {
        let (changed, receiver) = flume::bounded(MERGE_WAKEUPS_QUEUED);
        let shared = ControllerShared {
            state: RefCell::new(ReplicatedState::default()),
            applied_index: Cell::new(0),
            content_version: Cell::new(0),
            changed,
        };
        (Rc::new(shared), receiver)
    }

    /// Wakes the merger.
    pub fn wake(&self) {
        // Full: a wake-up is already pending.
        let _ = self.changed.try_send(());
    }
}

type ControllerSnapshot = Snapshot<
    openraft::type_config::alias::CommittedLeaderIdOf<PartitionRaft>,
    u64,
    openraft::BasicNode,
    Vec<u8>,
>;

type SnapshotSlot = Rc<RefCell<Option<(SnapshotMetaOf<PartitionRaft>, Vec<u8>)>>>;

pub struct ControllerStateMachine {
    shared: Rc<ControllerShared>,
    last_applied: Option<PartitionLogId>,
    membership: StoredMembership,
    snapshot: SnapshotSlot,
}

impl ControllerStateMachine {
    pub fn new(shared: Rc<ControllerShared>) -> ControllerStateMachine {
        ControllerStateMachine {
            shared,
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: Rc::new(RefCell::new(None)),
        }
    }
}

fn encode_state(state: &ReplicatedState) -> io::Result<Vec<u8>> {
    rkyv::to_bytes::<rkyv::rancor::Error>(state)
        .map(|bytes| bytes.to_vec())
        .map_err(|e| io::Error::other(format!("cannot encode the controller state: {e}")))
}

fn decode_state(bytes: &[u8]) -> io::Result<ReplicatedState> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<ReplicatedState, rkyv::rancor::Error>(&aligned)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad snapshot: {e}")))
}

pub struct ControllerSnapshotBuilder {
    meta: SnapshotMetaOf<PartitionRaft>,
    state: ReplicatedState,
    snapshot: SnapshotSlot,
}

impl RaftSnapshotBuilder<PartitionRaft> for ControllerSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<ControllerSnapshot, io::Error> {
        let data = encode_state(&self.state)?;
        *self.snapshot.borrow_mut() = Some((self.meta.clone(), data.clone()));
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: data,
        })
    }
}

impl RaftStateMachine<PartitionRaft> for ControllerStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = ControllerSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<PartitionLogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_lite::Stream<Item = Result<EntryResponder<PartitionRaft>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut changed = false;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            match entry.payload {
                PartitionPayload::Normal(batch) => match command_of(&batch) {
                    Ok(command) => {
                        if self.shared.state.borrow_mut().apply(command) {
                            changed = true;
                        }
                    }
                    Err(error) => warn!(
                        index = entry.log_id.index,
                        %error,
                        "controller: skipping an entry that is not a command"
                    ),
                },
                PartitionPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
                PartitionPayload::Blank => {}
            }
            self.last_applied = Some(entry.log_id);
            self.shared.applied_index.set(entry.log_id.index);
            if let Some(responder) = responder {
                responder.send(Applied {
                    log_index: entry.log_id.index,
                    base_offset: None,
                });
            }
        }
        if changed {
            let version = self.shared.content_version.get();
            self.shared.content_version.set(version + 1);
        }
        self.shared.wake();
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ControllerSnapshotBuilder {
            meta: SnapshotMetaOf::<PartitionRaft> {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
            },
            state: self.shared.state.borrow().clone(),
            snapshot: self.snapshot.clone(),
        }
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<PartitionRaft>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = decode_state(&snapshot)?;
        *self.shared.state.borrow_mut() = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.shared
            .applied_index
            .set(meta.last_log_id.map_or(0, |id| id.index));
        let version = self.shared.content_version.get();
        self.shared.content_version.set(version + 1);
        *self.snapshot.borrow_mut() = Some((meta.clone(), snapshot));
        self.shared.wake();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<ControllerSnapshot>, io::Error> {
        Ok(self
            .snapshot
            .borrow()
            .as_ref()
            .map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: data.clone(),
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(id: u8, partitions: usize) -> TopicMeta {
        TopicMeta {
            id: [id; 16],
            partition_shards: vec![0; partitions],
            configs: BTreeMap::new(),
            leader_epoch: 0,
            log_start_offsets: Vec::new(),
            partition_nodes: vec![2; partitions],
            partition_replicas: Vec::new(),
        }
    }

    #[test]
    fn commands_round_trip_through_a_record_batch() {
        let command = ControllerCommand::PutTopic {
            name: "orders".to_string(),
            expected: None,
            meta: topic(1, 3),
        };
        let batch = command_batch(encode_command(&command).expect("encode"), 1_000).expect("batch");
        assert_eq!(command_of(&batch).expect("decode"), command);
        assert!(decode_command(b"not a command").is_err());
    }

    #[test]
    fn put_topic_is_compare_and_set_and_delete_checks_the_id() {
        let mut state = ReplicatedState::default();
        let create = ControllerCommand::PutTopic {
            name: "t".to_string(),
            expected: None,
            meta: topic(1, 1),
        };
        assert!(state.apply(create.clone()));
        assert!(state.reflects(&create));
        // A second create of the same name (another node raced) does not apply.
        let racing = ControllerCommand::PutTopic {
            name: "t".to_string(),
            expected: None,
            meta: topic(2, 4),
        };
        assert!(!state.apply(racing.clone()));
        assert!(!state.reflects(&racing));
        let grow = ControllerCommand::PutTopic {
            name: "t".to_string(),
            expected: Some(topic(1, 1)),
            meta: topic(1, 2),
        };
        assert!(state.apply(grow));
        let wrong_id = ControllerCommand::DeleteTopic {
            name: "t".to_string(),
            id: [9; 16],
        };
        assert!(!state.apply(wrong_id));
        let delete = ControllerCommand::DeleteTopic {
            name: "t".to_string(),
            id: [1; 16],
        };
        assert!(state.apply(delete.clone()));
        assert!(state.reflects(&delete));
        assert!(state.topics.is_empty());
    }

    #[test]
    fn the_first_registration_names_the_cluster() {
        let mut state = ReplicatedState::default();
        let broker = |node_id: i32, port: i32| BrokerMeta {
            node_id,
            host: "127.0.0.1".to_string(),
            port,
            rpc_addr: format!("127.0.0.1:{}", 7000 + node_id),
        };
        let first = ControllerCommand::RegisterBroker {
            broker: broker(2, 9092),
            cluster_id: "a".to_string(),
        };
        assert!(state.apply(first));
        let second = ControllerCommand::RegisterBroker {
            broker: broker(1, 9093),
            cluster_id: "b".to_string(),
        };
        assert!(state.apply(second));
        let again = ControllerCommand::RegisterBroker {
            broker: broker(2, 9094),
            cluster_id: "c".to_string(),
        };
        assert!(state.apply(again.clone()));
        assert!(state.reflects(&again));
        assert_eq!(state.cluster_id, "a");
        assert_eq!(state.brokers.len(), 2);
        assert_eq!(state.brokers[&2].port, 9094);
    }

    #[test]
    fn a_snapshot_decodes_to_the_same_state() {
        let mut state = ReplicatedState::default();
        state.topics.insert("t".to_string(), topic(3, 2));
        state.cluster_id = "c".to_string();
        let bytes = encode_state(&state).expect("encode");
        assert_eq!(decode_state(&bytes).expect("decode"), state);
    }
}
