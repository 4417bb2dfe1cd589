//! PUBLISH from a client: resolve a v5 topic alias, validate the topic, route the message to
//! every matching subscriber on every shard (retained: store first), then acknowledge —
//! QoS 1 with PUBACK, QoS 2 with PUBREC after recording the packet id, so a retransmission
//! is acknowledged again but not delivered twice. v5 acks say 0x10 when nobody subscribes.
//! A publish the ACL denies is dropped: v5 QoS 1/2 are answered 0x87 (Not authorized),
//! 3.1/3.1.1 are acknowledged as usual (as Mosquitto does), QoS 0 silently.

use std::sync::Arc;

use crate::mqtt::acl::Action;
use crate::mqtt::codec::{self, reason, Publish};
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::constants::{SERVER_RECEIVE_MAXIMUM, SERVER_TOPIC_ALIAS_MAXIMUM};
use crate::mqtt::kernel::MqttKernel;
use crate::mqtt::message::Message;
use crate::mqtt::topic::valid_topic_name;

pub async fn handle<K: MqttKernel>(
    connection: &Connection<K>,
    publish: Publish,
) -> Result<(), End> {
    let topic = resolve_topic(connection, &publish)?;
    if !valid_topic_name(&topic) {
        return Err(End::protocol(
            reason::TOPIC_NAME_INVALID,
            format!("invalid topic name {topic:?}"),
        ));
    }
    let engine = &connection.engine;
    let level = connection.level;
    let pkid = publish.pkid;
    let acl = &engine.config.acl;
    let allowed = acl.is_empty() || acl.allows(connection.actor(), Action::Publish, &topic);
    if !allowed && level.is_v5() {
        let packet_type = match publish.qos {
            1 => codec::PUBACK,
            2 => codec::PUBREC,
            _ => return Ok(()),
        };
        connection
            .link
            .write(|out| codec::encode_ack(out, level, packet_type, pkid, reason::NOT_AUTHORIZED));
        return Ok(());
    }
    if publish.qos == 2 {
        let fresh = engine.with_session(&connection.client_id, connection.generation, |s, _| {
            if s.inbound_qos2_pending() >= usize::from(SERVER_RECEIVE_MAXIMUM) {
                return Err(());
            }
            Ok(s.inbound_qos2_received(pkid))
        });
        match fresh {
            None => return Ok(()),
            Some(Err(())) => {
                return Err(End::protocol(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "more QoS 2 messages awaiting PUBREL than our Receive Maximum",
                ))
            }
            Some(Ok(false)) => {
                connection.link.write(|out| {
                    codec::encode_ack(out, level, codec::PUBREC, pkid, reason::SUCCESS)
                });
                return Ok(());
            }
            Some(Ok(true)) => {}
        }
    }
    if !allowed {
        // 3.1/3.1.1 have no way to say no: acknowledge, deliver nothing.
        match publish.qos {
            1 => connection
                .link
                .write(|out| codec::encode_ack(out, level, codec::PUBACK, pkid, reason::SUCCESS)),
            2 => connection
                .link
                .write(|out| codec::encode_ack(out, level, codec::PUBREC, pkid, reason::SUCCESS)),
            _ => {}
        }
        return Ok(());
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
    let matched = engine
        .publish(message)
        .await
        .map_err(|_| End::ServerClose)?;
    let code = if matched {
        reason::SUCCESS
    } else {
        reason::NO_MATCHING_SUBSCRIBERS
    };
    match publish.qos {
        1 => connection
            .link
            .write(|out| codec::encode_ack(out, level, codec::PUBACK, pkid, code)),
        2 => connection
            .link
            .write(|out| codec::encode_ack(out, level, codec::PUBREC, pkid, code)),
        _ => {}
    }
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
