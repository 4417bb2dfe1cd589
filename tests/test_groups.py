"""Consumer groups with real clients: subscribe, rebalance, commits, restarts, static members."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from conftest import _die_with_parent, unique_topic, wait_until
from kafka_util import create_topic, produce_all, producer

HERE = os.path.dirname(os.path.abspath(__file__))
SESSION_TIMEOUT_MS = 6000


class Member(object):
    """One group_member.py subprocess; its JSON events are collected by a reader thread."""

    def __init__(self, bootstrap, topic, group, instance_id=None,
                 session_timeout_ms=SESSION_TIMEOUT_MS):
        args = [sys.executable, os.path.join(HERE, "group_member.py"), bootstrap, topic, group,
                "--session-timeout-ms", str(session_timeout_ms)]
        if instance_id:
            args += ["--instance-id", instance_id]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        self.events = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event["at"] = time.monotonic()
            with self.lock:
                self.events.append(event)

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def assignment(self):
        """Partitions held now (eager protocol: every assign replaces, every revoke clears)."""
        held = set()
        for event in self.snapshot():
            if event["event"] == "assign":
                held = set(event["partitions"])
            elif event["event"] == "revoke":
                held -= set(event["partitions"])
        return held

    def rebalance_events(self):
        return [e for e in self.snapshot() if e["event"] in ("assign", "revoke")]

    def records(self):
        out = []
        for event in self.snapshot():
            if event["event"] == "records":
                out.extend(tuple(item) for item in event["items"])
        return out

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def members():
    started = []
    yield started
    for m in started:
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(timeout=10)


def wait_balanced(group_members, partitions, timeout_s):
    def balanced():
        held = [m.assignment() for m in group_members]
        union = set().union(*held)
        return (all(held) and len(union) == partitions
                and sum(len(h) for h in held) == partitions)
    wait_until(balanced, timeout_s, msg="%d members sharing %d partitions"
               % (len(group_members), partitions))


def produce_values(bootstrap, topic, start, count):
    p = producer(bootstrap)
    produce_all(p, [(None, str(i).encode()) for i in range(start, start + count)], topic)


@pytest.mark.timeout(240)
def test_three_members_consume_each_record_once_and_a_killed_members_partitions_move(
        broker, members):
    topic = unique_topic("grp")
    create_topic(broker.bootstrap, topic, 12)
    group = unique_topic("g")
    for _ in range(3):
        members.append(Member(broker.bootstrap, topic, group))
    wait_balanced(members, 12, 60)
    before = [len(m.rebalance_events()) for m in members]

    produce_values(broker.bootstrap, topic, 0, 60000)
    wait_until(lambda: sum(len(m.records()) for m in members) >= 60000, 120,
               msg="60k records consumed by the group")
    consumed = [r for m in members for r in m.records()]
    assert len(consumed) == 60000, "records consumed more than once: %d" % len(consumed)
    assert len({(p, o) for p, o, _ in consumed}) == 60000
    assert {int(v) for _, _, v in consumed} == set(range(60000))
    assert [len(m.rebalance_events()) for m in members] == before, "no rebalance expected"

    victim, survivors = members[0], members[1:]
    victim_partitions = victim.assignment()
    killed_at = time.monotonic()
    victim.kill9()
    wait_balanced(survivors, 12, SESSION_TIMEOUT_MS / 1000.0 + 20)
    moved_s = max(e["at"] for m in survivors for e in m.rebalance_events()) - killed_at
    assert moved_s < SESSION_TIMEOUT_MS / 1000.0 + 5, \
        "partitions %s moved after %.1fs" % (sorted(victim_partitions), moved_s)

    produce_values(broker.bootstrap, topic, 60000, 12000)
    seen = lambda: {int(v) for m in members for _, _, v in m.records()}
    wait_until(lambda: len(seen()) == 72000, 120, msg="every record consumed after the kill")
    assert seen() == set(range(72000))


@pytest.mark.timeout(120)
def test_committed_offsets_survive_a_kill_and_a_new_member_resumes_from_them(broker):
    topic = unique_topic("commit")
    create_topic(broker.bootstrap, topic, 3)
    for p in range(3):
        produce_all(producer(broker.bootstrap), [(None, b"%d-%d" % (p, i)) for i in range(100)],
                    topic, partition=p)
    group = unique_topic("g")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    wait_until(lambda: c.poll(0.2) is not None and len(c.assignment()) == 3, 30,
               msg="consumer assigned")
    c.commit(offsets=[TopicPartition(topic, p, 40 + p) for p in range(3)], asynchronous=False)
    c.close()

    broker.restart(clean=False)   # kill -9: commits were acknowledged after fdatasync

    resumed = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                        "enable.auto.commit": False, "auto.offset.reset": "latest"})
    try:
        committed = resumed.committed([TopicPartition(topic, p) for p in range(3)], timeout=20)
        assert [tp.offset for tp in committed] == [40, 41, 42]
        resumed.subscribe([topic])
        got = {}
        deadline = time.monotonic() + 60
        while sum(len(v) for v in got.values()) < 3 * 100 - (40 + 41 + 42):
            assert time.monotonic() < deadline, "resumed consumer got %s" % {
                p: len(v) for p, v in got.items()}
            m = resumed.poll(0.2)
            if m is not None and not m.error():
                got.setdefault(m.partition(), []).append(m.offset())
        assert {p: min(v) for p, v in got.items()} == {0: 40, 1: 41, 2: 42}
    finally:
        resumed.close()


@pytest.mark.timeout(180)
def test_static_member_restart_keeps_its_partitions_without_rebalancing_the_others(
        broker, members):
    topic = unique_topic("static")
    create_topic(broker.bootstrap, topic, 6)
    group = unique_topic("g")
    session_ms = 20000
    for i in range(3):
        members.append(Member(broker.bootstrap, topic, group, instance_id="i%d" % i,
                              session_timeout_ms=session_ms))
    wait_balanced(members, 6, 60)
    others_before = [len(m.rebalance_events()) for m in (members[0], members[2])]
    old = members[1]
    held = old.assignment()
    old.stop()   # a static member does not leave on close (KIP-345)
    restarted = Member(broker.bootstrap, topic, group, instance_id="i1",
                       session_timeout_ms=session_ms)
    members.append(restarted)
    wait_until(lambda: restarted.assignment(), 30, msg="restarted static member assigned")
    assert restarted.assignment() == held
    produce_values(broker.bootstrap, topic, 0, 600)
    wait_until(lambda: len({v for m in members for _, _, v in m.records()}) == 600, 60,
               msg="all records consumed")
    assert [len(m.rebalance_events()) for m in (members[0], members[2])] == others_before, \
        "the other members rebalanced"


@pytest.mark.timeout(120)
def test_kafka_python_consumer_group_consumes_and_commits(broker):
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition as KTopicPartition

    topic = unique_topic("kp")
    create_topic(broker.bootstrap, topic, 4)
    produce_values(broker.bootstrap, topic, 0, 400)
    group = unique_topic("g")
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    try:
        values = set()
        deadline = time.monotonic() + 60
        while len(values) < 400:
            assert time.monotonic() < deadline, "kafka-python got %d records" % len(values)
            for message in consumer:
                values.add(int(message.value))
        assert values == set(range(400))
        consumer.commit()
        ends = consumer.end_offsets([KTopicPartition(topic, p) for p in range(4)])
        for tp, end in ends.items():
            assert consumer.committed(tp) == end
    finally:
        consumer.close()


@pytest.mark.timeout(60)
def test_transactional_producer_is_refused_clearly(broker):
    from confluent_kafka import KafkaError, KafkaException, Producer

    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "tx-1"})
    with pytest.raises(KafkaException) as refused:
        p.init_transactions(20)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


@pytest.mark.timeout(120)
def test_kcat_balanced_consumer_reads_every_record(broker):
    topic = unique_topic("kcat")
    create_topic(broker.bootstrap, topic, 4)
    produce_values(broker.bootstrap, topic, 0, 200)
    out = subprocess.run(
        ["kcat", "-b", broker.bootstrap, "-G", unique_topic("g"), "-X",
         "auto.offset.reset=earliest", "-c", "200", "-f", "%p:%o:%s\n", "-q", topic],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=90)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().split()
    assert sorted(int(line.split(":")[2]) for line in lines) == list(range(200))
