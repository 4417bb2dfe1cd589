//! The RPC client: `RpcClient` is one executor's (shard's) cache of connections, one per target
//! node id, shared by every Raft group of that executor (so connections are per (node, shard)
//! pair); `RpcNetworkFactory` / `RpcNetwork` implement openraft's `RaftNetworkFactory` /
//! `RaftNetworkV2` for one group on top of it, addressing nodes by `BasicNode.addr`
//! ("host:port").
//!
//! Per connection: a task connects (`RPC_CONNECT_TIMEOUT`), says `Hello`, then writes queued
//! request frames (bounded queue, `RPC_CLIENT_SEND_QUEUE_FRAMES`) and routes response frames to
//! their waiting request by correlation id (at most `RPC_CLIENT_PENDING_MAX` waiting). When
//! the connection fails or drops, every waiting request fails with `Unreachable`, the peer is
//! marked down (new requests fail with `Unreachable` at once, so openraft backs off) and the
//! task reconnects after an exponential backoff from `RPC_RECONNECT_BACKOFF_MIN` to
//! `RPC_RECONNECT_BACKOFF_MAX`.
//!
//! Timeouts: a request must be queued within openraft's soft TTL (`RPCOption::soft_ttl`) and
//! answered within its hard TTL, else `Timeout`. An AppendEntries larger than
//! `RPC_APPEND_BUDGET_BYTES` is sent as a prefix and reported as `PartialSuccess`.
//!
//! Concurrency contract: `!Send`, one `RpcClient` per executor; clones share the cache.
//! `RefCell` borrows never span an await.

use super::frame::{encode_frame, read_frame, Frame, FrameKind};
use super::link_filter::LinkFilter;
use super::wire::{
    decode_response, encode_hello, encode_request, FaultCode, PartitionSnapshot, RpcRequest,
    RpcResponse, WireHello, RPC_PROTOCOL_VERSION,
};
use crate::constants::{
    RPC_APPEND_BUDGET_BYTES, RPC_CLIENT_PENDING_MAX, RPC_CLIENT_SEND_QUEUE_FRAMES,
    RPC_CONNECT_TIMEOUT, RPC_ENTRY_OVERHEAD_BYTES, RPC_RECONNECT_BACKOFF_MAX,
    RPC_RECONNECT_BACKOFF_MIN,
};
use crate::runtime::{
    GlommioRuntime, LocalMpsc, LocalMpscReceiver, LocalMpscSender, LocalOneshot, LocalOneshotSender,
};
use crate::{PartitionEntry, PartitionPayload, PartitionRaft, PartitionVote};
use futures_lite::io::BufReader;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::rt::{Mpsc, MpscReceiver, MpscSender, Oneshot, OneshotSender};
use openraft::{AsyncRuntime, BasicNode, RaftNetworkFactory, RaftNetworkV2};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Why a request got no response: the connection failed or dropped (or the peer is down).
type Lost = String;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    /// A connect attempt is under way; requests queue and wait for it.
    Connecting,
    Up,
    /// The last attempt failed; requests fail at once until the next attempt.
    Down,
}

/// One target node's connection, owned by the `RpcClient` cache.
struct Peer {
    target: u64,
    addr: String,
    state: Cell<PeerState>,
    sender: LocalMpscSender<Vec<u8>>,
    pending: RefCell<HashMap<u64, LocalOneshotSender<Result<Frame, Lost>>>>,
    next_correlation_id: Cell<u64>,
    task: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl Peer {
    fn fail_pending(&self, reason: &str) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (_, waiter) in pending {
            let _ = waiter.send(Err(reason.to_string()));
        }
    }

    fn close(&self) {
        if let Some(task) = self.task.borrow_mut().take() {
            task.cancel();
        }
        self.fail_pending("connection closed by the client");
    }
}

/// Removes a request's waiter when the request ends early (timeout, cancelled future).
struct PendingGuard<'a> {
    peer: &'a Peer,
    correlation_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.peer.pending.borrow_mut().remove(&self.correlation_id);
    }
}

struct ClientShared {
    node_id: u64,
    filter: Option<LinkFilter>,
    peers: RefCell<HashMap<u64, Rc<Peer>>>,
}

/// One executor's connections to other nodes; see the module comment.
#[derive(Clone)]
pub struct RpcClient {
    shared: Rc<ClientShared>,
}

