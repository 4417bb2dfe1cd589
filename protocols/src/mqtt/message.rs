//! A published message as it travels between shards: immutable, shared (`Arc`), so a PUBLISH
//! forwarded to several shards and queued for many sessions is one allocation and one payload
//! (`Bytes`), never copied per subscriber.

use std::sync::Arc;

use bytes::Bytes;

use super::codec::MessageProperties;

#[derive(Debug)]
pub struct Message {
    /// Unique within one node run: the origin shard in the top 16 bits, a per-shard counter
    /// below. Used to drop a copy that reaches a session twice while it moves between shards.
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: MessageProperties,
    /// The publishing client (for v5 no-local); `None` for broker-originated messages.
    pub publisher: Option<Arc<str>>,
    /// Wall-clock expiry from the v5 Message Expiry Interval.
    pub expires_at_ms: Option<u64>,
}

pub type SharedMessage = Arc<Message>;

impl Message {
    /// Seconds left before expiry (rounded up), `Some(0)` once expired, `None` if it never does.
    pub fn remaining_expiry_s(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| {
            let left_ms = at.saturating_sub(now_ms);
            u32::try_from(left_ms.div_ceil(1000)).unwrap_or(u32::MAX)
        })
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.remaining_expiry_s(now_ms) == Some(0)
    }
}
