//! Every limit of the MQTT protocol layer, named once, with the arithmetic behind it.

/// Largest MQTT packet we accept (and advertise to v5 clients as Maximum Packet Size): 1 MiB.
/// A connection's read buffer never holds more than one such packet plus one read chunk.
pub const MAX_PACKET_SIZE_BYTES: usize = 1024 * 1024;

/// Bytes asked of the socket per read on a busy connection. Small packets arrive in batches
/// of this size.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Bytes asked of the socket by a connection that is idle (its last read was small): the
/// buffer an idle connection holds while it waits, so 100k idle clients cost 100k x this, not
/// 100k x `READ_CHUNK_BYTES` (measured: 22 KiB RSS per idle connection with 16 KiB reads).
/// A read that fills it grows the next one x4, up to `READ_CHUNK_BYTES`.
pub const READ_IDLE_BYTES: usize = 256;

/// Outbound bytes waiting for one slow subscriber before QoS 0 messages to it are dropped and
/// QoS 1/2 messages wait in its session queue instead: 4 MiB x 10,000 connections per shard
/// would be 40 GiB, so this bounds a burst, not a steady state; the session queue bounds the rest.
pub const OUTBOX_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Open MQTT connections per shard; more are accepted and closed at once (logged).
pub const MAX_CONNECTIONS_PER_SHARD: usize = 100_000;

/// Sessions (online and offline) per shard. Each costs its subscriptions and queue, bounded
/// below; 200,000 x ~1 KiB of idle state stays near 200 MiB per shard.
pub const MAX_SESSIONS_PER_SHARD: usize = 200_000;

/// Subscriptions of one session (SUBSCRIBE beyond it gets 0x97 quota exceeded / 0x80).
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 1_000;

/// QoS 1/2 messages queued for one session while it is offline or its in-flight window is full,
/// by default (`mqtt.max_queued_messages` changes it). Past it the newest message is dropped
/// (and counted), as Mosquitto's `max_queued_messages` does: 10,000 x 1 KiB typical payload =
/// 10 MiB per session at worst.
pub const MAX_QUEUED_MESSAGES_PER_SESSION: usize = 10_000;

/// The largest `mqtt.max_queued_messages` accepted: 1M x 1 KiB = 1 GiB for one session.
pub const MAX_QUEUED_MESSAGES_PER_SESSION_LIMIT: usize = 1_000_000;

/// Outbound QoS 1/2 messages awaiting acknowledgement per session, whatever Receive Maximum
/// the client announces (v5) — 3.1/3.1.1 clients get this window.
pub const MAX_INFLIGHT_PER_SESSION: usize = 1_024;

/// Our Receive Maximum (v5 CONNACK): inbound QoS 2 messages a client may have awaiting PUBREL.
/// A v5 client that exceeds it is disconnected with 0x93; 3.1/3.1.1 clients are closed.
pub const SERVER_RECEIVE_MAXIMUM: u16 = 1_024;

/// Topic aliases a v5 client may use towards us (CONNACK Topic Alias Maximum).
pub const SERVER_TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// Topic aliases we assign towards one v5 client at most, whatever Topic Alias Maximum it
/// announces (least recently used ones are reassigned past it): 64 topics of ~100 bytes is
/// ~6 KiB per connection (4 KiB topics make 256 KiB at worst).
pub const MAX_TOPIC_ALIASES_TO_CLIENT: u16 = 64;

/// Default of `mqtt.max_keep_alive_s`: 65,535 s, the largest keep-alive MQTT can express, so
/// by default no client's keep-alive is capped and keep-alive 0 (none) is allowed, as in
/// Mosquitto, whose `max_keepalive` also defaults to 65,535.
pub const DEFAULT_MAX_KEEP_ALIVE_S: u16 = u16::MAX;

/// How long a new connection may take to send CONNECT before it is closed.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Topic name and filter length limit (the MQTT string limit is 65,535 bytes; deep trees
/// stay cheap to match): 4 KiB.
pub const MAX_TOPIC_BYTES: usize = 4 * 1024;

/// Topic levels in one name or filter (bounds the trie walk per publish).
pub const MAX_TOPIC_LEVELS: usize = 64;

/// Retained messages kept by the retained store (one topic each); past it a new retained topic
/// is not stored (logged). 1,000,000 x ~200 bytes of typical retained state is ~200 MiB.
pub const MAX_RETAINED_MESSAGES: usize = 1_000_000;

