//! The MQTT state of one shard and the protocol between shards.
//!
//! Each connection lives on the shard that accepted it, and so does its session. A shard keeps:
//! - `local`: a topic-filter trie of this shard's sessions' subscriptions (filter -> client).
//! - `interest`: a trie of which shards have at least one subscriber per filter, identical on
//!   every shard. Only shard S changes S's entries (single writer): when a filter's local
//!   subscriber count goes 0 -> 1 or 1 -> 0, S applies the change to its own copy and
//!   broadcasts it with a per-origin sequence number through one broadcaster task, so every
//!   peer sees S's changes in S's order (asserted). A SUBACK is sent only after every shard has
//!   applied the change, so a publish anywhere after the SUBACK reaches the new subscriber.
//! - `shared`: the members (shard, client) of every shared subscription group per filter,
//!   identical on every shard and changed through the same sequenced broadcast as `interest`
//!   (each member's shard is the single writer of its members; see `shared`).
//! - a PUBLISH is matched against `interest` and `shared` on the publisher's shard, which picks
//!   one member per matching group, and is handed once to each shard with matching
//!   subscribers or picked members (the message shared by `Arc`); each shard matches its
//!   `local` trie, adds the picked members, and encodes into its connections' outboxes. The
//!   deliveries for other shards of one connection's run of PUBLISH packets (those decoded
//!   from one socket read) are collected in `Forwards` and travel as one mesh message per
//!   shard (`ShardMessage::Deliver`, at most `MESH_DELIVER_BATCH_MAX` each), in publish
//!   order, sent at the end of the run (or when a batch is full): one mesh hop and one
//!   cross-core wake-up per run and shard, not per PUBLISH. At most
//!   `MESH_DELIVER_BATCHES_IN_FLIGHT` batches per pair of shards are sent and not yet applied
//!   (a credit the receiver gives back), so a publisher faster than the other shard's
//!   subscribers waits instead of overflowing their session queues. Per-publisher order to each
//!   subscriber holds because a publisher's deliveries to one shard go through one queue in
//!   order, and the run's acknowledgements are written only after its forwards were sent. UNSUBACK waits until every shard dropped the member; a member
//!   whose session ends or moves is dropped without waiting, so a message the publisher's
//!   shard picked it for in that window (one mesh hop) reaches nobody in its group.
//! - `registry`: client id -> shard of its session, for the client ids hashed to this shard
//!   (single writer per client id). CONNECT claims the id there; if the session is on another
//!   shard, that shard closes the old connection (v5 0x8E) and hands the session over (it is
//!   `Send`), and the new shard installs its subscriptions. The old shard keeps the session's
//!   routes (`moved_out`) and forwards what they match to the new shard (`Forwarded`, in
//!   order, by one forwarder task) until the new shard's routes are applied on every shard
//!   (`MoveDone`, at most `MOVE_FORWARD_MAX_MS`): no publish falls between the two. A copy that
//!   reaches the session twice during the move (handed-over queue, forwarded, direct) is
//!   dropped by message id for `MIGRATION_DEDUP_WINDOW_MS`. During the move a forwarded
//!   message may arrive after a later one routed directly.
//! - `retained`: the retained store, used on shard 0 only (see `retained`).
//! - persistence (see `persist`): persistent sessions changed since the last write
//!   (`SessionEntry::state_dirty`), ended ones (`ended_sessions`) and changed retained topics
//!   (`retained_dirty`) are written by `write_state` every `mqtt.state_flush_interval_ms`;
//!   `restore_state` installs them at startup on the client id's registry shard.
//!
//! Concurrency contract: one thread; `state` is borrowed only in synchronous sections, never
//! across an await.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};

use super::acl::{Action, Actor};
use super::auth::VerifiedCache;
use super::bridge;
use super::codec::{self, ProtocolLevel, Will};
use super::config::MqttConfig;
use super::constants::{
    BRIDGE_BATCH_MAX_BYTES, FORWARD_QUEUE_MAX, INTEREST_BATCH_MAX, MAX_SESSIONS_PER_SHARD,
    MESH_DELIVER_BATCHES_IN_FLIGHT, MESH_DELIVER_BATCH_MAX, MIGRATION_DEDUP_WINDOW_MS,
    MOVE_FORWARD_MAX_MS, OUTBOX_MAX_BYTES, SESSION_IMAGE_MAX_BYTES, SESSION_NEVER_EXPIRES_S,
    SYS_INTERVAL_MS,
};
use super::kernel::{MeshClosed, MqttKernel};
use super::message::{Message, SharedMessage};
use super::persist::{self, StateKey, StateRecord};
use super::retained::{RetainOutcome, RetainedStore};
use super::session::{DeliverOutcome, LinkOut, Outgoing, QueueLimit, Session, Subscription};
use super::shared::{self, FilterKind, SharedGroup};
use super::topic_alias::TopicAliases;
use super::trie::SubscriptionTrie;
use crate::kafka::record_batch::partition_for_key;
use crate::kernel::{KernelError, TopicPartition};

/// What an interest change is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// The origin shard's first subscriber of the filter, or its last one gone.
    Shard,
    /// A member of a shared subscription group on the origin shard joined or left.
    Member { group: Arc<str>, client: Arc<str> },
}

/// A shared subscription member picked for one message.
#[derive(Clone, Debug)]
pub struct SharedTarget {
    pub client: Arc<str>,
    /// The member's subscription (`$share/GROUP/FILTER`), for its options.
    pub share_filter: Arc<str>,
}

/// One message for one shard: whether its matching subscribers there get it, and the shared
/// subscription members the publisher's shard picked there.
pub struct Delivery {
    pub message: SharedMessage,
    pub to_subscribers: bool,
    pub shared: Vec<SharedTarget>,
}

/// Deliveries for other shards held back while one connection's run of publishes is routed, so
/// that they reach each shard as one mesh message: per shard in publish order, at most
/// `MESH_DELIVER_BATCH_MAX` per batch (a full batch is sent at once). `MqttShard::send_forwards`
/// sends what is left; until then the messages in it reach nobody on those shards.
#[derive(Default)]
pub struct Forwards {
    batches: Vec<(u16, Vec<Delivery>)>,
}

impl Forwards {
    /// Adds `delivery` for `shard`; returns that shard's batch if it is now full.
    fn push(&mut self, shard: u16, delivery: Delivery) -> Option<Vec<Delivery>> {
        let batch = match self.batches.iter_mut().position(|(s, _)| *s == shard) {
            Some(index) => &mut self.batches[index].1,
            None => {
                self.batches.push((shard, Vec::new()));
                let last = self.batches.len() - 1;
                &mut self.batches[last].1
            }
        };
        batch.push(delivery);
        (batch.len() >= MESH_DELIVER_BATCH_MAX).then(|| std::mem::take(batch))
    }

    pub fn is_empty(&self) -> bool {
        self.batches.iter().all(|(_, batch)| batch.is_empty())
    }
}

/// Work one shard asks of another (`Send`; payloads shared, never copied).
pub enum ShardMessage {
    /// Shard `origin` changed its interest: `changes[i]` (filter, route, present; see
    /// `Route`) has sequence number `first_seq + i`. At most `INTEREST_BATCH_MAX` changes.
    Interest {
        origin: u16,
        first_seq: u64,
        changes: Arc<Vec<(String, Route, bool)>>,
        ack: flume::Sender<()>,
    },
    /// Publishes for this shard, in publish order (at most `MESH_DELIVER_BATCH_MAX`);
    /// `credit`: take one from it once they are applied (see `MqttShard::send_deliveries`).
    Deliver {
        deliveries: Vec<Delivery>,
        credit: flume::Receiver<()>,
    },
    /// Registry: `client_id` now has its session on `shard`; answers the previous shard.
    Claim {
        client_id: String,
        shard: u16,
        reply: flume::Sender<Option<u16>>,
    },
    /// Registry: the session of `client_id` on `shard` ended.
    Release { client_id: String, shard: u16 },
    /// Close `client_id`'s connection here and hand its session over (`None` if there is none
    /// or `clean_start` discards it).
    Takeover {
        client_id: String,
        clean_start: bool,
        /// The shard the session moves to: publishes routed to the old shard until `MoveDone`
        /// are forwarded there.
        to: u16,
        reply: flume::Sender<Option<Session>>,
    },
    /// The moved session of `client_id` is routed from its new shard on every shard: the old
    /// shard drops its routes and stops forwarding.
    MoveDone { client_id: String },
    /// Messages routed to the old shard of a moving session, for its new shard, in order.
    Forwarded {
        client_id: String,
        outgoings: Vec<Outgoing>,
    },
    /// Retained store (shard 0): store or delete.
    Retain {
        message: SharedMessage,
        ack: flume::Sender<()>,
    },
    /// Retained store (shard 0): messages matching `filter`.
    RetainedMatching {
        filter: String,
        reply: flume::Sender<Vec<SharedMessage>>,
    },
    /// This shard's counters, for the node totals in `$SYS`.
    Stats { reply: flume::Sender<StatsSnapshot> },
}

