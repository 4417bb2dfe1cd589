//! The MQTT wire codec: the one place that touches bytes. Decoding uses mqttbytes 0.6.0 for
//! 3.1.1 (level 4) and 5 framing; MQTT 3.1 (`MQIsdp`, level 3) CONNECT is ours: its body is
//! rewritten to the 3.1.1 form, after which 3.1 frames are 3.1.1 frames. mqttbytes is
//! unmaintained, so nothing outside this module sees its types: handlers get the `Packet`
//! model below, and the gaps it has (AUTH, a v5 DISCONNECT with no body, fixed-header flag
//! checks) are filled here.
//!
//! Encoding of everything we send is hand-written (a few bytes each): PUBLISH is the fan-out
//! hot path and is encoded from borrowed topic and shared payload without building an owned
//! packet per subscriber; v5 CONNACK goes through mqttbytes for its many properties. Unit tests
//! decode our encodings with mqttbytes.

use bytes::{BufMut, Bytes, BytesMut};
use mqttbytes::{v4, v5};

use super::constants::{MAX_CLIENT_ID_BYTES, MAX_PACKET_SIZE_BYTES};

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProtocolLevel {
    /// MQTT 3.1 (`MQIsdp`).
    V31,
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

impl ProtocolLevel {
    pub fn is_v5(self) -> bool {
        self == ProtocolLevel::V5
    }
}

/// Application properties of a message (v5); empty for 3.1/3.1.1 publishers. Carried unchanged
/// from publisher to subscribers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_s: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub delay_s: u32,
    pub properties: MessageProperties,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Connect {
    pub level: ProtocolLevel,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive_s: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// v5 Session Expiry Interval; 3.1/3.1.1: 0 with clean session, never otherwise.
    pub session_expiry_s: u32,
    /// v5 Receive Maximum of the client (65,535 when absent).
    pub receive_maximum: u16,
    /// v5 Maximum Packet Size the client accepts.
    pub max_packet_size: Option<u32>,
    /// v5 Topic Alias Maximum the client accepts from us.
    pub topic_alias_maximum: u16,
    pub request_problem_information: bool,
    pub authentication_method: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    /// Empty when a v5 client publishes by topic alias only.
    pub topic: String,
    pub pkid: u16,
    pub topic_alias: Option<u16>,
    pub properties: MessageProperties,
    pub payload: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubscribeFilter {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// v5 retain handling: 0 send retained on subscribe, 1 only on a new subscription, 2 never.
    pub retain_handling: u8,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<SubscribeFilter>,
    pub subscription_id: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
}

/// A packet a client sent us (after CONNECT).
#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    Publish(Publish),
    PubAck {
        pkid: u16,
        reason: u8,
    },
    PubRec {
        pkid: u16,
        reason: u8,
    },
    PubRel {
        pkid: u16,
        reason: u8,
    },
    PubComp {
        pkid: u16,
        reason: u8,
    },
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry_s: Option<u32>,
    },
    /// v5 AUTH (enhanced authentication), which we do not offer.
    Auth,
    /// A second CONNECT on an established connection (a protocol error).
    Connect,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    ServerOnly(u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Bytes that are not a valid packet (v5 reason 0x81).
    Malformed(String),
    /// A packet that breaks a protocol rule (v5 reason 0x82).
    Protocol(String),
    /// A packet larger than our maximum packet size (v5 reason 0x95).
    TooLarge(usize),
    /// A CONNECT for a protocol level we do not speak (3.1.1 return code 1 / v5 0x84).
    UnsupportedLevel(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(m) => write!(f, "malformed packet: {m}"),
            DecodeError::Protocol(m) => write!(f, "protocol error: {m}"),
            DecodeError::TooLarge(n) => write!(f, "packet of {n} bytes exceeds the maximum"),
            DecodeError::UnsupportedLevel(l) => write!(f, "unsupported protocol level {l}"),
        }
    }
}

impl DecodeError {
    /// The v5 DISCONNECT reason code for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge(_) => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedLevel(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// v5 reason codes we send (MQTT 5 section 2.4), and 3.1.1 CONNACK return codes.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS_1: u8 = 0x01;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;

    /// 3.1/3.1.1 CONNACK return codes.
    pub const V3_UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
    pub const V3_IDENTIFIER_REJECTED: u8 = 0x02;
    pub const V3_SERVER_UNAVAILABLE: u8 = 0x03;
    pub const V3_BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    pub const V3_NOT_AUTHORIZED: u8 = 0x05;
    /// 3.1.1 SUBACK failure.
    pub const V3_SUBSCRIBE_FAILURE: u8 = 0x80;
}

