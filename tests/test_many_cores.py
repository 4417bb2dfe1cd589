"""--cores 16 on a 2-CPU machine (unbound executors) still serves produce and consume."""

import pytest

import time

from conftest import cpu_load, unique_topic
from kafka_util import consume_all, create_topic, produce_all, producer

PARTITIONS = 16
N = 4000


@pytest.mark.timeout(180)
def test_cores_16_produce_consume(broker_factory):
    broker = broker_factory(cores=16)
    topic = unique_topic("cores16")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    records = [(b"key-%04d" % (i % 97), b"cores16 value %06d " % i + b"z" * (i % 300))
               for i in range(N)]
    p = producer(broker.bootstrap)
    delivered = produce_all(p, records, topic)
    assert len(delivered) == N
    used = {part for part, _o, _k, _v in delivered}
    assert len(used) >= PARTITIONS // 2, "records landed on only %s" % sorted(used)

    got, hw = consume_all(broker.bootstrap, topic, PARTITIONS)
    consumed = sorted((part, off, k, v) for part, msgs in got.items() for off, k, v, _h in msgs)
    assert consumed == sorted(delivered)
    for part, msgs in got.items():
        assert [m[0] for m in msgs] == list(range(len(msgs))), "partition %d offsets" % part
        # Per partition, values were appended in produce order.
        seqs = [int(v.split()[2]) for _o, _k, v, _h in msgs]
        assert seqs == sorted(seqs), "partition %d out of order" % part

    # A second topic after the first is populated, and a clean stop with 16 shards.
    t2 = unique_topic("cores16b")
    create_topic(broker.bootstrap, t2, 3)
    d2 = produce_all(producer(broker.bootstrap), [(b"a", b"1"), (b"b", b"2")], t2)
    assert len(d2) == 2
    broker.stop()


@pytest.mark.timeout(180)
def test_cores_16_starts_under_cpu_load(broker_factory):
    # 16 unpinned shards on 2 CPUs while other processes compete for the CPUs: every start
    # must reach the ready line promptly (no startup livelock) and stop cleanly.
    broker = broker_factory(cores=16, start=False)
    times = []
    with cpu_load(2):
        for _ in range(8):
            t0 = time.monotonic()
            broker.start()   # fails after RMQ_START_TIMEOUT_S (30 s) without a ready line
            times.append(round(time.monotonic() - t0, 2))
            broker.stop()
    assert max(times) < 15, "slow starts: %s" % times