/// A single-threaded wake-up flag: `notify` before or during `notified().await` both count.
#[derive(Default)]
pub struct Notify {
    notified: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// The outbound side of one connection: bytes waiting for its writer. Sessions encode into it
/// from any task of the shard; the connection's writer drains it.
pub struct Link {
    pub level: ProtocolLevel,
    pub max_packet_size: usize,
    pub window: usize,
    outbox: RefCell<BytesMut>,
    aliases: RefCell<TopicAliases>,
    pub notify: Notify,
    /// Set when the server closes the connection (takeover, shutdown, protocol error).
    closing: Cell<bool>,
}

impl Link {
    /// `topic_alias_maximum`: the client's Topic Alias Maximum (0 for 3.1/3.1.1).
    pub fn new(
        level: ProtocolLevel,
        max_packet_size: usize,
        window: usize,
        topic_alias_maximum: u16,
    ) -> Link {
        Link {
            level,
            max_packet_size,
            window,
            outbox: RefCell::new(BytesMut::new()),
            aliases: RefCell::new(TopicAliases::new(topic_alias_maximum)),
            notify: Notify::default(),
            closing: Cell::new(false),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Runs `f` with the outbox; wakes the writer if bytes were added.
    pub fn with_out<R>(&self, f: impl FnOnce(&mut LinkOut<'_>) -> R) -> R {
        let mut buffer = self.outbox.borrow_mut();
        let mut aliases = self.aliases.borrow_mut();
        let before = buffer.len();
        let has_room = before < OUTBOX_MAX_BYTES;
        let mut out = LinkOut {
            level: self.level,
            max_packet_size: self.max_packet_size,
            window: self.window,
            buffer: &mut buffer,
            has_room,
            aliases: Some(&mut *aliases),
        };
        let result = f(&mut out);
        if buffer.len() != before {
            self.notify.notify();
        }
        result
    }

    /// Appends raw packet bytes (acks, CONNACK) and wakes the writer.
    pub fn write(&self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut self.outbox.borrow_mut());
        self.notify.notify();
    }

    /// Everything written so far, leaving the outbox empty.
    pub fn take_outbox(&self) -> BytesMut {
        self.outbox.borrow_mut().split()
    }

    /// Server-side close: a v5 client gets DISCONNECT with `reason` first.
    pub fn close(&self, reason: u8) {
        if self.closing.replace(true) {
            return;
        }
        if self.level.is_v5() {
            codec::encode_disconnect(&mut self.outbox.borrow_mut(), reason);
        }
        self.notify.notify();
    }
}

struct SessionEntry {
    session: Session,
    link: Option<Rc<Link>>,
    generation: u64,
    /// A will waiting for its delay (v5), published unless the client reconnects first.
    pending_will: Option<Will>,
    /// The username of the connection last attached: `[[mqtt.acl]]` subscribe rules are
    /// checked against it for every message delivered (also while offline).
    username: Option<Rc<str>>,
    /// Changed since its image was last written to `__mqtt_state` (persistent sessions only).
    state_dirty: bool,
    /// An image of it may be in `__mqtt_state`: its end must be written (a tombstone).
    persisted: bool,
    /// When its last connection ended (wall-clock ms), for the expiry after a restart.
    offline_since_ms: u64,
}

impl SessionEntry {
    /// Marks a persistent session for the next state write (`persist`).
    fn touch(&mut self) {
        if self.session.expiry_s > 0 {
            self.state_dirty = true;
        }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<Rc<str>, SessionEntry>,
    local: SubscriptionTrie<Rc<str>, Subscription>,
    interest: SubscriptionTrie<u16, ()>,
    /// Shared subscription groups per filter (keyed by group name), on every shard.
    shared: SubscriptionTrie<Arc<str>, SharedGroup>,
    interest_seq_in: Vec<u64>,
    registry: HashMap<String, u16>,
    retained: RetainedStore,
    /// Ended sessions whose image must be deleted from `__mqtt_state` (tombstones); at most
    /// one entry per client id, so bounded by the sessions that ended in one write interval.
    ended_sessions: HashSet<Rc<str>>,
    /// Retained topics changed since the last state write (shard 0); at most one entry per
    /// topic.
    retained_dirty: HashSet<String>,
    /// Sessions that moved to another shard and whose routes are kept here meanwhile (see
    /// `take_session`).
    moved_out: HashMap<Rc<str>, MovedOut>,
    /// Messages for moved sessions, waiting for the forwarder (at most `FORWARD_QUEUE_MAX`).
    forward_queue: VecDeque<(u16, String, Outgoing)>,
    forward_overflow: bool,
    /// Forwarded messages that arrived before their session was installed here.
    early_forwards: HashMap<String, Vec<Outgoing>>,
    /// Next offset of each bridge tailer (Kafka topic, partition) as stored and last moved
    /// here, and whether it moved since the last state write.
    bridge_positions: HashMap<(String, i32), (i64, bool)>,
}

/// A session that moved away: where to, and its subscriptions (the routes kept here).
struct MovedOut {
    to: u16,
    subscriptions: BTreeMap<String, Subscription>,
}

/// The latest state of one (filter, route) not yet broadcast, and who waits for it.
struct PendingChange {
    present: bool,
    /// SUBSCRIBE / UNSUBSCRIBE handlers waiting until every shard applied it.
    waiters: Vec<flume::Sender<()>>,
}

/// Interest changes not yet broadcast, coalesced per (filter, route), in first-change order:
/// only the latest state of each goes out, so the pending set never holds more entries than
/// there are distinct filters and shared members on this shard (each bounded by
/// `MAX_SESSIONS_PER_SHARD` x `MAX_SUBSCRIPTIONS_PER_SESSION`), whatever the churn. A mass
/// disconnect of 100k clients with their own filters is 100k entries, not a queue overflow
/// (a fixed 65,536-entry queue asserted there; `tests/test_mqtt_mass_disconnect.py`).
#[derive(Default)]
struct PendingInterest {
    order: std::collections::VecDeque<(String, Route)>,
    latest: HashMap<(String, Route), PendingChange>,
}

/// Counters for `$SYS` and metrics.
#[derive(Default)]
pub struct Stats {
    pub connections: Cell<u64>,
    pub messages_received: Cell<u64>,
    pub messages_sent: Cell<u64>,
    pub bytes_received: Cell<u64>,
    pub bytes_sent: Cell<u64>,
    /// MQTT publishes a bridge rule matched that could not be appended to Kafka.
    pub bridge_append_failures: Cell<u64>,
    /// Records written to `__mqtt_state` (see `persist`).
    pub state_records_written: Cell<u64>,
    /// MQTT publishes a bridge rule appended to Kafka.
    pub bridged_to_kafka: Cell<u64>,
    /// Kafka records a bridge tailer routed to MQTT subscribers.
    pub bridged_from_kafka: Cell<u64>,
}

/// The counters of one shard, or their sum over the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl StatsSnapshot {
    fn add(&mut self, other: &StatsSnapshot) {
        self.connections += other.connections;
        self.messages_received += other.messages_received;
        self.messages_sent += other.messages_sent;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
    }
}

fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get().wrapping_add(by));
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections: self.connections.get(),
            messages_received: self.messages_received.get(),
            messages_sent: self.messages_sent.get(),
            bytes_received: self.bytes_received.get(),
            bytes_sent: self.bytes_sent.get(),
        }
    }

    pub fn add_received(&self, bytes: usize) {
        bump(&self.bytes_received, bytes as u64);
    }
    pub fn add_sent(&self, bytes: usize) {
        bump(&self.bytes_sent, bytes as u64);
    }
}

/// What `connect` found.
pub struct Connected {
    pub session_present: bool,
    pub generation: u64,
}

/// The MQTT state of one shard.
pub struct MqttShard<K: MqttKernel> {
    pub kernel: K,
    pub config: MqttConfig,
    state: RefCell<State>,
    interest_seq_out: Cell<u64>,
    pending_interest: RefCell<PendingInterest>,
    interest_wakeup: Notify,
    next_message: Cell<u64>,
    next_generation: Cell<u64>,
    pub stats: Stats,
    /// Per peer shard: the credits of `Deliver` batches sent there and not yet applied (a
    /// bounded channel of `MESH_DELIVER_BATCHES_IN_FLIGHT`; the peer takes one back per batch).
    deliver_credits: Vec<(flume::Sender<()>, flume::Receiver<()>)>,
    /// Successful password checks of this shard (see `auth`).
    pub verified_logins: VerifiedCache,
    /// Password checks running or queued on this shard (at most
    /// `auth::MAX_PENDING_PASSWORD_CHECKS`).
    pub pending_password_checks: Cell<usize>,
    /// One state write at a time (`write_state`).
    state_write_turn: Turn,
    /// Wakes the forwarder (`run_forwarder`).
    forward_wakeup: Notify,
}

/// A single-threaded lock for one task at a time across awaits. `Notify` keeps one waker, so
/// it serves two contenders: the periodic state writer and the final write at shutdown.
#[derive(Default)]
struct Turn {
    busy: Cell<bool>,
    released: Notify,
}

/// Held while a task has the turn.
struct TurnGuard<'a>(&'a Turn);

