//! One Kafka client connection: read a frame, reserve its memory, decode, dispatch, answer.
//!
//! Requests of one connection are handled strictly one after another, as Kafka's own broker
//! does (it mutes a channel until the response is sent): ordering per connection is what
//! idempotent producers and fetchers rely on. Bad input closes only this connection, logged
//! once, and never panics: an oversized size prefix is refused before anything is allocated,
//! garbage or truncated frames end the connection.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::codec::{peek_request_prefix, FRAME_SIZE_PREFIX_BYTES, REQUEST_HEADER_MIN_BYTES};
use super::handlers::{self, DispatchError};
use crate::kernel::Kernel;

/// Counters one connection keeps; the broker aggregates them per shard.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub requests: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
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
        let response = match handlers::dispatch(kernel, prefix, body.freeze(), peer_host).await {
            Ok(response) => response,
            Err(DispatchError::Refused(why)) => return CloseReason::BadRequest(why),
        };
        kernel.observe_request(
            prefix.api_key,
            FRAME_SIZE_PREFIX_BYTES + size_bytes,
            response.as_ref().map_or(0, |frame| frame.len()),
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
        drop(permit);
        if let Some(frame) = response {
            if let Err(e) = stream.write_all(&frame).await {
                return CloseReason::Io(e.to_string());
            }
            stats
                .bytes_out
                .set(stats.bytes_out.get() + frame.len() as u64);
        }
    }
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