const TYPE_CONNECT: u8 = 1;
const TYPE_PUBLISH: u8 = 3;
const TYPE_PUBREL: u8 = 6;
const TYPE_SUBSCRIBE: u8 = 8;
const TYPE_UNSUBSCRIBE: u8 = 10;
const TYPE_DISCONNECT: u8 = 14;
const TYPE_AUTH: u8 = 15;

/// The remaining-length varint at the start of `bytes`: (its length in bytes, its value).
/// `Ok(None)` when more bytes are needed.
fn read_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, value)));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::Malformed(
            "remaining length over 4 bytes".into(),
        ));
    }
    Ok(None)
}

/// Frames one packet at the start of `buf`: (first byte, fixed header length, remaining length).
fn frame(buf: &[u8], max_bytes: usize) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((varint_len, remaining)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + varint_len;
    if header_len + remaining > max_bytes {
        return Err(DecodeError::TooLarge(header_len + remaining));
    }
    if buf.len() < header_len + remaining {
        return Ok(None);
    }
    Ok(Some((first, header_len, remaining)))
}

fn malformed(e: mqttbytes::Error) -> DecodeError {
    DecodeError::Malformed(format!("{e:?}"))
}

/// Decodes the first packet of a connection, which must be CONNECT. `Ok(None)`: need more bytes.
pub fn decode_connect(buf: &mut BytesMut) -> Result<Option<Connect>, DecodeError> {
    let Some((first, header_len, remaining)) = frame(buf, MAX_PACKET_SIZE_BYTES)? else {
        return Ok(None);
    };
    if first != TYPE_CONNECT << 4 {
        return Err(DecodeError::Protocol(format!(
            "first packet has type byte {first:#04x}, not CONNECT"
        )));
    }
    let packet = buf.split_to(header_len + remaining).freeze();
    let body = &packet[header_len..];
    let name_len = usize::from(u16::from_be_bytes([
        *body.first().unwrap_or(&0),
        *body.get(1).unwrap_or(&0),
    ]));
    let name = body
        .get(2..2 + name_len)
        .ok_or_else(|| DecodeError::Malformed("CONNECT protocol name".into()))?;
    let level = *body
        .get(2 + name_len)
        .ok_or_else(|| DecodeError::Malformed("CONNECT protocol level".into()))?;
    let flags = *body
        .get(3 + name_len)
        .ok_or_else(|| DecodeError::Malformed("CONNECT flags".into()))?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set".into()));
    }
    let connect = match (name, level) {
        (b"MQIsdp", 3) => {
            // 3.1 differs from 3.1.1 only in the name and level: rewrite them and reuse the
            // 3.1.1 decoder.
            let rest = &body[2 + name_len + 1..];
            let mut rewritten = BytesMut::with_capacity(rest.len() + 12);
            rewritten.put_u8(TYPE_CONNECT << 4);
            let new_remaining = 2 + 4 + 1 + rest.len();
            let varint_len = put_varint(&mut rewritten, new_remaining);
            rewritten.put_slice(b"\x00\x04MQTT\x04");
            rewritten.put_slice(rest);
            let header = mqttbytes::FixedHeader::new(0x10, varint_len, new_remaining);
            let connect = v4::Connect::read(header, rewritten.freeze()).map_err(malformed)?;
            from_v4_connect(connect, ProtocolLevel::V31)
        }
        (b"MQTT", 4) => {
            let header = mqttbytes::FixedHeader::new(first, header_len - 1, remaining);
            let connect = v4::Connect::read(header, packet).map_err(malformed)?;
            from_v4_connect(connect, ProtocolLevel::V311)
        }
        (b"MQTT", 5) => {
            let header = mqttbytes::FixedHeader::new(first, header_len - 1, remaining);
            let connect = v5::Connect::read(header, packet).map_err(malformed)?;
            from_v5_connect(connect)
        }
        (b"MQTT", other) | (b"MQIsdp", other) => return Err(DecodeError::UnsupportedLevel(other)),
        _ => {
            return Err(DecodeError::Protocol(format!(
                "unknown protocol name {:?}",
                String::from_utf8_lossy(name)
            )))
        }
    };
    if connect.client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(DecodeError::Protocol(format!(
            "client id of {} bytes exceeds {MAX_CLIENT_ID_BYTES}",
            connect.client_id.len()
        )));
    }
    Ok(Some(connect))
}

