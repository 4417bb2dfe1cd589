//! rmq-raft: openraft wired into the shard. `runtime` drives openraft on glommio (no Tokio);
//! `log_store` makes a partition log the Raft log of its group (`entry_codec` maps entries to
//! record batches, `raft_meta` keeps vote / committed / purged in a sidecar file);
//! `state_machine` is the partition state machine (the data is the log itself: it tracks the
//! applied position, membership and a digest of applied batches, and answers each write with
//! the batch's Kafka offset);
//! `rpc` is the network between nodes (framed rkyv messages over glommio TCP).
//!
//! Concurrency contract: everything here is `!Send` (openraft's `single-threaded` feature); a
//! Raft group lives on the shard that owns its partition.

pub mod constants;
pub mod entry_codec;
pub mod log_store;
pub mod raft_meta;
pub mod rpc;
pub mod runtime;
pub mod state_machine;

#[cfg(test)]
mod tests;

pub use entry_codec::RecordBatch;
pub use log_store::{PartitionLogReader, PartitionLogStore};
pub use runtime::GlommioRuntime;
pub use state_machine::DigestStateMachine;

use openraft::type_config::alias::{EntryOf, LogIdOf, StoredMembershipOf, VoteOf};
use openraft::BasicNode;
use rmq_storage::Offset;

openraft::declare_raft_types!(
    /// The types of a partition's Raft group: entries are record batches, terms are Kafka
    /// leader epochs (`leader_id_std`: one leader per term, so a committed log id is
    /// (term, index) and the term alone fits `partitionLeaderEpoch`).
    pub PartitionRaft:
        D = RecordBatch,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = GlommioRuntime,
);

pub type PartitionEntry = EntryOf<PartitionRaft>;
pub type PartitionPayload = openraft::EntryPayload<RecordBatch, u64, BasicNode>;
pub type PartitionLogId = LogIdOf<PartitionRaft>;
pub type PartitionVote = VoteOf<PartitionRaft>;
pub type Membership = openraft::Membership<u64, BasicNode>;
pub type StoredMembership = StoredMembershipOf<PartitionRaft>;

/// What applying one entry produced: its Raft index and, for a record batch, the Kafka offset
/// the log gave it (what a Produce response reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub log_index: u64,
    pub base_offset: Option<Offset>,
}
