//! CONNECT: refuse what we cannot serve (shutting down, an authentication method, an empty
//! client id where the level forbids one, a bad will topic), otherwise claim the client id
//! across shards (taking over any existing connection and session), answer CONNACK with what
//! this server allows (v5 properties, among them a capped keep-alive: see `MqttConfig`), and
//! attach the connection so pending messages flow.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use crate::mqtt::codec::{self, reason, ConnAckProperties, Connect, ProtocolLevel};
use crate::mqtt::connection::Connection;
use crate::mqtt::constants::{
    MAX_INFLIGHT_PER_SESSION, MAX_PACKET_SIZE_BYTES, SERVER_RECEIVE_MAXIMUM,
    SERVER_TOPIC_ALIAS_MAXIMUM,
};
use crate::mqtt::engine::{Link, MqttShard};
use crate::mqtt::kernel::MqttKernel;
use crate::mqtt::topic::valid_topic_name;

/// The CONNACK refusal for `level`: a 3.1.1 return code or a v5 reason code.
fn refusal(level: ProtocolLevel, v3_code: u8, v5_code: u8) -> BytesMut {
    let mut answer = BytesMut::new();
    let code = if level.is_v5() { v5_code } else { v3_code };
    codec::encode_connack(
        &mut answer,
        level,
        false,
        code,
        &ConnAckProperties::default(),
    );
    answer
}

/// Accepts the client or returns the bytes to send before closing.
pub async fn handle<K: MqttKernel>(
    engine: &Rc<MqttShard<K>>,
    connect: Connect,
) -> Result<Connection<K>, BytesMut> {
    let level = connect.level;
    if !engine.kernel.accepting() {
        return Err(refusal(
            level,
            reason::V3_SERVER_UNAVAILABLE,
            reason::SERVER_UNAVAILABLE,
        ));
    }
    if connect.authentication_method.is_some() {
        return Err(refusal(
            level,
            reason::V3_SERVER_UNAVAILABLE,
            reason::BAD_AUTHENTICATION_METHOD,
        ));
    }
    if let Some(will) = &connect.will {
        if !valid_topic_name(&will.topic) {
            return Err(refusal(
                level,
                reason::V3_IDENTIFIER_REJECTED,
                reason::TOPIC_NAME_INVALID,
            ));
        }
    }
    let mut assigned_client_id = None;
    let client_id = if connect.client_id.is_empty() {
        // 3.1 requires a client id; 3.1.1 allows an empty one only with a clean session.
        if level == ProtocolLevel::V31 || (level == ProtocolLevel::V311 && !connect.clean_start) {
            return Err(refusal(
                level,
                reason::V3_IDENTIFIER_REJECTED,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
            ));
        }
        let id = format!("rmq-{:016x}", engine.next_message_id());
        if level.is_v5() {
            assigned_client_id = Some(id.clone());
        }
        id
    } else {
        connect.client_id.clone()
    };
    let client: Rc<str> = Rc::from(client_id.as_str());
    let connected = engine
        .connect(&client, connect.clean_start, connect.session_expiry_s)
        .await
        .map_err(|_| {
            refusal(
                level,
                reason::V3_SERVER_UNAVAILABLE,
                reason::SERVER_UNAVAILABLE,
            )
        })?;
    let max_packet_size = connect
        .max_packet_size
        .map_or(usize::MAX, |size| size as usize);
    let window = usize::from(connect.receive_maximum).min(MAX_INFLIGHT_PER_SESSION);
    let link = Rc::new(Link::new(
        level,
        max_packet_size,
        window,
        connect.topic_alias_maximum,
    ));
    let keep_alive_s = engine.config.granted_keep_alive_s(connect.keep_alive_s);
    let properties = ConnAckProperties {
        assigned_client_id,
        server_keep_alive_s: (keep_alive_s != connect.keep_alive_s).then_some(keep_alive_s),
        receive_maximum: SERVER_RECEIVE_MAXIMUM,
        max_packet_size: MAX_PACKET_SIZE_BYTES as u32,
        topic_alias_maximum: SERVER_TOPIC_ALIAS_MAXIMUM,
        ..ConnAckProperties::default()
    };
    link.write(|out| {
        codec::encode_connack(
            out,
            level,
            connected.session_present,
            reason::SUCCESS,
            &properties,
        )
    });
    engine.attach(&client, connected.generation, &link);
    Ok(Connection {
        engine: engine.clone(),
        publisher: Arc::from(client_id.as_str()),
        client_id: client,
        generation: connected.generation,
        link,
        level,
        keep_alive_s,
        will: RefCell::new(connect.will),
        session_expiry_s: Cell::new(connect.session_expiry_s),
        topic_aliases: RefCell::new(HashMap::new()),
    })
}