fn from_v4_connect(c: v4::Connect, level: ProtocolLevel) -> Connect {
    let (username, password) = match c.login {
        Some(login) => (
            Some(login.username).filter(|u| !u.is_empty()),
            Some(login.password).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    Connect {
        level,
        client_id: c.client_id,
        clean_start: c.clean_session,
        keep_alive_s: c.keep_alive,
        will: c.last_will.map(|w| Will {
            topic: w.topic,
            payload: w.message,
            qos: w.qos as u8,
            retain: w.retain,
            delay_s: 0,
            properties: MessageProperties::default(),
        }),
        username,
        password,
        session_expiry_s: if c.clean_session {
            0
        } else {
            super::constants::SESSION_NEVER_EXPIRES_S
        },
        receive_maximum: u16::MAX,
        max_packet_size: None,
        topic_alias_maximum: 0,
        request_problem_information: true,
        authentication_method: None,
    }
}

fn from_v5_connect(c: v5::Connect) -> Connect {
    let (username, password) = match c.login {
        Some(login) => (
            Some(login.username).filter(|u| !u.is_empty()),
            Some(login.password).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    let props = c.properties;
    let will = c.last_will.map(|w| {
        let p = w.properties;
        Will {
            topic: w.topic,
            payload: w.message,
            qos: w.qos as u8,
            retain: w.retain,
            delay_s: p.as_ref().and_then(|p| p.delay_interval).unwrap_or(0),
            properties: p
                .map(|p| MessageProperties {
                    payload_format_indicator: p.payload_format_indicator,
                    message_expiry_s: p.message_expiry_interval,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    user_properties: p.user_properties,
                })
                .unwrap_or_default(),
        }
    });
    Connect {
        level: ProtocolLevel::V5,
        client_id: c.client_id,
        clean_start: c.clean_session,
        keep_alive_s: c.keep_alive,
        will,
        username,
        password,
        session_expiry_s: props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0),
        receive_maximum: props
            .as_ref()
            .and_then(|p| p.receive_maximum)
            .unwrap_or(u16::MAX),
        max_packet_size: props.as_ref().and_then(|p| p.max_packet_size),
        topic_alias_maximum: props.as_ref().and_then(|p| p.topic_alias_max).unwrap_or(0),
        request_problem_information: props
            .as_ref()
            .and_then(|p| p.request_problem_info)
            .is_none_or(|v| v != 0),
        authentication_method: props.and_then(|p| p.authentication_method),
    }
}

/// Decodes the next packet of an established connection. `Ok(None)`: need more bytes.
pub fn decode(
    buf: &mut BytesMut,
    level: ProtocolLevel,
    max_bytes: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((first, header_len, remaining)) = frame(buf, max_bytes)? else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    let flags_ok = match packet_type {
        TYPE_PUBLISH => true,
        TYPE_PUBREL | TYPE_SUBSCRIBE | TYPE_UNSUBSCRIBE => flags == 0b0010,
        _ => flags == 0,
    };
    if !flags_ok {
        buf.clear();
        return Err(DecodeError::Malformed(format!(
            "packet type {packet_type} with reserved flags {flags:#06b}"
        )));
    }
    match packet_type {
        0 => {
            buf.clear();
            return Err(DecodeError::Malformed("packet type 0".into()));
        }
        TYPE_CONNECT => {
            buf.advance_frame(header_len + remaining);
            return Ok(Some(Packet::Connect));
        }
        TYPE_AUTH => {
            buf.advance_frame(header_len + remaining);
            if !level.is_v5() {
                return Err(DecodeError::Malformed("AUTH before MQTT 5".into()));
            }
            return Ok(Some(Packet::Auth));
        }
        TYPE_DISCONNECT if level.is_v5() && remaining == 0 => {
            buf.advance_frame(header_len);
            return Ok(Some(Packet::Disconnect {
                reason: reason::SUCCESS,
                session_expiry_s: None,
            }));
        }
        _ => {}
    }
    let packet = if level.is_v5() {
        from_v5(v5::read(buf, max_bytes).map_err(malformed)?)
    } else {
        from_v4(v4::read(buf, max_bytes).map_err(malformed)?)
    }?;
    Ok(Some(packet))
}

trait AdvanceFrame {
    fn advance_frame(&mut self, len: usize);
}

impl AdvanceFrame for BytesMut {
    fn advance_frame(&mut self, len: usize) {
        let _ = self.split_to(len);
    }
}

fn from_v4(packet: v4::Packet) -> Result<Packet, DecodeError> {
    Ok(match packet {
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: p.qos as u8,
            retain: p.retain,
            topic: p.topic,
            pkid: p.pkid,
            topic_alias: None,
            properties: MessageProperties::default(),
            payload: p.payload,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck {
            pkid: a.pkid,
            reason: 0,
        },
        v4::Packet::PubRec(a) => Packet::PubRec {
            pkid: a.pkid,
            reason: 0,
        },
        v4::Packet::PubRel(a) => Packet::PubRel {
            pkid: a.pkid,
            reason: 0,
        },
        v4::Packet::PubComp(a) => Packet::PubComp {
            pkid: a.pkid,
            reason: 0,
        },
        v4::Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without filters".into()));
            }
            Packet::Subscribe(Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubscribeFilter {
                        filter: f.path,
                        qos: f.qos as u8,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    })
                    .collect(),
                subscription_id: None,
            })
        }
        v4::Packet::Unsubscribe(u) => {
            if u.topics.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without filters".into()));
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid: u.pkid,
                filters: u.topics,
            })
        }
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::Disconnect => Packet::Disconnect {
            reason: reason::SUCCESS,
            session_expiry_s: None,
        },
        v4::Packet::Connect(_) => Packet::Connect,
        v4::Packet::ConnAck(_) => Packet::ServerOnly(2),
        v4::Packet::SubAck(_) => Packet::ServerOnly(9),
        v4::Packet::UnsubAck(_) => Packet::ServerOnly(11),
        v4::Packet::PingResp => Packet::ServerOnly(13),
    })
}

