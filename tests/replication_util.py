"""Helpers for replicated partitions (test_replication.py, scripts/bench_replication.py): each
node's own view of a topic's partitions (raw Metadata v7 over its own Kafka listener: leader,
leader epoch, replicas, ISR; and its /v1/cluster "partitions": role, term, committed index),
agreement between nodes, and a background producer that records which records were
acknowledged and when.

ProduceStream: one thread owns the confluent-kafka Producer (produce + poll, so delivery
callbacks run on it); its records live in dicts guarded by `lock`, read by the test thread
through the methods below."""

import json
import os
import threading
import time
import urllib.error
import urllib.request

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, Producer,
                             TopicPartition)
from confluent_kafka.admin import NewTopic
from kafka.protocol.metadata import MetadataRequest

from cluster_util import HTTP_TIMEOUT_S, cluster_status
from kafka_raw import RawConn
from kafka_util import admin, watermarks

REPLICATION_FACTOR = 3
# A stream produces at most this many records per second and keeps at most this many
# unacknowledged (the producer's queue is bounded by it too).
STREAM_RATE_PER_S = 300
STREAM_MAX_IN_FLIGHT = 1000
STREAM_FLUSH_TIMEOUT_S = 90


def create_replicated(bootstrap, name, partitions, replication_factor=REPLICATION_FACTOR,
                      timeout_s=60):
    """CreateTopics through an AdminClient; raises KafkaException on an error."""
    a = admin(bootstrap)
    fut = a.create_topics([NewTopic(name, num_partitions=partitions,
                                    replication_factor=replication_factor)],
                          operation_timeout=30, request_timeout=30)[name]
    fut.result(timeout=timeout_s)


def consume_to_end(bootstrap, topic, partitions, timeout_s=120):
    """Reads every partition from the beginning until librdkafka reports the end of the
    partition at or past its high watermark (taken first). A replicated log has offsets
    without records (the Raft leaders' blank entries), so the last record's offset is not a
    usable end marker. Returns {partition: [(offset, key, value, headers), ...]}."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rmq-test-nogroup",
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "enable.partition.eof": True, "fetch.wait.max.ms": 100})
    try:
        hw = {p: watermarks(c, topic, p)[1] for p in range(partitions)}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out = {p: [] for p in range(partitions)}
        pending = set(range(partitions))
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError("consume timed out: high watermarks %s, got %s" % (
                    hw, {p: len(v) for p, v in out.items()}))
            for m in c.consume(num_messages=10000, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise AssertionError("consumer error: %s" % m.error())
                    if m.offset() >= hw[m.partition()]:
                        pending.discard(m.partition())
                    continue
                out[m.partition()].append((m.offset(), m.key(), m.value(), m.headers()))
        return out
    finally:
        c.close()


def partition_metadata(b, topic):
    """Metadata v7 for `topic` from exactly node b: (broker ids, topic error,
    {partition: {"error", "leader", "epoch", "replicas" (sorted), "isr", "preferred" (the
    first replica: the leader the broker hands leadership back to)}}). Never auto-creates."""
    with RawConn(b.host, b.port) as conn:
        resp = conn.request(MetadataRequest[7](topics=[topic], allow_auto_topic_creation=False))
    brokers = sorted(broker[0] for broker in resp.brokers)
    (error, _name, _internal, partitions), = resp.topics
    parts = {}
    for p_error, partition, leader, epoch, replicas, isr, _offline in partitions:
        parts[partition] = {"error": p_error, "leader": leader, "epoch": epoch,
                            "replicas": sorted(replicas), "isr": sorted(isr),
                            "preferred": replicas[0] if replicas else None}
    return brokers, error, parts


def agreed_partitions(nodes, topic, partitions, strict=False):
    """{partition: {"leader", "epoch", "replicas", "preferred"}} if every node in `nodes`
    reports `topic` with `partitions` partitions, each with REPLICATION_FACTOR replicas (the
    same everywhere) and a leader among them, the leader in the ISR, and the nodes hosting a
    replica (leader epoch >= 0) agree on leader and epoch with no error; else None. A node
    hosting no replica may name a guess (the preferred leader, epoch -1) until it has heard a
    leader's report. `strict`: every node names the same leader and epoch, ISR = replicas."""
    views = []
    for b in nodes:
        try:
            _, error, parts = partition_metadata(b, topic)
        except (OSError, ValueError):
            return None
        if error != 0 or sorted(parts) != list(range(partitions)):
            return None
        views.append(parts)
    agreed = {}
    for p in range(partitions):
        if len({tuple(v[p]["replicas"]) for v in views}) != 1:
            return None
        replicas = views[0][p]["replicas"]
        hosting = [v[p] for v in views if v[p]["epoch"] >= 0]
        if len(replicas) != REPLICATION_FACTOR or not hosting \
                or len({(h["error"], h["leader"], h["epoch"]) for h in hosting}) != 1:
            return None
        leader, epoch = hosting[0]["leader"], hosting[0]["epoch"]
        if hosting[0]["error"] != 0 or leader not in replicas:
            return None
        for v in views:
            isr = v[p]["isr"]
            if v[p]["leader"] not in replicas or v[p]["leader"] not in isr \
                    or not set(isr) <= set(replicas) or (strict and isr != replicas):
                return None
            if strict and (v[p]["leader"], v[p]["epoch"]) != (leader, epoch):
                return None
        agreed[p] = {"leader": leader, "epoch": epoch, "replicas": list(replicas),
                     "preferred": views[0][p]["preferred"]}
    return agreed


