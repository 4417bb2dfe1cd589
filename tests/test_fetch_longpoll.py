"""Fetch long-poll: an empty fetch waits up to max_wait_ms, and new data ends the wait early."""

import io
import select
import time

import pytest
from kafka.protocol.fetch import FetchRequest, FetchResponse_v4

import kafka_raw as kr
from conftest import unique_topic
from kafka_util import create_topic


def fetch_req(topic, offset, max_wait_ms):
    return FetchRequest[4](replica_id=-1, max_wait_time=max_wait_ms, min_bytes=1,
                           max_bytes=1 << 20, isolation_level=0,
                           topics=[(topic, [(0, offset, 1 << 20)])])


@pytest.mark.timeout(60)
def test_empty_fetch_waits_then_returns_empty(broker):
    topic = unique_topic("lp-empty")
    create_topic(broker.bootstrap, topic, 1)
    with kr.RawConn(broker.host, broker.port) as c:
        t0 = time.monotonic()
        resp = c.request(fetch_req(topic, 0, 1000), timeout=15)
        dt = time.monotonic() - t0
    (_t, parts), = resp.topics
    assert parts[0][1] == kr.NONE
    assert not parts[0][-1], "records from an empty partition"
    assert 0.8 <= dt < 5, "empty fetch with max_wait 1000 ms returned after %.2fs" % dt


@pytest.mark.timeout(60)
def test_produce_wakes_waiting_fetch(broker):
    topic = unique_topic("lp-wake")
    create_topic(broker.bootstrap, topic, 1)
    with kr.RawConn(broker.host, broker.port) as waiter, \
            kr.RawConn(broker.host, broker.port) as prod:
        t0 = time.monotonic()
        waiter.send_request(fetch_req(topic, 0, 20000))
        # The fetch must be parked (no answer yet) before the produce that should wake it.
        readable, _, _ = select.select([waiter.sock], [], [], 0.3)
        assert not readable, "empty fetch with max_wait 20 s answered at once"
        r = prod.produce(topic, 0, kr.build_record_batch([(b"k", b"wake up")]))
        assert r["error_code"] == kr.NONE, r
        body = waiter.recv_frame(timeout=15)
        dt = time.monotonic() - t0
    buf = io.BytesIO(body[4:])
    resp = FetchResponse_v4.decode(buf)
    (_t, parts), = resp.topics
    recs = [x for b in kr.parse_batches(parts[0][-1]) for x in b.records()]
    assert [(x[1], x[2]) for x in recs] == [(b"k", b"wake up")]
    assert dt < 5, "waiting fetch answered after %.2fs (max_wait 20 s): not woken by produce" % dt