impl RpcClient {
    /// A client for node `node_id` (sent in `Hello`; the link filter's "from").
    pub fn new(node_id: u64, filter: Option<LinkFilter>) -> RpcClient {
        RpcClient {
            shared: Rc::new(ClientShared {
                node_id,
                filter,
                peers: RefCell::new(HashMap::new()),
            }),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.shared.node_id
    }

    /// A network factory for the Raft group `group_id` over this client's connections.
    pub fn network_factory(&self, group_id: u64) -> RpcNetworkFactory {
        RpcNetworkFactory {
            client: self.clone(),
            group_id,
        }
    }

    /// Closes every connection; waiting requests fail with `Unreachable`.
    pub fn shutdown(&self) {
        let peers = std::mem::take(&mut *self.shared.peers.borrow_mut());
        for peer in peers.values() {
            peer.close();
        }
    }

    /// Sends the embedder's `payload` as a `Forward` request for `group_id` to node `target`
    /// at `addr` and returns the answer's bytes; fails (with the reason) if the peer is down,
    /// answers with a fault, or does not answer within `timeout`.
    pub async fn forward(
        &self,
        target: u64,
        addr: &str,
        group_id: u64,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let option = RPCOption::new(timeout);
        let request = RpcRequest::Forward(payload);
        match self
            .call(
                target,
                addr,
                group_id,
                &request,
                &option,
                RPCTypes::AppendEntries,
            )
            .await
        {
            Ok(RpcResponse::Forward(bytes)) => Ok(bytes),
            Ok(other) => Err(format!("mismatched response {other:?}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// The connection to `target` at `addr`, opened (in the background) on first use; a cached
    /// connection to another address is replaced.
    fn peer(&self, target: u64, addr: &str) -> Rc<Peer> {
        if let Some(peer) = self.shared.peers.borrow().get(&target) {
            if peer.addr == addr {
                return peer.clone();
            }
        }
        let (sender, receiver) = LocalMpsc::channel(RPC_CLIENT_SEND_QUEUE_FRAMES);
        let peer = Rc::new(Peer {
            target,
            addr: addr.to_string(),
            state: Cell::new(PeerState::Connecting),
            sender,
            pending: RefCell::new(HashMap::new()),
            next_correlation_id: Cell::new(1),
            task: RefCell::new(None),
        });
        let task =
            glommio::spawn_local(run_peer(Rc::downgrade(&peer), receiver, self.node_id())).detach();
        *peer.task.borrow_mut() = Some(task);
        if let Some(old) = self.shared.peers.borrow_mut().insert(target, peer.clone()) {
            old.close();
        }
        peer
    }

    /// Sends one request frame and waits for its response frame.
    async fn call(
        &self,
        target: u64,
        addr: &str,
        group_id: u64,
        request: &RpcRequest,
        option: &RPCOption,
        action: RPCTypes,
    ) -> Result<RpcResponse, RPCError<PartitionRaft>> {
        let started = Instant::now();
        let local = self.node_id();
        if let Some(filter) = &self.shared.filter {
            if !filter.allows(local, target) {
                return Err(unreachable(format!("link {local} -> {target} is cut")));
            }
        }
        let peer = self.peer(target, addr);
        if peer.state.get() == PeerState::Down {
            return Err(unreachable(format!("node {target} at {addr} is down")));
        }
        if peer.pending.borrow().len() >= RPC_CLIENT_PENDING_MAX {
            return Err(unreachable(format!(
                "{RPC_CLIENT_PENDING_MAX} requests already wait on node {target}"
            )));
        }
        let (kind, payload) = encode_request(request).map_err(|error| network(&error))?;
        let correlation_id = peer.next_correlation_id.get();
        peer.next_correlation_id.set(correlation_id + 1);
        let frame = encode_frame(kind, correlation_id, group_id, &payload)
            .ok_or_else(|| network(&format!("{kind:?} request larger than a frame")))?;
        let (waiter, response) = LocalOneshot::channel();
        peer.pending.borrow_mut().insert(correlation_id, waiter);
        let _guard = PendingGuard {
            peer: &peer,
            correlation_id,
        };
        let timeout = |after: Duration| {
            RPCError::Timeout(Timeout {
                action,
                id: local,
                target,
                timeout: after,
            })
        };
        match GlommioRuntime::timeout(option.soft_ttl(), peer.sender.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(unreachable(format!("connection to node {target} closed"))),
            Err(_) => return Err(timeout(option.soft_ttl())),
        }
        let remaining = option.hard_ttl().saturating_sub(started.elapsed());
        let frame = match GlommioRuntime::timeout(remaining, response).await {
            Ok(Ok(Ok(frame))) => frame,
            Ok(Ok(Err(lost))) => return Err(unreachable(lost)),
            Ok(Err(_)) => return Err(unreachable(format!("connection to node {target} closed"))),
            Err(_) => return Err(timeout(option.hard_ttl())),
        };
        match decode_response(frame.kind, &frame.payload) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(fault)) if fault.code == FaultCode::BadRequest => Err(network(&fault)),
            // An unknown group (not created yet there) or a Raft that is shutting down: back
            // off and retry, as for a node that is down.
            Ok(Err(fault)) => Err(RPCError::Unreachable(Unreachable::new(&fault))),
            Err(error) => Err(network(&error)),
        }
    }
}

fn unreachable(message: impl ToString) -> RPCError<PartitionRaft> {
    RPCError::Unreachable(Unreachable::from_string(message))
}

fn network(error: &(impl std::fmt::Display + ?Sized)) -> RPCError<PartitionRaft> {
    RPCError::Network(NetworkError::from_string(error))
}

fn mismatched(response: &RpcResponse) -> RPCError<PartitionRaft> {
    network(&format!("mismatched response {response:?}"))
}

/// Connects, serves, reconnects with backoff, until the peer is dropped or closed.
async fn run_peer(peer: std::rc::Weak<Peer>, mut receiver: LocalMpscReceiver<Vec<u8>>, local: u64) {
    let mut backoff = RPC_RECONNECT_BACKOFF_MIN;
    let mut was_down = false;
    loop {
        let Some(addr) = peer.upgrade().map(|peer| {
            peer.state.set(PeerState::Connecting);
            peer.addr.clone()
        }) else {
            return;
        };
        let reason = match connect(&addr, local).await {
            Ok(stream) => {
                let Some(live) = peer.upgrade() else { return };
                live.state.set(PeerState::Up);
                if was_down {
                    tracing::info!(target_node = live.target, %addr, "rpc: reconnected");
                }
                was_down = false;
                backoff = RPC_RECONNECT_BACKOFF_MIN;
                drop(live);
                serve(&peer, stream, &mut receiver).await
            }
            Err(error) => error,
        };
        let Some(live) = peer.upgrade() else { return };
        if !was_down {
            tracing::warn!(target_node = live.target, %addr, "rpc: peer down: {reason}");
        }
        was_down = true;
        live.state.set(PeerState::Down);
        live.fail_pending(&format!("node {} at {addr}: {reason}", live.target));
        // Frames queued for the lost connection belong to requests that just failed.
        while receiver.try_recv().is_ok() {}
        drop(live);
        GlommioRuntime::sleep(backoff).await;
        backoff = (backoff * 2).min(RPC_RECONNECT_BACKOFF_MAX);
    }
}

async fn connect(addr: &str, local: u64) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect_timeout(addr, RPC_CONNECT_TIMEOUT)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let _ = stream.set_nodelay(true);
    let hello = encode_hello(&WireHello {
        protocol_version: RPC_PROTOCOL_VERSION,
        node_id: local,
    })
    .map_err(|error| error.to_string())?;
    let frame = encode_frame(FrameKind::Hello, 0, local, &hello)
        .ok_or_else(|| "hello larger than a frame".to_string())?;
    stream
        .write_all(&frame)
        .await
        .map_err(|error| format!("hello: {error}"))?;
    Ok(stream)
}

/// Writes queued frames and routes responses until either direction fails; the reason.
async fn serve(
    peer: &std::rc::Weak<Peer>,
    stream: TcpStream,
    receiver: &mut LocalMpscReceiver<Vec<u8>>,
) -> String {
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::new(reader);
    let write = async {
        while let Some(frame) = receiver.recv().await {
            if let Err(error) = writer.write_all(&frame).await {
                return format!("write: {error}");
            }
            if let Err(error) = writer.flush().await {
                return format!("write: {error}");
            }
        }
        "client closed".to_string()
    };
    let read = async {
        loop {
            let frame = match read_frame(&mut reader).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return "closed by the peer".to_string(),
                Err(error) => {
                    return format!("malformed response, closing: {error}");
                }
            };
            let Some(peer) = peer.upgrade() else {
                return "client closed".to_string();
            };
            let waiter = peer.pending.borrow_mut().remove(&frame.correlation_id);
            // No waiter: the request timed out or failed already.
            if let Some(waiter) = waiter {
                let _ = waiter.send(Ok(frame));
            }
        }
    };
    futures_lite::future::or(write, read).await
}

/// openraft's network factory for one Raft group over an `RpcClient`.
#[derive(Clone)]
pub struct RpcNetworkFactory {
    client: RpcClient,
    group_id: u64,
}

/// openraft's network to one target node for one Raft group.
pub struct RpcNetwork {
    client: RpcClient,
    group_id: u64,
    target: u64,
    addr: String,
}

impl RaftNetworkFactory<PartitionRaft> for RpcNetworkFactory {
    type Network = RpcNetwork;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> RpcNetwork {
        RpcNetwork {
            client: self.client.clone(),
            group_id: self.group_id,
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RpcNetwork {
    async fn call(
        &self,
        request: &RpcRequest,
        option: &RPCOption,
        action: RPCTypes,
    ) -> Result<RpcResponse, RPCError<PartitionRaft>> {
        self.client
            .call(
                self.target,
                &self.addr,
                self.group_id,
                request,
                option,
                action,
            )
            .await
    }
}

/// Bytes an entry adds to an AppendEntries payload, roughly (an upper bound).
fn entry_wire_bytes(entry: &PartitionEntry) -> usize {
    RPC_ENTRY_OVERHEAD_BYTES
        + match &entry.payload {
            PartitionPayload::Blank => 0,
            PartitionPayload::Normal(batch) => batch.bytes().len(),
            PartitionPayload::Membership(membership) => membership
                .nodes()
                .map(|(_, node)| RPC_ENTRY_OVERHEAD_BYTES + node.addr.len())
                .sum(),
        }
}

/// How many leading entries fit `budget_bytes` (at least one).
pub(crate) fn entries_in_budget(entries: &[PartitionEntry], budget_bytes: usize) -> usize {
    let mut bytes = 0usize;
    for (count, entry) in entries.iter().enumerate() {
        bytes += entry_wire_bytes(entry);
        if count > 0 && bytes > budget_bytes {
            return count;
        }
    }
    entries.len()
}

impl RaftNetworkV2<PartitionRaft> for RpcNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        mut request: AppendEntriesRequest<PartitionRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<PartitionRaft>, RPCError<PartitionRaft>> {
        let keep = entries_in_budget(&request.entries, RPC_APPEND_BUDGET_BYTES);
        let sent_prefix = (keep < request.entries.len()).then(|| {
            request.entries.truncate(keep);
            request.entries.last().map(|entry| entry.log_id)
        });
        let request = RpcRequest::AppendEntries(request);
        match self
            .call(&request, &option, RPCTypes::AppendEntries)
            .await?
        {
            RpcResponse::AppendEntries(AppendEntriesResponse::Success) => match sent_prefix {
                Some(last) => Ok(AppendEntriesResponse::PartialSuccess(last)),
                None => Ok(AppendEntriesResponse::Success),
            },
            RpcResponse::AppendEntries(response) => Ok(response),
            other => Err(mismatched(&other)),
        }
    }

    async fn vote(
        &mut self,
        request: VoteRequest<PartitionRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<PartitionRaft>, RPCError<PartitionRaft>> {
        match self
            .call(&RpcRequest::Vote(request), &option, RPCTypes::Vote)
            .await?
        {
            RpcResponse::Vote(response) => Ok(response),
            other => Err(mismatched(&other)),
        }
    }

    async fn pre_vote(
        &mut self,
        request: VoteRequest<PartitionRaft>,
        option: RPCOption,
    ) -> Result<VoteResponse<PartitionRaft>, RPCError<PartitionRaft>> {
        match self
            .call(&RpcRequest::PreVote(request), &option, RPCTypes::Vote)
            .await?
        {
            RpcResponse::Vote(response) => Ok(response),
            other => Err(mismatched(&other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<PartitionRaft>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<PartitionRaft>, RPCError<PartitionRaft>> {
        match self
            .call(
                &RpcRequest::TransferLeader(request),
                &option,
                RPCTypes::TransferLeader,
            )
            .await?
        {
            RpcResponse::TransferLeader(response) => Ok(response),
            other => Err(mismatched(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: PartitionVote,
        snapshot: PartitionSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<PartitionRaft>, StreamingError<PartitionRaft>> {
        let request = RpcRequest::InstallSnapshot { vote, snapshot };
        let send = async {
            match self
                .call(&request, &option, RPCTypes::InstallSnapshot)
                .await
            {
                Ok(RpcResponse::InstallSnapshot(response)) => Ok(response),
                Ok(other) => Err(StreamingError::Network(NetworkError::from_string(format!(
                    "mismatched response {other:?}"
                )))),
                Err(RPCError::Timeout(error)) => Err(StreamingError::Timeout(error)),
                Err(RPCError::Unreachable(error)) => Err(StreamingError::Unreachable(error)),
                Err(RPCError::Network(error)) => Err(StreamingError::Network(error)),
                Err(RPCError::RemoteError(error)) => Err(StreamingError::Network(
                    NetworkError::from_string(error.to_string()),
                )),
            }
        };
        let cancelled = async { Err(StreamingError::Closed(cancel.await)) };
        futures_lite::future::or(send, cancelled).await
    }
}