def replica_states(b, topic):
    """Node b's /v1/cluster entries for the replicas of `topic` it hosts: {partition: entry}."""
    status = cluster_status(b)
    return {e["partition"]: e for e in status.get("partitions") or [] if e["topic"] == topic}


def try_replica_states(b, topic):
    """replica_states, or None while b does not answer (down, restarting)."""
    try:
        return replica_states(b, topic)
    except (OSError, ValueError):
        return None


def leader_states(nodes, topic):
    """{partition: (node, entry)} of the replicas that report role Leader (the highest term
    if several do, e.g. an isolated old leader)."""
    leaders = {}
    for b in nodes:
        for p, e in (try_replica_states(b, topic) or {}).items():
            if e["role"] == "Leader" and (p not in leaders or e["term"] > leaders[p][1]["term"]):
                leaders[p] = (b, e)
    return leaders


def caught_up(nodes, b, topic, partitions):
    """True if node b hosts every partition of `topic` and, for each it does not lead, its
    committed index has reached the leader's (leaders read first, so a stream of appends
    cannot keep a follower that is up to date from matching)."""
    leaders = leader_states(nodes, topic)
    if sorted(leaders) != list(range(partitions)):
        return False
    mine = try_replica_states(b, topic)
    if mine is None or sorted(mine) != list(range(partitions)):
        return False
    for p, (leader, lead) in leaders.items():
        if leader is b:
            continue
        if lead["committed_index"] is None or mine[p]["committed_index"] is None:
            return False
        if mine[p]["committed_index"] < lead["committed_index"] or mine[p]["role"] != "Follower":
            return False
    return True


