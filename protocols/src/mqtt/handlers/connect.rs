//! CONNECT: refuse what we cannot serve (shutting down, an authentication method, an empty
//! client id where the level forbids one, a bad will topic) and whom we do not let in
//! (anonymous clients without `allow_anonymous`, a bad username or password: see `auth`),
//! drop a will the ACL does not let the client publish, otherwise claim the client id
//! across shards (taking over any existing connection and session), answer CONNACK with what
//! this server allows (v5 properties, among them a capped keep-alive: see `MqttConfig`), and
//! attach the connection so pending messages flow.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::debug;

use crate::mqtt::acl::{Action, Actor};
use crate::mqtt::auth::{self, MAX_PENDING_PASSWORD_CHECKS};
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

/// Counts a password check of the shard while it runs (also when the connection is dropped
/// mid-check).
struct PendingCheck<'a>(&'a Cell<usize>);

impl Drop for PendingCheck<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Lets the client in, or returns the CONNACK refusing it (see `auth` for the rules).
async fn authenticate<K: MqttKernel>(
    engine: &Rc<MqttShard<K>>,
    connect: &Connect,
) -> Result<(), BytesMut> {
    let level = connect.level;
    let config = &engine.config;
    let Some(username) = connect.username.as_deref() else {
        if config.allow_anonymous {
            return Ok(());
        }
        return Err(refusal(
            level,
            reason::V3_NOT_AUTHORIZED,
            reason::NOT_AUTHORIZED,
        ));
    };
    let Some(file) = &config.password_file else {
        return Ok(());
    };
    let bad_login = || {
        refusal(
            level,
            reason::V3_BAD_USERNAME_OR_PASSWORD,
            reason::BAD_USERNAME_OR_PASSWORD,
        )
    };
    let (Some(hash), Some(password)) = (file.hash_of(username), connect.password.as_deref()) else {
        return Err(bad_login());
    };
    let digest = auth::login_digest(username, password, hash);
    if engine.verified_logins.contains(&digest) {
        return Ok(());
    }
    let pending = &engine.pending_password_checks;
    if pending.get() >= MAX_PENDING_PASSWORD_CHECKS {
        return Err(refusal(
            level,
            reason::V3_SERVER_UNAVAILABLE,
            reason::SERVER_BUSY,
        ));
    }
    pending.set(pending.get() + 1);
    let _counted = PendingCheck(pending);
    let (password, hash) = (password.to_string(), hash.to_string());
    let verified = engine
        .kernel
        .run_blocking(move || auth::verify_password(&password, &hash))
        .await;
    if !verified {
        return Err(bad_login());
    }
    engine.verified_logins.insert(digest);
    Ok(())
}

/// Accepts the client or returns the bytes to send before closing.
pub async fn handle<K: MqttKernel>(
    engine: &Rc<MqttShard<K>>,
    mut connect: Connect,
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
    authenticate(engine, &connect).await?;
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
    if let Some(will) = &connect.will {
        let actor = Actor {
            client_id: &client_id,
            username: connect.username.as_deref(),
        };
        if !engine
            .config
            .acl
            .allows(actor, Action::Publish, &will.topic)
        {
            debug!(client = %client_id, topic = %will.topic, "will dropped: ACL denies publish");
            connect.will = None;
        }
    }
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
    engine.attach(
        &client,
        connected.generation,
        &link,
        connect.username.as_deref(),
    );
    debug!(
        client = %client,
        shard = engine.shard_id(),
        session_present = connected.session_present,
        "mqtt client connected"
    );
    Ok(Connection {
        engine: engine.clone(),
        publisher: Arc::from(client_id.as_str()),
        client_id: client,
        username: connect.username.map(String::into_boxed_str),
        generation: connected.generation,
        link,
        level,
        keep_alive_s,
        will: RefCell::new(connect.will),
        session_expiry_s: Cell::new(connect.session_expiry_s),
        topic_aliases: RefCell::new(HashMap::new()),
    })
}