impl Turn {
    async fn take(&self) -> TurnGuard<'_> {
        while self.busy.replace(true) {
            self.released.notified().await;
        }
        TurnGuard(self)
    }
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
        self.0.released.notify();
    }
}

/// The shard that owns `client_id` in the registry.
pub fn registry_shard(client_id: &str, shard_count: u16) -> u16 {
    let mut hasher = DefaultHasher::new();
    client_id.hash(&mut hasher);
    (hasher.finish() % u64::from(shard_count.max(1))) as u16
}

impl<K: MqttKernel> MqttShard<K> {
    pub fn new(kernel: K, config: MqttConfig) -> Rc<MqttShard<K>> {
        let shard_count = usize::from(kernel.shard_count());
        let shard = Rc::new(MqttShard {
            kernel,
            config,
            state: RefCell::new(State {
                interest_seq_in: vec![0; shard_count],
                ..State::default()
            }),
            interest_seq_out: Cell::new(0),
            pending_interest: RefCell::new(PendingInterest::default()),
            interest_wakeup: Notify::default(),
            next_message: Cell::new(0),
            next_generation: Cell::new(0),
            stats: Stats::default(),
            deliver_credits: (0..shard_count)
                .map(|_| flume::bounded(MESH_DELIVER_BATCHES_IN_FLIGHT))
                .collect(),
            verified_logins: VerifiedCache::default(),
            pending_password_checks: Cell::new(0),
            state_write_turn: Turn::default(),
            forward_wakeup: Notify::default(),
        });
        let broadcaster = shard.clone();
        shard.kernel.spawn(Box::pin(
            async move { broadcaster.broadcast_interest().await },
        ));
        let forwarder = shard.clone();
        shard
            .kernel
            .spawn(Box::pin(async move { forwarder.run_forwarder().await }));
        shard
    }

    pub fn shard_id(&self) -> u16 {
        self.kernel.shard_id()
    }

    /// A node-unique message id.
    pub fn next_message_id(&self) -> u64 {
        let counter = self.next_message.get().wrapping_add(1) & ((1 << 48) - 1);
        self.next_message.set(counter);
        (u64::from(self.shard_id()) << 48) | counter
    }