fn from_v5(packet: v5::Packet) -> Result<Packet, DecodeError> {
    Ok(match packet {
        v5::Packet::Publish(p) => {
            let props = p.properties.unwrap_or(v5::PublishProperties {
                payload_format_indicator: None,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
                subscription_identifiers: Vec::new(),
                content_type: None,
            });
            if !props.subscription_identifiers.is_empty() {
                return Err(DecodeError::Protocol(
                    "PUBLISH from a client carries a subscription identifier".into(),
                ));
            }
            Packet::Publish(Publish {
                dup: p.dup,
                qos: p.qos as u8,
                retain: p.retain,
                topic: p.topic,
                pkid: p.pkid,
                topic_alias: props.topic_alias,
                properties: MessageProperties {
                    payload_format_indicator: props.payload_format_indicator,
                    message_expiry_s: props.message_expiry_interval,
                    content_type: props.content_type,
                    response_topic: props.response_topic,
                    correlation_data: props.correlation_data,
                    user_properties: props.user_properties,
                },
                payload: p.payload,
            })
        }
        v5::Packet::PubAck(a) => Packet::PubAck {
            pkid: a.pkid,
            reason: a.reason as u8,
        },
        v5::Packet::PubRec(a) => Packet::PubRec {
            pkid: a.pkid,
            reason: a.reason as u8,
        },
        v5::Packet::PubRel(a) => Packet::PubRel {
            pkid: a.pkid,
            reason: a.reason as u8,
        },
        v5::Packet::PubComp(a) => Packet::PubComp {
            pkid: a.pkid,
            reason: a.reason as u8,
        },
        v5::Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without filters".into()));
            }
            let subscription_id = match s.properties.and_then(|p| p.id) {
                Some(0) => return Err(DecodeError::Protocol("subscription identifier 0".into())),
                Some(id) => Some(
                    u32::try_from(id)
                        .map_err(|_| DecodeError::Malformed("subscription identifier".into()))?,
                ),
                None => None,
            };
            Packet::Subscribe(Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubscribeFilter {
                        filter: f.path,
                        qos: f.qos as u8,
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: match f.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => 0,
                            v5::RetainForwardRule::OnNewSubscribe => 1,
                            v5::RetainForwardRule::Never => 2,
                        },
                    })
                    .collect(),
                subscription_id,
            })
        }
        v5::Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without filters".into()));
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid: u.pkid,
                filters: u.filters,
            })
        }
        v5::Packet::PingReq => Packet::PingReq,
        v5::Packet::Disconnect(d) => Packet::Disconnect {
            reason: d.reason_code as u8,
            session_expiry_s: d.properties.and_then(|p| p.session_expiry_interval),
        },
        v5::Packet::Connect(_) => Packet::Connect,
        v5::Packet::ConnAck(_) => Packet::ServerOnly(2),
        v5::Packet::SubAck(_) => Packet::ServerOnly(9),
        v5::Packet::UnsubAck(_) => Packet::ServerOnly(11),
        v5::Packet::PingResp => Packet::ServerOnly(13),
    })
}

// ---------------------------------------------------------------- encoding

