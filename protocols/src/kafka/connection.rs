//! One Kafka client connection: read a frame, reserve its memory, decode, dispatch, answer.
//!
//! Requests of one connection take effect in order, as with Kafka's own broker (it mutes a
//! channel until the response is sent): ordering per connection is what idempotent producers
//! and fetchers rely on. Produce requests are pipelined: each is submitted (its batches
//! appended or proposed, in order) as it is read, and up to `PRODUCE_PIPELINE_DEPTH` wait for
//! durability or a quorum at once; their responses go out in request order (an idempotent
//! producer's request is answered before the next is read: see `produce::submit`). Any other request
//! waits until every earlier response is written. Bad input closes only this connection, logged
//! once, and never panics: an oversized size prefix is refused before anything is allocated,
//! garbage or truncated frames end the connection.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::future::BoxedLocal;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::codec::{peek_request_prefix, FRAME_SIZE_PREFIX_BYTES, REQUEST_HEADER_MIN_BYTES};
use super::handlers::{self, DispatchError, Dispatched};
use crate::kernel::Kernel;

/// Counters one connection keeps; the broker aggregates them per shard.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub requests: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the socket between requests.
    ClientClosed,
    /// The socket failed or the client closed it mid-frame.
    Io(String),
    /// The client sent something we refuse; the connection is closed, as Kafka does.
    BadRequest(String),
    /// The node is shutting down and reads no new requests.
    ShuttingDown,
}

/// Serves one connection until the client closes it or sends bad input.
pub async fn serve_connection<K, S>(
    kernel: &K,
    stream: &mut S,
    peer: SocketAddr,
    stats: &ConnectionStats,
) -> CloseReason
where
    K: Kernel,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = serve_frames(kernel, stream, &peer.ip().to_string(), stats).await;
    match &reason {
        CloseReason::ClientClosed => debug!(%peer, "kafka connection closed by client"),
        CloseReason::ShuttingDown => debug!(%peer, "kafka connection closed at shutdown"),
        CloseReason::Io(e) => debug!(%peer, error = %e, "kafka connection ended"),
        CloseReason::BadRequest(why) => warn!(%peer, why = %why, "closing kafka connection"),
    }
    reason
}

/// Produce requests one connection may have submitted and not yet answered: 16. librdkafka
/// pipelines up to `max.in.flight` requests per broker (5 for an idempotent producer); each
/// queued request keeps its memory permit until its response is written.
const PRODUCE_PIPELINE_DEPTH: usize = 16;

/// The Produce API key: the one request kind a connection pipelines.
const PRODUCE_API_KEY: i16 = 0;

/// What the reader hands the writer, in request order.
enum Outgoing<P> {
    /// A response to write once every earlier one is written.
    Response {
        answer: BoxedLocal<Result<Option<Bytes>, DispatchError>>,
        api_key: i16,
        request_bytes: usize,
        started: Instant,
        permit: P,
    },
    /// Signals the reader once every earlier response is written.
    Barrier(flume::Sender<()>),
}