    fn peers(&self) -> impl Iterator<Item = u16> + '_ {
        let me = self.shard_id();
        (0..self.kernel.shard_count()).filter(move |s| *s != me)
    }

    pub fn session_count(&self) -> usize {
        self.state.borrow().sessions.len()
    }

    // ------------------------------------------------------------ interest broadcast

    /// The one task that sends this shard's interest changes, in sequence order: the oldest
    /// pending (filter, route) changes in their latest state, up to `INTEREST_BATCH_MAX` in
    /// one mesh message per peer, then the next batch once every peer acked it.
    async fn broadcast_interest(self: Rc<Self>) {
        let peers: Vec<u16> = self.peers().collect();
        loop {
            // The oldest pending changes, each in its latest state, as one batch.
            let mut changes = Vec::new();
            let mut waiters = Vec::new();
            {
                let mut pending = self.pending_interest.borrow_mut();
                while changes.len() < INTEREST_BATCH_MAX {
                    let Some(key) = pending.order.pop_front() else {
                        break;
                    };
                    let Some(change) = pending.latest.remove(&key) else {
                        unreachable!("every key in the pending order has its latest state");
                    };
                    changes.push((key.0, key.1, change.present));
                    waiters.extend(change.waiters);
                }
            }
            if changes.is_empty() {
                self.interest_wakeup.notified().await;
                continue;
            }
            let first_seq = self.interest_seq_out.get() + 1;
            self.interest_seq_out
                .set(first_seq + changes.len() as u64 - 1);
            let changes = Arc::new(changes);
            let (ack, acks) = flume::bounded(peers.len().max(1));
            let mut sent = 0;
            for peer in &peers {
                let message = ShardMessage::Interest {
                    origin: self.shard_id(),
                    first_seq,
                    changes: changes.clone(),
                    ack: ack.clone(),
                };
                if self.kernel.send(*peer, message).await.is_ok() {
                    sent += 1;
                }
            }
            for _ in 0..sent {
                if acks.recv_async().await.is_err() {
                    break;
                }
            }
            for waiter in waiters {
                let _ = waiter.try_send(());
            }
        }
    }

    /// Applies an interest change here and queues it for the other shards (coalesced with a
    /// pending change of the same filter and route). The returned waiter completes once every
    /// shard has applied it (or a later state of it).
    fn change_interest(
        &self,
        state: &mut State,
        filter: &str,
        route: Route,
        present: bool,
    ) -> Option<flume::Receiver<()>> {
        apply_interest(state, self.shard_id(), filter, &route, present);
        if self.kernel.shard_count() <= 1 {
            return None;
        }
        let (done, waiter) = flume::bounded(1);
        let mut pending = self.pending_interest.borrow_mut();
        let key = (filter.to_string(), route);
        if let Some(change) = pending.latest.get_mut(&key) {
            change.present = present;
            change.waiters.push(done);
        } else {
            pending.order.push_back(key.clone());
            pending.latest.insert(
                key,
                PendingChange {
                    present,
                    waiters: vec![done],
                },
            );
        }
        debug_assert_eq!(pending.order.len(), pending.latest.len());
        drop(pending);
        self.interest_wakeup.notify();
        Some(waiter)
    }

    fn apply_remote_interest(
        &self,
        origin: u16,
        seq: u64,
        filter: &str,
        route: &Route,
        present: bool,
    ) {
        let mut state = self.state.borrow_mut();
        let slot = &mut state.interest_seq_in[usize::from(origin)];
        assert_eq!(
            seq,
            *slot + 1,
            "interest broadcast from shard {origin} out of order"
        );
        *slot = seq;
        apply_interest(&mut state, origin, filter, route, present);
    }

    // ------------------------------------------------------------ subscriptions

    /// Adds `client`'s subscription to `filter`. Returns whether it is new, and a waiter that
    /// completes once every shard routes this filter here.
    pub fn subscribe(
        &self,
        client: &Rc<str>,
        filter: &str,
        subscription: Subscription,
    ) -> (bool, Option<flume::Receiver<()>>) {
        let mut state = self.state.borrow_mut();
        let Some(entry) = state.sessions.get_mut(client) else {
            return (false, None);
        };
        entry.touch();
        let is_new = entry
            .session
            .subscriptions
            .insert(filter.to_string(), subscription.clone())
            .is_none();
        let waiter = self.add_route(&mut state, client, filter, subscription, is_new);
        (is_new, waiter)
    }

    /// Routes `filter` to `client` here (a shared subscription: makes it a group member on
    /// every shard). Returns a waiter when other shards must learn of it first.
    fn add_route(
        &self,
        state: &mut State,
        client: &Rc<str>,
        filter: &str,
        subscription: Subscription,
        is_new: bool,
    ) -> Option<flume::Receiver<()>> {
        if let FilterKind::Shared { group, filter } = shared::parse(filter) {
            let route = Route::Member {
                group: Arc::from(group),
                client: Arc::from(&**client),
            };
            return is_new
                .then(|| self.change_interest(state, filter, route, true))
                .flatten();
        }
        state.local.insert(filter, client.clone(), subscription);
        if is_new && state.local.subscribers_of(filter) == 1 {
            self.change_interest(state, filter, Route::Shard, true)
        } else {
            None
        }
    }

    /// Removes `client`'s subscription to `filter`. Returns whether it existed, and a waiter
    /// that completes once every shard stopped routing it here (UNSUBACK waits for it, so no
    /// shard picks a shared subscription member after its UNSUBACK).
    pub fn unsubscribe(
        &self,
        client: &Rc<str>,
        filter: &str,
    ) -> (bool, Option<flume::Receiver<()>>) {
        let mut state = self.state.borrow_mut();
        let Some(entry) = state.sessions.get_mut(client) else {
            return (false, None);
        };
        entry.touch();
        if entry.session.subscriptions.remove(filter).is_none() {
            return (false, None);
        }
        (true, self.remove_route(&mut state, client, filter))
    }

    /// Undoes `add_route` for a subscription the session had. A session that ends does not
    /// wait for the waiter: a stale route only costs a wasted hop (or, for a picked shared
    /// subscription member, that message).
    fn remove_route(
        &self,
        state: &mut State,
        client: &Rc<str>,
        filter: &str,
    ) -> Option<flume::Receiver<()>> {
        if let FilterKind::Shared { group, filter } = shared::parse(filter) {
            let route = Route::Member {
                group: Arc::from(group),
                client: Arc::from(&**client),
            };
            return self.change_interest(state, filter, route, false);
        }
        if state.local.remove(filter, client).is_some() && state.local.subscribers_of(filter) == 0 {
            return self.change_interest(state, filter, Route::Shard, false);
        }
        None
    }

    fn drop_subscriptions(&self, state: &mut State, client: &Rc<str>, session: &Session) {
        for filter in session.subscriptions.keys() {
            self.remove_route(state, client, filter);
        }
    }

    pub fn subscription_count(&self, client: &str) -> usize {
        self.state
            .borrow()
            .sessions
            .get(client)
            .map_or(0, |e| e.session.subscriptions.len())
    }

    pub fn is_subscribed(&self, client: &str, filter: &str) -> bool {
        self.state
            .borrow()
            .sessions
            .get(client)
            .is_some_and(|e| e.session.subscriptions.contains_key(filter))
    }

    // ------------------------------------------------------------ bridge

    /// The Kafka record for `message` if a bridge rule matches its topic: the rule's topic,
    /// the partition of the MQTT topic (key hash) and the encoded batch.
    pub fn bridge_target(&self, message: &Message) -> Option<Result<TopicPartition, KernelError>> {
        let rule = self.config.bridge.for_mqtt_topic(&message.topic)?;
        let Some(partition_count) = self.kernel.partition_count(&rule.topic) else {
            return Some(Err(KernelError::UnknownTopicOrPartition));
        };
        Some(Ok(TopicPartition {
            topic: rule.topic.clone(),
            partition: partition_for_key(message.topic.as_bytes(), partition_count),
        }))
    }

    /// Appends bridged publishes (targets from `bridge_target`, in publish order) with one
    /// kernel call: the publishes of one partition go in one record batch, in order (a batch is
    /// cut at `BRIDGE_BATCH_MAX_BYTES` of payload, so one oversized publish fails alone).
    /// `durable` (some publish has QoS 1 or 2) waits as acks=-1 does, otherwise for the leader
    /// write (acks=1, which keeps order). Answers one result per input, in order (a batch's
    /// result for each of its publishes). Failures are counted and logged at the 1st, 2nd, 4th,
    /// 8th... so a full disk does not flood the log.
    pub async fn append_to_kafka(
        &self,
        inputs: Vec<Result<(TopicPartition, SharedMessage), KernelError>>,
        durable: bool,
    ) -> Vec<Result<(), KernelError>> {
        if inputs.is_empty() {
            return Vec::new();
        }
        let mut results: Vec<Result<(), KernelError>> = Vec::with_capacity(inputs.len());
        // Per batch: its partition, its publishes' slots in `results`, its payload bytes.
        let mut batches: Vec<(TopicPartition, Vec<usize>, usize)> = Vec::new();
        let mut messages: Vec<Option<SharedMessage>> = Vec::with_capacity(inputs.len());
        for (slot, input) in inputs.into_iter().enumerate() {
            let (partition, message) = match input {
                Ok(target) => target,
                Err(e) => {
                    results.push(Err(e));
                    messages.push(None);
                    continue;
                }
            };
            results.push(Ok(()));
            let size_bytes = message.payload.len() + message.topic.len();
            let open = batches.iter_mut().rev().find(|(p, _, _)| *p == partition);
            match open {
                Some((_, slots, bytes)) if *bytes + size_bytes <= BRIDGE_BATCH_MAX_BYTES => {
                    slots.push(slot);
                    *bytes += size_bytes;
                }
                _ => batches.push((partition, vec![slot], size_bytes)),
            }
            messages.push(Some(message));
        }
        let now_ms = i64::try_from(self.kernel.now_ms()).unwrap_or(i64::MAX);
        let mut appends = Vec::with_capacity(batches.len());
        let mut appended_slots = Vec::with_capacity(batches.len());
        for (partition, slots, _) in batches {
            let batch: Vec<&Message> = slots
                .iter()
                .filter_map(|slot| messages[*slot].as_deref())
                .collect();
            match bridge::encode_messages(&batch, now_ms) {
                Ok(records) => {
                    appends.push((partition, records));
                    appended_slots.push(slots);
                }
                Err(e) => {
                    for slot in slots {
                        results[slot] = Err(KernelError::CorruptMessage(e.clone()));
                    }
                }
            }
        }
        if !appends.is_empty() {
            let appended = self.kernel.append(appends, durable).await;
            for (slots, result) in appended_slots.iter().zip(
                appended
                    .into_iter()
                    .chain(std::iter::repeat(Err(KernelError::ShuttingDown))),
            ) {
                for slot in slots {
                    results[*slot] = result.clone();
                }
            }
        }
        let appended = results.iter().filter(|r| r.is_ok()).count();
        bump(&self.stats.bridged_to_kafka, appended as u64);
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            let failures = self.stats.bridge_append_failures.get().wrapping_add(1);
            self.stats.bridge_append_failures.set(failures);
            if failures.is_power_of_two() {
                warn!(failures, error = %error, "bridge: cannot append an MQTT publish to Kafka");
            }
        }
        results
    }

    // ------------------------------------------------------------ routing

    /// Routes `message` to every matching subscriber on every shard and to one member of each
    /// matching shared subscription group; stores it first if it is retained. Returns whether
    /// anyone subscribes.
    pub async fn publish(self: &Rc<Self>, message: SharedMessage) -> Result<bool, MeshClosed> {
        let mut forwards = Forwards::default();
        let matched = self.publish_batched(message, &mut forwards).await?;
        self.send_forwards(&mut forwards).await?;
        Ok(matched)
    }

    /// `publish`, except that the deliveries for other shards are added to `forwards` (a full
    /// batch is sent at once); the caller sends the rest with `send_forwards`.
    pub async fn publish_batched(
        self: &Rc<Self>,
        message: SharedMessage,
        forwards: &mut Forwards,
    ) -> Result<bool, MeshClosed> {
        bump(&self.stats.messages_received, 1);
        if message.retain {
            self.retain(message.clone()).await?;
        }
        let plan = self.plan_delivery(&message.topic);
        let matched = !plan.is_empty();
        let me = self.shard_id();
        for (shard, to_subscribers, shared) in plan {
            if shard == me {
                if to_subscribers {
                    self.deliver_local(&message);
                }
                self.deliver_shared(&message, &shared);
                continue;
            }
            let delivery = Delivery {
                message: message.clone(),
                to_subscribers,
                shared,
            };
            if let Some(deliveries) = forwards.push(shard, delivery) {
                self.send_deliveries(shard, deliveries).await?;
            }
        }
        Ok(matched)
    }

    /// Sends the deliveries collected in `forwards`, one mesh message per shard, leaving it
    /// empty.
    pub async fn send_forwards(&self, forwards: &mut Forwards) -> Result<(), MeshClosed> {
        for (shard, deliveries) in forwards.batches.drain(..) {
            if deliveries.is_empty() {
                continue;
            }
            self.send_deliveries(shard, deliveries).await?;
        }
        Ok(())
    }

    /// Sends one batch to `shard` once fewer than `MESH_DELIVER_BATCHES_IN_FLIGHT` batches sent
    /// there are still unapplied (waits otherwise).
    async fn send_deliveries(
        &self,
        shard: u16,
        deliveries: Vec<Delivery>,
    ) -> Result<(), MeshClosed> {
        let Some((credits, credit)) = self.deliver_credits.get(usize::from(shard)) else {
            unreachable!("a delivery plan names existing shards only");
        };
        credits.send_async(()).await.map_err(|_| MeshClosed)?;
        let deliver = ShardMessage::Deliver {
            deliveries,
            credit: credit.clone(),
        };
        self.kernel.send(shard, deliver).await
    }

    /// Which shards get a message on `topic`: (shard, has matching subscribers, picked shared
    /// subscription members there). One entry per shard, so one hop per shard.
    fn plan_delivery(&self, topic: &str) -> Vec<(u16, bool, Vec<SharedTarget>)> {
        let mut plan: Vec<(u16, bool, Vec<SharedTarget>)> = Vec::new();
        let state = self.state.borrow();
        state.interest.for_each_match(topic, |shard, ()| {
            match plan.iter_mut().find(|(s, _, _)| s == shard) {
                Some(entry) => entry.1 = true,
                None => plan.push((*shard, true, Vec::new())),
            }
        });
        state.shared.for_each_match(topic, |_, group| {
            let Some((shard, client)) = group.pick() else {
                return;
            };
            let target = SharedTarget {
                client: client.clone(),
                share_filter: group.share_filter.clone(),
            };
            match plan.iter_mut().find(|(s, _, _)| s == shard) {
                Some(entry) => entry.2.push(target),
                None => plan.push((*shard, false, vec![target])),
            }
        });
        plan
    }

    /// Hands `message` to the shared subscription members the publisher's shard picked here,
    /// with the options of their shared subscription.
    pub fn deliver_shared(&self, message: &SharedMessage, targets: &[SharedTarget]) {
        if targets.is_empty() {
            return;
        }
        let now = self.kernel.now_ms();
        let mut state = self.state.borrow_mut();
        for target in targets {
            let Some(entry) = state.sessions.get_mut(&*target.client) else {
                let moved = state.moved_out.get(&*target.client).and_then(|m| {
                    let sub = m.subscriptions.get(&*target.share_filter)?;
                    Some((m.to, sub.clone()))
                });
                match moved {
                    Some((to, sub)) => {
                        let outgoing = outgoing_for(message, &sub);
                        self.forward(&mut state, to, &target.client, outgoing);
                    }
                    None => debug!(client = %target.client, "shared subscription member gone"),
                }
                continue;
            };
            let Some(subscription) = entry.session.subscriptions.get(&*target.share_filter) else {
                debug!(client = %target.client, "shared subscription gone");
                continue;
            };
            if !self.may_receive(&target.client, entry, &message.topic) {
                continue;
            }
            let outgoing = outgoing_for(message, subscription);
            if deliver_to_entry(entry, outgoing, now) == DeliverOutcome::Sent {
                bump(&self.stats.messages_sent, 1);
            }
        }
    }

    /// Hands `message` to this shard's matching sessions: one copy per session at the highest
    /// granted QoS of its matching subscriptions, with all their subscription identifiers.
    pub fn deliver_local(&self, message: &SharedMessage) {
        let now = self.kernel.now_ms();
        let mut state = self.state.borrow_mut();
        let State {
            local, sessions, ..
        } = &mut *state;
        let mut targets: Vec<(Rc<str>, Outgoing)> = Vec::new();
        local.for_each_match(&message.topic, |client, sub| {
            if sub.no_local && message.publisher.as_deref() == Some(&**client) {
                return;
            }
            targets.push((client.clone(), outgoing_for(message, sub)));
        });
        if targets.len() > 1 {
            targets.sort_by(|a, b| Rc::as_ptr(&a.0).cast::<u8>().cmp(&Rc::as_ptr(&b.0).cast()));
            targets.dedup_by(|later, kept| {
                if !Rc::ptr_eq(&later.0, &kept.0) {
                    return false;
                }
                kept.1.qos = kept.1.qos.max(later.1.qos);
                kept.1.retain |= later.1.retain;
                kept.1
                    .subscription_ids
                    .append(&mut later.1.subscription_ids);
                true
            });
        }
        let mut moved = Vec::new();
        for (client, outgoing) in targets {
            if let Some(entry) = sessions.get_mut(&client) {
                if !self.may_receive(&client, entry, &message.topic) {
                    continue;
                }
                if deliver_to_entry(entry, outgoing, now) == DeliverOutcome::Sent {
                    bump(&self.stats.messages_sent, 1);
                }
            } else {
                moved.push((client, outgoing));
            }
        }
        for (client, outgoing) in moved {
            if let Some(to) = state.moved_out.get(&client).map(|m| m.to) {
                self.forward(&mut state, to, &client, outgoing);
            }
        }
    }

    /// Delivers one message to one local session (retained messages on subscribe).
    /// Whether the `[[mqtt.acl]]` subscribe rules let `client` receive a message on `topic`:
    /// a subscription a deny rule does not fully cover (`#` under a deny on `secret/#`) is
    /// accepted, and this check keeps the denied topics out of it, message by message.
    fn may_receive(&self, client: &str, entry: &SessionEntry, topic: &str) -> bool {
        let acl = &self.config.acl;
        if acl.is_empty() {
            return true;
        }
        let actor = Actor {
            client_id: client,
            username: entry.username.as_deref(),
        };
        acl.allows(actor, Action::Subscribe, topic)
    }

    pub fn deliver_to(&self, client: &str, outgoing: Outgoing) {
        let now = self.kernel.now_ms();
        let mut state = self.state.borrow_mut();
        if let Some(entry) = state.sessions.get_mut(client) {
            if deliver_to_entry(entry, outgoing, now) == DeliverOutcome::Sent {
                bump(&self.stats.messages_sent, 1);
            }
        }
    }

    // ------------------------------------------------------------ retained

    async fn retain(&self, message: SharedMessage) -> Result<(), MeshClosed> {
        if self.shard_id() == 0 {
            self.retain_here(message);
            return Ok(());
        }
        let (ack, done) = flume::bounded(1);
        self.kernel
            .send(0, ShardMessage::Retain { message, ack })
            .await?;
        done.recv_async().await.map_err(|_| MeshClosed)
    }

    fn retain_here(&self, message: SharedMessage) {
        let topic = message.topic.clone();
        let mut state = self.state.borrow_mut();
        if state.retained.set(message) == RetainOutcome::Full {
            warn!(topic = %topic, "retained store full; message not retained");
            return;
        }
        state.retained_dirty.insert(topic);
    }

    /// Retained messages matching `filter` (from shard 0's store).
    pub async fn retained_matching(&self, filter: &str) -> Result<Vec<SharedMessage>, MeshClosed> {
        if self.shard_id() == 0 {
            let now = self.kernel.now_ms();
            return Ok(self.state.borrow_mut().retained.matching(filter, now));
        }
        let (reply, answer) = flume::bounded(1);
        self.kernel
            .send(
                0,
                ShardMessage::RetainedMatching {
                    filter: filter.to_string(),
                    reply,
                },
            )
            .await?;
        answer.recv_async().await.map_err(|_| MeshClosed)
    }

    // ------------------------------------------------------------ sessions

    /// Claims `client_id` for this shard, takes over any existing connection and session
    /// (here or on another shard), and installs the session with no connection attached yet.
    pub async fn connect(
        self: &Rc<Self>,
        client_id: &Rc<str>,
        clean_start: bool,
        expiry_s: u32,
    ) -> Result<Connected, MeshClosed> {
        let me = self.shard_id();
        let owner = registry_shard(client_id, self.kernel.shard_count());
        let previous = if owner == me {
            self.state
                .borrow_mut()
                .registry
                .insert(client_id.to_string(), me)
        } else {
            let (reply, answer) = flume::bounded(1);
            let claim = ShardMessage::Claim {
                client_id: client_id.to_string(),
                shard: me,
                reply,
            };
            self.kernel.send(owner, claim).await?;
            answer.recv_async().await.map_err(|_| MeshClosed)?
        };
        let mut moved = None;
        if let Some(previous) = previous.filter(|p| *p != me) {
            let (reply, answer) = flume::bounded(1);
            let takeover = ShardMessage::Takeover {
                client_id: client_id.to_string(),
                clean_start,
                to: me,
                reply,
            };
            self.kernel.send(previous, takeover).await?;
            moved = answer.recv_async().await.map_err(|_| MeshClosed)?;
            debug!(client = %client_id, from = previous, moved = moved.is_some(), "session takeover");
        }
        let generation = self.next_generation.get() + 1;
        self.next_generation.set(generation);
        let mut waiters = Vec::new();
        let session_present;
        let moved_from = previous.filter(|p| *p != me && moved.is_some());
        {
            let mut state = self.state.borrow_mut();
            // Back on a shard it moved away from: the routes kept here are replaced below.
            if let Some(stale) = state.moved_out.remove(client_id) {
                for filter in stale.subscriptions.keys() {
                    self.remove_route(&mut state, client_id, filter);
                }
            }
            let existing = state.sessions.remove(client_id);
            // A session of this id existed (here or elsewhere): an image of it may be stored,
            // and this shard now writes that key (see `persist`).
            let persisted = previous.is_some() || existing.is_some();
            let mut session = None;
            if let Some(old) = existing {
                if let Some(link) = &old.link {
                    link.close(codec::reason::SESSION_TAKEN_OVER);
                }
                if clean_start {
                    self.drop_subscriptions(&mut state, client_id, &old.session);
                } else {
                    session = Some(old.session);
                }
            }
            if let Some(mut moved) = moved.filter(|_| !clean_start) {
                for (filter, subscription) in &moved.subscriptions {
                    let subscription = subscription.clone();
                    waiters.extend(self.add_route(
                        &mut state,
                        client_id,
                        filter,
                        subscription,
                        true,
                    ));
                }
                moved.begin_dedup();
                session = Some(moved);
            }
            session_present = session.is_some();
            let mut session = session.unwrap_or_default();
            session.expiry_s = expiry_s;
            session.queue_limit = QueueLimit(self.config.max_queued_messages);
            if state.sessions.len() >= MAX_SESSIONS_PER_SHARD {
                warn!(
                    limit = MAX_SESSIONS_PER_SHARD,
                    "session limit reached on this shard"
                );
            }
            if persisted && expiry_s == 0 {
                state.ended_sessions.insert(client_id.clone());
            }
            let mut entry = SessionEntry {
                session,
                link: None,
                generation,
                pending_will: None,
                username: None,
                state_dirty: false,
                persisted,
                offline_since_ms: 0,
            };
            entry.touch();
            let early = state.early_forwards.remove(&**client_id);
            state.sessions.insert(client_id.clone(), entry);
            drop(state);
            if let Some(early) = early {
                self.deliver_forwarded(client_id, early);
            }
        }
        for waiter in waiters {
            let _ = waiter.recv_async().await;
        }
        if let Some(from) = moved_from {
            // Routed from here on every shard: the old shard may stop forwarding.
            let done = ShardMessage::MoveDone {
                client_id: client_id.to_string(),
            };
            self.kernel.send(from, done).await?;
        }
        if session_present {
            self.schedule_end_dedup(client_id.clone(), generation);
        }
        Ok(Connected {
            session_present,
            generation,
        })
    }

    fn schedule_end_dedup(self: &Rc<Self>, client: Rc<str>, generation: u64) {
        let shard = self.clone();
        let sleep = self
            .kernel
            .sleep(Duration::from_millis(MIGRATION_DEDUP_WINDOW_MS));
        self.kernel.spawn(Box::pin(async move {
            sleep.await;
            let mut state = shard.state.borrow_mut();
            if let Some(entry) = state.sessions.get_mut(&client) {
                if entry.generation == generation {
                    entry.session.end_dedup();
                }
            }
        }));
    }

    /// Attaches the connection (after its CONNACK is in the outbox) and sends what the session
    /// has pending: unacknowledged messages again, then the queue.
    pub fn attach(
        &self,
        client: &str,
        generation: u64,
        link: &Rc<Link>,
        username: Option<&str>,
    ) -> bool {
        let now = self.kernel.now_ms();
        let mut state = self.state.borrow_mut();
        let Some(entry) = state.sessions.get_mut(client) else {
            return false;
        };
        if entry.generation != generation {
            return false;
        }
        entry.link = Some(link.clone());
        entry.pending_will = None;
        entry.username = username.map(Rc::from);
        entry.touch();
        let session = &mut entry.session;
        link.with_out(|out| session.resend(out, now));
        true
    }

    /// Runs `f` on the session of `client` (if this connection still owns it) with its link.
    pub fn with_session<R>(
        &self,
        client: &str,
        generation: u64,
        f: impl FnOnce(&mut Session, Option<&mut LinkOut<'_>>) -> R,
    ) -> Option<R> {
        let mut state = self.state.borrow_mut();
        let entry = state.sessions.get_mut(client)?;
        if entry.generation != generation {
            return None;
        }
        entry.touch();
        let session = &mut entry.session;
        Some(match &entry.link {
            Some(link) if !link.is_closing() => link.with_out(|out| f(session, Some(out))),
            _ => f(session, None),
        })
    }

    /// The connection of `client` ended. `will` is published unless the client disconnected
    /// normally; with a v5 will delay it waits, and is dropped if the client reconnects first.
    pub fn disconnected(
        self: &Rc<Self>,
        client: &Rc<str>,
        generation: u64,
        will: Option<Will>,
        session_expiry_s: u32,
    ) {
        let mut state = self.state.borrow_mut();
        let current = state
            .sessions
            .get(client)
            .is_some_and(|e| e.generation == generation);
        if !current {
            // Taken over: the new connection cancels a delayed will, not an immediate one.
            drop(state);
            if let Some(will) = will.filter(|w| w.delay_s == 0) {
                self.publish_will(will, client);
            }
            return;
        }
        let Some(entry) = state.sessions.get_mut(client) else {
            return;
        };
        entry.link = None;
        entry.session.expiry_s = session_expiry_s;
        entry.offline_since_ms = self.kernel.now_ms();
        entry.touch();
        if session_expiry_s == 0 {
            let entry = state.sessions.remove(client);
            if let Some(entry) = entry {
                self.drop_subscriptions(&mut state, client, &entry.session);
                if entry.persisted {
                    state.ended_sessions.insert(client.clone());
                }
            }
            drop(state);
            self.release(client);
            if let Some(will) = will {
                self.publish_will(will, client);
            }
            return;
        }
        if let Some(will) = will {
            if will.delay_s == 0 {
                drop(state);
                self.publish_will(will, client);
            } else {
                let delay_s = will.delay_s.min(session_expiry_s);
                entry.pending_will = Some(will);
                drop(state);
                self.schedule_will(client.clone(), generation, delay_s);
            }
        } else {
            drop(state);
        }
        if session_expiry_s != SESSION_NEVER_EXPIRES_S {
            self.schedule_expiry(client.clone(), generation, session_expiry_s);
        }
    }

    fn schedule_will(self: &Rc<Self>, client: Rc<str>, generation: u64, delay_s: u32) {
        let shard = self.clone();
        let sleep = self.kernel.sleep(Duration::from_secs(u64::from(delay_s)));
        self.kernel.spawn(Box::pin(async move {
            sleep.await;
            let will = {
                let mut state = shard.state.borrow_mut();
                match state.sessions.get_mut(&client) {
                    Some(entry) if entry.generation == generation && entry.link.is_none() => {
                        entry.pending_will.take()
                    }
                    _ => None,
                }
            };
            if let Some(will) = will {
                shard.publish_will(will, &client);
            }
        }));
    }

    fn schedule_expiry(self: &Rc<Self>, client: Rc<str>, generation: u64, expiry_s: u32) {
        let shard = self.clone();
        let sleep = self.kernel.sleep(Duration::from_secs(u64::from(expiry_s)));
        self.kernel.spawn(Box::pin(async move {
            sleep.await;
            let will = {
                let mut state = shard.state.borrow_mut();
                let expired = state
                    .sessions
                    .get(&client)
                    .is_some_and(|e| e.generation == generation && e.link.is_none());
                if !expired {
                    return;
                }
                let Some(entry) = state.sessions.remove(&client) else {
                    return;
                };
                shard.drop_subscriptions(&mut state, &client, &entry.session);
                if entry.persisted {
                    state.ended_sessions.insert(client.clone());
                }
                entry.pending_will
            };
            debug!(client = %client, "session expired");
            shard.release(&client);
            if let Some(will) = will {
                shard.publish_will(will, &client);
            }
        }));
    }

    fn release(self: &Rc<Self>, client: &str) {
        let me = self.shard_id();
        let owner = registry_shard(client, self.kernel.shard_count());
        if owner == me {
            let mut state = self.state.borrow_mut();
            if state.registry.get(client) == Some(&me) {
                state.registry.remove(client);
            }
            return;
        }
        let shard = self.clone();
        let message = ShardMessage::Release {
            client_id: client.to_string(),
            shard: me,
        };
        self.kernel.spawn(Box::pin(async move {
            let _ = shard.kernel.send(owner, message).await;
        }));
    }

    fn publish_will(self: &Rc<Self>, will: Will, client: &str) {
        let now = self.kernel.now_ms();
        let message = Arc::new(Message {
            id: self.next_message_id(),
            expires_at_ms: will
                .properties
                .message_expiry_s
                .map(|s| now + u64::from(s) * 1000),
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: will.properties,
            publisher: Some(Arc::from(client)),
        });
        let shard = self.clone();
        self.kernel.spawn(Box::pin(async move {
            // A will a bridge rule matches is stored in Kafka first, like any publish; if that
            // fails it is not routed either (the failure is logged by `append_to_kafka`).
            if let Some(target) = shard.bridge_target(&message) {
                let durable = message.qos > 0;
                let input = target.map(|partition| (partition, message.clone()));
                let appended = shard.append_to_kafka(vec![input], durable).await;
                if appended.iter().any(Result::is_err) {
                    return;
                }
            }
            if shard.publish(message).await.is_err() {
                debug!("will not published: shutting down");
            }
        }));
    }

    /// The node's counters: this shard's plus every other shard's.
    pub async fn node_stats(&self) -> Result<StatsSnapshot, MeshClosed> {
        let mut total = self.stats.snapshot();
        let peers: Vec<u16> = self.peers().collect();
        let (reply, answers) = flume::bounded(peers.len().max(1));
        for peer in &peers {
            let ask = ShardMessage::Stats {
                reply: reply.clone(),
            };
            self.kernel.send(*peer, ask).await?;
        }
        for _ in &peers {
            let snapshot = answers.recv_async().await.map_err(|_| MeshClosed)?;
            total.add(&snapshot);
        }
        Ok(total)
    }

    /// Publishes the `$SYS/broker/...` topics (retained) now and every `SYS_INTERVAL_MS`,
    /// until shutdown. Run on one shard only (shard 0), which sums every shard's counters.
    pub fn spawn_sys_publisher(self: &Rc<Self>, version: String) {
        let shard = self.clone();
        let started_ms = self.kernel.now_ms();
        self.kernel.spawn(Box::pin(async move {
            while shard.kernel.accepting() {
                let Ok(stats) = shard.node_stats().await else {
                    return;
                };
                let uptime_s = shard.kernel.now_ms().saturating_sub(started_ms) / 1000;
                let topics = [
                    ("version", format!("rmq-node {version}")),
                    ("uptime", format!("{uptime_s} seconds")),
                    ("clients/connected", stats.connections.to_string()),
                    ("messages/received", stats.messages_received.to_string()),
                    ("messages/sent", stats.messages_sent.to_string()),
                    ("bytes/received", stats.bytes_received.to_string()),
                    ("bytes/sent", stats.bytes_sent.to_string()),
                ];
                for (name, value) in topics {
                    let message = Arc::new(Message {
                        id: shard.next_message_id(),
                        topic: format!("$SYS/broker/{name}"),
                        payload: bytes::Bytes::from(value),
                        qos: 0,
                        retain: true,
                        properties: codec::MessageProperties::default(),
                        publisher: None,
                        expires_at_ms: None,
                    });
                    if shard.publish(message).await.is_err() {
                        return;
                    }
                }
                shard
                    .kernel
                    .sleep(Duration::from_millis(SYS_INTERVAL_MS))
                    .await;
            }
        }));
    }

    /// Closes every connection of this shard (node shutdown; v5 clients get 0x8B).
    pub fn close_all(&self) {
        let state = self.state.borrow();
        for entry in state.sessions.values() {
            if let Some(link) = &entry.link {
                link.close(codec::reason::SERVER_SHUTTING_DOWN);
            }
        }
    }

    // ------------------------------------------------------------ mesh

    /// Serves a message from another shard. Synchronous, so messages from one peer are applied
    /// in the order sent; anything that waits runs in a spawned task.
    pub fn handle_message(self: &Rc<Self>, message: ShardMessage) {
        match message {
            ShardMessage::Interest {
                origin,
                first_seq,
                changes,
                ack,
            } => {
                for (seq, (filter, route, present)) in (first_seq..).zip(changes.iter()) {
                    self.apply_remote_interest(origin, seq, filter, route, *present);
                }
                let _ = ack.try_send(());
            }
            ShardMessage::Deliver { deliveries, credit } => {
                // A subscriber's writer is woken by the first message of the batch that reaches
                // it (`Notify` holds one waker) and runs after the whole batch is encoded.
                for delivery in deliveries {
                    if delivery.to_subscribers {
                        self.deliver_local(&delivery.message);
                    }
                    self.deliver_shared(&delivery.message, &delivery.shared);
                }
                // The sender holds the channel open, so its credit is there to take.
                let _ = credit.try_recv();
            }
            ShardMessage::Claim {
                client_id,
                shard,
                reply,
            } => {
                let previous = self.state.borrow_mut().registry.insert(client_id, shard);
                let _ = reply.try_send(previous);
            }
            ShardMessage::Release { client_id, shard } => {
                let mut state = self.state.borrow_mut();
                if state.registry.get(&client_id) == Some(&shard) {
                    state.registry.remove(&client_id);
                }
            }
            ShardMessage::Takeover {
                client_id,
                clean_start,
                to,
                reply,
            } => {
                let session = self.take_session(&client_id, clean_start, to);
                let _ = reply.try_send(session);
            }
            ShardMessage::MoveDone { client_id } => {
                self.finish_move(&client_id);
            }
            ShardMessage::Forwarded {
                client_id,
                outgoings,
            } => {
                self.deliver_forwarded(&client_id, outgoings);
            }
            ShardMessage::Retain { message, ack } => {
                self.retain_here(message);
                let _ = ack.try_send(());
            }
            ShardMessage::Stats { reply } => {
                let _ = reply.try_send(self.stats.snapshot());
            }
            ShardMessage::RetainedMatching { filter, reply } => {
                let now = self.kernel.now_ms();
                let found = self.state.borrow_mut().retained.matching(&filter, now);
                let _ = reply.try_send(found);
            }
        }
    }

    /// Takeover from another shard: close the connection, remove the session and its
    /// subscriptions here, and hand it over unless it is to be discarded.
    /// Keeps the routes of a session that moves to shard `to`: until `to` reports its own
    /// routes applied everywhere (`MoveDone`, or `MOVE_FORWARD_MAX_MS`), messages matched
    /// here for the client are forwarded to `to` instead of reaching nobody.
    fn take_session(
        self: &Rc<Self>,
        client_id: &str,
        clean_start: bool,
        to: u16,
    ) -> Option<Session> {
        let mut state = self.state.borrow_mut();
        let (client, entry) = state.sessions.remove_entry(client_id)?;
        if let Some(link) = &entry.link {
            link.close(codec::reason::SESSION_TAKEN_OVER);
        }
        if clean_start {
            self.drop_subscriptions(&mut state, &client, &entry.session);
            return None;
        }
        let moved = MovedOut {
            to,
            subscriptions: entry.session.subscriptions.clone(),
        };
        if let Some(previous) = state.moved_out.insert(client.clone(), moved) {
            // Moved away before (and back): those routes are the same client's; drop the ones
            // the session no longer has.
            for filter in previous.subscriptions.keys() {
                if !entry.session.subscriptions.contains_key(filter) {
                    self.remove_route(&mut state, &client, filter);
                }
            }
        }
        drop(state);
        let shard = self.clone();
        let sleep = self
            .kernel
            .sleep(Duration::from_millis(MOVE_FORWARD_MAX_MS));
        let name = client.to_string();
        self.kernel.spawn(Box::pin(async move {
            sleep.await;
            shard.finish_move(&name);
        }));
        Some(entry.session)
    }

    /// Drops the routes kept for a session that moved away (see `take_session`), unless the
    /// session came back meanwhile.
    fn finish_move(&self, client_id: &str) {
        let mut state = self.state.borrow_mut();
        let Some((client, moved)) = state.moved_out.remove_entry(client_id) else {
            return;
        };
        if state.sessions.contains_key(client_id) {
            return;
        }
        for filter in moved.subscriptions.keys() {
            self.remove_route(&mut state, &client, filter);
        }
    }

    /// Queues `outgoing`, matched here for a session that moved to shard `to`, for the
    /// forwarder. Past `FORWARD_QUEUE_MAX` messages it is dropped (logged once per burst).
    fn forward(&self, state: &mut State, to: u16, client: &str, outgoing: Outgoing) {
        if state.forward_queue.len() >= FORWARD_QUEUE_MAX {
            if !state.forward_overflow {
                state.forward_overflow = true;
                warn!(
                    limit = FORWARD_QUEUE_MAX,
                    "forward queue of moving sessions full; messages dropped"
                );
            }
            return;
        }
        state.forward_overflow = false;
        state
            .forward_queue
            .push_back((to, client.to_string(), outgoing));
        self.forward_wakeup.notify();
    }

    /// The one task that sends queued forwards, in order, one mesh message per run of
    /// messages for the same (shard, client).
    async fn run_forwarder(self: Rc<Self>) {
        loop {
            self.forward_wakeup.notified().await;
            loop {
                let next = {
                    let mut state = self.state.borrow_mut();
                    let Some((to, client, first)) = state.forward_queue.pop_front() else {
                        break;
                    };
                    let mut outgoings = vec![first];
                    while let Some((next_to, next_client, _)) = state.forward_queue.front() {
                        if *next_to != to || *next_client != client {
                            break;
                        }
                        if let Some((_, _, outgoing)) = state.forward_queue.pop_front() {
                            outgoings.push(outgoing);
                        }
                    }
                    (to, client, outgoings)
                };
                let (to, client_id, outgoings) = next;
                let message = ShardMessage::Forwarded {
                    client_id,
                    outgoings,
                };
                if self.kernel.send(to, message).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Messages another shard forwarded for a session that moved here (or moves on).
    fn deliver_forwarded(&self, client_id: &str, outgoings: Vec<Outgoing>) {
        let now = self.kernel.now_ms();
        let mut state = self.state.borrow_mut();
        if let Some(entry) = state.sessions.get_mut(client_id) {
            for outgoing in outgoings {
                if !self.may_receive(client_id, entry, &outgoing.message.topic) {
                    continue;
                }
                if deliver_to_entry(entry, outgoing, now) == DeliverOutcome::Sent {
                    bump(&self.stats.messages_sent, 1);
                }
            }
            return;
        }
        if let Some(to) = state.moved_out.get(client_id).map(|m| m.to) {
            for outgoing in outgoings {
                self.forward(&mut state, to, client_id, outgoing);
            }
            return;
        }
        // Before the session is installed here (its connect has not resumed yet): kept for it.
        let held: usize = state.early_forwards.values().map(Vec::len).sum();
        if held + outgoings.len() > FORWARD_QUEUE_MAX {
            warn!(client = %client_id, "forwarded messages for an unknown session dropped");
            state.early_forwards.clear();
            return;
        }
        state
            .early_forwards
            .entry(client_id.to_string())
            .or_default()
            .extend(outgoings);
    }

    // ------------------------------------------------------------ persistence

    /// The records of every persistent session and retained topic changed since the last
    /// call, and the keys they cover (to mark again if the write fails). See `persist`.
    fn take_state_changes(&self) -> Vec<StateRecord> {
        let mut state = self.state.borrow_mut();
        let mut records = Vec::new();
        let ended = std::mem::take(&mut state.ended_sessions);
        for client in ended {
            // Ended and begun again since: the new session's image is written below.
            if state
                .sessions
                .get(&client)
                .is_some_and(|e| e.session.expiry_s > 0)
            {
                continue;
            }
            records.push(StateRecord {
                key: persist::session_key(&client),
                value: None,
            });
        }
        for (client, entry) in state.sessions.iter_mut() {
            if !std::mem::take(&mut entry.state_dirty) || entry.session.expiry_s == 0 {
                continue;
            }
            let offline_since_ms = if entry.link.is_some() {
                0
            } else {
                entry.offline_since_ms.max(1)
            };
            let (value, left_out) = entry.session.encode_image(
                offline_since_ms,
                entry.username.as_deref(),
                SESSION_IMAGE_MAX_BYTES,
            );
            if left_out > 0 {
                warn!(
                    client = %client,
                    left_out,
                    limit_bytes = SESSION_IMAGE_MAX_BYTES,
                    "session image too large: newest queued messages not stored"
                );
            }
            entry.persisted = true;
            records.push(StateRecord {
                key: persist::session_key(client),
                value: Some(value),
            });
        }
        for ((topic, partition), (next_offset, dirty)) in state.bridge_positions.iter_mut() {
            if std::mem::take(dirty) {
                records.push(StateRecord {
                    key: persist::bridge_position_key(topic, *partition),
                    value: Some(persist::encode_bridge_position(*next_offset)),
                });
            }
        }
        let topics = std::mem::take(&mut state.retained_dirty);
        for topic in topics {
            let value = state
                .retained
                .get(&topic)
                .map(|message| persist::encode_retained(message));
            records.push(StateRecord {
                key: persist::retained_key(&topic),
                value,
            });
        }
        records
    }

    /// Where the bridge tailer of (`topic`, `partition`) stopped, as read back at startup.
    pub fn bridge_position(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.state.borrow();
        let key = (topic.to_string(), partition);
        state.bridge_positions.get(&key).map(|(offset, _)| *offset)
    }

    /// The bridge tailer of (`topic`, `partition`) routed everything before `next_offset`
    /// (written with the next state write).
    pub fn set_bridge_position(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut state = self.state.borrow_mut();
        let key = (topic.to_string(), partition);
        match state.bridge_positions.get_mut(&key) {
            Some(position) if position.0 == next_offset => {}
            Some(position) => *position = (next_offset, true),
            None => {
                state.bridge_positions.insert(key, (next_offset, true));
            }
        }
    }

    /// Marks the keys of records that could not be written, for the next write.
    fn mark_unwritten(&self, records: &[StateRecord]) {
        let mut state = self.state.borrow_mut();
        for record in records {
            match persist::parse_key(&record.key) {
                Some(StateKey::Retained(topic)) => {
                    state.retained_dirty.insert(topic.to_string());
                }
                Some(StateKey::Session(client)) => match state.sessions.get_mut(client) {
                    Some(entry) => entry.state_dirty = true,
                    None => {
                        state.ended_sessions.insert(Rc::from(client));
                    }
                },
                Some(StateKey::BridgePosition(topic, partition)) => {
                    if let Some(position) = state
                        .bridge_positions
                        .get_mut(&(topic.to_string(), partition))
                    {
                        position.1 = true;
                    }
                }
                None => {}
            }
        }
    }

    /// Writes what changed since the last write as one durable append. Serialized: a write
    /// starts after the previous one ended, so the log holds each key's changes in order.
    /// Returns how many records were written.
    pub async fn write_state(&self) -> Result<usize, KernelError> {
        let _turn = self.state_write_turn.take().await;
        let records = self.take_state_changes();
        if records.is_empty() {
            return Ok(0);
        }
        let count = records.len();
        match self.kernel.state_append(records.clone()).await {
            Ok(()) => {
                bump(&self.stats.state_records_written, count as u64);
                Ok(count)
            }
            Err(e) => {
                self.mark_unwritten(&records);
                Err(e)
            }
        }
    }

    /// Writes the state every `mqtt.state_flush_interval_ms` until the node stops accepting.
    pub fn spawn_state_writer(self: &Rc<Self>) {
        let shard = self.clone();
        let interval = Duration::from_millis(self.config.state_flush_interval_ms);
        self.kernel.spawn(Box::pin(async move {
            let mut failing = false;
            while shard.kernel.accepting() {
                shard.kernel.sleep(interval).await;
                match shard.write_state().await {
                    Ok(_) if failing => {
                        failing = false;
                        warn!("MQTT state written again");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "cannot write MQTT state; retrying every interval");
                    }
                    Err(_) => {}
                }
            }
        }));
    }

    /// Installs the state read back from `__mqtt_state` at startup (latest value per key):
    /// shard 0 takes the retained messages, each shard the sessions whose client id its
    /// registry owns, with their subscriptions routed on every shard before this returns.
    /// A session whose expiry passed while the node was down ends (a tombstone is written);
    /// undecodable values are skipped and counted.
    pub async fn restore_state(self: &Rc<Self>, records: &[(Bytes, Bytes)]) -> RestoredState {
        let me = self.shard_id();
        let shard_count = self.kernel.shard_count();
        let now = self.kernel.now_ms();
        let mut restored = RestoredState::default();
        let mut waiters = Vec::new();
        let mut expiries = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            for (key, value) in records {
                match persist::parse_key(key) {
                    Some(StateKey::Retained(_)) if me == 0 => {
                        let id = self.next_message_id();
                        match persist::decode_retained(value.clone(), id) {
                            Some(message) if message.is_expired(now) => {
                                state.retained_dirty.insert(message.topic.clone());
                            }
                            Some(message) => {
                                if state.retained.set(message) == RetainOutcome::Stored {
                                    restored.retained += 1;
                                }
                            }
                            None => restored.skipped += 1,
                        }
                    }
                    Some(StateKey::Session(client))
                        if registry_shard(client, shard_count) == me =>
                    {
                        let Some(image) =
                            Session::decode_image(value.clone(), || self.next_message_id())
                        else {
                            restored.skipped += 1;
                            continue;
                        };
                        let client: Rc<str> = Rc::from(client);
                        let offline_since_ms = match image.disconnected_at_ms {
                            0 => now,
                            at => at,
                        };
                        let mut session = image.session;
                        let mut left_s = session.expiry_s;
                        if session.expiry_s != SESSION_NEVER_EXPIRES_S {
                            let away_s = now.saturating_sub(offline_since_ms) / 1000;
                            let expiry_s = u64::from(session.expiry_s);
                            if away_s >= expiry_s {
                                state.ended_sessions.insert(client);
                                restored.expired += 1;
                                continue;
                            }
                            left_s = u32::try_from(expiry_s - away_s).unwrap_or(u32::MAX);
                        }
                        session.queue_limit = QueueLimit(self.config.max_queued_messages);
                        let generation = self.next_generation.get() + 1;
                        self.next_generation.set(generation);
                        for (filter, subscription) in &session.subscriptions {
                            waiters.extend(self.add_route(
                                &mut state,
                                &client,
                                filter,
                                subscription.clone(),
                                true,
                            ));
                        }
                        restored.queued_messages += session.queued() + session.inflight();
                        state.registry.insert(client.to_string(), me);
                        state.sessions.insert(
                            client.clone(),
                            SessionEntry {
                                session,
                                link: None,
                                generation,
                                pending_will: None,
                                username: image.username.map(Rc::from),
                                state_dirty: false,
                                persisted: true,
                                offline_since_ms,
                            },
                        );
                        if left_s != SESSION_NEVER_EXPIRES_S {
                            expiries.push((client, generation, left_s));
                        }
                        restored.sessions += 1;
                    }
                    Some(StateKey::BridgePosition(topic, partition)) => {
                        match persist::decode_bridge_position(value) {
                            Some(next_offset) => {
                                state
                                    .bridge_positions
                                    .insert((topic.to_string(), partition), (next_offset, false));
                            }
                            None => restored.skipped += 1,
                        }
                    }
                    Some(_) => {}
                    None => restored.skipped += 1,
                }
            }
        }
        for (client, generation, left_s) in expiries {
            self.schedule_expiry(client, generation, left_s);
        }
        for waiter in waiters {
            let _ = waiter.recv_async().await;
        }
        restored
    }
}

/// What `restore_state` installed on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoredState {
    pub retained: usize,
    pub sessions: usize,
    /// In-flight and queued messages of the restored sessions.
    pub queued_messages: usize,
    /// Sessions whose expiry passed while the node was down.
    pub expired: usize,
    /// Records that did not decode.
    pub skipped: usize,
}

