"""200,000 keyed 1 KiB records through an idempotent acks=all producer, read back exactly."""

import hashlib
import os
from collections import defaultdict

import pytest

from conftest import unique_topic
from kafka_util import (consume_all, create_topic, produce_all, producer,
                        wait_for_total_high_watermark)

N_RECORDS = int(os.environ.get("RMQ_PC_RECORDS", "200000"))
N_KEYS = 1000
PARTITIONS = 8
VALUE_SIZE = 1024


def key_of(k):
    return b"key-%05d" % k


def value_of(k, seq):
    head = b"k=%05d seq=%07d " % (k, seq)
    digest = hashlib.sha256(head).hexdigest().encode()
    body = (head + digest) * (VALUE_SIZE // (len(head) + len(digest)) + 1)
    return body[:VALUE_SIZE]


def parse_value(v):
    # b"k=00012 seq=0000003 ..."
    parts = v[:22].split()
    return int(parts[0][2:]), int(parts[1][4:])


@pytest.mark.timeout(600)
def test_200k_keyed_records_idempotent_acks_all(broker):
    topic = unique_topic("pc")
    create_topic(broker.bootstrap, topic, PARTITIONS)

    p = producer(broker.bootstrap, **{"linger.ms": 10, "batch.size": 1000000,
                                      "queue.buffering.max.messages": 200000})
    acked = defaultdict(list)   # partition -> [(offset, k, seq)] in delivery-report order
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
            return
        k, seq = parse_value(msg.value())
        acked[msg.partition()].append((msg.offset(), k, seq))

    seq_of = [0] * N_KEYS
    for i in range(N_RECORDS):
        k = i % N_KEYS
        seq = seq_of[k]
        seq_of[k] += 1
        while True:
            try:
                p.produce(topic, key=key_of(k), value=value_of(k, seq), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(300) == 0, "undelivered messages after flush"
    assert not errors, "delivery errors: %s" % errors[:5]
    n_acked = sum(len(v) for v in acked.values())
    assert n_acked == N_RECORDS

    got, hw = consume_all(broker.bootstrap, topic, PARTITIONS, timeout_s=300)

    total = sum(len(v) for v in got.values())
    assert total == N_RECORDS, "consumed %d records, expected %d (hw=%s)" % (total, N_RECORDS, hw)
    assert sum(hw.values()) == N_RECORDS, "high watermarks %s" % hw

    seen = set()
    key_partition = {}
    for part, msgs in got.items():
        offsets = [m[0] for m in msgs]
        assert offsets == list(range(len(msgs))), "partition %d offsets not contiguous from 0" % part
        last_seq = {}
        for off, key, value, _h in msgs:
            k, seq = parse_value(value)
            assert key == key_of(k), "key/value mismatch at %d/%d" % (part, off)
            assert value == value_of(k, seq), "corrupt value at %d/%d" % (part, off)
            assert (k, seq) not in seen, "duplicate key %d seq %d" % (k, seq)
            seen.add((k, seq))
            assert key_partition.setdefault(k, part) == part, "key %d in two partitions" % k
            assert seq > last_seq.get(k, -1), "key %d out of order in partition %d" % (k, part)
            last_seq[k] = seq
        # Consumed order and offsets equal what the delivery reports said.
        assert [(o, *parse_value(v)) for o, _k, v, _h in msgs] == sorted(acked[part]), \
            "partition %d differs from delivery reports" % part
    assert len(seen) == N_RECORDS
    for k in range(N_KEYS):
        assert (k, seq_of[k] - 1) in seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("acks", ["0", "1"])
def test_acks_0_and_1_non_idempotent(broker, acks):
    topic = unique_topic("acks" + acks)
    create_topic(broker.bootstrap, topic, 2)
    records = [(b"a%d" % (i % 10), b"acks=%s value %05d" % (acks.encode(), i)) for i in range(5000)]
    p = producer(broker.bootstrap, **{"acks": acks, "enable.idempotence": False,
                                      "max.in.flight.requests.per.connection": 1})
    delivered = produce_all(p, records, topic)
    assert len(delivered) == len(records)
    if acks == "0":
        wait_for_total_high_watermark(broker.bootstrap, topic, 2, len(records))
    got, hw = consume_all(broker.bootstrap, topic, 2)
    consumed = [(k, v) for part in sorted(got) for _o, k, v, _h in got[part]]
    assert sorted(consumed) == sorted(records)
    assert sum(hw.values()) == len(records)
    for part, msgs in got.items():
        nums = [int(v.split()[-1]) for _o, _k, v, _h in msgs]
        assert nums == sorted(nums), "partition %d out of order" % part


@pytest.mark.timeout(60)
def test_raw_produce_acks_0_then_fetch(broker):
    import kafka_raw as kr
    topic = unique_topic("rawacks0")
    create_topic(broker.bootstrap, topic, 1)
    with kr.RawConn(broker.host, broker.port) as c:
        for i in range(3):
            assert c.produce(topic, 0, kr.build_record_batch([(b"k", b"acks0-%d" % i)]), acks=0) is None
        # acks=0 sends no response: the next response on the wire answers the next request.
        r = c.produce(topic, 0, kr.build_record_batch([(b"k", b"acks1")]), acks=1)
        assert r["error_code"] == kr.NONE and r["base_offset"] == 3, r
        f = c.fetch(topic, 0, 0)
        vals = [x[2] for b in kr.parse_batches(f["records"]) for x in b.records()]
        assert vals == [b"acks0-0", b"acks0-1", b"acks0-2", b"acks1"]
        lo = c.list_offsets(topic, 0, timestamp=-2)
        hi = c.list_offsets(topic, 0, timestamp=-1)
        assert (lo["error_code"], lo["offset"]) == (kr.NONE, 0), lo
        assert (hi["error_code"], hi["offset"]) == (kr.NONE, 4), hi
