//! MQTT <-> Kafka bridge rules (`[[bridge.mqtt_to_kafka]]`): one stored copy of a message,
//! readable by both protocols.
//!
//! - MQTT -> Kafka: a PUBLISH whose topic matches a rule's `filter` (first matching rule wins)
//!   is appended to the rule's Kafka `topic` as one record: key = MQTT topic, value = payload,
//!   headers = the v5 user properties, then `mqtt.qos` ("0"/"1"/"2", always present),
//!   `mqtt.retain` ("true", only when set), `content-type`, `mqtt.response-topic` and
//!   `mqtt.correlation-data` when the publish carries them (these names win over a user
//!   property of the same name; repeated user property names keep the last value). The
//!   partition is Kafka's default key partitioner (murmur2 of the key), so one MQTT topic
//!   stays in one partition, in order, and Java producers with the same key land there too.
//! - Kafka -> MQTT: records produced by Kafka clients into a rule's topic are routed to the
//!   MQTT subscribers as QoS 1 publishes with topic = record key. A record without a key, with
//!   a key that is not UTF-8, not a valid MQTT topic name or not matched by the rule's filter is
//!   skipped (counted, logged once). Records carrying the `mqtt.qos` header came from MQTT
//!   (they were routed to MQTT subscribers when published) and are skipped: that header is the
//!   origin marker.
//!
//! Concurrency contract: pure data and functions; no shared state.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::codec::MessageProperties;
use super::message::Message;
use super::topic::{matches, valid_topic_filter, valid_topic_name};
use crate::kafka::record_batch::{encode_plain_batch, PlainRecord};

/// Header every bridged MQTT publish carries (its QoS); also the origin marker.
pub const HEADER_QOS: &str = "mqtt.qos";
/// Header of a retained MQTT publish ("true").
pub const HEADER_RETAIN: &str = "mqtt.retain";
/// Header with the v5 Content Type.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Header with the v5 Response Topic.
pub const HEADER_RESPONSE_TOPIC: &str = "mqtt.response-topic";
/// Header with the v5 Correlation Data (raw bytes).
pub const HEADER_CORRELATION_DATA: &str = "mqtt.correlation-data";
/// Longest Kafka topic name (Kafka's limit).
pub const KAFKA_TOPIC_NAME_MAX_BYTES: usize = 249;
/// Most partitions a bridge rule may ask for.
pub const BRIDGE_PARTITIONS_MAX: i32 = 10_000;

/// One `[[bridge.mqtt_to_kafka]]` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeRule {
    /// MQTT topic filter (`+`/`#` wildcards; no shared subscriptions).
    pub filter: String,
    /// Kafka topic the matching publishes are appended to.
    pub topic: String,
    /// Partitions of the Kafka topic when the node creates it (an existing topic keeps its
    /// own count).
    pub partitions: i32,
}

impl BridgeRule {
    /// A checked rule; the error says what is wrong.
    pub fn new(filter: &str, topic: &str, partitions: i32) -> Result<BridgeRule, String> {
        if !valid_topic_filter(filter) || filter.starts_with('$') {
            return Err(format!(
                "bridge filter {filter:?} is not a valid MQTT topic filter (no '$' topics or \
                 $share/ groups)"
            ));
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-';
        if topic.is_empty()
            || topic == "."
            || topic == ".."
            || topic.len() > KAFKA_TOPIC_NAME_MAX_BYTES
            || !topic.chars().all(legal)
            || topic.starts_with("__")
        {
            return Err(format!(
                "bridge topic {topic:?} is not a valid Kafka topic name (1..={KAFKA_TOPIC_NAME_MAX_BYTES} \
                 of ASCII letters, digits, '.', '_', '-'; not internal '__')"
            ));
        }
        if !(1..=BRIDGE_PARTITIONS_MAX).contains(&partitions) {
            return Err(format!(
                "bridge partitions {partitions} for {topic:?} outside 1..={BRIDGE_PARTITIONS_MAX}"
            ));
        }
        Ok(BridgeRule {
            filter: filter.to_string(),
            topic: topic.to_string(),
            partitions,
        })
    }
}

/// The rules of a node, checked as a whole (one Kafka topic per rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeRules {
    rules: Vec<BridgeRule>,
}