/// Applies an interest change of shard `origin` to this shard's copy of the routing tries.
fn apply_interest(state: &mut State, origin: u16, filter: &str, route: &Route, present: bool) {
    match route {
        Route::Shard if present => {
            state.interest.insert(filter, origin, ());
        }
        Route::Shard => {
            state.interest.remove(filter, &origin);
        }
        Route::Member { group, client } if present => {
            if let Some(members) = state.shared.get_mut(filter, group) {
                members.add(origin, client.clone());
                return;
            }
            let mut members = SharedGroup::new(group, filter);
            members.add(origin, client.clone());
            state.shared.insert(filter, group.clone(), members);
        }
        Route::Member { group, client } => {
            let now_empty = state
                .shared
                .get_mut(filter, group)
                .is_some_and(|members| members.remove(origin, client) && members.is_empty());
            if now_empty {
                state.shared.remove(filter, group);
            }
        }
    }
}

/// `message` as one subscription of a session receives it: at the lower of the two QoS, with
/// the retain flag only for retain-as-published, and the subscription's identifier.
fn outgoing_for(message: &SharedMessage, sub: &Subscription) -> Outgoing {
    Outgoing {
        message: message.clone(),
        qos: sub.qos.min(message.qos),
        retain: sub.retain_as_published && message.retain,
        subscription_ids: sub.subscription_id.into_iter().collect(),
    }
}

fn deliver_to_entry(entry: &mut SessionEntry, outgoing: Outgoing, now: u64) -> DeliverOutcome {
    if outgoing.qos > 0 {
        entry.touch();
    }
    let session = &mut entry.session;
    match &entry.link {
        Some(link) if !link.is_closing() => {
            link.with_out(|out| session.deliver(outgoing, Some(out), now))
        }
        _ => session.deliver(outgoing, None, now),
    }
}
