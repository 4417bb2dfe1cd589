"""Other real clients: kcat (librdkafka 2.0.2 from Debian) and kafka-python."""

import shutil
import subprocess
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import unique_topic, wait_until
from kafka_util import create_topic

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def kcat(args, input_bytes=None, timeout=60):
    assert KCAT, "kcat not installed (scripts/install-test-deps.sh installs it)"
    r = subprocess.run([KCAT] + args, input=input_bytes, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return r


@pytest.mark.timeout(120)
def test_kcat_list_produce_consume(broker):
    topic = unique_topic("kcat")
    create_topic(broker.bootstrap, topic, 1)

    r = kcat(["-b", broker.bootstrap, "-L", "-m", "10"])
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "1 brokers:" in out, out
    assert "at %s" % broker.bootstrap in out, out
    assert 'topic "%s" with 1 partitions' % topic in out, out

    lines = ["line %04d %s" % (i, "x" * (i % 37)) for i in range(500)]
    r = kcat(["-b", broker.bootstrap, "-P", "-t", topic, "-p", "0", "-X", "acks=all"],
             input_bytes=("\n".join(lines) + "\n").encode())
    assert r.returncode == 0, r.stderr.decode()

    r = kcat(["-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
              "-f", "%o %s\n"])
    assert r.returncode == 0, r.stderr.decode()
    got = r.stdout.decode().splitlines()
    assert got == ["%d %s" % (i, l) for i, l in enumerate(lines)]


@pytest.mark.timeout(120)
def test_kcat_keyed_produce_metadata_for_new_topic(broker):
    # Auto-created by kcat's produce (auto-create is on by default).
    topic = unique_topic("kcat-auto")
    r = kcat(["-b", broker.bootstrap, "-P", "-t", topic, "-K", ":", "-X", "acks=all"],
             input_bytes=b"a:1\nb:2\nc:3\n")
    assert r.returncode == 0, r.stderr.decode()
    r = kcat(["-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
              "-f", "%k=%s\n"])
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(r.stdout.decode().splitlines()) == ["a=1", "b=2", "c=3"]


@pytest.mark.timeout(120)
def test_kafka_python_round_trip(broker):
    topic = unique_topic("kpy")
    create_topic(broker.bootstrap, topic, 3)
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                         request_timeout_ms=20000)
    try:
        futures = []
        sent = {}
        for i in range(1500):
            key = b"key-%d" % (i % 30)
            value = b"kafka-python %05d " % i + b"v" * (i % 200)
            sent[i] = (key, value)
            futures.append(prod.send(topic, key=key, value=value, partition=i % 3))
        prod.flush(timeout=60)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        prod.close(timeout=10)
    assert all(m.topic == topic for m in metas)
    # Offsets per partition are 0..n-1 in send order.
    for part in range(3):
        offs = [m.offset for i, m in enumerate(metas) if i % 3 == part]
        assert offs == list(range(len(offs)))

    cons = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                         enable_auto_commit=False, consumer_timeout_ms=1000,
                         request_timeout_ms=20000, fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        cons.assign(tps)
        cons.seek_to_beginning(*tps)
        got = {p: [] for p in range(3)}
        deadline = time.monotonic() + 60
        while sum(len(v) for v in got.values()) < len(sent) and time.monotonic() < deadline:
            batch = cons.poll(timeout_ms=500)
            for tp, recs in batch.items():
                for r in recs:
                    got[tp.partition].append((r.offset, r.key, r.value))
    finally:
        cons.close()
    for part in range(3):
        expected = [(o, sent[i][0], sent[i][1])
                    for o, i in enumerate(i for i in range(len(sent)) if i % 3 == part)]
        assert got[part] == expected, "partition %d content/order differs" % part
