//! One client's session: its subscriptions and the QoS state machines of both directions.
//!
//! Outbound (server -> client): a QoS 1 message waits in `inflight` for PUBACK; a QoS 2 message
//! waits for PUBREC, then (PUBREL sent) for PUBCOMP. At most `window` messages are in flight
//! (the client's v5 Receive Maximum, capped by `MAX_INFLIGHT_PER_SESSION`); the rest wait in a
//! bounded queue, which is also where QoS 1/2 messages go while the client is offline. On
//! reconnect every in-flight message is sent again (PUBLISH with DUP, or PUBREL), in order.
//! Inbound QoS 2: the packet ids that got PUBREC and await PUBREL, so a retransmitted PUBLISH
//! is acknowledged but not delivered twice.
//!
//! The session does no IO: it encodes packets into the `Link` it is given. It is `Send`
//! (no `Rc`), so it can move to another shard on takeover.

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};

use super::codec::{self, OutgoingPublish, ProtocolLevel};
use super::constants::{
    MAX_DEDUP_IDS_PER_SESSION, MAX_INFLIGHT_PER_SESSION, MAX_QUEUED_MESSAGES_PER_SESSION,
};
use super::message::SharedMessage;
use super::persist::{read_outgoing, write_outgoing, Reader, Writer, STATE_FORMAT_VERSION};
use super::topic_alias::{AliasUse, TopicAliases};

/// Options of one subscription (a filter of one session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_id: Option<u32>,
}

/// One message on its way to one session.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub message: SharedMessage,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// The acknowledgement an in-flight outbound message waits for.
enum Awaiting {
    /// PUBACK (QoS 1).
    Ack,
    /// PUBREC (QoS 2, first half).
    Receipt,
    /// PUBCOMP (QoS 2, after our PUBREL).
    Completion,
}

#[derive(Debug)]
struct Inflight {
    pkid: u16,
    state: Awaiting,
    outgoing: Outgoing,
}

/// Where the session writes packets for its connected client.
pub struct LinkOut<'a> {
    pub level: ProtocolLevel,
    /// The client's Maximum Packet Size; larger messages are not sent to it (v5 rule).
    pub max_packet_size: usize,
    /// QoS 1/2 messages the client accepts in flight.
    pub window: usize,
    pub buffer: &'a mut BytesMut,
    /// Whether the outbox has room for more QoS 0 bytes.
    pub has_room: bool,
    /// The connection's topic aliases towards the client (v5 clients that accept them).
    pub aliases: Option<&'a mut TopicAliases>,
}

/// What happened to a message handed to `deliver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliverOutcome {
    Sent,
    Queued,
    /// QoS 0 to an offline or saturated client, an expired message, a full queue, a packet the
    /// client cannot take, or a duplicate during a session move.
    Dropped,
}

#[derive(Debug, Default)]
pub struct Session {
    pub subscriptions: BTreeMap<String, Subscription>,
    /// v5 Session Expiry Interval in seconds (`SESSION_NEVER_EXPIRES_S`: never).
    pub expiry_s: u32,
    inflight: VecDeque<Inflight>,
    inflight_ids: HashSet<u16>,
    queue: VecDeque<Outgoing>,
    next_pkid: u16,
    inbound_qos2: HashSet<u16>,
    /// Message ids recently delivered, remembered only while the session moves between shards.
    dedup: Option<HashSet<u64>>,
    pub dropped_messages: u64,
    /// Most messages `queue` holds (`mqtt.max_queued_messages`).
    pub queue_limit: QueueLimit,
}

/// Most QoS 1/2 messages queued for one session; past it the newest is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimit(pub usize);

impl Default for QueueLimit {
    fn default() -> QueueLimit {
        QueueLimit(MAX_QUEUED_MESSAGES_PER_SESSION)
    }
}

