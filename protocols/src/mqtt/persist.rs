//! MQTT state that survives a restart: retained messages and persistent sessions (3.1.1 clean
//! session 0, v5 session expiry > 0) with their subscriptions, in-flight and queued QoS 1/2
//! messages, packet ids and pending inbound QoS 2 ids. The state is written as records of the
//! internal compacted Kafka topic `__mqtt_state` (the broker stores them through the storage
//! crate like any partition; see `MqttKernel::state_append`):
//! - key `r` + topic: a retained message; a tombstone (no value) deletes it. Only shard 0
//!   writes these (it owns the retained store), in order.
//! - key `s` + client id: a session image; a tombstone ends the session. The shard holding the
//!   session writes it. The latest record of a key wins when the topic is read back.
//! - key `b` + partition (i32, big-endian) + Kafka topic: where a bridge tailer goes on (the
//!   next offset to route to MQTT, i64 big-endian). The partition's shard writes it.
//!
//! When: each shard keeps the keys changed since its last write and writes their current state
//! every `mqtt.state_flush_interval_ms`, as one durable append, and once more at shutdown. A
//! crash (kill -9, power loss) loses at most the changes of the last interval; a clean
//! shutdown loses nothing. Mosquitto's default is the same idea with a 30-minute interval.
//!
//! Values are our own little binary layout, led by a format version byte. Stored bytes are
//! untrusted on the way back in: a value that does not decode is skipped and counted, never a
//! panic.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::MessageProperties;
use super::message::{Message, SharedMessage};
use super::session::Outgoing;

/// Name of the internal topic that holds the MQTT state.
pub const STATE_TOPIC: &str = "__mqtt_state";
/// Key prefix of a retained message.
pub const RETAINED_PREFIX: u8 = b'r';
/// Key prefix of a session image.
pub const SESSION_PREFIX: u8 = b's';
/// Key prefix of a bridge tailer's position.
pub const BRIDGE_POSITION_PREFIX: u8 = b'b';
/// Layout version of the values written here.
pub const STATE_FORMAT_VERSION: u8 = 1;

/// One record of `__mqtt_state`: `value: None` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRecord {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// What a key of `__mqtt_state` names.
#[derive(Debug, PartialEq, Eq)]
pub enum StateKey<'a> {
    Retained(&'a str),
    Session(&'a str),
    /// (Kafka topic, partition) of a bridge tailer.
    BridgePosition(&'a str, i32),
}

pub fn bridge_position_key(topic: &str, partition: i32) -> Bytes {
    let mut key = BytesMut::with_capacity(5 + topic.len());
    key.put_u8(BRIDGE_POSITION_PREFIX);
    key.put_i32(partition);
    key.put_slice(topic.as_bytes());
    key.freeze()
}

pub fn encode_bridge_position(next_offset: i64) -> Bytes {
    Bytes::copy_from_slice(&next_offset.to_be_bytes())
}

pub fn decode_bridge_position(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?)).filter(|offset| *offset >= 0)
}

pub fn retained_key(topic: &str) -> Bytes {
    prefixed(RETAINED_PREFIX, topic)
}

pub fn session_key(client_id: &str) -> Bytes {
    prefixed(SESSION_PREFIX, client_id)
}

fn prefixed(prefix: u8, name: &str) -> Bytes {
    let mut key = BytesMut::with_capacity(1 + name.len());
    key.put_u8(prefix);
    key.put_slice(name.as_bytes());
    key.freeze()
}

pub fn parse_key(key: &[u8]) -> Option<StateKey<'_>> {
    let (&prefix, name) = key.split_first()?;
    if prefix == BRIDGE_POSITION_PREFIX {
        let (partition, topic) = name.split_at_checked(4)?;
        let partition = i32::from_be_bytes(partition.try_into().ok()?);
        return Some(StateKey::BridgePosition(
            std::str::from_utf8(topic).ok()?,
            partition,
        ));
    }
    let name = std::str::from_utf8(name).ok()?;
    match prefix {
        RETAINED_PREFIX => Some(StateKey::Retained(name)),
        SESSION_PREFIX => Some(StateKey::Session(name)),
        _ => None,
    }
}

