//! Settings of the MQTT layer an operator may change: the `mqtt.*` keys of the node's config
//! file. Read-only once the shard starts (each shard holds its own copy; the password file
//! and the ACL are shared behind `Arc`s).

use std::sync::Arc;

use super::acl::Acl;
use super::auth::PasswordFile;
use super::bridge::BridgeRules;
use super::constants::{
    DEFAULT_MAX_KEEP_ALIVE_S, DEFAULT_STATE_FLUSH_INTERVAL_MS, MAX_QUEUED_MESSAGES_PER_SESSION,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttConfig {
    /// Longest keep-alive granted, in seconds (1..=65,535). A client asking more, or asking 0
    /// (no keep-alive), gets this value: v5 clients are told so in CONNACK (Server Keep Alive);
    /// 3.1/3.1.1 have no way to tell, so they are held to it silently (Mosquitto refuses them
    /// instead). 65,535 caps nothing and allows keep-alive 0. Either way a connection silent
    /// for 1.5 x its granted keep-alive is closed.
    pub max_keep_alive_s: u16,
    /// QoS 1/2 messages queued per session (offline, or in-flight window full) before the
    /// newest is dropped; default `MAX_QUEUED_MESSAGES_PER_SESSION`.
    pub max_queued_messages: usize,
    /// Whether a client without a username may connect (see `auth`).
    pub allow_anonymous: bool,
    /// The users of `mqtt.password_file`, if one is configured (see `auth`).
    pub password_file: Option<Arc<PasswordFile>>,
    /// The `[[mqtt.acl]]` rules (see `acl`); empty allows everything.
    pub acl: Arc<Acl>,
    /// `[[bridge.mqtt_to_kafka]]` rules: publishes they match are appended to Kafka topics,
    /// and records Kafka clients produce there are routed to MQTT subscribers (see `bridge`).
    pub bridge: BridgeRules,
    /// How often changed persistent sessions and retained messages are written to
    /// `__mqtt_state` (see `persist`); a crash loses at most this window of changes.
    pub state_flush_interval_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            max_keep_alive_s: DEFAULT_MAX_KEEP_ALIVE_S,
            max_queued_messages: MAX_QUEUED_MESSAGES_PER_SESSION,
            allow_anonymous: true,
            password_file: None,
            acl: Arc::new(Acl::default()),
            bridge: BridgeRules::default(),
            state_flush_interval_ms: DEFAULT_STATE_FLUSH_INTERVAL_MS,
        }
    }
}

impl MqttConfig {
    /// The keep-alive granted to a client that asked for `requested_s`.
    pub fn granted_keep_alive_s(&self, requested_s: u16) -> u16 {
        if self.max_keep_alive_s == DEFAULT_MAX_KEEP_ALIVE_S {
            return requested_s;
        }
        if requested_s == 0 || requested_s > self.max_keep_alive_s {
            self.max_keep_alive_s
        } else {
            requested_s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_capped_and_zero_is_capped_only_under_a_cap() {
        let uncapped = MqttConfig::default();
        assert_eq!(uncapped.granted_keep_alive_s(0), 0);
        assert_eq!(uncapped.granted_keep_alive_s(65_535), 65_535);
        let capped = MqttConfig {
            max_keep_alive_s: 5,
            ..MqttConfig::default()
        };
        assert_eq!(capped.granted_keep_alive_s(600), 5);
        assert_eq!(capped.granted_keep_alive_s(0), 5);
        assert_eq!(capped.granted_keep_alive_s(3), 3);
        assert_eq!(capped.granted_keep_alive_s(5), 5);
    }
}