impl Session {
    pub fn new(expiry_s: u32) -> Session {
        Session {
            expiry_s,
            ..Session::default()
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Starts remembering delivered message ids (a session move is under way).
    pub fn begin_dedup(&mut self) {
        let mut ids: HashSet<u64> = self.queue.iter().map(|o| o.message.id).collect();
        ids.extend(self.inflight.iter().map(|i| i.outgoing.message.id));
        self.dedup = Some(ids);
    }

    pub fn end_dedup(&mut self) {
        self.dedup = None;
    }

    fn allocate_pkid(&mut self) -> u16 {
        assert!(
            self.inflight_ids.len() < usize::from(u16::MAX),
            "packet ids exhausted"
        );
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight_ids.contains(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Hands a message to the session: sent now if the client is connected and the window
    /// allows, otherwise queued (QoS 1/2) or dropped (QoS 0).
    pub fn deliver(
        &mut self,
        outgoing: Outgoing,
        link: Option<&mut LinkOut<'_>>,
        now_ms: u64,
    ) -> DeliverOutcome {
        if let Some(seen) = &mut self.dedup {
            if !seen.insert(outgoing.message.id) {
                return DeliverOutcome::Dropped;
            }
            if seen.len() > MAX_DEDUP_IDS_PER_SESSION {
                self.dedup = None;
            }
        }
        if outgoing.message.is_expired(now_ms) {
            return DeliverOutcome::Dropped;
        }
        if outgoing.qos == 0 {
            return match link {
                Some(link) if link.has_room => {
                    if send_publish(link, &outgoing, 0, false, now_ms) {
                        DeliverOutcome::Sent
                    } else {
                        DeliverOutcome::Dropped
                    }
                }
                _ => {
                    self.dropped_messages += 1;
                    DeliverOutcome::Dropped
                }
            };
        }
        if let Some(link) = link {
            if self.queue.is_empty() && self.inflight.len() < window(link) {
                return self.send_inflight(link, outgoing, now_ms);
            }
        }
        if self.queue.len() >= self.queue_limit.0 {
            self.dropped_messages += 1;
            return DeliverOutcome::Dropped;
        }
        self.queue.push_back(outgoing);
        DeliverOutcome::Queued
    }

    fn send_inflight(
        &mut self,
        link: &mut LinkOut<'_>,
        outgoing: Outgoing,
        now_ms: u64,
    ) -> DeliverOutcome {
        let pkid = self.allocate_pkid();
        if !send_publish(link, &outgoing, pkid, false, now_ms) {
            self.dropped_messages += 1;
            return DeliverOutcome::Dropped;
        }
        let state = if outgoing.qos == 1 {
            Awaiting::Ack
        } else {
            Awaiting::Receipt
        };
        self.inflight_ids.insert(pkid);
        self.inflight.push_back(Inflight {
            pkid,
            state,
            outgoing,
        });
        DeliverOutcome::Sent
    }

    /// Moves queued messages into the window while it has room.
    pub fn pump(&mut self, link: &mut LinkOut<'_>, now_ms: u64) {
        while self.inflight.len() < window(link) {
            let Some(outgoing) = self.queue.pop_front() else {
                return;
            };
            if outgoing.message.is_expired(now_ms) {
                continue;
            }
            self.send_inflight(link, outgoing, now_ms);
        }
    }

    /// After a reconnect: every unacknowledged message again, in order, then the queue.
    pub fn resend(&mut self, link: &mut LinkOut<'_>, now_ms: u64) {
        for inflight in &self.inflight {
            match inflight.state {
                Awaiting::Completion => codec::encode_ack(
                    link.buffer,
                    link.level,
                    codec::PUBREL,
                    inflight.pkid,
                    codec::reason::SUCCESS,
                ),
                Awaiting::Ack | Awaiting::Receipt => {
                    send_publish(link, &inflight.outgoing, inflight.pkid, true, now_ms);
                }
            }
        }
        self.pump(link, now_ms);
    }

    fn take_inflight(&mut self, pkid: u16, state: Awaiting) -> Option<usize> {
        let index = self
            .inflight
            .iter()
            .position(|i| i.pkid == pkid && i.state == state)?;
        Some(index)
    }

    /// PUBACK: the QoS 1 message is done. Returns whether the packet id was in flight.
    pub fn on_puback(&mut self, pkid: u16, link: Option<&mut LinkOut<'_>>, now_ms: u64) -> bool {
        self.complete(pkid, Awaiting::Ack, link, now_ms)
    }

    /// PUBCOMP: the QoS 2 message is done.
    pub fn on_pubcomp(&mut self, pkid: u16, link: Option<&mut LinkOut<'_>>, now_ms: u64) -> bool {
        self.complete(pkid, Awaiting::Completion, link, now_ms)
    }

    fn complete(
        &mut self,
        pkid: u16,
        state: Awaiting,
        link: Option<&mut LinkOut<'_>>,
        now_ms: u64,
    ) -> bool {
        let Some(index) = self.take_inflight(pkid, state) else {
            return false;
        };
        self.inflight.remove(index);
        self.inflight_ids.remove(&pkid);
        if let Some(link) = link {
            self.pump(link, now_ms);
        }
        true
    }

    /// PUBREC: answer PUBREL and wait for PUBCOMP (offline: PUBREL goes out on reconnect).
    /// A PUBREC with a failure reason (v5) ends the exchange instead.
    pub fn on_pubrec(
        &mut self,
        pkid: u16,
        reason: u8,
        link: Option<&mut LinkOut<'_>>,
        now_ms: u64,
    ) {
        match self.take_inflight(pkid, Awaiting::Receipt) {
            Some(_) if reason >= 0x80 => {
                self.complete(pkid, Awaiting::Receipt, link, now_ms);
            }
            Some(index) => {
                self.inflight[index].state = Awaiting::Completion;
                if let Some(link) = link {
                    codec::encode_ack(
                        link.buffer,
                        link.level,
                        codec::PUBREL,
                        pkid,
                        codec::reason::SUCCESS,
                    );
                }
            }
            None => {
                // A retransmitted PUBREC: answer again.
                let code = if self.inflight_ids.contains(&pkid) {
                    codec::reason::SUCCESS
                } else {
                    codec::reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                if let Some(link) = link {
                    codec::encode_ack(link.buffer, link.level, codec::PUBREL, pkid, code);
                }
            }
        }
    }

    /// An inbound QoS 2 PUBLISH: `true` if it is new (deliver it), `false` for a retransmission.
    pub fn inbound_qos2_received(&mut self, pkid: u16) -> bool {
        self.inbound_qos2.insert(pkid)
    }

    /// Inbound QoS 2 messages awaiting PUBREL.
    pub fn inbound_qos2_pending(&self) -> usize {
        self.inbound_qos2.len()
    }

    /// PUBREL from the client: `true` if the packet id was pending.
    pub fn inbound_qos2_released(&mut self, pkid: u16) -> bool {
        self.inbound_qos2.remove(&pkid)
    }
}

/// A session as `persist` stores it, with what the engine keeps beside it.
#[derive(Debug)]
pub struct SessionImage {
    pub session: Session,
    /// When its client went away (wall-clock ms); 0 if it was connected when written.
    pub disconnected_at_ms: u64,
    /// The username of its last connection (ACL checks while offline).
    pub username: Option<String>,
}

impl Session {
    /// The state a restart must keep (see `persist`): expiry, subscriptions, packet ids, the
    /// inbound QoS 2 ids awaiting PUBREL, the in-flight messages and as much of the queue as
    /// fits in `max_bytes` (oldest first). Returns the value and how many queued messages did
    /// not fit.
    pub fn encode_image(
        &self,
        disconnected_at_ms: u64,
        username: Option<&str>,
        max_bytes: usize,
    ) -> (Bytes, usize) {
        let mut buf = BytesMut::with_capacity(256);
        let mut w = Writer(&mut buf);
        w.u8(STATE_FORMAT_VERSION);
        w.u32(self.expiry_s);
        w.u64(disconnected_at_ms);
        w.opt_str(username);
        w.u16(self.next_pkid);
        w.len(self.subscriptions.len());
        for (filter, sub) in &self.subscriptions {
            w.str(filter);
            w.u8(sub.qos);
            w.u8(u8::from(sub.no_local) | (u8::from(sub.retain_as_published) << 1));
            w.opt_u32(sub.subscription_id);
        }
        w.len(self.inbound_qos2.len());
        for pkid in &self.inbound_qos2 {
            w.u16(*pkid);
        }
        w.len(self.inflight.len());
        for inflight in &self.inflight {
            w.u16(inflight.pkid);
            w.u8(match inflight.state {
                Awaiting::Ack => 0,
                Awaiting::Receipt => 1,
                Awaiting::Completion => 2,
            });
            write_outgoing(&mut w, &inflight.outgoing);
        }
        // The queue count goes first; it is patched if the byte budget cuts the queue short.
        let count_at = w.0.len();
        w.len(self.queue.len());
        let mut written = 0usize;
        for outgoing in &self.queue {
            if w.0.len() >= max_bytes {
                break;
            }
            write_outgoing(&mut w, outgoing);
            written += 1;
        }
        let written_u32 = u32::try_from(written).unwrap_or(u32::MAX).to_be_bytes();
        buf[count_at..count_at + 4].copy_from_slice(&written_u32);
        (buf.freeze(), self.queue.len() - written)
    }

    /// Reads a value `encode_image` wrote; messages get ids from `next_id`. `None` if the
    /// value is truncated, of another format or inconsistent (duplicate packet ids).
    pub fn decode_image(value: Bytes, mut next_id: impl FnMut() -> u64) -> Option<SessionImage> {
        let mut r = Reader(value);
        if r.u8()? != STATE_FORMAT_VERSION {
            return None;
        }
        let mut session = Session::new(r.u32()?);
        let disconnected_at_ms = r.u64()?;
        let username = r.opt_str()?;
        session.next_pkid = r.u16()?;
        for _ in 0..r.len(7)? {
            let filter = r.str()?;
            let qos = r.u8().filter(|q| *q <= 2)?;
            let flags = r.u8()?;
            let subscription_id = r.opt_u32()?;
            let sub = Subscription {
                qos,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                subscription_id,
            };
            session.subscriptions.insert(filter, sub);
        }
        for _ in 0..r.len(2)? {
            session.inbound_qos2.insert(r.u16()?);
        }
        for _ in 0..r.len(4)? {
            let pkid = r.u16().filter(|p| *p != 0)?;
            let state = match r.u8()? {
                0 => Awaiting::Ack,
                1 => Awaiting::Receipt,
                2 => Awaiting::Completion,
                _ => return None,
            };
            let outgoing = read_outgoing(&mut r, next_id())?;
            if !session.inflight_ids.insert(pkid) {
                return None;
            }
            session.inflight.push_back(Inflight {
                pkid,
                state,
                outgoing,
            });
        }
        for _ in 0..r.len(4)? {
            let outgoing = read_outgoing(&mut r, next_id())?;
            session.queue.push_back(outgoing);
        }
        r.is_empty().then_some(SessionImage {
            session,
            disconnected_at_ms,
            username,
        })
    }
}

fn window(link: &LinkOut<'_>) -> usize {
    link.window.clamp(1, MAX_INFLIGHT_PER_SESSION)
}

/// Encodes one PUBLISH unless it is too large for the client. Returns whether it was written.
fn send_publish(
    link: &mut LinkOut<'_>,
    outgoing: &Outgoing,
    pkid: u16,
    dup: bool,
    now_ms: u64,
) -> bool {
    let message = &outgoing.message;
    let alias = link
        .aliases
        .as_deref()
        .map_or(AliasUse::None, |aliases| aliases.plan(&message.topic));
    let (topic, topic_alias) = match alias {
        AliasUse::None => (message.topic.as_str(), None),
        AliasUse::Set(alias) => (message.topic.as_str(), Some(alias)),
        AliasUse::Use(alias) => ("", Some(alias)),
    };
    let publish = OutgoingPublish {
        topic,
        payload: &message.payload,
        qos: outgoing.qos,
        pkid,
        dup,
        retain: outgoing.retain,
        properties: &message.properties,
        message_expiry_s: message.remaining_expiry_s(now_ms),
        subscription_ids: &outgoing.subscription_ids,
        topic_alias,
    };
    if codec::publish_size(link.level, &publish) > link.max_packet_size {
        return false;
    }
    codec::encode_publish(link.buffer, link.level, &publish);
    if let Some(aliases) = link.aliases.as_deref_mut() {
        aliases.commit(&message.topic, alias);
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use mqttbytes::v4;

    use super::*;
    use crate::mqtt::codec::MessageProperties;
    use crate::mqtt::message::Message;

    fn message(id: u64, qos: u8) -> SharedMessage {
        Arc::new(Message {
            id,
            topic: "t".into(),
            payload: Bytes::from(format!("m{id}")),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            publisher: None,
            expires_at_ms: None,
        })
    }

    fn outgoing(id: u64, qos: u8) -> Outgoing {
        Outgoing {
            message: message(id, qos),
            qos,
            retain: false,
            subscription_ids: vec![],
        }
    }

    fn link(buffer: &mut BytesMut, window: usize) -> LinkOut<'_> {
        LinkOut {
            level: ProtocolLevel::V311,
            max_packet_size: 1 << 20,
            window,
            buffer,
            has_room: true,
            aliases: None,
        }
    }

    fn sent(buffer: &mut BytesMut) -> Vec<v4::Packet> {
        let mut packets = Vec::new();
        while !buffer.is_empty() {
            packets.push(v4::read(buffer, 1 << 20).expect("valid packet"));
        }
        packets
    }

    #[test]
    fn qos1_window_queues_the_rest_until_puback() {
        let mut session = Session::new(0);
        let mut buffer = BytesMut::new();
        for id in 1..=3 {
            session.deliver(outgoing(id, 1), Some(&mut link(&mut buffer, 2)), 0);
        }
        assert_eq!((session.inflight(), session.queued()), (2, 1));
        let first = sent(&mut buffer);
        assert_eq!(first.len(), 2);
        let v4::Packet::Publish(p) = &first[0] else {
            panic!("expected publish")
        };
        assert!(session.on_puback(p.pkid, Some(&mut link(&mut buffer, 2)), 0));
        assert_eq!((session.inflight(), session.queued()), (2, 0));
        let next = sent(&mut buffer);
        assert!(matches!(&next[..], [v4::Packet::Publish(p)] if &p.payload[..] == b"m3"));
        assert!(!session.on_puback(p.pkid, Some(&mut link(&mut buffer, 2)), 0));
    }

    #[test]
    fn qos2_outbound_runs_pubrec_pubrel_pubcomp_and_resends_after_reconnect() {
        let mut session = Session::new(u32::MAX);
        let mut buffer = BytesMut::new();
        session.deliver(outgoing(1, 2), Some(&mut link(&mut buffer, 10)), 0);
        session.deliver(outgoing(2, 2), Some(&mut link(&mut buffer, 10)), 0);
        let packets = sent(&mut buffer);
        let pkids: Vec<u16> = packets
            .iter()
            .map(|p| match p {
                v4::Packet::Publish(p) => p.pkid,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        session.on_pubrec(pkids[0], 0, Some(&mut link(&mut buffer, 10)), 0);
        assert!(matches!(&sent(&mut buffer)[..], [v4::Packet::PubRel(r)] if r.pkid == pkids[0]));
        // The client reconnects: PUBREL for the first, PUBLISH with DUP for the second.
        session.resend(&mut link(&mut buffer, 10), 0);
        let again = sent(&mut buffer);
        assert!(matches!(&again[0], v4::Packet::PubRel(r) if r.pkid == pkids[0]));
        assert!(matches!(&again[1], v4::Packet::Publish(p) if p.pkid == pkids[1] && p.dup));
        assert!(session.on_pubcomp(pkids[0], Some(&mut link(&mut buffer, 10)), 0));
        assert!(!session.on_pubcomp(pkids[0], Some(&mut link(&mut buffer, 10)), 0));
        assert_eq!(session.inflight(), 1);
    }

    #[test]
    fn offline_session_queues_qos1_drops_qos0_and_bounds_the_queue() {
        let mut session = Session::new(u32::MAX);
        assert_eq!(
            session.deliver(outgoing(1, 0), None, 0),
            DeliverOutcome::Dropped
        );
        for id in 0..MAX_QUEUED_MESSAGES_PER_SESSION as u64 {
            assert_eq!(
                session.deliver(outgoing(id + 10, 1), None, 0),
                DeliverOutcome::Queued
            );
        }
        assert_eq!(
            session.deliver(outgoing(5, 1), None, 0),
            DeliverOutcome::Dropped
        );
        assert_eq!(session.queued(), MAX_QUEUED_MESSAGES_PER_SESSION);
        let mut buffer = BytesMut::new();
        session.resend(&mut link(&mut buffer, 3), 0);
        assert_eq!(sent(&mut buffer).len(), 3);
    }

    #[test]
    fn a_configured_queue_limit_bounds_the_queue() {
        let mut session = Session::new(u32::MAX);
        session.queue_limit = QueueLimit(3);
        for id in 0..3 {
            assert_eq!(
                session.deliver(outgoing(id, 1), None, 0),
                DeliverOutcome::Queued
            );
        }
        assert_eq!(
            session.deliver(outgoing(9, 1), None, 0),
            DeliverOutcome::Dropped
        );
        assert_eq!((session.queued(), session.dropped_messages), (3, 1));
    }

    #[test]
    fn a_session_image_round_trips_subscriptions_inflight_queue_and_packet_ids() {
        let mut session = Session::new(3_600);
        session.subscriptions.insert(
            "a/#".into(),
            Subscription {
                qos: 2,
                no_local: true,
                retain_as_published: false,
                subscription_id: Some(7),
            },
        );
        session.subscriptions.insert(
            "b".into(),
            Subscription {
                qos: 1,
                no_local: false,
                retain_as_published: true,
                subscription_id: None,
            },
        );
        let mut buffer = BytesMut::new();
        session.deliver(outgoing(1, 1), Some(&mut link(&mut buffer, 2)), 0);
        session.deliver(outgoing(2, 2), Some(&mut link(&mut buffer, 2)), 0);
        session.deliver(outgoing(3, 1), Some(&mut link(&mut buffer, 2)), 0);
        let pkids: Vec<u16> = session.inflight.iter().map(|i| i.pkid).collect();
        session.on_pubrec(pkids[1], 0, Some(&mut link(&mut buffer, 2)), 0);
        assert!(session.inbound_qos2_received(42));
        let (value, left_out) = session.encode_image(1_234, Some("alice"), usize::MAX);
        assert_eq!(left_out, 0);
        let mut ids = 100..;
        let image =
            Session::decode_image(value.clone(), || ids.next().unwrap_or(0)).expect("decodes");
        assert_eq!(
            (image.disconnected_at_ms, image.username.as_deref()),
            (1_234, Some("alice"))
        );
        let mut restored = image.session;
        assert_eq!(restored.expiry_s, 3_600);
        assert_eq!(restored.subscriptions, session.subscriptions);
        assert_eq!((restored.inflight(), restored.queued()), (2, 1));
        assert!(
            !restored.inbound_qos2_received(42),
            "pending PUBREL id kept"
        );
        // Reconnect: the QoS 1 message again with DUP, PUBREL for the QoS 2 one, then the queue.
        let mut out = BytesMut::new();
        restored.resend(&mut link(&mut out, 3), 0);
        let packets = sent(&mut out);
        assert!(
            matches!(&packets[0], v4::Packet::Publish(p) if p.pkid == pkids[0] && p.dup && &p.payload[..] == b"m1")
        );
        assert!(matches!(&packets[1], v4::Packet::PubRel(r) if r.pkid == pkids[1]));
        assert!(matches!(&packets[2], v4::Packet::Publish(p) if !p.dup && &p.payload[..] == b"m3"));
        assert!(
            !pkids.contains(&restored.allocate_pkid()),
            "no packet id reused"
        );
        // Truncated values are refused.
        for cut in 0..value.len() {
            assert!(
                Session::decode_image(value.slice(..cut), || 0).is_none(),
                "cut {cut}"
            );
        }
        // A byte budget keeps the in-flight messages and the oldest queued ones.
        let (small, left_out) = session.encode_image(0, None, 1);
        assert_eq!(left_out, 1);
        let image = Session::decode_image(small, || 0).expect("decodes");
        assert_eq!((image.session.inflight(), image.session.queued()), (2, 0));
    }

    #[test]
    fn inbound_qos2_retransmission_is_not_delivered_twice() {
        let mut session = Session::new(0);
        assert!(session.inbound_qos2_received(5));
        assert!(!session.inbound_qos2_received(5));
        assert!(session.inbound_qos2_released(5));
        assert!(!session.inbound_qos2_released(5));
        assert!(session.inbound_qos2_received(5));
    }

    #[test]
    fn expired_messages_are_dropped_from_the_queue() {
        let mut session = Session::new(u32::MAX);
        let mut m = Message {
            id: 1,
            topic: "t".into(),
            payload: Bytes::new(),
            qos: 1,
            retain: false,
            properties: MessageProperties::default(),
            publisher: None,
            expires_at_ms: Some(1_000),
        };
        m.properties.message_expiry_s = Some(1);
        let outgoing = Outgoing {
            message: Arc::new(m),
            qos: 1,
            retain: false,
            subscription_ids: vec![],
        };
        session.deliver(outgoing, None, 0);
        let mut buffer = BytesMut::new();
        session.resend(&mut link(&mut buffer, 3), 2_000);
        assert!(buffer.is_empty());
        assert_eq!(session.queued(), 0);
    }

    #[test]
    fn a_duplicate_during_a_move_is_dropped() {
        let mut session = Session::new(u32::MAX);
        session.deliver(outgoing(7, 1), None, 0);
        session.begin_dedup();
        assert_eq!(
            session.deliver(outgoing(7, 1), None, 0),
            DeliverOutcome::Dropped
        );
        assert_eq!(
            session.deliver(outgoing(8, 1), None, 0),
            DeliverOutcome::Queued
        );
        session.end_dedup();
        assert_eq!(
            session.deliver(outgoing(7, 1), None, 0),
            DeliverOutcome::Queued
        );
    }
}
