//! PUBLISH from a client: resolve a v5 topic alias, validate the topic, route the message to
//! every matching subscriber on every shard (retained: store first), then acknowledge —
//! QoS 1 with PUBACK, QoS 2 with PUBREC after recording the packet id, so a retransmission
//! is acknowledged again but not delivered twice. v5 acks say 0x10 when nobody subscribes.
//!
//! A publish a bridge rule matches is appended to its Kafka topic first (see `bridge`), and
//! only then routed and acknowledged: QoS 1/2 once the record is durable (acks=-1). If the
//! append fails the message is not routed; a v5 client gets PUBACK/PUBREC 0x97 (quota
//! exceeded: the record is too large or the log is backlogged) or 0x80 (anything else), a
//! 3.1/3.1.1 client, which has no negative acknowledgement, is disconnected. QoS 0 is dropped.
//!
//! A publish the ACL denies is dropped: v5 QoS 1/2 are answered 0x87 (Not authorized),
//! 3.1/3.1.1 are acknowledged as usual (as Mosquitto does), QoS 0 silently. Acks keep the
//! order the publishes came in.
//!
//! The consecutive PUBLISH packets of one socket read are handled as one run: their deliveries
//! to other shards go as one mesh message per shard (see `engine::Forwards`), and the run's
//! acks are written once those are sent, so no ack precedes the hop that delivers its message.

use std::sync::Arc;

use bytes::BytesMut;

use crate::kernel::KernelError;
use crate::mqtt::acl::Action;
use crate::mqtt::codec::{self, reason, Publish};
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::constants::{SERVER_RECEIVE_MAXIMUM, SERVER_TOPIC_ALIAS_MAXIMUM};
use crate::mqtt::engine::Forwards;
use crate::mqtt::kernel::MqttKernel;
use crate::mqtt::message::Message;
use crate::mqtt::topic::valid_topic_name;

/// One PUBLISH on its own (a run of one; the connection's read loop collects runs).
pub async fn handle<K: MqttKernel>(
    connection: &Connection<K>,
    publish: Publish,
) -> Result<(), End> {
    handle_run(connection, &mut vec![publish]).await
}

/// What to do with one PUBLISH of a run once the bridged appends are done.
enum Step {
    /// Route (unless `stored` failed) and acknowledge.
    Route {
        message: Arc<Message>,
        pkid: u16,
        /// Index of its Kafka append in the run's appends (bridged publishes only).
        append: Option<usize>,
    },
    /// A QoS 2 retransmission: acknowledge again, route nothing.
    AckOnly { pkid: u16 },
    /// The ACL denies the topic: acknowledge (v5: 0x87), route nothing.
    Denied { qos: u8, pkid: u16 },
}

/// Handles consecutive PUBLISH packets of one connection in order. The bridged ones among them
/// are appended to Kafka with one kernel call (one durable write covers them all), then every
/// publish is routed in the order received, its deliveries to other shards collected into one
/// mesh message per shard; once those are sent, the run's acks are written (in order). A
/// protocol error ends the run: the publishes before it still take effect, then the connection
/// closes. `publishes` is drained (its capacity kept for the next run).
pub async fn handle_run<K: MqttKernel>(
    connection: &Connection<K>,
    publishes: &mut Vec<Publish>,
) -> Result<(), End> {
    let engine = &connection.engine;
    let mut steps = Vec::with_capacity(publishes.len());
    let mut appends = Vec::new();
    let mut durable = false;
    let mut ended = None;
    for publish in publishes.drain(..) {
        match prepare(connection, publish) {
            Ok(Some(step)) => steps.push(step),
            // The session is gone (taken over): nothing to route or acknowledge.
            Ok(None) => continue,
            Err(end) => {
                ended = Some(end);
                break;
            }
        }
        let Some(Step::Route {
            message, append, ..
        }) = steps.last_mut()
        else {
            continue;
        };
        match engine.bridge_target(message) {
            None => {}
            Some(Ok(partition)) => {
                durable |= message.qos > 0;
                *append = Some(appends.len());
                appends.push(Ok((partition, message.clone())));
            }
            Some(Err(e)) => {
                *append = Some(appends.len());
                appends.push(Err(e));
            }
        }
    }
    let results = engine.append_to_kafka(appends, durable).await;
    let mut forwards = Forwards::default();
    let mut acks = BytesMut::new();
    for step in steps {
        let append = match &step {
            Step::Route {
                append: Some(index),
                ..
            } => results.get(*index),
            _ => None,
        };
        if let Err(end) = finish(connection, step, append, &mut forwards, &mut acks).await {
            ended = Some(end);
            break;
        }
    }
    engine
        .send_forwards(&mut forwards)
        .await
        .map_err(|_| End::ServerClose)?;
    if !acks.is_empty() {
        connection.link.write(|out| out.extend_from_slice(&acks));
    }
    ended.map_or(Ok(()), Err)
}