impl BridgeRules {
    /// Refuses two rules with the same Kafka topic (the way back would be ambiguous).
    pub fn new(rules: Vec<BridgeRule>) -> Result<BridgeRules, String> {
        for (index, rule) in rules.iter().enumerate() {
            if rules[..index].iter().any(|r| r.topic == rule.topic) {
                return Err(format!(
                    "two bridge rules append to Kafka topic {:?}",
                    rule.topic
                ));
            }
        }
        Ok(BridgeRules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[BridgeRule] {
        &self.rules
    }

    /// The first rule whose filter matches the MQTT topic `topic`.
    pub fn for_mqtt_topic(&self, topic: &str) -> Option<&BridgeRule> {
        self.rules.iter().find(|rule| matches(&rule.filter, topic))
    }
}

/// One uncompressed RecordBatch v2 with one record per message, in order (offsets are assigned
/// by the log on append; no producer id, so no idempotence: a retransmitted QoS 1 publish after
/// a lost PUBACK may be appended twice, as MQTT QoS 1 allows).
pub fn encode_messages(messages: &[&Message], now_ms: i64) -> Result<Bytes, String> {
    let records = messages.iter().map(|message| record_of(message));
    encode_plain_batch(records, now_ms)
        .map(BytesMut::freeze)
        .map_err(|e| format!("cannot encode the bridged records: {e}"))
}

/// The Kafka record of `message`.
fn record_of(message: &Message) -> PlainRecord {
    let mut headers: kafka_protocol::indexmap::IndexMap<StrBytes, Option<Bytes>> =
        Default::default();
    let properties = &message.properties;
    for (name, value) in &properties.user_properties {
        headers.insert(
            StrBytes::from_string(name.clone()),
            Some(Bytes::copy_from_slice(value.as_bytes())),
        );
    }
    headers.insert(
        StrBytes::from_static_str(HEADER_QOS),
        Some(Bytes::from(message.qos.to_string())),
    );
    if message.retain {
        headers.insert(
            StrBytes::from_static_str(HEADER_RETAIN),
            Some(Bytes::from_static(b"true")),
        );
    }
    if let Some(content_type) = &properties.content_type {
        headers.insert(
            StrBytes::from_static_str(HEADER_CONTENT_TYPE),
            Some(Bytes::copy_from_slice(content_type.as_bytes())),
        );
    }
    if let Some(topic) = &properties.response_topic {
        headers.insert(
            StrBytes::from_static_str(HEADER_RESPONSE_TOPIC),
            Some(Bytes::copy_from_slice(topic.as_bytes())),
        );
    }
    if let Some(data) = &properties.correlation_data {
        headers.insert(
            StrBytes::from_static_str(HEADER_CORRELATION_DATA),
            Some(data.clone()),
        );
    }
    PlainRecord {
        key: Some(Bytes::copy_from_slice(message.topic.as_bytes())),
        value: Some(message.payload.clone()),
        headers,
    }
}

/// A Kafka record to route to MQTT subscribers.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    pub properties: MessageProperties,
}

/// What one read of a bridged partition holds for MQTT.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Records to route, in offset order.
    pub inbound: Vec<Inbound>,
    /// Records that came from MQTT (the `mqtt.qos` marker): already routed.
    pub from_mqtt: u64,
    /// Records without a usable key (none, not UTF-8, not a topic name, outside the filter).
    pub skipped: u64,
    /// The offset after the last record seen (at or past `from_offset`); `None` if the bytes
    /// held no record at or past it.
    pub next_offset: Option<i64>,
}

