//! The state machine of a partition group (and of the tests' groups). The partition's data is
//! the Raft log itself, so there is little state to keep: it records
//! the last applied log id and membership, counts applied record batches and folds their CRCs
//! into a digest, so replicas that applied the same entries have equal digests. Its snapshot is
//! that small state, serialized (`encode_snapshot`).
//!
//! Concurrency contract: single-threaded; openraft calls it one method at a time.

use crate::entry_codec::{decode_membership, encode_membership, invalid_data, Reader};
use crate::{Applied, PartitionLogId, PartitionPayload, PartitionRaft, StoredMembership};
use futures_lite::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::OptionalSend;
use rmq_storage::Offset;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;

const SNAPSHOT_CODEC_VERSION: u8 = 1;

type PartitionSnapshot = Snapshot<
    openraft::type_config::alias::CommittedLeaderIdOf<PartitionRaft>,
    u64,
    openraft::BasicNode,
    Vec<u8>,
>;

/// What the state machine knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestState {
    pub last_applied: Option<PartitionLogId>,
    pub membership: StoredMembership,
    pub applied_batches: u64,
    /// CRC32C chained over the stored CRC of every applied batch.
    pub digest: u32,
}

/// The latest snapshot (built or installed): its meta and data.
type SnapshotSlot = Rc<RefCell<Option<(SnapshotMetaOf<PartitionRaft>, Vec<u8>)>>>;

#[derive(Default)]
pub struct DigestStateMachine {
    state: DigestState,
    snapshot: SnapshotSlot,
}

impl DigestStateMachine {
    pub fn state(&self) -> &DigestState {
        &self.state
    }
}

fn put_log_id(log_id: &Option<PartitionLogId>, out: &mut Vec<u8>) {
    let (present, term, index) = match log_id {
        Some(log_id) => (1u8, log_id.leader_id.term, log_id.index),
        None => (0, 0, 0),
    };
    out.push(present);
    out.extend_from_slice(&term.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
}

fn read_log_id(reader: &mut Reader<'_>) -> io::Result<Option<PartitionLogId>> {
    let present = reader.u8()?;
    let term = reader.u64()?;
    let index = reader.u64()?;
    match present {
        0 => Ok(None),
        1 => Ok(Some(PartitionLogId::new_term_index(term, index))),
        _ => Err(invalid_data("bad log id flag")),
    }
}

/// version u8, last applied, membership log id, u32-length membership, batches u64, digest u32.
pub fn encode_snapshot(state: &DigestState) -> io::Result<Vec<u8>> {
    let mut out = vec![SNAPSHOT_CODEC_VERSION];
    put_log_id(&state.last_applied, &mut out);
    put_log_id(state.membership.log_id(), &mut out);
    let membership = encode_membership(state.membership.membership())?;
    out.extend_from_slice(&(membership.len() as u32).to_be_bytes());
    out.extend_from_slice(&membership);
    out.extend_from_slice(&state.applied_batches.to_be_bytes());
    out.extend_from_slice(&state.digest.to_be_bytes());
    Ok(out)
}

pub fn decode_snapshot(bytes: &[u8]) -> io::Result<DigestState> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != SNAPSHOT_CODEC_VERSION {
        return Err(invalid_data("unknown snapshot version"));
    }
    let last_applied = read_log_id(&mut reader)?;
    let membership_log_id = read_log_id(&mut reader)?;
    let length = reader.u32()? as usize;
    let membership = decode_membership(reader.bytes(length)?)?;
    let applied_batches = reader.u64()?;
    let digest = reader.u32()?;
    if !reader.is_empty() {
        return Err(invalid_data("trailing bytes after snapshot"));
    }
    Ok(DigestState {
        last_applied,
        membership: StoredMembership::new(membership_log_id, membership),
        applied_batches,
        digest,
    })
}

/// Builds a snapshot of the state at the time the builder was made.
pub struct DigestSnapshotBuilder {
    state: DigestState,
    snapshot: SnapshotSlot,
}

impl RaftSnapshotBuilder<PartitionRaft> for DigestSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<PartitionSnapshot, io::Error> {
        let meta = SnapshotMetaOf::<PartitionRaft> {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
        };
        let data = encode_snapshot(&self.state)?;
        *self.snapshot.borrow_mut() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<PartitionRaft> for DigestStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = DigestSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<PartitionLogId>, StoredMembership), io::Error> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_lite::Stream<Item = Result<EntryResponder<PartitionRaft>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            assert!(
                Some(entry.log_id) > self.state.last_applied,
                "applied twice: {}",
                entry.log_id
            );
            let base_offset = match entry.payload {
                PartitionPayload::Normal(batch) => {
                    let header = batch.header();
                    self.state.applied_batches += 1;
                    self.state.digest =
                        crc32c::crc32c_append(self.state.digest, &header.crc.to_be_bytes());
                    Some(Offset(header.base_offset))
                }
                PartitionPayload::Membership(membership) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
                PartitionPayload::Blank => None,
            };
            self.state.last_applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(Applied {
                    log_index: entry.log_id.index,
                    base_offset,
                });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        DigestSnapshotBuilder {
            state: self.state.clone(),
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
        let state = decode_snapshot(&snapshot)?;
        if state.last_applied != meta.last_log_id || state.membership != meta.last_membership {
            return Err(invalid_data("snapshot data does not match its meta"));
        }
        self.state = state;
        *self.snapshot.borrow_mut() = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<PartitionSnapshot>, io::Error> {
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
