//! `RpcServer`: accepts RPC connections on one glommio executor and hands each request, with
//! its group id, to the embedder's `Dispatcher` (the broker will route a group to the shard
//! that owns it; `RaftGroups` serves groups living on this executor).
//!
//! Per connection: the client's first frame is `Hello` (protocol version, caller's node id);
//! then a reader task decodes request frames and spawns one task per request, at most
//! `RPC_SERVER_IN_FLIGHT_MAX` at once (the reader waits for a permit, so TCP pushes back on the
//! client); responses go, in completion order, through a bounded queue to a writer task and
//! carry the request's correlation id. A frame or payload that does not decode closes the
//! connection with one warning; it never panics. An unknown group is answered with an `Error`
//! frame (`FaultCode::UnknownGroup`).
//!
//! Concurrency contract: `!Send`; everything runs on the executor that called `bind`.
//! `shutdown` stops accepting and cancels every connection's tasks (in-flight requests are
//! dropped; their callers time out or see the connection close).

use super::frame::{encode_frame, read_frame, FrameKind};
use super::link_filter::LinkFilter;
use super::wire::{
    decode_hello, decode_request, encode_response, FaultCode, RpcFault, RpcRequest, RpcResponse,
    RPC_PROTOCOL_VERSION,
};
use crate::constants::{
    RPC_SERVER_CONNECTIONS_MAX, RPC_SERVER_IN_FLIGHT_MAX, RPC_SERVER_WRITE_QUEUE_FRAMES,
};
use crate::runtime::{LocalMpsc, LocalMpscReceiver, LocalMpscSender};
use crate::PartitionRaft;
use futures_lite::future::BoxedLocal;
use futures_lite::io::{BufReader, WriteHalf};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use openraft::rt::{Mpsc, MpscReceiver, MpscSender};
use openraft::storage::RaftStateMachine;
use openraft::Raft;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;

/// Routes a request to the Raft group it names.
pub trait Dispatcher {
    /// Serves `request` for `group_id`; `Err(FaultCode::UnknownGroup)` if no such group lives
    /// here. Must not block the executor.
    fn dispatch(
        &self,
        group_id: u64,
        request: RpcRequest,
    ) -> BoxedLocal<Result<RpcResponse, RpcFault>>;
}

/// A `Dispatcher` over the Raft groups of this executor, by group id.
pub struct RaftGroups<SM: RaftStateMachine<PartitionRaft>> {
    groups: RefCell<HashMap<u64, Raft<PartitionRaft, SM>>>,
}

impl<SM: RaftStateMachine<PartitionRaft>> Default for RaftGroups<SM> {
    fn default() -> Self {
        RaftGroups {
            groups: RefCell::new(HashMap::new()),
        }
    }
}

impl<SM: RaftStateMachine<PartitionRaft>> RaftGroups<SM> {
    pub fn insert(&self, group_id: u64, raft: Raft<PartitionRaft, SM>) {
        self.groups.borrow_mut().insert(group_id, raft);
    }

    pub fn remove(&self, group_id: u64) -> Option<Raft<PartitionRaft, SM>> {
        self.groups.borrow_mut().remove(&group_id)
    }

    pub fn get(&self, group_id: u64) -> Option<Raft<PartitionRaft, SM>> {
        self.groups.borrow().get(&group_id).cloned()
    }
}

fn raft_fault(error: impl std::fmt::Display) -> RpcFault {
    RpcFault::new(FaultCode::Raft, error.to_string())
}

impl<SM> Dispatcher for RaftGroups<SM>
where
    SM: RaftStateMachine<PartitionRaft, SnapshotData = Vec<u8>> + 'static,
{
    fn dispatch(
        &self,
        group_id: u64,
        request: RpcRequest,
    ) -> BoxedLocal<Result<RpcResponse, RpcFault>> {
        let raft = self.get(group_id);
        Box::pin(async move {
            let Some(raft) = raft else {
                return Err(RpcFault::new(
                    FaultCode::UnknownGroup,
                    format!("no Raft group {group_id} here"),
                ));
            };
            match request {
                RpcRequest::Vote(request) => raft
                    .vote(request)
                    .await
                    .map(RpcResponse::Vote)
                    .map_err(raft_fault),
                RpcRequest::PreVote(request) => raft
                    .pre_vote(request)
                    .await
                    .map(RpcResponse::Vote)
                    .map_err(raft_fault),
                RpcRequest::AppendEntries(request) => raft
                    .append_entries(request)
                    .await
                    .map(RpcResponse::AppendEntries)
                    .map_err(raft_fault),
                RpcRequest::InstallSnapshot { vote, snapshot } => raft
                    .install_full_snapshot(vote, snapshot)
                    .await
                    .map(RpcResponse::InstallSnapshot)
                    .map_err(raft_fault),
                RpcRequest::TransferLeader(request) => raft
                    .handle_transfer_leader(request)
                    .await
                    .map(RpcResponse::TransferLeader)
                    .map_err(raft_fault),
                RpcRequest::Forward(_) => Err(RpcFault::new(
                    FaultCode::BadRequest,
                    "this node serves no forwarded requests",
                )),
            }
        })
    }
}

struct ServerShared {
    node_id: u64,
    dispatcher: Rc<dyn Dispatcher>,
    filter: Option<LinkFilter>,
    connections: RefCell<HashMap<u64, glommio::task::JoinHandle<()>>>,
    next_connection: Cell<u64>,
}

/// A listening RPC server; see the module comment.
pub struct RpcServer {
    local_addr: SocketAddr,
    shared: Rc<ServerShared>,
    accept_task: glommio::task::JoinHandle<()>,
}

