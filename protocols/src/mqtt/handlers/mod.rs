//! One handler per MQTT packet type a client sends; `dispatch` is the single registry.
//! Handlers never parse bytes (the codec did) and never touch sockets: they act on the
//! shard's `MqttShard` and write answers into the connection's outbox. `Err(End)` ends the
//! connection (DISCONNECT from the client, or a protocol error with its reason code).

pub mod auth;
pub mod connect;
pub mod disconnect;
pub mod pingreq;
pub mod puback;
pub mod pubcomp;
pub mod publish;
pub mod pubrec;
pub mod pubrel;
pub mod subscribe;
pub mod unsubscribe;

use super::codec::{reason, Packet};
use super::connection::{Connection, End};
use super::kernel::MqttKernel;

pub async fn dispatch<K: MqttKernel>(
    connection: &Connection<K>,
    packet: Packet,
) -> Result<(), End> {
    match packet {
        Packet::Publish(publish) => publish::handle(connection, publish).await,
        Packet::PubAck { pkid, .. } => puback::handle(connection, pkid),
        Packet::PubRec { pkid, reason } => pubrec::handle(connection, pkid, reason),
        Packet::PubRel { pkid, .. } => pubrel::handle(connection, pkid),
        Packet::PubComp { pkid, .. } => pubcomp::handle(connection, pkid),
        Packet::Subscribe(subscribe) => subscribe::handle(connection, subscribe).await,
        Packet::Unsubscribe(unsubscribe) => unsubscribe::handle(connection, unsubscribe).await,
        Packet::PingReq => pingreq::handle(connection),
        Packet::Disconnect {
            reason,
            session_expiry_s,
        } => disconnect::handle(connection, reason, session_expiry_s),
        Packet::Auth => auth::handle(connection),
        Packet::Connect => Err(End::protocol(reason::PROTOCOL_ERROR, "second CONNECT")),
        Packet::ServerOnly(packet_type) => Err(End::protocol(
            reason::PROTOCOL_ERROR,
            format!("packet type {packet_type} is sent by servers only"),
        )),
    }
}