/// Appends values in the layout `Reader` reads.
pub struct Writer<'a>(pub &'a mut BytesMut);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }

    pub fn u64(&mut self, v: u64) {
        self.0.put_u64(v);
    }

    /// A length as u32 (collections here are bounded far below 4 G entries).
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.0.put_slice(v);
    }

    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    pub fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.str(v);
            }
            None => self.u8(0),
        }
    }

    pub fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
            None => self.u8(0),
        }
    }

    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
}

/// Reads what `Writer` wrote; `None` on truncated or invalid input. Byte strings are slices
/// of the input (no copy).
pub struct Reader(pub Bytes);

impl Reader {
    fn need(&self, n: usize) -> Option<()> {
        (self.0.remaining() >= n).then_some(())
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.need(1)?;
        Some(self.0.get_u8())
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.need(2)?;
        Some(self.0.get_u16())
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.need(4)?;
        Some(self.0.get_u32())
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.need(8)?;
        Some(self.0.get_u64())
    }

    /// A collection length, checked against what is left (each entry takes at least
    /// `min_entry_bytes`), so a corrupt length cannot ask for a huge allocation.
    pub fn len(&mut self, min_entry_bytes: usize) -> Option<usize> {
        let n = usize::try_from(self.u32()?).ok()?;
        (n.checked_mul(min_entry_bytes.max(1))? <= self.0.remaining()).then_some(n)
    }

    pub fn bytes(&mut self) -> Option<Bytes> {
        let n = self.len(1)?;
        Some(self.0.split_to(n))
    }

    pub fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    pub fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }

    pub fn opt_u32(&mut self) -> Option<Option<u32>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u32()?)),
            _ => None,
        }
    }

    pub fn opt_u64(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Writes a message (its node-local id is not kept: a restored message gets a new one).
pub fn write_message(w: &mut Writer<'_>, message: &Message) {
    w.str(&message.topic);
    w.bytes(&message.payload);
    w.u8(message.qos);
    w.u8(u8::from(message.retain));
    w.opt_str(message.publisher.as_deref());
    w.opt_u64(message.expires_at_ms);
    let p = &message.properties;
    w.opt_u32(p.payload_format_indicator.map(u32::from));
    w.opt_u32(p.message_expiry_s);
    w.opt_str(p.content_type.as_deref());
    w.opt_str(p.response_topic.as_deref());
    match &p.correlation_data {
        Some(data) => {
            w.u8(1);
            w.bytes(data);
        }
        None => w.u8(0),
    }
    w.len(p.user_properties.len());
    for (name, value) in &p.user_properties {
        w.str(name);
        w.str(value);
    }
}

/// Reads a message written by `write_message`, giving it the node-unique id `id`.
pub fn read_message(r: &mut Reader, id: u64) -> Option<SharedMessage> {
    let topic = r.str()?;
    let payload = r.bytes()?;
    let qos = r.u8().filter(|q| *q <= 2)?;
    let retain = r.u8()? != 0;
    let publisher = r.opt_str()?.map(Arc::from);
    let expires_at_ms = r.opt_u64()?;
    let payload_format_indicator = match r.opt_u32()? {
        Some(v) => Some(u8::try_from(v).ok()?),
        None => None,
    };
    let message_expiry_s = r.opt_u32()?;
    let content_type = r.opt_str()?;
    let response_topic = r.opt_str()?;
    let correlation_data = match r.u8()? {
        0 => None,
        1 => Some(r.bytes()?),
        _ => return None,
    };
    let count = r.len(8)?;
    let mut user_properties = Vec::with_capacity(count);
    for _ in 0..count {
        user_properties.push((r.str()?, r.str()?));
    }
    Some(Arc::new(Message {
        id,
        topic,
        payload,
        qos,
        retain,
        properties: MessageProperties {
            payload_format_indicator,
            message_expiry_s,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
        },
        publisher,
        expires_at_ms,
    }))
}

pub fn write_outgoing(w: &mut Writer<'_>, outgoing: &Outgoing) {
    w.u8(outgoing.qos);
    w.u8(u8::from(outgoing.retain));
    w.len(outgoing.subscription_ids.len());
    for id in &outgoing.subscription_ids {
        w.u32(*id);
    }
    write_message(w, &outgoing.message);
}

pub fn read_outgoing(r: &mut Reader, id: u64) -> Option<Outgoing> {
    let qos = r.u8().filter(|q| *q <= 2)?;
    let retain = r.u8()? != 0;
    let count = r.len(4)?;
    let mut subscription_ids = Vec::with_capacity(count);
    for _ in 0..count {
        subscription_ids.push(r.u32()?);
    }
    Some(Outgoing {
        message: read_message(r, id)?,
        qos,
        retain,
        subscription_ids,
    })
}

/// The value of a retained message's record.
pub fn encode_retained(message: &Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + message.topic.len() + message.payload.len());
    let mut w = Writer(&mut buf);
    w.u8(STATE_FORMAT_VERSION);
    write_message(&mut w, message);
    buf.freeze()
}

