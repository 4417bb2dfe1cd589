"""aiokafka (pure-Python asyncio client, its own protocol code): an acks=all producer round
trip, and a consumer group of two AIOKafkaConsumer members with commits and a resume.

Each test is a plain function that runs its coroutine with asyncio.run; every wait polls with
a deadline."""

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from conftest import unique_topic
from kafka_util import create_topic

PARTITIONS = 6
SESSION_TIMEOUT_MS = 10000
HEARTBEAT_INTERVAL_MS = 1000


async def wait_for(pred, timeout_s, msg, interval_s=0.05):
    """Poll pred() (sync) until truthy, yielding to the event loop; AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout_s, msg))
        await asyncio.sleep(interval_s)


async def produce(bootstrap, topic, records, **conf):
    """Send (partition, key, value, headers) records with acks=all; return their metadata."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                request_timeout_ms=20000, **conf)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key, partition=partition,
                                       headers=headers)
                   for partition, key, value, headers in records]
        return [await f for f in futures]
    finally:
        await producer.stop()


def group_consumer(bootstrap, topic, group):
    return AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS, fetch_max_wait_ms=100,
        request_timeout_ms=20000)


async def consume_and_commit(consumers, want, timeout_s):
    """Poll every consumer in turn, committing after each batch, until `want` records arrived.

    Returns [(consumer index, partition, offset, key)] in arrival order."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while len(seen) < want:
        assert time.monotonic() < deadline, "consumed %d of %d records" % (len(seen), want)
        for index, consumer in enumerate(consumers):
            batches = await consumer.getmany(timeout_ms=100)
            for tp, messages in batches.items():
                seen.extend((index, tp.partition, m.offset, m.key) for m in messages)
            if batches:
                await consumer.commit()
    return seen


@pytest.mark.timeout(120)
def test_aiokafka_producer_acks_all_round_trip(broker):
    topic = unique_topic("aiop")
    create_topic(broker.bootstrap, topic, 2)
    records = [(i % 2, b"key-%d" % i, b"value-%d-" % i + b"x" * (i % 50), [("h", b"%d" % i)])
               for i in range(300)]

    async def run():
        sent = await produce(broker.bootstrap, topic, records, enable_idempotence=True,
                             compression_type="gzip", linger_ms=5)
        offsets = {0: [], 1: []}
        for (partition, _, _, _), meta in zip(records, sent):
            assert meta.partition == partition
            offsets[partition].append(meta.offset)
        assert offsets == {0: list(range(150)), 1: list(range(150))}, offsets

        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=100, request_timeout_ms=20000)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in (0, 1)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            got = {}
            deadline = time.monotonic() + 60
            while len(got) < len(records):
                assert time.monotonic() < deadline, "got %d of %d" % (len(got), len(records))
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    for m in messages:
                        assert m.key not in got, "duplicate %r" % m.key
                        got[m.key] = (m.partition, m.value, list(m.headers))
        finally:
            await consumer.stop()
        want = {key: (partition, value, headers) for partition, key, value, headers in records}
        assert got == want

    asyncio.run(run())


@pytest.mark.timeout(180)
def test_aiokafka_group_of_two_consumes_each_record_once_and_a_new_member_resumes(broker):
    topic = unique_topic("aiog")
    group = unique_topic("aiogroup")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    first = 600
    more = 120

    async def run():
        members = [group_consumer(broker.bootstrap, topic, group) for _ in range(2)]
        for member in members:
            await member.start()
        try:
            def split_between_both():
                held = [member.assignment() for member in members]
                every = {TopicPartition(topic, p) for p in range(PARTITIONS)}
                return all(held) and not (held[0] & held[1]) and (held[0] | held[1]) == every
            await wait_for(split_between_both, 60, "both members to share the 6 partitions")

            records = [(i % PARTITIONS, b"a-%d" % i, b"v" * 64, None) for i in range(first)]
            await produce(broker.bootstrap, topic, records)
            seen = await consume_and_commit(members, first, 60)

            assert len(seen) == first, "duplicates: %d records for %d" % (len(seen), first)
            assert sorted(key for _, _, _, key in seen) == sorted(r[1] for r in records)
            by_member = [{p for m, p, _, _ in seen if m == index} for index in (0, 1)]
            assert all(by_member) and not (by_member[0] & by_member[1]), by_member
            for index, member in enumerate(members):
                for tp in member.assignment():
                    assert await member.committed(tp) == first // PARTITIONS, (index, tp)
        finally:
            for member in members:
                await member.stop()

        # Records produced while the group is empty; a new member starts at the commits.
        records = [(i % PARTITIONS, b"b-%d" % i, b"w" * 64, None) for i in range(more)]
        await produce(broker.bootstrap, topic, records)
        newcomer = group_consumer(broker.bootstrap, topic, group)
        await newcomer.start()
        try:
            seen = await consume_and_commit([newcomer], more, 60)
            assert sorted(key for _, _, _, key in seen) == sorted(r[1] for r in records), \
                "the newcomer re-read records the group had committed"
            first_offsets = {}
            for _, partition, offset, _ in seen:
                first_offsets.setdefault(partition, offset)
            assert first_offsets == {p: first // PARTITIONS for p in range(PARTITIONS)}
            for p in range(PARTITIONS):
                committed = await newcomer.committed(TopicPartition(topic, p))
                assert committed == (first + more) // PARTITIONS, (p, committed)
        finally:
            await newcomer.stop()

    asyncio.run(run())
