//! The RPC messages: openraft's Vote / AppendEntries / full-snapshot / TransferLeader requests
//! and responses as
//! our own rkyv structs (`Wire*`), so the bytes on the wire do not change when openraft's types
//! do. Conversion is lossless both ways: every field openraft sends is carried (including the
//! higher-vote, conflict and partial-success responses), entries carry their record-batch
//! bytes as they are (checked again with `RecordBatch::new` on receipt) and membership entries
//! their configs and nodes.
//!
//! Concurrency contract: pure functions. Decoding treats its input as untrusted: rkyv checks
//! the archive (bytecheck), then batches and memberships are validated; any failure is a
//! `WireError`, never a panic.

use super::frame::FrameKind;
use crate::constants::{MEMBERSHIP_CONFIGS_MAX, MEMBERSHIP_NODES_MAX};
use crate::{
    Membership, PartitionEntry, PartitionLogId, PartitionPayload, PartitionRaft, PartitionVote,
    RecordBatch, StoredMembership,
};
use bytes::Bytes;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::type_config::alias::{CommittedLeaderIdOf, SnapshotMetaOf};
use openraft::BasicNode;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Version of the message set, sent in `WireHello`; a server refuses other versions.
pub const RPC_PROTOCOL_VERSION: u16 = 1;

/// A full snapshot as openraft hands it to the network (data in memory).
pub type PartitionSnapshot = Snapshot<CommittedLeaderIdOf<PartitionRaft>, u64, BasicNode, Vec<u8>>;

/// A request as the embedder's `Dispatcher` receives it.
#[derive(Clone, Debug)]
pub enum RpcRequest {
    Vote(VoteRequest<PartitionRaft>),
    PreVote(VoteRequest<PartitionRaft>),
    AppendEntries(AppendEntriesRequest<PartitionRaft>),
    InstallSnapshot {
        vote: PartitionVote,
        snapshot: PartitionSnapshot,
    },
    /// The embedder's own request bytes (see `FrameKind::Forward`), served by its dispatcher.
    Forward(Vec<u8>),
    TransferLeader(TransferLeaderRequest<PartitionRaft>),
}

/// A served request's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcResponse {
    Vote(VoteResponse<PartitionRaft>),
    AppendEntries(AppendEntriesResponse<PartitionRaft>),
    InstallSnapshot(SnapshotResponse<PartitionRaft>),
    /// The embedder's own answer bytes to a `Forward` request.
    Forward(Vec<u8>),
    TransferLeader(TransferLeaderResponse<PartitionRaft>),
}

/// Why a request was not served; sent back as an `Error` frame.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RpcFault {
    pub code: FaultCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum FaultCode {
    /// This node hosts no such group (not created yet, or moved away).
    UnknownGroup,
    /// The group's Raft refused it (shutting down, fatal storage error).
    Raft,
    /// The request did not decode.
    BadRequest,
}

