"""Log compaction (cleanup.policy=compact) seen through a real client: after the log cleaner
has run, a consumer reading from the beginning gets exactly the latest value of every key at
the offset it was produced at, and tombstoned keys are gone once delete.retention.ms passed."""

import os
import time

import pytest
from confluent_kafka import Consumer, KafkaError, OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from conftest import unique_topic, wait_until
from kafka_util import admin, create_topic, produce_all, producer

KEYS = 20
ROUNDS = 60
TOMBSTONED = {b"key-3", b"key-7", b"key-11"}
FILLER_KEY = b"filler"

# The cleaner runs every 100 ms instead of Kafka's 15 s, so the test polls for seconds.
CLEANER_CONFIG = {"log_cleaner_interval_ms": 100}

COMPACT_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": "16384",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "200",
}


def read_from_beginning(bootstrap, topic, timeout_s=30):
    """Every record of partition 0 up to the high watermark: [(offset, key, value), ...]."""
    return read_partition(bootstrap, topic, 0, timeout_s)


def read_partition(bootstrap, topic, partition, timeout_s=30):
    """(log start, high watermark, every record up to it as (offset, key, value))."""
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "rmq-test-nogroup",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,
    })
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        out = []
        deadline = time.monotonic() + timeout_s
        while not out or out[-1][0] < high - 1:
            assert time.monotonic() < deadline, "read %d records of [%d, %d)" % (len(out), low, high)
            msgs = c.consume(num_messages=10000, timeout=0.5)
            for m in msgs:
                assert m.error() is None, m.error()
                out.append((m.offset(), m.key(), m.value()))
        return low, high, out
    finally:
        c.close()


def updates_and_tombstones():
    records = []
    for round_ in range(ROUNDS):
        for i in range(KEYS):
            # Random bytes: compressed batches must still fill several segments.
            records.append((b"key-%d" % i, b"value-%d-%d-" % (i, round_) + os.urandom(100)))
    records += [(key, None) for key in sorted(TOMBSTONED)]
    # Enough filler to roll every update and tombstone out of the active segment, which the
    # cleaner never touches.
    records += [(FILLER_KEY, os.urandom(1000)) for _ in range(40)]
    return records


def compacted_view(records):
    """The (offset, key, value) of every key but the filler, and whether it is compacted."""
    of_interest = [r for r in records if r[1] != FILLER_KEY]
    keys = [r[1] for r in of_interest]
    unique = len(keys) == len(set(keys))
    return of_interest, unique and not TOMBSTONED & set(keys)


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
@pytest.mark.timeout(180)
def test_compacted_topic_keeps_the_latest_value_per_key(broker_factory, compression):
    broker = broker_factory(config=CLEANER_CONFIG)
    topic = unique_topic("compact")
    create_topic(broker.bootstrap, topic, 1, config=COMPACT_TOPIC_CONFIG)
    records = updates_and_tombstones()
    # Small batches, so the records spread over many 16 KiB segments (a batch never splits).
    p = producer(broker.bootstrap, **{"compression.type": compression, "linger.ms": 5,
                                      "batch.size": 4096})
    delivered = produce_all(p, records, topic)
    produced_at = {}
    for _, offset, key, value in delivered:
        if key != FILLER_KEY:
            produced_at[key] = (offset, value)
    expected = sorted((offset, key, value) for key, (offset, value) in produced_at.items()
                      if value is not None)

    def compacted():
        low, high, got = read_from_beginning(broker.bootstrap, topic)
        view, done = compacted_view(got)
        return (low, high, got, view) if done else None

    low, high, got, view = wait_until(compacted, 60, interval_s=0.2,
                                      msg="the cleaner to compact %s" % topic)
    assert low == 0, "compaction never moves the log start"
    assert high == len(records), "nor the log end"
    offsets = [offset for offset, _, _ in got]
    assert offsets == sorted(set(offsets)), "offsets strictly increase"
    assert len(got) < len(records) / 4, "most superseded records are gone"
    assert view == expected, "exactly the latest value of every live key, at its original offset"


@pytest.mark.timeout(120)
def test_compacted_topic_configs_and_keyless_records(broker_factory):
    broker = broker_factory(config=CLEANER_CONFIG)
    topic = unique_topic("compact-cfg")
    create_topic(broker.bootstrap, topic, 1, config={"cleanup.policy": "compact,delete"})
    a = admin(broker.bootstrap)
    for name, policy in ((topic, "compact,delete"), ("__consumer_offsets", "compact")):
        res = ConfigResource(ResourceType.TOPIC, name)
        entries = a.describe_configs([res], request_timeout=20)[res].result(timeout=20)
        assert entries["cleanup.policy"].value == policy, name
        assert entries["delete.retention.ms"].value == "86400000", name

    errors = []
    p = producer(broker.bootstrap, **{"enable.idempotence": False, "retries": 0,
                                      "message.timeout.ms": 10000})
    p.produce(topic, key=None, value=b"no key", on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(20) == 0
    assert len(errors) == 1 and errors[0] is not None, errors
    # CORRUPT_MESSAGE (librdkafka: INVALID_MSG), as Kafka before KIP-467 answered.
    assert errors[0].code() in (KafkaError.INVALID_MSG, KafkaError.INVALID_RECORD), errors[0]
    produce_all(producer(broker.bootstrap), [(b"k", b"v")], topic)

    with pytest.raises(Exception) as refused:
        create_topic(broker.bootstrap, unique_topic("compact-mem"), 1,
                     config={"cleanup.policy": "compact", "storage.engine": "memory"})
    assert "memory" in str(refused.value)


def java_string_hash_partition(group, partitions):
    """Kafka's coordinator partition: abs(groupId.hashCode) % partitions (UTF-16 hashCode)."""
    h = 0
    data = group.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (h * 31 + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % partitions


@pytest.mark.timeout(180)
def test_consumer_offsets_is_compacted_and_committed_offsets_reload_after_restart(broker_factory):
    broker = broker_factory(config=CLEANER_CONFIG)
    a = admin(broker.bootstrap)
    # Small segments, so the commits below fill closed segments the cleaner may compact.
    changes = [ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
               for name, value in (("segment.bytes", "16384"),
                                   ("min.cleanable.dirty.ratio", "0.01"))]
    res = ConfigResource(ResourceType.TOPIC, "__consumer_offsets", incremental_configs=changes)
    a.incremental_alter_configs([res], request_timeout=20)[res].result(timeout=20)
    topic = unique_topic("offsets")
    create_topic(broker.bootstrap, topic, 3)
    group = unique_topic("g")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    wait_until(lambda: c.poll(0.2) is None and len(c.assignment()) == 3, 30,
               msg="consumer assigned")
    commits = 400
    for i in range(1, commits + 1):
        c.commit(offsets=[TopicPartition(topic, p, i + p) for p in range(3)], asynchronous=False)
    c.close()

    partition = java_string_hash_partition(group, 16)

    def offsets_records():
        _, _, records = read_partition(broker.bootstrap, "__consumer_offsets", partition)
        return records if len(records) < commits else None

    records = wait_until(offsets_records, 60, interval_s=0.2,
                         msg="the cleaner to compact __consumer_offsets partition %d" % partition)
    assert len(records) < commits, len(records)

    broker.restart()
    resumed = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                        "enable.auto.commit": False})
    try:
        committed = resumed.committed([TopicPartition(topic, p) for p in range(3)], timeout=20)
        assert [tp.offset for tp in committed] == [commits + p for p in range(3)]
    finally:
        resumed.close()