/// Appends a remaining-length varint; returns its length in bytes.
fn put_varint(out: &mut BytesMut, mut value: usize) -> usize {
    let mut count = 0;
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        count += 1;
        if value == 0 {
            return count;
        }
    }
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_string(out: &mut BytesMut, s: &[u8]) {
    // Callers bound every string we send to 64 KiB (topics, properties we received).
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(&s[..usize::from(len)]);
}

/// What the server needs to send one PUBLISH; borrowed so fan-out encodes without copies.
pub struct OutgoingPublish<'a> {
    pub topic: &'a str,
    pub payload: &'a Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
    pub retain: bool,
    pub properties: &'a MessageProperties,
    /// Remaining message expiry (v5), replacing the publisher's value.
    pub message_expiry_s: Option<u32>,
    pub subscription_ids: &'a [u32],
    /// Our topic alias (v5); with an empty `topic` the client resolves it.
    pub topic_alias: Option<u16>,
}

fn publish_properties_len(p: &OutgoingPublish<'_>) -> usize {
    let props = p.properties;
    let mut len = 0;
    if props.payload_format_indicator.is_some() {
        len += 2;
    }
    if p.message_expiry_s.is_some() {
        len += 5;
    }
    if let Some(t) = &props.content_type {
        len += 3 + t.len();
    }
    if let Some(t) = &props.response_topic {
        len += 3 + t.len();
    }
    if let Some(d) = &props.correlation_data {
        len += 3 + d.len();
    }
    for (k, v) in &props.user_properties {
        len += 5 + k.len() + v.len();
    }
    for id in p.subscription_ids {
        len += 1 + varint_len(*id as usize);
    }
    if p.topic_alias.is_some() {
        len += 3;
    }
    len
}

/// Size in bytes of the encoded PUBLISH (checked against the client's Maximum Packet Size).
pub fn publish_size(level: ProtocolLevel, p: &OutgoingPublish<'_>) -> usize {
    let mut remaining = 2 + p.topic.len() + p.payload.len();
    if p.qos > 0 {
        remaining += 2;
    }
    if level.is_v5() {
        let props = publish_properties_len(p);
        remaining += varint_len(props) + props;
    }
    1 + varint_len(remaining) + remaining
}

pub fn encode_publish(out: &mut BytesMut, level: ProtocolLevel, p: &OutgoingPublish<'_>) {
    assert!(p.qos <= 2, "QoS {} does not exist", p.qos);
    assert!(p.qos == 0 || p.pkid != 0, "QoS > 0 needs a packet id");
    let mut remaining = 2 + p.topic.len() + p.payload.len();
    if p.qos > 0 {
        remaining += 2;
    }
    let props_len = publish_properties_len(p);
    if level.is_v5() {
        remaining += varint_len(props_len) + props_len;
    }
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8((TYPE_PUBLISH << 4) | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain));
    put_varint(out, remaining);
    put_string(out, p.topic.as_bytes());
    if p.qos > 0 {
        out.put_u16(p.pkid);
    }
    if level.is_v5() {
        put_varint(out, props_len);
        let props = p.properties;
        if let Some(v) = props.payload_format_indicator {
            out.put_u8(0x01);
            out.put_u8(v);
        }
        if let Some(v) = p.message_expiry_s {
            out.put_u8(0x02);
            out.put_u32(v);
        }
        if let Some(t) = &props.content_type {
            out.put_u8(0x03);
            put_string(out, t.as_bytes());
        }
        if let Some(t) = &props.response_topic {
            out.put_u8(0x08);
            put_string(out, t.as_bytes());
        }
        if let Some(d) = &props.correlation_data {
            out.put_u8(0x09);
            put_string(out, d);
        }
        for (k, v) in &props.user_properties {
            out.put_u8(0x26);
            put_string(out, k.as_bytes());
            put_string(out, v.as_bytes());
        }
        for id in p.subscription_ids {
            out.put_u8(0x0B);
            put_varint(out, *id as usize);
        }
        if let Some(alias) = p.topic_alias {
            out.put_u8(0x23);
            out.put_u16(alias);
        }
    }
    out.put_slice(p.payload);
}

/// What a v5 CONNACK tells the client about this server.
#[derive(Clone, Debug, Default)]
pub struct ConnAckProperties {
    pub assigned_client_id: Option<String>,
    pub server_keep_alive_s: Option<u16>,
    pub session_expiry_s: Option<u32>,
    pub receive_maximum: u16,
    pub max_packet_size: u32,
    pub topic_alias_maximum: u16,
    pub reason_string: Option<String>,
}