/// Client identifiers are at most this long (the 3.1 limit is 23; 3.1.1 allows more).
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// A message id seen during a cross-shard session move is remembered this long, so a copy that
/// arrives by the direct route after the forwarded copy (or the reverse) is dropped. Mesh hops
/// take tens of microseconds; 5 s is a wide margin.
pub const MIGRATION_DEDUP_WINDOW_MS: u64 = 5_000;

/// Message ids remembered per session for that de-duplication (bounded like its queue).
pub const MAX_DEDUP_IDS_PER_SESSION: usize = MAX_QUEUED_MESSAGES_PER_SESSION;

/// v5 session expiry interval that means "never expires" (also used for 3.1.1 clean
/// session 0, which has no expiry).
pub const SESSION_NEVER_EXPIRES_S: u32 = u32::MAX;

/// Largest session expiry we honour before treating it as never: ~136 years is u32::MAX s.
/// (Kept explicit so timers never overflow: u32::MAX s x 1000 fits in u64.)
pub const MAX_SESSION_EXPIRY_MS: u64 = u32::MAX as u64 * 1_000;

/// How often `$SYS/broker/...` statistics are published.
pub const SYS_INTERVAL_MS: u64 = 10_000;

const _: () = assert!(MAX_INFLIGHT_PER_SESSION <= u16::MAX as usize);
const _: () = assert!(MAX_PACKET_SIZE_BYTES <= 268_435_455);
const _: () = assert!(OUTBOX_MAX_BYTES >= MAX_PACKET_SIZE_BYTES);

/// Most PUBLISH packets of one connection handled as one run: their deliveries to each other
/// shard travel as one mesh message, and with bridge rules their Kafka appends share one
/// durable write. The packets come from bytes already read, so a run is also bounded by the
/// read buffer.
pub const PUBLISH_RUN_MAX: usize = 256;

/// Most messages in one mesh message to another shard (`ShardMessage::Deliver`): a run's
/// deliveries to one shard, sent early when this many are waiting. With the mesh queue's
/// 1,024 messages per pair of shards, at most 1,024 x this many messages wait per pair.
pub const MESH_DELIVER_BATCH_MAX: usize = 256;

/// `Deliver` batches one shard may have sent to another and not yet seen applied. Backpressure:
/// a QoS 1 publisher acknowledged as soon as its batch is sent would otherwise outrun the other
/// shard's subscribers by up to the mesh queue (1,024 batches x 256 messages) and overflow their
/// session queues (measured: 128k of 608k msgs/s delivered, the rest dropped). 16 x
/// `MESH_DELIVER_BATCH_MAX` = 4,096 messages, under the default session queue limit (10,000).
pub const MESH_DELIVER_BATCHES_IN_FLIGHT: usize = 16;

/// Payload and topic bytes of bridged publishes put in one Kafka record batch (publishes of one
/// run to one partition share a batch). Well under the default `max.message.bytes` (1 MiB), so
/// a batch is refused only when one publish alone is too large, and that publish fails alone.
pub const BRIDGE_BATCH_MAX_BYTES: usize = 256 * 1024;

/// Largest session image written to `__mqtt_state` (see `persist`): past it the newest queued
/// messages of that session are left out of the image (logged). 10,000 queued 1 KiB messages
/// fit; the internal topic accepts batches of up to 64 MiB.
pub const SESSION_IMAGE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Default of `mqtt.state_flush_interval_ms`: how long a change of a persistent session or a
/// retained message may wait before it is written (a crash loses at most this window).
pub const DEFAULT_STATE_FLUSH_INTERVAL_MS: u64 = 200;
/// Bounds of `mqtt.state_flush_interval_ms`.
pub const STATE_FLUSH_INTERVAL_MS_MIN: u64 = 10;
pub const STATE_FLUSH_INTERVAL_MS_MAX: u64 = 60_000;

/// Longest a shard keeps forwarding publishes for a session that moved to another shard, in
/// case the new shard never reports its routes applied (it normally does within milliseconds).
/// Below `MIGRATION_DEDUP_WINDOW_MS`, so forwarded copies are still deduplicated.
pub const MOVE_FORWARD_MAX_MS: u64 = 3_000;
/// Messages a shard holds for forwarding to moved sessions (and forwarded messages held for a
/// session not installed yet); past it they are dropped and logged.
pub const FORWARD_QUEUE_MAX: usize = 65_536;
const _: () = assert!(MOVE_FORWARD_MAX_MS < MIGRATION_DEDUP_WINDOW_MS);

/// Interest changes (filter routes of one shard) sent to the other shards as one mesh message
/// and acknowledged together: a storm of SUBSCRIBEs, a mass disconnect or the sessions restored
/// at startup cost one round trip per batch, not per filter.
pub const INTEREST_BATCH_MAX: usize = 1_024;
