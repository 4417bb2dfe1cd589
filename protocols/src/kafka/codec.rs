//! Framing helpers: a Kafka frame is `i32 size` followed by a request header and body. Responses
//! are encoded here so that no handler builds bytes by hand.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::protocol::{Encodable, HeaderVersion};

/// Bytes of the size prefix in front of every frame.
pub const FRAME_SIZE_PREFIX_BYTES: usize = 4;
/// The smallest valid request body: api_key (2) + api_version (2) + correlation_id (4).
pub const REQUEST_HEADER_MIN_BYTES: usize = 8;

/// The fixed fields every request header starts with, read without decoding the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Reads the api key, version and correlation id at the start of a request body.
pub fn peek_request_prefix(body: &[u8]) -> Option<RequestPrefix> {
    if body.len() < REQUEST_HEADER_MIN_BYTES {
        return None;
    }
    Some(RequestPrefix {
        api_key: i16::from_be_bytes([body[0], body[1]]),
        api_version: i16::from_be_bytes([body[2], body[3]]),
        correlation_id: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    })
}

/// Encodes `response` with its header into one size-prefixed frame.
pub fn encode_response<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    response: &R,
) -> anyhow::Result<Bytes> {
    let header_version = R::header_version(version);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let size = header.compute_size(header_version)? + response.compute_size(version)?;
    let size_i32 = i32::try_from(size)?;
    let mut buf = BytesMut::with_capacity(FRAME_SIZE_PREFIX_BYTES + size);
    buf.put_i32(size_i32);
    header.encode(&mut buf, header_version)?;
    response.encode(&mut buf, version)?;
    debug_assert_eq!(buf.len(), FRAME_SIZE_PREFIX_BYTES + size);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_body_has_no_prefix() {
        assert_eq!(peek_request_prefix(&[0, 18, 0]), None);
        let prefix = peek_request_prefix(&[0, 18, 0, 3, 0, 0, 0, 7]).expect("prefix");
        assert_eq!(prefix.api_key, 18);
        assert_eq!(prefix.api_version, 3);
        assert_eq!(prefix.correlation_id, 7);
    }
}
