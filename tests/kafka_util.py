"""confluent-kafka helpers shared by the tests (no consumer groups: assign() only)."""

import time

from confluent_kafka import (Consumer, KafkaError, KafkaException, OFFSET_BEGINNING, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import wait_until


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def create_topic(bootstrap, name, partitions, config=None, timeout_s=30):
    a = admin(bootstrap)
    fut = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                    config=config or {})],
                          operation_timeout=timeout_s, request_timeout=timeout_s)[name]
    fut.result(timeout=timeout_s)
    wait_for_partitions(bootstrap, name, partitions, timeout_s)
    return a


def topic_partitions(bootstrap, name, timeout_s=10):
    """Partition count from Metadata, or None if the topic is missing/has an error."""
    md = admin(bootstrap).list_topics(topic=name, timeout=timeout_s)
    t = md.topics.get(name)
    if t is None or t.error is not None:
        return None
    if any(p.leader < 0 or p.error is not None for p in t.partitions.values()):
        return None
    return len(t.partitions)


def wait_for_partitions(bootstrap, name, partitions, timeout_s=30):
    wait_until(lambda: topic_partitions(bootstrap, name) == partitions, timeout_s,
               msg="topic %s with %d partitions having leaders" % (name, partitions))


def producer(bootstrap, **conf):
    base = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 60000,
    }
    base.update(conf)
    return Producer(base)


def produce_all(p, records, topic, timeout_s=120, partition=None):
    """Produce (key, value) records; return list of delivered (partition, offset, key, value).

    Raises on any delivery error."""
    delivered = []
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for key, value in records:
        while True:
            try:
                if partition is None:
                    p.produce(topic, key=key, value=value, on_delivery=cb)
                else:
                    p.produce(topic, key=key, value=value, partition=partition, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    remaining = p.flush(timeout_s)
    assert remaining == 0, "%d messages still undelivered after %ss" % (remaining, timeout_s)
    assert not errors, "delivery errors: %s" % errors[:5]
    return delivered


# How long a watermark query retries a transient error. librdkafka hands these to the caller
# of get_watermark_offsets without retrying (and without marking them retriable): a partition's
# leader moving (NOT_LEADER_FOR_PARTITION), or a just-restarted node not yet serving it.
WATERMARK_RETRY_S = 30
WATERMARK_TRANSIENT_ERRORS = (
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT)


def watermarks(c, topic, partition, retry_s=WATERMARK_RETRY_S):
    """(low, high) of one partition through consumer c, retrying transient errors for up to
    `retry_s`; any other error raises at once."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        except KafkaException as e:
            transient = e.args[0].retriable() or e.args[0].code() in WATERMARK_TRANSIENT_ERRORS
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for_total_high_watermark(bootstrap, topic, partitions, total, timeout_s=30):
    """Poll until the partitions' high watermarks add up to `total` (acks=0 has no other
    confirmation that the broker appended everything)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rmq-test-nogroup"})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            hw = [watermarks(c, topic, p)[1] for p in range(partitions)]
            if sum(hw) >= total:
                return hw
            if time.monotonic() > deadline:
                raise AssertionError("high watermarks %s never reached %d in total" % (hw, total))
            time.sleep(0.05)
    finally:
        c.close()


def consume_all(bootstrap, topic, partitions, timeout_s=120, **conf):
    """Read every partition from the beginning up to its high watermark (taken first).

    Returns {partition: [(offset, key, value, headers), ...]} in consumed order."""
    base = {
        "bootstrap.servers": bootstrap,
        "group.id": "rmq-test-nogroup",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
    }
    base.update(conf)
    c = Consumer(base)
    try:
        hw = {}
        for p in range(partitions):
            hw[p] = watermarks(c, topic, p)[1]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out = {p: [] for p in range(partitions)}
        pending = {p for p in range(partitions) if hw[p] > 0}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                got = {p: len(out[p]) for p in out}
                raise AssertionError("consume timed out: high watermarks %s, got %s" % (hw, got))
            msgs = c.consume(num_messages=10000, timeout=0.5)
            for m in msgs:
                if m.error():
                    raise AssertionError("consumer error: %s" % m.error())
                p = m.partition()
                out[p].append((m.offset(), m.key(), m.value(), m.headers()))
                if m.offset() >= hw[p] - 1:
                    pending.discard(p)
        return out, hw
    finally:
        c.close()