def post_json(b, path, body):
    """POST to node b's admin HTTP; returns (status, parsed JSON or None)."""
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(b.admin_url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            raw = r.read().decode()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, None


class TermWatcher(object):
    """Polls every node's /v1/cluster in a thread and records which node each snapshot names
    leader of each partition of `topic` in each term (a Leader's own entry counts as naming
    itself)."""

    POLL_INTERVAL_S = 0.1

    def __init__(self, nodes, topic):
        self.nodes = list(nodes)
        self.topic = topic
        self.lock = threading.Lock()
        self.leaders = {}  # (partition, term) -> {leader id: [reporting node ids]}
        self.snapshots = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for b in self.nodes:
                if not b.alive():
                    continue
                states = try_replica_states(b, self.topic)
                if states is None:
                    continue
                with self.lock:
                    self.snapshots += 1
                    for p, e in states.items():
                        leader = b.rmq_node_id if e["role"] == "Leader" else e["leader"]
                        if leader is None:
                            continue
                        reporters = self.leaders.setdefault((p, e["term"]), {})
                        reporters.setdefault(leader, []).append(b.rmq_node_id)
            self._stop.wait(self.POLL_INTERVAL_S)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def conflicts(self):
        """[(partition, term, {leader: reporters})] for terms with more than one leader."""
        with self.lock:
            return [(p, term, dict(by)) for (p, term), by in sorted(self.leaders.items())
                    if len(by) > 1]


class ProduceStream(object):
    """Produces "p<partition>-<seq>" records (explicit partition, round robin, `rate_per_s`)
    with an idempotent acks=all producer on a thread until stop(); records per partition what
    was sent, acknowledged (seq, offset, send time, ack time) and failed (seq, error)."""

    def __init__(self, bootstrap, topic, partitions, rate_per_s=STREAM_RATE_PER_S,
                 value_bytes=0, **conf):
        base = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                "linger.ms": 5, "message.timeout.ms": 60000,
                "queue.buffering.max.messages": STREAM_MAX_IN_FLIGHT,
                "error_cb": self._on_error}
        base.update(conf)
        if os.environ.get("RMQ_LIBRDKAFKA_DEBUG"):
            base["debug"] = os.environ["RMQ_LIBRDKAFKA_DEBUG"]
        self.producer = Producer(base)
        self.topic = topic
        self.partitions = partitions
        self.rate_per_s = rate_per_s
        self.padding = b"x" * value_bytes
        self.lock = threading.Lock()
        self.sent = {p: 0 for p in range(partitions)}
        self.send_times = {p: [] for p in range(partitions)}
        self.acked = {p: [] for p in range(partitions)}
        self.failed = {p: [] for p in range(partitions)}
        self.client_errors = []
        self.unflushed = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_error(self, err):
        with self.lock:
            self.client_errors.append(str(err))

    def _on_delivery(self, err, msg):
        now = time.monotonic()
        p_text, seq_text = msg.value().split(b"|", 1)[0].decode().split("-")
        p, seq = int(p_text[1:]), int(seq_text)
        with self.lock:
            if err is not None:
                self.failed[p].append((seq, str(err)))
            else:
                self.acked[p].append((seq, msg.offset(), self.send_times[p][seq], now))

    def in_flight(self):
        with self.lock:
            return sum(self.sent.values()) - sum(len(a) for a in self.acked.values()) \
                - sum(len(f) for f in self.failed.values())

    def _run(self):
        interval_s = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        i = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at or self.in_flight() >= STREAM_MAX_IN_FLIGHT:
                self.producer.poll(min(max(next_at - now, 0.001), 0.05))
                continue
            p = i % self.partitions
            with self.lock:
                seq = self.sent[p]
                self.send_times[p].append(time.monotonic())
            value = b"p%d-%d" % (p, seq)
            if self.padding:
                value += b"|" + self.padding
            try:
                self.producer.produce(self.topic, value=value, partition=p,
                                      on_delivery=self._on_delivery)
            except BufferError:
                with self.lock:
                    self.send_times[p].pop()
                self.producer.poll(0.05)
                continue
            with self.lock:
                self.sent[p] = seq + 1
            i += 1
            next_at = max(next_at + interval_s, now - 1.0)
            self.producer.poll(0)
        self.unflushed = self.producer.flush(STREAM_FLUSH_TIMEOUT_S)
        self.producer = None  # destroyed here: no client threads outlive the stream

    def stop(self):
        """Stops producing and waits until every record is acknowledged or failed."""
        self._stop.set()
        self._thread.join(timeout=STREAM_FLUSH_TIMEOUT_S + 30)
        assert not self._thread.is_alive(), "the producer thread did not finish its flush"

    def acks_since(self, partition, t):
        """Acknowledged records of `partition` sent at or after monotonic time t."""
        with self.lock:
            return [a for a in self.acked[partition] if a[2] >= t]

    def first_ack_after(self, partition, t):
        """Ack time of the first record of `partition` sent at or after t, or None."""
        acks = self.acks_since(partition, t)
        return min(a[3] for a in acks) if acks else None

    def summary(self):
        with self.lock:
            return {"sent": dict(self.sent),
                    "acked": {p: len(a) for p, a in self.acked.items()},
                    "failed": {p: len(f) for p, f in self.failed.items()},
                    "client_errors": list(self.client_errors[-5:])}
