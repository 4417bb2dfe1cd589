"""Idempotent produce at the wire level: InitProducerId, duplicate batches are not appended
twice, sequence gaps are refused."""

import pytest
from kafka.protocol.init_producer_id import InitProducerIdRequest

import kafka_raw as kr
from conftest import unique_topic
from kafka_util import create_topic

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46


def init_pid(conn):
    r = conn.request(InitProducerIdRequest[0](transactional_id=None, transaction_timeout_ms=60000))
    assert r.error_code == kr.NONE, r
    assert r.producer_id >= 0 and r.producer_epoch >= 0, r
    return r.producer_id, r.producer_epoch


def batch(pid, epoch, seq, values):
    return kr.build_record_batch([(b"k", v) for v in values], producer_id=pid,
                                 producer_epoch=epoch, base_sequence=seq)


@pytest.mark.timeout(60)
def test_duplicate_batch_is_not_appended_twice(broker):
    topic = unique_topic("idem")
    create_topic(broker.bootstrap, topic, 1)
    with kr.RawConn(broker.host, broker.port) as c:
        pid, epoch = init_pid(c)
        pid2, _ = init_pid(c)
        assert pid2 != pid, "InitProducerId handed out the same id twice"

        b0 = batch(pid, epoch, 0, [b"a", b"b", b"c"])
        r = c.produce(topic, 0, b0)
        assert (r["error_code"], r["base_offset"]) == (kr.NONE, 0), r
        b1 = batch(pid, epoch, 3, [b"d", b"e"])
        r = c.produce(topic, 0, b1)
        assert (r["error_code"], r["base_offset"]) == (kr.NONE, 3), r

        # Retry of the last batch (same pid/epoch/sequence): acknowledged, not re-appended.
        r = c.produce(topic, 0, b1)
        assert r["error_code"] in (kr.NONE, DUPLICATE_SEQUENCE_NUMBER), r
        if r["error_code"] == kr.NONE:
            assert r["base_offset"] == 3, "duplicate acked with a new offset: %r" % r
        # Retry of an older batch still in the dedup window.
        r = c.produce(topic, 0, b0)
        assert r["error_code"] in (kr.NONE, DUPLICATE_SEQUENCE_NUMBER), r
        assert c.fetch(topic, 0, 0)["high_watermark"] == 5

        # A gap in the sequence is refused and writes nothing.
        r = c.produce(topic, 0, batch(pid, epoch, 9, [b"gap"]))
        assert r["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, r
        assert c.fetch(topic, 0, 0)["high_watermark"] == 5

        # The next in-order batch is fine; a second producer has its own sequence space.
        r = c.produce(topic, 0, batch(pid, epoch, 5, [b"f"]))
        assert (r["error_code"], r["base_offset"]) == (kr.NONE, 5), r
        r = c.produce(topic, 0, batch(pid2, 0, 0, [b"other"]))
        assert (r["error_code"], r["base_offset"]) == (kr.NONE, 6), r

        f = c.fetch(topic, 0, 0)
        vals = [x[2] for b in kr.parse_batches(f["records"]) for x in b.records()]
        assert vals == [b"a", b"b", b"c", b"d", b"e", b"f", b"other"]