impl RpcServer {
    /// Binds `addr` ("HOST:PORT", port 0 for any) and starts serving requests addressed to
    /// node `node_id`. `filter`, if any, is the test fault injector.
    pub fn bind(
        addr: &str,
        node_id: u64,
        dispatcher: Rc<dyn Dispatcher>,
        filter: Option<LinkFilter>,
    ) -> io::Result<RpcServer> {
        // Bound without SO_REUSEPORT (glommio's `TcpListener::bind` sets it): a second process
        // asking for the same port must fail with "address in use", not silently share it.
        let exclusive = std::net::TcpListener::bind(addr)?;
        // SAFETY: `into_raw_fd` hands over a bound, listening socket that nothing else owns.
        let listener = unsafe { TcpListener::from_raw_fd(exclusive.into_raw_fd()) };
        let local_addr = listener
            .local_addr()
            .map_err(|error| io::Error::other(error.to_string()))?;
        let shared = Rc::new(ServerShared {
            node_id,
            dispatcher,
            filter,
            connections: RefCell::new(HashMap::new()),
            next_connection: Cell::new(0),
        });
        let accept_task = glommio::spawn_local(accept_loop(listener, shared.clone())).detach();
        Ok(RpcServer {
            local_addr,
            shared,
            accept_task,
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(self) {
        self.accept_task.cancel();
        for (_, connection) in self.shared.connections.borrow_mut().drain() {
            connection.cancel();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Rc<ServerShared>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "rpc: accept failed");
                continue;
            }
        };
        if shared.connections.borrow().len() >= RPC_SERVER_CONNECTIONS_MAX {
            tracing::warn!(
                limit = RPC_SERVER_CONNECTIONS_MAX,
                "rpc: connection limit reached, closing a new connection"
            );
            continue;
        }
        let id = shared.next_connection.get();
        shared.next_connection.set(id + 1);
        let connection_shared = shared.clone();
        let task = glommio::spawn_local(async move {
            if let Err(message) = serve_connection(stream, &connection_shared).await {
                tracing::warn!(
                    node = connection_shared.node_id,
                    "rpc: closing connection: {message}"
                );
            }
            connection_shared.connections.borrow_mut().remove(&id);
        })
        .detach();
        shared.connections.borrow_mut().insert(id, task);
    }
}

/// Serves one connection until the peer closes it (`Ok`) or sends something malformed (`Err`
/// with the reason, logged once by the caller).
async fn serve_connection(stream: TcpStream, shared: &Rc<ServerShared>) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let peer_addr = stream
        .peer_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let (reader, writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::new(reader);
    let hello = match read_frame(&mut reader).await {
        Ok(Some(frame)) if frame.kind == FrameKind::Hello => {
            decode_hello(&frame.payload).map_err(|error| format!("{peer_addr}: {error}"))?
        }
        Ok(Some(frame)) => return Err(format!("{peer_addr}: {:?} before Hello", frame.kind)),
        Ok(None) => return Ok(()),
        Err(error) => return Err(format!("{peer_addr}: {error}")),
    };
    if hello.protocol_version != RPC_PROTOCOL_VERSION {
        return Err(format!(
            "{peer_addr}: protocol version {} (we speak {RPC_PROTOCOL_VERSION})",
            hello.protocol_version
        ));
    }
    let peer = hello.node_id;
    let (sender, receiver) = LocalMpsc::channel(RPC_SERVER_WRITE_QUEUE_FRAMES);
    let writer_task = glommio::spawn_local(write_loop(writer, receiver)).detach();
    let permits = Rc::new(Semaphore::new(RPC_SERVER_IN_FLIGHT_MAX as u64));
    let result = read_loop(&mut reader, shared, peer, &sender, &permits).await;
    writer_task.cancel();
    result.map_err(|error| format!("{peer_addr} (node {peer}): {error}"))
}

async fn read_loop<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    shared: &Rc<ServerShared>,
    peer: u64,
    sender: &LocalMpscSender<Vec<u8>>,
    permits: &Rc<Semaphore>,
) -> Result<(), String> {
    loop {
        let frame = match read_frame(reader).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        let request =
            decode_request(frame.kind, &frame.payload).map_err(|error| error.to_string())?;
        if let Some(filter) = &shared.filter {
            if !filter.allows(peer, shared.node_id) {
                continue;
            }
        }
        let permit = permits
            .acquire_static_permit(1)
            .await
            .map_err(|error| error.to_string())?;
        let shared = shared.clone();
        let sender = sender.clone();
        glommio::spawn_local(async move {
            let outcome = shared.dispatcher.dispatch(frame.group_id, request).await;
            drop(permit);
            if let Some(filter) = &shared.filter {
                if !filter.allows(shared.node_id, peer) {
                    return;
                }
            }
            let bytes = match response_frame(frame.correlation_id, frame.group_id, &outcome) {
                Ok(bytes) => bytes,
                Err(error) => {
                    let fault = Err(RpcFault::new(FaultCode::Raft, error));
                    match response_frame(frame.correlation_id, frame.group_id, &fault) {
                        Ok(bytes) => bytes,
                        Err(_) => return,
                    }
                }
            };
            // The writer is gone only when the connection closed.
            let _ = sender.send(bytes).await;
        })
        .detach();
    }
}

fn response_frame(
    correlation_id: u64,
    group_id: u64,
    outcome: &Result<RpcResponse, RpcFault>,
) -> Result<Vec<u8>, String> {
    let (kind, payload) = encode_response(outcome).map_err(|error| error.to_string())?;
    encode_frame(kind, correlation_id, group_id, &payload)
        .ok_or_else(|| "response larger than a frame".to_string())
}

async fn write_loop(mut writer: WriteHalf<TcpStream>, mut receiver: LocalMpscReceiver<Vec<u8>>) {
    while let Some(frame) = receiver.recv().await {
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}