/// Reads requests and hands their responses to the writer (`write_responses`) in order.
/// Produce requests are submitted (appended, or proposed to a Raft group) as they are read, so
/// several can wait for durability or a quorum at once; any other request waits until every
/// earlier response is written and is handled alone, so requests of one connection still take
/// effect in order, as Kafka's broker guarantees by muting the channel.
async fn read_requests<K, R>(
    kernel: &K,
    stream: &mut R,
    peer_host: &str,
    stats: &ConnectionStats,
    outgoing: flume::Sender<Outgoing<K::RequestPermit>>,
) -> CloseReason
where
    K: Kernel,
    R: AsyncRead + Unpin,
{
    loop {
        let mut size_prefix = [0u8; FRAME_SIZE_PREFIX_BYTES];
        match read_prefix(stream, &mut size_prefix).await {
            Ok(true) => {}
            Ok(false) => return CloseReason::ClientClosed,
            Err(e) => return CloseReason::Io(e.to_string()),
        }
        if !kernel.accepting_requests() {
            return CloseReason::ShuttingDown;
        }
        let declared_size = i32::from_be_bytes(size_prefix);
        let size_bytes = match usize::try_from(declared_size) {
            Ok(size) if size >= REQUEST_HEADER_MIN_BYTES && size <= kernel.max_request_bytes() => {
                size
            }
            _ => {
                return CloseReason::BadRequest(format!(
                    "frame size {declared_size} outside [{REQUEST_HEADER_MIN_BYTES}, {}] \
                     (socket.request.max.bytes)",
                    kernel.max_request_bytes()
                ))
            }
        };
        // Memory is reserved before the body is read: past the shard budget we stop reading.
        let permit = kernel.reserve_request_bytes(size_bytes).await;
        let mut body = BytesMut::zeroed(size_bytes);
        if let Err(e) = stream.read_exact(&mut body).await {
            return CloseReason::Io(format!("truncated frame of {size_bytes} bytes: {e}"));
        }
        stats.requests.set(stats.requests.get() + 1);
        stats
            .bytes_in
            .set(stats.bytes_in.get() + (FRAME_SIZE_PREFIX_BYTES + size_bytes) as u64);
        let Some(prefix) = peek_request_prefix(&body) else {
            return CloseReason::BadRequest("request header too short".to_string());
        };
        let started = Instant::now();
        let answer: BoxedLocal<Result<Option<Bytes>, DispatchError>> =
            if prefix.api_key == PRODUCE_API_KEY {
                match handlers::dispatch_submit(kernel, prefix, body.freeze(), peer_host).await {
                    Ok(Dispatched::Pending(answer)) => answer,
                    Ok(Dispatched::Done(frame)) => Box::pin(std::future::ready(Ok(frame))),
                    Err(DispatchError::Refused(why)) => return CloseReason::BadRequest(why),
                }
            } else {
                let (written, all_written) = flume::bounded(1);
                if outgoing
                    .send_async(Outgoing::Barrier(written))
                    .await
                    .is_err()
                    || all_written.recv_async().await.is_err()
                {
                    return CloseReason::Io("the response writer stopped".to_string());
                }
                match handlers::dispatch(kernel, prefix, body.freeze(), peer_host).await {
                    Ok(frame) => Box::pin(std::future::ready(Ok(frame))),
                    Err(DispatchError::Refused(why)) => return CloseReason::BadRequest(why),
                }
            };
        let response = Outgoing::Response {
            answer,
            api_key: prefix.api_key,
            request_bytes: FRAME_SIZE_PREFIX_BYTES + size_bytes,
            started,
            permit,
        };
        if outgoing.send_async(response).await.is_err() {
            return CloseReason::Io("the response writer stopped".to_string());
        }
    }
}

/// Writes the responses the reader hands over, in order; `Ok` once the reader is done and
/// every response is written.
async fn write_responses<K, W>(
    kernel: &K,
    stream: &mut W,
    stats: &ConnectionStats,
    outgoing: flume::Receiver<Outgoing<K::RequestPermit>>,
) -> Result<(), CloseReason>
where
    K: Kernel,
    W: AsyncWrite + Unpin,
{
    while let Ok(item) = outgoing.recv_async().await {
        let (answer, api_key, request_bytes, started, permit) = match item {
            Outgoing::Barrier(written) => {
                let _ = written.try_send(());
                continue;
            }
            Outgoing::Response {
                answer,
                api_key,
                request_bytes,
                started,
                permit,
            } => (answer, api_key, request_bytes, started, permit),
        };
        let response = match answer.await {
            Ok(response) => response,
            Err(DispatchError::Refused(why)) => return Err(CloseReason::BadRequest(why)),
        };
        kernel.observe_request(
            api_key,
            request_bytes,
            response.as_ref().map_or(0, |frame| frame.len()),
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
        drop(permit);
        if let Some(frame) = response {
            stream
                .write_all(&frame)
                .await
                .map_err(|e| CloseReason::Io(e.to_string()))?;
            stats
                .bytes_out
                .set(stats.bytes_out.get() + frame.len() as u64);
        }
    }
    Ok(())
}

async fn serve_frames<K, S>(
    kernel: &K,
    stream: &mut S,
    peer_host: &str,
    stats: &ConnectionStats,
) -> CloseReason
where
    K: Kernel,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (outgoing, incoming) = flume::bounded(PRODUCE_PIPELINE_DEPTH);
    let (failed, failure) = flume::bounded(1);
    let both = async {
        // The reader drops its sender when it ends: the writer then finishes what is queued.
        let read = read_requests(kernel, &mut reader, peer_host, stats, outgoing);
        let write = async {
            let written = write_responses(kernel, &mut writer, stats, incoming).await;
            if let Err(reason) = &written {
                let _ = failed.try_send(reason.clone());
            }
            written
        };
        let (reason, written) = futures_lite::future::zip(read, write).await;
        written.err().unwrap_or(reason)
    };
    // A writer that fails (a bad response, a broken socket) ends the connection at once, even
    // while the reader waits for the next request.
    futures_lite::future::or(both, async {
        failure
            .recv_async()
            .await
            .unwrap_or(CloseReason::ClientClosed)
    })
    .await
}

/// Reads the 4-byte size prefix; `Ok(false)` on a clean end of stream before any byte.
async fn read_prefix<S: AsyncRead + Unpin>(
    stream: &mut S,
    prefix: &mut [u8; FRAME_SIZE_PREFIX_BYTES],
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < prefix.len() {
        let n = stream.read(&mut prefix[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}
