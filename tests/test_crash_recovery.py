"""kill -9 while an acks=all producer is mid-stream, restart on the same data dir, repeat:
every acknowledged record survives, and nothing read back is corrupt."""

import hashlib
import os
import random
import time

import pytest

from conftest import unique_topic
from kafka_util import consume_all, create_topic, producer

CYCLES = int(os.environ.get("RMQ_CRASH_CYCLES", "20"))
PARTITIONS = 3
MIN_ACKS, MAX_ACKS = 1000, 6000   # kill once a random number in this range is acked
SEED = int(os.environ.get("RMQ_CRASH_SEED", "20261121"))
CHUNK = 500                # records produced between polls


def value_of(n):
    head = b"rec-%09d:" % n
    return head + hashlib.sha256(head).hexdigest().encode() * (1 + n % 4)


def parse(key, value):
    n = int(key)
    assert value == value_of(n), "corrupt record %d: %r" % (n, value[:80])
    return n


@pytest.mark.timeout(600)
@pytest.mark.parametrize("segment_bytes", [None, 1048576], ids=["default-segments", "1MiB-segments"])
def test_kill9_cycles_keep_every_acked_record(broker, segment_bytes):
    topic = unique_topic("crash")
    # Small segments make the crashes land across segment rolls too.
    create_topic(broker.bootstrap, topic, PARTITIONS,
                 config={"segment.bytes": str(segment_bytes)} if segment_bytes else None)

    rng = random.Random(SEED)
    acked = set()
    produced = 0
    for cycle in range(CYCLES):
        target = rng.randint(MIN_ACKS, MAX_ACKS)
        cycle_acked = []
        failed = []

        def cb(err, msg):
            if err is None:
                cycle_acked.append(int(msg.key()))
            else:
                failed.append(err)

        p = producer(broker.bootstrap, **{"linger.ms": 2, "message.timeout.ms": 20000,
                                          "retries": 1000000})
        deadline = time.monotonic() + 120
        while len(cycle_acked) < target:
            assert time.monotonic() < deadline, \
                "cycle %d: only %d acks in 120s (errors: %s)" % (cycle, len(cycle_acked), failed[:3])
            for _ in range(CHUNK):
                n = produced
                produced += 1
                while True:
                    try:
                        p.produce(topic, key=b"%d" % n, value=value_of(n), on_delivery=cb)
                        break
                    except BufferError:
                        p.poll(0.05)
            p.poll(0.01)
        # Queue one more chunk so records are in flight, then crash without warning.
        for _ in range(CHUNK):
            p.produce(topic, key=b"%d" % produced, value=value_of(produced), on_delivery=cb)
            produced += 1
        broker.kill9()
        # Whatever was acked before the process died must survive. Collect the last
        # delivery reports (responses already on the socket), then drop the rest.
        p.poll(0)
        p.purge(in_queue=True, in_flight=True, blocking=False)
        p.flush(30)
        acked.update(cycle_acked)
        del p
        broker.start()

    # Final clean restart, then read everything back.
    broker.restart()
    got, hw = consume_all(broker.bootstrap, topic, PARTITIONS, timeout_s=180)
    consumed = []
    for part, msgs in got.items():
        offsets = [m[0] for m in msgs]
        assert offsets == list(range(len(msgs))), \
            "partition %d: offsets not contiguous from 0 after recovery" % part
        for off, key, value, _h in msgs:
            n = parse(key, value)
            assert 0 <= n < produced
            consumed.append(n)
    consumed_set = set(consumed)
    missing = sorted(acked - consumed_set)
    assert not missing, "%d acknowledged records lost (seed %d), e.g. %s" % (
        len(missing), SEED, missing[:10])
    assert len(acked) >= CYCLES * MIN_ACKS