/// CONNACK. `code` is a 3.1.1 return code for levels 3/4 and a v5 reason code for level 5.
pub fn encode_connack(
    out: &mut BytesMut,
    level: ProtocolLevel,
    session_present: bool,
    code: u8,
    properties: &ConnAckProperties,
) {
    if !level.is_v5() {
        out.put_slice(&[0x20, 0x02, u8::from(session_present), code]);
        return;
    }
    let mut props = v5::ConnAckProperties::new();
    props.assigned_client_identifier = properties.assigned_client_id.clone();
    props.server_keep_alive = properties.server_keep_alive_s;
    props.session_expiry_interval = properties.session_expiry_s;
    props.reason_string = properties.reason_string.clone();
    if code == reason::SUCCESS {
        props.receive_max = Some(properties.receive_maximum);
        props.max_packet_size = Some(properties.max_packet_size);
        props.topic_alias_max = Some(properties.topic_alias_maximum);
        props.retain_available = Some(1);
        props.wildcard_subscription_available = Some(1);
        props.subscription_identifiers_available = Some(1);
        props.shared_subscription_available = Some(1);
    }
    let connack = v5::ConnAck {
        session_present,
        code: v5_connect_code(code),
        properties: Some(props),
    };
    // Encoding fails only past the 256 MiB remaining-length limit, which these few
    // properties cannot reach.
    let written = connack.write(out);
    assert!(written.is_ok(), "CONNACK encoding failed: {written:?}");
}

fn v5_connect_code(code: u8) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match code {
        0x00 => C::Success,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x83 => C::ImplementationSpecificError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x8C => C::BadAuthenticationMethod,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        _ => C::UnspecifiedError,
    }
}

/// PUBACK (4), PUBREC (5), PUBREL (6) or PUBCOMP (7). The v5 reason byte is sent only when it
/// is not success (the short form the spec allows).
pub fn encode_ack(out: &mut BytesMut, level: ProtocolLevel, packet_type: u8, pkid: u16, code: u8) {
    assert!((4..=7).contains(&packet_type), "not an ack type");
    let flags = if packet_type == TYPE_PUBREL {
        0b0010
    } else {
        0
    };
    out.put_u8((packet_type << 4) | flags);
    if level.is_v5() && code != reason::SUCCESS {
        out.put_u8(3);
        out.put_u16(pkid);
        out.put_u8(code);
    } else {
        out.put_u8(2);
        out.put_u16(pkid);
    }
}

pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;

/// SUBACK with one code per filter (granted QoS or a failure code).
pub fn encode_suback(out: &mut BytesMut, level: ProtocolLevel, pkid: u16, codes: &[u8]) {
    let props = usize::from(level.is_v5());
    out.put_u8(0x90);
    put_varint(out, 2 + props + codes.len());
    out.put_u16(pkid);
    if level.is_v5() {
        out.put_u8(0);
    }
    out.put_slice(codes);
}

/// UNSUBACK; v5 carries one reason per filter, 3.1/3.1.1 none.
pub fn encode_unsuback(out: &mut BytesMut, level: ProtocolLevel, pkid: u16, codes: &[u8]) {
    out.put_u8(0xB0);
    if level.is_v5() {
        put_varint(out, 3 + codes.len());
        out.put_u16(pkid);
        out.put_u8(0);
        out.put_slice(codes);
    } else {
        out.put_u8(2);
        out.put_u16(pkid);
    }
}

pub fn encode_pingresp(out: &mut BytesMut) {
    out.put_slice(&[0xD0, 0x00]);
}

/// A server DISCONNECT (v5 only; 3.1/3.1.1 servers just close the connection), with a Reason
/// String naming the code. (Some clients, paho-mqtt among them, read the reason code only
/// when properties follow it.)
pub fn encode_disconnect(out: &mut BytesMut, code: u8) {
    let text = reason_text(code).as_bytes();
    let properties = 3 + text.len();
    out.put_u8(TYPE_DISCONNECT << 4);
    put_varint(out, 1 + varint_len(properties) + properties);
    out.put_u8(code);
    put_varint(out, properties);
    out.put_u8(0x1F);
    put_string(out, text);
}

