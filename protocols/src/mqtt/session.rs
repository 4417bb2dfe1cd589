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

use bytes::BytesMut;

use super::codec::{self, OutgoingPublish, ProtocolLevel};
use super::constants::{
    MAX_DEDUP_IDS_PER_SESSION, MAX_INFLIGHT_PER_SESSION, MAX_QUEUED_MESSAGES_PER_SESSION,
};
use super::message::SharedMessage;
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