/// Routes one prepared PUBLISH (its deliveries to other shards into `forwards`) and encodes
/// its ack into `acks`, in the order received. `append`: the result of its Kafka append, for a
/// bridged publish (a failed one is refused, not routed).
async fn finish<K: MqttKernel>(
    connection: &Connection<K>,
    step: Step,
    append: Option<&Result<(), KernelError>>,
    forwards: &mut Forwards,
    acks: &mut BytesMut,
) -> Result<(), End> {
    let level = connection.level;
    let (message, pkid) = match step {
        Step::AckOnly { pkid } => {
            codec::encode_ack(acks, level, codec::PUBREC, pkid, reason::SUCCESS);
            return Ok(());
        }
        Step::Denied { qos, pkid } => {
            // 3.1/3.1.1 have no way to say no: acknowledge, deliver nothing.
            let code = if level.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            };
            let packet_type = match qos {
                1 => codec::PUBACK,
                2 => codec::PUBREC,
                _ => return Ok(()),
            };
            codec::encode_ack(acks, level, packet_type, pkid, code);
            return Ok(());
        }
        Step::Route { message, pkid, .. } => (message, pkid),
    };
    if let Some(Err(e)) = append {
        return refuse(connection, &message, pkid, e, acks);
    }
    let qos = message.qos;
    let matched = connection
        .engine
        .publish_batched(message, forwards)
        .await
        .map_err(|_| End::ServerClose)?;
    let code = if matched {
        reason::SUCCESS
    } else {
        reason::NO_MATCHING_SUBSCRIBERS
    };
    match qos {
        1 => codec::encode_ack(acks, level, codec::PUBACK, pkid, code),
        2 => codec::encode_ack(acks, level, codec::PUBREC, pkid, code),
        _ => {}
    }
    Ok(())
}

/// Checks one PUBLISH and makes its message; `None` when the session is gone.
fn prepare<K: MqttKernel>(
    connection: &Connection<K>,
    publish: Publish,
) -> Result<Option<Step>, End> {
    let topic = resolve_topic(connection, &publish)?;
    if !valid_topic_name(&topic) {
        return Err(End::protocol(
            reason::TOPIC_NAME_INVALID,
            format!("invalid topic name {topic:?}"),
        ));
    }
    let engine = &connection.engine;
    let pkid = publish.pkid;
    let acl = &engine.config.acl;
    let allowed = acl.is_empty() || acl.allows(connection.actor(), Action::Publish, &topic);
    let denied = Step::Denied {
        qos: publish.qos,
        pkid,
    };
    if !allowed && connection.level.is_v5() {
        // A v5 PUBREC >= 0x80 ends the QoS 2 flow: no packet id is recorded.
        return Ok(Some(denied));
    }
    if publish.qos == 2 {
        let fresh = engine.with_session(&connection.client_id, connection.generation, |s, _| {
            if s.inbound_qos2_pending() >= usize::from(SERVER_RECEIVE_MAXIMUM) {
                return Err(());
            }
            Ok(s.inbound_qos2_received(pkid))
        });
        match fresh {
            None => return Ok(None),
            Some(Err(())) => {
                return Err(End::protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "more QoS 2 messages awaiting PUBREL than our Receive Maximum",
                ))
            }
            Some(Ok(false)) => return Ok(Some(Step::AckOnly { pkid })),
            Some(Ok(true)) => {}
        }
    }
    if !allowed {
        return Ok(Some(denied));
    }
    let now = engine.kernel.now_ms();
    let message = Arc::new(Message {
        id: engine.next_message_id(),
        expires_at_ms: publish
            .properties
            .message_expiry_s
            .map(|s| now + u64::from(s) * 1000),
        topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties,
        publisher: Some(connection.publisher.clone()),
    });
    Ok(Some(Step::Route {
        message,
        pkid,
        append: None,
    }))
}

/// A bridged publish whose Kafka append failed: not routed; v5 gets a negative PUBACK/PUBREC
/// (into `acks`), 3.1/3.1.1 (no negative ack) is disconnected, QoS 0 is dropped.
fn refuse<K: MqttKernel>(
    connection: &Connection<K>,
    message: &Message,
    pkid: u16,
    error: &KernelError,
    acks: &mut BytesMut,
) -> Result<(), End> {
    if message.qos == 0 {
        return Ok(());
    }
    let level = connection.level;
    if !level.is_v5() {
        return Err(End::protocol(
            reason::UNSPECIFIED_ERROR,
            format!("bridged publish to {} not stored: {error}", message.topic),
        ));
    }
    let code = match error {
        KernelError::MessageTooLarge { .. } | KernelError::RequestTimedOut => {
            reason::QUOTA_EXCEEDED
        }
        _ => reason::UNSPECIFIED_ERROR,
    };
    let packet_type = if message.qos == 1 {
        codec::PUBACK
    } else {
        // A failed PUBREC ends the QoS 2 flow: the packet id is free again.
        connection
            .engine
            .with_session(&connection.client_id, connection.generation, |s, _| {
                s.inbound_qos2_released(pkid)
            });
        codec::PUBREC
    };
    codec::encode_ack(acks, level, packet_type, pkid, code);
    Ok(())
}

/// The topic of a PUBLISH, through the client's topic aliases (v5): a topic with an alias sets
/// it, an empty topic with an alias uses it.
fn resolve_topic<K: MqttKernel>(
    connection: &Connection<K>,
    publish: &Publish,
) -> Result<String, End> {
    let Some(alias) = publish.topic_alias else {
        if publish.topic.is_empty() {
            return Err(End::protocol(
                reason::PROTOCOL_ERROR,
                "empty topic without a topic alias",
            ));
        }
        return Ok(publish.topic.clone());
    };
    if alias == 0 || alias > SERVER_TOPIC_ALIAS_MAXIMUM {
        return Err(End::protocol(
            reason::TOPIC_ALIAS_INVALID,
            format!("topic alias {alias} outside 1..={SERVER_TOPIC_ALIAS_MAXIMUM}"),
        ));
    }
    let mut aliases = connection.topic_aliases.borrow_mut();
    if publish.topic.is_empty() {
        return aliases.get(&alias).cloned().ok_or_else(|| {
            End::protocol(
                reason::PROTOCOL_ERROR,
                format!("unknown topic alias {alias}"),
            )
        });
    }
    aliases.insert(alias, publish.topic.clone());
    Ok(publish.topic.clone())
}
