//! RPC framing: every message on a connection is one frame, big-endian:
//!
//! ```text
//! u32 length          bytes after this field: FRAME_HEADER_BYTES - 4 + payload length,
//!                     at most RPC_FRAME_MAX_BYTES
//! u8  kind            FrameKind
//! u64 correlation id  chosen by the client, echoed by the server's response
//! u64 group id        the Raft group (Hello: the sender's node id)
//! u32 crc32c          of the payload
//! ... payload         rkyv-encoded wire struct of `kind` (see `wire`)
//! ```
//!
//! The payload is read into a 16-byte aligned buffer, as rkyv's checked access needs.
//!
//! Concurrency contract: pure functions over bytes plus `read_frame` over one reader; a frame
//! that fails to decode is an error, never a panic (the caller closes the connection).

use crate::constants::RPC_FRAME_MAX_BYTES;
use futures_lite::{AsyncRead, AsyncReadExt};
use rkyv::util::AlignedVec;
use std::fmt;
use std::io;

/// Bytes before the payload: length, kind, correlation id, group id, CRC.
pub const FRAME_HEADER_BYTES: usize = 4 + 1 + 8 + 8 + 4;

/// What a frame carries. Requests go client to server; each request gets exactly one
/// `*Response` or `Error` frame with its correlation id (or none if the link is cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// First frame of a client connection: who is calling (group id = the caller's node id).
    Hello = 1,
    Vote = 2,
    PreVote = 3,
    AppendEntries = 4,
    InstallSnapshot = 5,
    /// An embedder's request for whichever group's owner serves it (e.g. a write forwarded
    /// to a Raft leader); the payload is the embedder's own bytes, not rkyv.
    Forward = 6,
    /// A leader handing its leadership to one node (`Raft::trigger().transfer_leader`).
    TransferLeader = 7,
    VoteResponse = 0x82,
    AppendEntriesResponse = 0x84,
    InstallSnapshotResponse = 0x85,
    ForwardResponse = 0x86,
    TransferLeaderResponse = 0x87,
    /// The request could not be served (unknown group, Raft error, undecodable request).
    Error = 0xff,
}

impl FrameKind {
    pub fn from_u8(value: u8) -> Option<FrameKind> {
        Some(match value {
            1 => FrameKind::Hello,
            2 => FrameKind::Vote,
            3 => FrameKind::PreVote,
            4 => FrameKind::AppendEntries,
            5 => FrameKind::InstallSnapshot,
            6 => FrameKind::Forward,
            7 => FrameKind::TransferLeader,
            0x82 => FrameKind::VoteResponse,
            0x84 => FrameKind::AppendEntriesResponse,
            0x85 => FrameKind::InstallSnapshotResponse,
            0x86 => FrameKind::ForwardResponse,
            0x87 => FrameKind::TransferLeaderResponse,
            0xff => FrameKind::Error,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub correlation_id: u64,
    pub group_id: u64,
    pub payload: AlignedVec,
}

/// Why a frame was rejected; the connection it came on is closed.
#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    /// The length field is below the header or above `RPC_FRAME_MAX_BYTES`.
    BadLength(u32),
    UnknownKind(u8),
    BadCrc {
        expected: u32,
        actual: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(error) => write!(f, "io: {error}"),
            FrameError::BadLength(length) => write!(
                f,
                "frame length {length} outside {}..={RPC_FRAME_MAX_BYTES}",
                FRAME_HEADER_BYTES - 4
            ),
            FrameError::UnknownKind(kind) => write!(f, "unknown frame kind {kind:#x}"),
            FrameError::BadCrc { expected, actual } => {
                write!(
                    f,
                    "payload CRC {actual:#010x}, header says {expected:#010x}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(error: io::Error) -> FrameError {
        FrameError::Io(error)
    }
}

/// One frame's bytes, header and payload; `None` if the payload would exceed the limit.
pub fn encode_frame(
    kind: FrameKind,
    correlation_id: u64,
    group_id: u64,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let length = FRAME_HEADER_BYTES - 4 + payload.len();
    if length > RPC_FRAME_MAX_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(4 + length);
    out.extend_from_slice(&(length as u32).to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&correlation_id.to_be_bytes());
    out.extend_from_slice(&group_id.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// Reads one frame; `Ok(None)` on a clean end of stream before its first byte.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let first = reader.read(&mut header[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut header[1..]).await?;
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let payload_bytes = (length as usize)
        .checked_sub(FRAME_HEADER_BYTES - 4)
        .filter(|_| length as usize <= RPC_FRAME_MAX_BYTES)
        .ok_or(FrameError::BadLength(length))?;
    let kind = FrameKind::from_u8(header[4]).ok_or(FrameError::UnknownKind(header[4]))?;
    let mut word = [0u8; 8];
    word.copy_from_slice(&header[5..13]);
    let correlation_id = u64::from_be_bytes(word);
    word.copy_from_slice(&header[13..21]);
    let group_id = u64::from_be_bytes(word);
    let expected = u32::from_be_bytes([header[21], header[22], header[23], header[24]]);
    let mut payload = AlignedVec::with_capacity(payload_bytes);
    payload.resize(payload_bytes, 0);
    reader.read_exact(payload.as_mut_slice()).await?;
    let actual = crc32c::crc32c(&payload);
    if actual != expected {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(Some(Frame {
        kind,
        correlation_id,
        group_id,
        payload,
    }))
}