/// Decodes stored batches (any compression) read from a partition of `rule`'s topic and keeps
/// the records at or past `from_offset`. Errors if the batches do not decode.
pub fn decode_records(
    rule: &BridgeRule,
    mut stored: Bytes,
    from_offset: i64,
) -> Result<Decoded, String> {
    let sets = RecordBatchDecoder::decode_all(&mut stored)
        .map_err(|e| format!("cannot decode stored batches of {}: {e}", rule.topic))?;
    let mut decoded = Decoded::default();
    for record in sets.into_iter().flat_map(|set| set.records) {
        if record.offset < from_offset {
            continue;
        }
        decoded.next_offset = Some(record.offset + 1);
        if record.control {
            continue;
        }
        if record
            .headers
            .keys()
            .any(|name| name.as_str() == HEADER_QOS)
        {
            decoded.from_mqtt += 1;
            continue;
        }
        let topic = record
            .key
            .as_ref()
            .and_then(|key| std::str::from_utf8(key).ok())
            .filter(|topic| valid_topic_name(topic) && matches(&rule.filter, topic));
        let Some(topic) = topic else {
            decoded.skipped += 1;
            continue;
        };
        let mut properties = MessageProperties::default();
        for (name, value) in &record.headers {
            let Some(value) = value.as_ref().and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            if name.as_str() == HEADER_CONTENT_TYPE {
                properties.content_type = Some(value.to_string());
            } else {
                properties
                    .user_properties
                    .push((name.to_string(), value.to_string()));
            }
        }
        decoded.inbound.push(Inbound {
            topic: topic.to_string(),
            payload: record.value.unwrap_or_default(),
            properties,
        });
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn rule(filter: &str, topic: &str) -> BridgeRule {
        BridgeRule::new(filter, topic, 4).expect("valid rule")
    }

    #[test]
    fn rules_are_checked() {
        assert!(BridgeRule::new("sensors/#", "sensors", 1).is_ok());
        assert!(BridgeRule::new("a/+/c", "a.b_c-d", 3).is_ok());
        for bad_filter in ["", "sensors/#/x", "a+/b", "$SYS/#", "$share/g/a", "#\0"] {
            assert!(
                BridgeRule::new(bad_filter, "t", 1).is_err(),
                "{bad_filter:?}"
            );
        }
        let long = "x".repeat(KAFKA_TOPIC_NAME_MAX_BYTES + 1);
        for bad_topic in ["", ".", "..", "a/b", "a b", "__internal", long.as_str()] {
            assert!(
                BridgeRule::new("a/#", bad_topic, 1).is_err(),
                "{bad_topic:?}"
            );
        }
        assert!(BridgeRule::new("a/#", "t", 0).is_err());
        assert!(BridgeRule::new("a/#", "t", BRIDGE_PARTITIONS_MAX + 1).is_err());
        let twice = vec![rule("a/#", "t"), rule("b/#", "t")];
        assert!(BridgeRules::new(twice).is_err());
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = BridgeRules::new(vec![
            rule("sensors/+/temp", "temps"),
            rule("sensors/#", "sensors"),
        ])
        .expect("rules");
        let topic_of = |t: &str| rules.for_mqtt_topic(t).map(|r| r.topic.as_str());
        assert_eq!(topic_of("sensors/a/temp"), Some("temps"));
        assert_eq!(topic_of("sensors/a/b"), Some("sensors"));
        assert_eq!(topic_of("sensors"), Some("sensors"));
        assert_eq!(topic_of("other/a"), None);
        assert_eq!(topic_of("$SYS/sensors"), None);
    }

    #[test]
    fn a_bridged_message_round_trips_and_is_marked_as_from_mqtt() {
        let properties = MessageProperties {
            content_type: Some("text/plain".to_string()),
            user_properties: vec![("unit".to_string(), "C".to_string())],
            ..MessageProperties::default()
        };
        let message = Message {
            id: 1,
            topic: "sensors/a/b".to_string(),
            payload: Bytes::from_static(b"21.5"),
            qos: 1,
            retain: false,
            properties,
            publisher: None,
            expires_at_ms: None,
        };
        let mut batch = encode_messages(&[&message], 1_000).expect("encode");
        let sets = RecordBatchDecoder::decode_all(&mut batch.clone()).expect("decode");
        let record = &sets[0].records[0];
        assert_eq!(record.key.as_deref(), Some(&b"sensors/a/b"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"21.5"[..]));
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(key, _)| key.as_str() == name)
                .and_then(|(_, value)| value.clone())
                .map(|v| String::from_utf8_lossy(&v).to_string())
        };
        assert_eq!(header("unit").as_deref(), Some("C"));
        assert_eq!(header(HEADER_QOS).as_deref(), Some("1"));
        assert_eq!(header(HEADER_CONTENT_TYPE).as_deref(), Some("text/plain"));
        assert_eq!(header(HEADER_RETAIN), None);
        let decoded =
            decode_records(&rule("sensors/#", "sensors"), batch.split_off(0), 0).expect("decode");
        assert_eq!(decoded.from_mqtt, 1);
        assert!(decoded.inbound.is_empty());
        assert_eq!(decoded.next_offset, Some(1));
    }

    fn kafka_record(offset: i64, key: Option<&[u8]>, value: &[u8]) -> Record {
        let mut headers: kafka_protocol::indexmap::IndexMap<StrBytes, Option<Bytes>> =
            Default::default();
        headers.insert(
            StrBytes::from_static_str("content-type"),
            Some(Bytes::from_static(b"application/json")),
        );
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 0,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            headers,
        }
    }

    #[test]
    fn several_messages_make_one_batch_in_order() {
        let messages: Vec<Message> = (0..3)
            .map(|i| Message {
                id: i,
                topic: format!("sensors/{i}"),
                payload: Bytes::from(format!("v{i}")),
                qos: 1,
                retain: false,
                properties: MessageProperties::default(),
                publisher: None,
                expires_at_ms: None,
            })
            .collect();
        let refs: Vec<&Message> = messages.iter().collect();
        let mut batch = encode_messages(&refs, 1_000).expect("encode");
        let sets = RecordBatchDecoder::decode_all(&mut batch).expect("decode");
        assert_eq!(sets.len(), 1, "one RecordBatch");
        let got: Vec<(i64, Option<Bytes>, Option<Bytes>)> = sets[0]
            .records
            .iter()
            .map(|r| (r.offset, r.key.clone(), r.value.clone()))
            .collect();
        let want: Vec<(i64, Option<Bytes>, Option<Bytes>)> = (0..3)
            .map(|i| {
                (
                    i,
                    Some(Bytes::from(format!("sensors/{i}"))),
                    Some(Bytes::from(format!("v{i}"))),
                )
            })
            .collect();
        assert_eq!(got, want);
        assert!(sets[0].records.iter().all(|r| r.producer_id == -1));
    }

    #[test]
    fn kafka_records_need_a_key_inside_the_filter() {
        let records = [
            kafka_record(10, Some(b"sensors/a/b"), b"one"),
            kafka_record(11, None, b"no key"),
            kafka_record(12, Some(b"other/a"), b"outside"),
            kafka_record(13, Some(b"sensors/#"), b"wildcard"),
            kafka_record(14, Some(&[0xff, 0xfe]), b"not utf-8"),
            kafka_record(15, Some(b"sensors/c"), b"two"),
        ];
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        };
        RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("encode");
        let decoded =
            decode_records(&rule("sensors/#", "sensors"), buf.freeze(), 11).expect("decode");
        let topics: Vec<&str> = decoded.inbound.iter().map(|i| i.topic.as_str()).collect();
        assert_eq!(topics, ["sensors/c"]);
        assert_eq!(decoded.inbound[0].payload, Bytes::from_static(b"two"));
        assert_eq!(
            decoded.inbound[0].properties.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(decoded.skipped, 4);
        assert_eq!(decoded.next_offset, Some(16));
        assert!(decode_records(&rule("sensors/#", "s"), Bytes::from_static(b"junk"), 0).is_err());
    }
}