impl RpcFault {
    pub fn new(code: FaultCode, message: impl Into<String>) -> RpcFault {
        RpcFault {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for RpcFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcFault {}

/// A payload that does not decode, or a message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn wire_error(context: &str, error: impl fmt::Display) -> WireError {
    WireError(format!("{context}: {error}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireHello {
    pub protocol_version: u16,
    pub node_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireLogId {
    pub term: u64,
    pub index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireVote {
    pub term: u64,
    pub voted_for: u64,
    pub committed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireNode {
    pub id: u64,
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireMembership {
    /// Voter ids of each config (two while joint).
    pub configs: Vec<Vec<u64>>,
    /// Every member, voter or learner.
    pub nodes: Vec<WireNode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum WirePayload {
    Blank,
    /// One record batch, its bytes as stored.
    Normal(Vec<u8>),
    Membership(WireMembership),
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireEntry {
    pub log_id: WireLogId,
    pub payload: WirePayload,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireVoteRequest {
    pub vote: WireVote,
    pub last_log_id: Option<WireLogId>,
    pub leadership_transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireVoteResponse {
    pub vote: WireVote,
    pub vote_granted: bool,
    pub last_log_id: Option<WireLogId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireAppendRequest {
    pub vote: WireVote,
    pub prev_log_id: Option<WireLogId>,
    pub entries: Vec<WireEntry>,
    pub leader_commit: Option<WireLogId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum WireAppendResponse {
    Success,
    PartialSuccess(Option<WireLogId>),
    Conflict,
    HigherVote(WireVote),
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireSnapshotRequest {
    pub vote: WireVote,
    pub last_log_id: Option<WireLogId>,
    pub membership_log_id: Option<WireLogId>,
    pub membership: WireMembership,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireSnapshotResponse {
    pub vote: WireVote,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireTransferLeaderRequest {
    pub from_leader: WireVote,
    pub to_node_id: u64,
    pub last_log_id: Option<WireLogId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum WireTransferLeaderResponse {
    Accepted,
    VoteChanged {
        expected: WireVote,
        actual: WireVote,
    },
    LogNotFlushed {
        expected: Option<WireLogId>,
        actual: Option<WireLogId>,
    },
}

// ---- openraft <-> wire ----

pub fn log_id_to_wire(log_id: &PartitionLogId) -> WireLogId {
    WireLogId {
        term: log_id.leader_id.term,
        index: log_id.index,
    }
}

pub fn log_id_from_wire(log_id: &WireLogId) -> PartitionLogId {
    PartitionLogId::new_term_index(log_id.term, log_id.index)
}

fn opt_log_id_to_wire(log_id: &Option<PartitionLogId>) -> Option<WireLogId> {
    log_id.as_ref().map(log_id_to_wire)
}

fn opt_log_id_from_wire(log_id: &Option<WireLogId>) -> Option<PartitionLogId> {
    log_id.as_ref().map(log_id_from_wire)
}

pub fn vote_to_wire(vote: &PartitionVote) -> WireVote {
    WireVote {
        term: vote.leader_id.term,
        voted_for: vote.leader_id.voted_for,
        committed: vote.committed,
    }
}

pub fn vote_from_wire(vote: &WireVote) -> PartitionVote {
    if vote.committed {
        PartitionVote::new_committed(vote.term, vote.voted_for)
    } else {
        PartitionVote::new(vote.term, vote.voted_for)
    }
}

pub fn membership_to_wire(membership: &Membership) -> WireMembership {
    WireMembership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|config| config.iter().copied().collect())
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| WireNode {
                id: *id,
                addr: node.addr.clone(),
            })
            .collect(),
    }
}

pub fn membership_from_wire(membership: &WireMembership) -> Result<Membership, WireError> {
    if membership.configs.len() > MEMBERSHIP_CONFIGS_MAX
        || membership.nodes.len() > MEMBERSHIP_NODES_MAX
        || membership
            .configs
            .iter()
            .any(|config| config.len() > MEMBERSHIP_NODES_MAX)
    {
        return Err(WireError("membership too large".to_string()));
    }
    let configs: Vec<BTreeSet<u64>> = membership
        .configs
        .iter()
        .map(|config| config.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, BasicNode> = membership
        .nodes
        .iter()
        .map(|node| {
            (
                node.id,
                BasicNode {
                    addr: node.addr.clone(),
                },
            )
        })
        .collect();
    Membership::new(configs, nodes).map_err(|error| wire_error("membership", error))
}

pub fn entry_to_wire(entry: &PartitionEntry) -> WireEntry {
    WireEntry {
        log_id: log_id_to_wire(&entry.log_id),
        payload: match &entry.payload {
            PartitionPayload::Blank => WirePayload::Blank,
            PartitionPayload::Normal(batch) => WirePayload::Normal(batch.bytes().to_vec()),
            PartitionPayload::Membership(membership) => {
                WirePayload::Membership(membership_to_wire(membership))
            }
        },
    }
}

pub fn entry_from_wire(entry: WireEntry) -> Result<PartitionEntry, WireError> {
    let payload = match entry.payload {
        WirePayload::Blank => PartitionPayload::Blank,
        WirePayload::Normal(bytes) => PartitionPayload::Normal(
            RecordBatch::new(Bytes::from(bytes)).map_err(|error| wire_error("entry", error))?,
        ),
        WirePayload::Membership(membership) => {
            PartitionPayload::Membership(membership_from_wire(&membership)?)
        }
    };
    Ok(PartitionEntry {
        log_id: log_id_from_wire(&entry.log_id),
        payload,
    })
}

pub fn vote_request_to_wire(request: &VoteRequest<PartitionRaft>) -> WireVoteRequest {
    WireVoteRequest {
        vote: vote_to_wire(&request.vote),
        last_log_id: opt_log_id_to_wire(&request.last_log_id),
        leadership_transfer: request.leadership_transfer,
    }
}

pub fn vote_request_from_wire(request: &WireVoteRequest) -> VoteRequest<PartitionRaft> {
    VoteRequest {
        vote: vote_from_wire(&request.vote),
        last_log_id: opt_log_id_from_wire(&request.last_log_id),
        leadership_transfer: request.leadership_transfer,
    }
}

pub fn vote_response_to_wire(response: &VoteResponse<PartitionRaft>) -> WireVoteResponse {
    WireVoteResponse {
        vote: vote_to_wire(&response.vote),
        vote_granted: response.vote_granted,
        last_log_id: opt_log_id_to_wire(&response.last_log_id),
    }
}

pub fn vote_response_from_wire(response: &WireVoteResponse) -> VoteResponse<PartitionRaft> {
    VoteResponse {
        vote: vote_from_wire(&response.vote),
        vote_granted: response.vote_granted,
        last_log_id: opt_log_id_from_wire(&response.last_log_id),
    }
}

pub fn append_request_to_wire(request: &AppendEntriesRequest<PartitionRaft>) -> WireAppendRequest {
    WireAppendRequest {
        vote: vote_to_wire(&request.vote),
        prev_log_id: opt_log_id_to_wire(&request.prev_log_id),
        entries: request.entries.iter().map(entry_to_wire).collect(),
        leader_commit: opt_log_id_to_wire(&request.leader_commit),
    }
}

pub fn append_request_from_wire(
    request: WireAppendRequest,
) -> Result<AppendEntriesRequest<PartitionRaft>, WireError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_wire(&request.vote),
        prev_log_id: opt_log_id_from_wire(&request.prev_log_id),
        entries: request
            .entries
            .into_iter()
            .map(entry_from_wire)
            .collect::<Result<_, _>>()?,
        leader_commit: opt_log_id_from_wire(&request.leader_commit),
    })
}

pub fn append_response_to_wire(
    response: &AppendEntriesResponse<PartitionRaft>,
) -> WireAppendResponse {
    match response {
        AppendEntriesResponse::Success => WireAppendResponse::Success,
        AppendEntriesResponse::PartialSuccess(log_id) => {
            WireAppendResponse::PartialSuccess(opt_log_id_to_wire(log_id))
        }
        AppendEntriesResponse::Conflict => WireAppendResponse::Conflict,
        AppendEntriesResponse::HigherVote(vote) => {
            WireAppendResponse::HigherVote(vote_to_wire(vote))
        }
    }
}

pub fn append_response_from_wire(
    response: &WireAppendResponse,
) -> AppendEntriesResponse<PartitionRaft> {
    match response {
        WireAppendResponse::Success => AppendEntriesResponse::Success,
        WireAppendResponse::PartialSuccess(log_id) => {
            AppendEntriesResponse::PartialSuccess(opt_log_id_from_wire(log_id))
        }
        WireAppendResponse::Conflict => AppendEntriesResponse::Conflict,
        WireAppendResponse::HigherVote(vote) => {
            AppendEntriesResponse::HigherVote(vote_from_wire(vote))
        }
    }
}

pub fn transfer_request_to_wire(
    request: &TransferLeaderRequest<PartitionRaft>,
) -> WireTransferLeaderRequest {
    WireTransferLeaderRequest {
        from_leader: vote_to_wire(request.from_leader()),
        to_node_id: *request.to_node_id(),
        last_log_id: request.last_log_id().map(log_id_to_wire),
    }
}

pub fn transfer_request_from_wire(
    request: &WireTransferLeaderRequest,
) -> TransferLeaderRequest<PartitionRaft> {
    TransferLeaderRequest::new(
        vote_from_wire(&request.from_leader),
        request.to_node_id,
        opt_log_id_from_wire(&request.last_log_id),
    )
}

pub fn transfer_response_to_wire(
    response: &TransferLeaderResponse<PartitionRaft>,
) -> WireTransferLeaderResponse {
    match response {
        Ok(()) => WireTransferLeaderResponse::Accepted,
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            WireTransferLeaderResponse::VoteChanged {
                expected: vote_to_wire(expected),
                actual: vote_to_wire(actual),
            }
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            WireTransferLeaderResponse::LogNotFlushed {
                expected: opt_log_id_to_wire(expected),
                actual: opt_log_id_to_wire(actual),
            }
        }
    }
}

pub fn transfer_response_from_wire(
    response: &WireTransferLeaderResponse,
) -> TransferLeaderResponse<PartitionRaft> {
    match response {
        WireTransferLeaderResponse::Accepted => Ok(()),
        WireTransferLeaderResponse::VoteChanged { expected, actual } => {
            Err(TransferLeaderError::VoteChanged {
                expected: vote_from_wire(expected),
                actual: vote_from_wire(actual),
            })
        }
        WireTransferLeaderResponse::LogNotFlushed { expected, actual } => {
            Err(TransferLeaderError::LogNotFlushed {
                expected: opt_log_id_from_wire(expected),
                actual: opt_log_id_from_wire(actual),
            })
        }
    }
}

pub fn snapshot_request_to_wire(
    vote: &PartitionVote,
    snapshot: &PartitionSnapshot,
) -> WireSnapshotRequest {
    WireSnapshotRequest {
        vote: vote_to_wire(vote),
        last_log_id: opt_log_id_to_wire(&snapshot.meta.last_log_id),
        membership_log_id: opt_log_id_to_wire(snapshot.meta.last_membership.log_id()),
        membership: membership_to_wire(snapshot.meta.last_membership.membership()),
        data: snapshot.snapshot.clone(),
    }
}

pub fn snapshot_request_from_wire(
    request: WireSnapshotRequest,
) -> Result<(PartitionVote, PartitionSnapshot), WireError> {
    let membership = membership_from_wire(&request.membership)?;
    let meta = SnapshotMetaOf::<PartitionRaft> {
        last_log_id: opt_log_id_from_wire(&request.last_log_id),
        last_membership: StoredMembership::new(
            opt_log_id_from_wire(&request.membership_log_id),
            membership,
        ),
    };
    Ok((
        vote_from_wire(&request.vote),
        Snapshot {
            meta,
            snapshot: request.data,
        },
    ))
}

// ---- payload bytes ----

macro_rules! encode {
    ($value:expr) => {
        rkyv::to_bytes::<rancor::Error>($value).map_err(|error| wire_error("encode", error))
    };
}

macro_rules! decode {
    ($ty:ty, $bytes:expr) => {
        rkyv::from_bytes::<$ty, rancor::Error>($bytes)
            .map_err(|error| wire_error(concat!("decode ", stringify!($ty)), error))
    };
}

pub fn encode_hello(hello: &WireHello) -> Result<AlignedVec, WireError> {
    encode!(hello)
}

/// `bytes` must be 16-byte aligned (a frame payload is).
pub fn decode_hello(bytes: &[u8]) -> Result<WireHello, WireError> {
    decode!(WireHello, bytes)
}

/// The frame kind and payload of `request`.
pub fn encode_request(request: &RpcRequest) -> Result<(FrameKind, AlignedVec), WireError> {
    Ok(match request {
        RpcRequest::Vote(request) => (FrameKind::Vote, encode!(&vote_request_to_wire(request))?),
        RpcRequest::PreVote(request) => {
            (FrameKind::PreVote, encode!(&vote_request_to_wire(request))?)
        }
        RpcRequest::AppendEntries(request) => (
            FrameKind::AppendEntries,
            encode!(&append_request_to_wire(request))?,
        ),
        RpcRequest::InstallSnapshot { vote, snapshot } => (
            FrameKind::InstallSnapshot,
            encode!(&snapshot_request_to_wire(vote, snapshot))?,
        ),
        RpcRequest::Forward(bytes) => (FrameKind::Forward, aligned(bytes)),
        RpcRequest::TransferLeader(request) => (
            FrameKind::TransferLeader,
            encode!(&transfer_request_to_wire(request))?,
        ),
    })
}

/// Opaque bytes as a frame payload.
fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut out = AlignedVec::with_capacity(bytes.len());
    out.extend_from_slice(bytes);
    out
}

/// The request in a frame of `kind`; `bytes` must be 16-byte aligned (a frame payload is).
pub fn decode_request(kind: FrameKind, bytes: &[u8]) -> Result<RpcRequest, WireError> {
    match kind {
        FrameKind::Vote => Ok(RpcRequest::Vote(vote_request_from_wire(&decode!(
            WireVoteRequest,
            bytes
        )?))),
        FrameKind::PreVote => Ok(RpcRequest::PreVote(vote_request_from_wire(&decode!(
            WireVoteRequest,
            bytes
        )?))),
        FrameKind::AppendEntries => Ok(RpcRequest::AppendEntries(append_request_from_wire(
            decode!(WireAppendRequest, bytes)?,
        )?)),
        FrameKind::InstallSnapshot => {
            let (vote, snapshot) =
                snapshot_request_from_wire(decode!(WireSnapshotRequest, bytes)?)?;
            Ok(RpcRequest::InstallSnapshot { vote, snapshot })
        }
        FrameKind::Forward => Ok(RpcRequest::Forward(bytes.to_vec())),
        FrameKind::TransferLeader => Ok(RpcRequest::TransferLeader(transfer_request_from_wire(
            &decode!(WireTransferLeaderRequest, bytes)?,
        ))),
        other => Err(WireError(format!("{other:?} is not a request"))),
    }
}

/// The frame kind and payload of a served request's outcome.
pub fn encode_response(
    response: &Result<RpcResponse, RpcFault>,
) -> Result<(FrameKind, AlignedVec), WireError> {
    Ok(match response {
        Ok(RpcResponse::Vote(response)) => (
            FrameKind::VoteResponse,
            encode!(&vote_response_to_wire(response))?,
        ),
        Ok(RpcResponse::AppendEntries(response)) => (
            FrameKind::AppendEntriesResponse,
            encode!(&append_response_to_wire(response))?,
        ),
        Ok(RpcResponse::InstallSnapshot(response)) => (
            FrameKind::InstallSnapshotResponse,
            encode!(&WireSnapshotResponse {
                vote: vote_to_wire(&response.vote),
            })?,
        ),
        Ok(RpcResponse::Forward(bytes)) => (FrameKind::ForwardResponse, aligned(bytes)),
        Ok(RpcResponse::TransferLeader(response)) => (
            FrameKind::TransferLeaderResponse,
            encode!(&transfer_response_to_wire(response))?,
        ),
        Err(fault) => (FrameKind::Error, encode!(fault)?),
    })
}

/// The outcome in a response frame of `kind`; `bytes` must be 16-byte aligned.
pub fn decode_response(
    kind: FrameKind,
    bytes: &[u8],
) -> Result<Result<RpcResponse, RpcFault>, WireError> {
    Ok(match kind {
        FrameKind::VoteResponse => Ok(RpcResponse::Vote(vote_response_from_wire(&decode!(
            WireVoteResponse,
            bytes
        )?))),
        FrameKind::AppendEntriesResponse => Ok(RpcResponse::AppendEntries(
            append_response_from_wire(&decode!(WireAppendResponse, bytes)?),
        )),
        FrameKind::InstallSnapshotResponse => {
            let response = decode!(WireSnapshotResponse, bytes)?;
            Ok(RpcResponse::InstallSnapshot(SnapshotResponse {
                vote: vote_from_wire(&response.vote),
            }))
        }
        FrameKind::ForwardResponse => Ok(RpcResponse::Forward(bytes.to_vec())),
        FrameKind::TransferLeaderResponse => Ok(RpcResponse::TransferLeader(
            transfer_response_from_wire(&decode!(WireTransferLeaderResponse, bytes)?),
        )),
        FrameKind::Error => Err(decode!(RpcFault, bytes)?),
        other => return Err(WireError(format!("{other:?} is not a response"))),
    })
}