/// A short description of a v5 reason code we send.
pub fn reason_text(code: u8) -> &'static str {
    match code {
        reason::MALFORMED_PACKET => "malformed packet",
        reason::PROTOCOL_ERROR => "protocol error",
        reason::SERVER_SHUTTING_DOWN => "server shutting down",
        reason::KEEP_ALIVE_TIMEOUT => "keep alive timeout",
        reason::SESSION_TAKEN_OVER => "session taken over",
        reason::TOPIC_NAME_INVALID => "topic name invalid",
        reason::RECEIVE_MAXIMUM_EXCEEDED => "receive maximum exceeded",
        reason::TOPIC_ALIAS_INVALID => "topic alias invalid",
        reason::PACKET_TOO_LARGE => "packet too large",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_v31_bytes(client_id: &str, clean: bool) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_slice(b"\x00\x06MQIsdp\x03");
        body.put_u8(if clean { 0x02 } else { 0x00 });
        body.put_u16(30);
        put_string(&mut body, client_id.as_bytes());
        let mut packet = BytesMut::new();
        packet.put_u8(0x10);
        put_varint(&mut packet, body.len());
        packet.put_slice(&body);
        packet
    }

    #[test]
    fn mqtt_31_connect_is_decoded_as_level_3() {
        let mut buf = connect_v31_bytes("legacy-client", false);
        buf.put_slice(&[0xC0, 0x00]); // a PINGREQ right behind it stays in the buffer
        let connect = decode_connect(&mut buf)
            .expect("decodes")
            .expect("complete");
        assert_eq!(connect.level, ProtocolLevel::V31);
        assert_eq!(connect.client_id, "legacy-client");
        assert!(!connect.clean_start);
        assert_eq!(connect.keep_alive_s, 30);
        assert_eq!(connect.session_expiry_s, u32::MAX);
        assert_eq!(
            decode(&mut buf, ProtocolLevel::V31, MAX_PACKET_SIZE_BYTES),
            Ok(Some(Packet::PingReq))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_connect_waits_for_more_bytes() {
        let full = connect_v31_bytes("c", true);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decode_connect(&mut part), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_protocol_levels_are_refused() {
        let mut buf = BytesMut::from(&b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x1e\x00\x00"[..]);
        assert_eq!(
            decode_connect(&mut buf),
            Err(DecodeError::UnsupportedLevel(6))
        );
        let mut buf = BytesMut::from(&b"\x10\x0c\x00\x04MQXX\x04\x02\x00\x1e\x00\x00"[..]);
        assert!(matches!(
            decode_connect(&mut buf),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn v311_and_v5_connect_round_trip_through_mqttbytes() {
        let mut buf = BytesMut::new();
        let mut c = v4::Connect::new("four");
        c.clean_session = true;
        c.write(&mut buf).expect("encode");
        let connect = decode_connect(&mut buf).expect("ok").expect("complete");
        assert_eq!(connect.level, ProtocolLevel::V311);
        assert_eq!(connect.session_expiry_s, 0);

        let mut c = v5::Connect::new("five");
        c.properties = Some(v5::ConnectProperties {
            session_expiry_interval: Some(60),
            receive_maximum: Some(10),
            max_packet_size: Some(2048),
            topic_alias_max: Some(5),
            request_response_info: None,
            request_problem_info: None,
            user_properties: vec![],
            authentication_method: None,
            authentication_data: None,
        });
        c.write(&mut buf).expect("encode");
        let connect = decode_connect(&mut buf).expect("ok").expect("complete");
        assert_eq!(connect.level, ProtocolLevel::V5);
        assert_eq!(connect.session_expiry_s, 60);
        assert_eq!(connect.receive_maximum, 10);
        assert_eq!(connect.max_packet_size, Some(2048));
        assert_eq!(connect.topic_alias_maximum, 5);
    }

    #[test]
    fn our_v5_publish_decodes_with_every_property() {
        let properties = MessageProperties {
            payload_format_indicator: Some(1),
            message_expiry_s: Some(100),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![("k".into(), "v".into())],
        };
        let payload = Bytes::from_static(b"hello");
        let outgoing = OutgoingPublish {
            topic: "a/b",
            payload: &payload,
            qos: 1,
            pkid: 7,
            dup: true,
            retain: true,
            properties: &properties,
            message_expiry_s: Some(42),
            subscription_ids: &[3, 300],
            topic_alias: Some(9),
        };
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, ProtocolLevel::V5, &outgoing);
        assert_eq!(buf.len(), publish_size(ProtocolLevel::V5, &outgoing));
        let v5::Packet::Publish(p) = v5::read(&mut buf, 1 << 20).expect("decodes") else {
            panic!("not a publish");
        };
        assert_eq!(
            (p.topic.as_str(), p.pkid, p.dup, p.retain),
            ("a/b", 7, true, true)
        );
        assert_eq!(&p.payload[..], b"hello");
        let props = p.properties.expect("properties");
        assert_eq!(props.message_expiry_interval, Some(42));
        assert_eq!(props.subscription_identifiers, vec![3, 300]);
        assert_eq!(props.topic_alias, Some(9));
        assert_eq!(props.user_properties, vec![("k".into(), "v".into())]);
        assert_eq!(props.correlation_data.as_deref(), Some(&b"corr"[..]));
    }

    #[test]
    fn our_v5_publish_by_topic_alias_decodes_with_an_empty_topic() {
        let properties = MessageProperties::default();
        let payload = Bytes::from_static(b"by alias");
        let outgoing = OutgoingPublish {
            topic: "",
            payload: &payload,
            qos: 0,
            pkid: 0,
            dup: false,
            retain: false,
            properties: &properties,
            message_expiry_s: None,
            subscription_ids: &[],
            topic_alias: Some(3),
        };
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, ProtocolLevel::V5, &outgoing);
        assert_eq!(buf.len(), publish_size(ProtocolLevel::V5, &outgoing));
        let v5::Packet::Publish(p) = v5::read(&mut buf, 1 << 20).expect("decodes") else {
            panic!("not a publish");
        };
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("", &b"by alias"[..]));
        assert_eq!(p.properties.and_then(|props| props.topic_alias), Some(3));
    }

    #[test]
    fn our_v4_publish_and_acks_decode() {
        let payload = Bytes::from_static(b"x");
        let props = MessageProperties::default();
        let outgoing = OutgoingPublish {
            topic: "t",
            payload: &payload,
            qos: 2,
            pkid: 9,
            dup: false,
            retain: false,
            properties: &props,
            message_expiry_s: None,
            subscription_ids: &[],
            topic_alias: None,
        };
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, ProtocolLevel::V311, &outgoing);
        encode_ack(&mut buf, ProtocolLevel::V311, PUBREL, 9, 0);
        encode_suback(&mut buf, ProtocolLevel::V311, 4, &[0, 0x80]);
        assert!(matches!(v4::read(&mut buf, 1 << 20), Ok(v4::Packet::Publish(p)) if p.pkid == 9));
        assert!(matches!(v4::read(&mut buf, 1 << 20), Ok(v4::Packet::PubRel(p)) if p.pkid == 9));
        assert!(matches!(v4::read(&mut buf, 1 << 20), Ok(v4::Packet::SubAck(s)) if s.pkid == 4));
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            b"\x30\xff\xff\xff\xff\x01",  // remaining length over 4 bytes
            b"\x82\x02\x00\x01",          // SUBSCRIBE without filters
            b"\x80\x05\x00\x01\x00\x01a", // SUBSCRIBE with wrong flags
            b"\x36\x05\x00\x01a\x00\x01", // PUBLISH QoS 3
            b"\x00\x00",                  // type 0
            b"\x32\x03\x00\x01a",         // QoS 1 PUBLISH without packet id
        ];
        for case in cases {
            let mut buf = BytesMut::from(*case);
            let result = decode(&mut buf, ProtocolLevel::V311, MAX_PACKET_SIZE_BYTES);
            assert!(result.is_err(), "{case:?} decoded as {result:?}");
        }
        let mut big = BytesMut::from(&b"\x30\xff\xff\x7f"[..]);
        assert_eq!(
            decode(&mut big, ProtocolLevel::V5, 1024),
            Err(DecodeError::TooLarge(4 + 2_097_151))
        );
    }

    #[test]
    fn our_v5_disconnect_carries_its_reason_code_and_string() {
        let mut buf = BytesMut::new();
        encode_disconnect(&mut buf, reason::SESSION_TAKEN_OVER);
        let v5::Packet::Disconnect(d) = v5::read(&mut buf, 1 << 20).expect("decodes") else {
            panic!("not a disconnect");
        };
        assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver);
        let reason_string = d.properties.and_then(|p| p.reason_string);
        assert_eq!(reason_string.as_deref(), Some("session taken over"));
    }

    #[test]
    fn v5_empty_disconnect_and_auth_are_understood() {
        let mut buf = BytesMut::from(&b"\xe0\x00\xf0\x00"[..]);
        assert_eq!(
            decode(&mut buf, ProtocolLevel::V5, MAX_PACKET_SIZE_BYTES),
            Ok(Some(Packet::Disconnect {
                reason: 0,
                session_expiry_s: None
            }))
        );
        assert_eq!(
            decode(&mut buf, ProtocolLevel::V5, MAX_PACKET_SIZE_BYTES),
            Ok(Some(Packet::Auth))
        );
    }
}