pub fn decode_retained(value: Bytes, id: u64) -> Option<SharedMessage> {
    let mut r = Reader(value);
    if r.u8()? != STATE_FORMAT_VERSION {
        return None;
    }
    let message = read_message(&mut r, id)?;
    r.is_empty().then_some(message)
}

/// Keeps the latest record of each key, in the order the keys were first seen; a key whose
/// latest record is a tombstone is gone.
pub fn latest_per_key(records: impl IntoIterator<Item = StateRecord>) -> Vec<(Bytes, Bytes)> {
    let mut index: std::collections::HashMap<Bytes, usize> = std::collections::HashMap::new();
    let mut latest: Vec<(Bytes, Option<Bytes>)> = Vec::new();
    for record in records {
        match index.get(&record.key) {
            Some(&at) => latest[at].1 = record.value,
            None => {
                index.insert(record.key.clone(), latest.len());
                latest.push((record.key, record.value));
            }
        }
    }
    latest
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            id: 7,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: 2,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                message_expiry_s: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("r/t".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
            publisher: Some(Arc::from("pub-1")),
            expires_at_ms: Some(123_456),
        }
    }

    #[test]
    fn a_retained_message_round_trips_with_every_property() {
        let original = message();
        let decoded = decode_retained(encode_retained(&original), 99).expect("decodes");
        assert_eq!(decoded.id, 99);
        assert_eq!(decoded.topic, original.topic);
        assert_eq!(decoded.payload, original.payload);
        assert_eq!((decoded.qos, decoded.retain), (2, true));
        assert_eq!(decoded.properties, original.properties);
        assert_eq!(decoded.publisher.as_deref(), Some("pub-1"));
        assert_eq!(decoded.expires_at_ms, Some(123_456));
    }

    #[test]
    fn truncated_or_corrupt_values_are_rejected_not_panicked_on() {
        let encoded = encode_retained(&message());
        for cut in 0..encoded.len() {
            assert!(
                decode_retained(encoded.slice(..cut), 1).is_none(),
                "cut {cut}"
            );
        }
        let mut wrong_version = encoded.to_vec();
        wrong_version[0] = 200;
        assert!(decode_retained(Bytes::from(wrong_version), 1).is_none());
        // A huge collection length is refused before allocating.
        let mut r = Reader(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0]));
        assert_eq!(r.len(8), None);
    }

    #[test]
    fn keys_name_retained_topics_and_sessions() {
        assert_eq!(
            parse_key(&retained_key("x/y")),
            Some(StateKey::Retained("x/y"))
        );
        assert_eq!(
            parse_key(&session_key("c:1")),
            Some(StateKey::Session("c:1"))
        );
        assert_eq!(
            parse_key(&bridge_position_key("sensors", 7)),
            Some(StateKey::BridgePosition("sensors", 7))
        );
        assert_eq!(
            decode_bridge_position(&encode_bridge_position(42)),
            Some(42)
        );
        assert_eq!(decode_bridge_position(b"short"), None);
        assert_eq!(parse_key(b"b\0\0"), None);
        assert_eq!(parse_key(b"zz"), None);
        assert_eq!(parse_key(b""), None);
    }

    #[test]
    fn the_latest_record_of_a_key_wins_and_tombstones_delete() {
        let rec = |k: &'static [u8], v: Option<&'static [u8]>| StateRecord {
            key: Bytes::from_static(k),
            value: v.map(Bytes::from_static),
        };
        let latest = latest_per_key(vec![
            rec(b"a", Some(b"1")),
            rec(b"b", Some(b"2")),
            rec(b"a", Some(b"3")),
            rec(b"b", None),
            rec(b"c", None),
            rec(b"c", Some(b"4")),
        ]);
        let got: Vec<(&[u8], &[u8])> = latest.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(got, vec![(&b"a"[..], &b"3"[..]), (&b"c"[..], &b"4"[..])]);
    }
}
