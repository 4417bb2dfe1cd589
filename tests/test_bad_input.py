"""Bad input gets a Kafka error code or a closed connection: never a crash, never a partial
write, and other clients keep working."""

import struct

import pytest
from kafka.protocol.produce import ProduceRequest

import kafka_raw as kr
from conftest import rss_kib, unique_topic, wait_until
from kafka_util import create_topic

AUTO_CREATE_KEY = "auto_create_topics_enable"


def assert_healthy(broker, topic=None):
    """The process is alive and a fresh connection still produces and fetches."""
    assert broker.alive(), "rmq-node died; stderr:\n" + broker.log_tail()
    with kr.RawConn(broker.host, broker.port) as c:
        av = c.api_versions(0)
        assert av.error_code == kr.NONE
        if topic is not None:
            before = c.fetch(topic, 0, 0)["high_watermark"]
            r = c.produce(topic, 0, kr.build_record_batch([(b"ok", b"still works")]))
            assert r["error_code"] == kr.NONE, r
            assert r["base_offset"] == before
            f = c.fetch(topic, 0, before)
            recs = [x for b in kr.parse_batches(f["records"]) for x in b.records()]
            assert (before, b"ok", b"still works", []) in recs


def wait_topic(conn, topic, timeout_s=30):
    def ready():
        md = conn.metadata([topic])
        t = [t for t in md.topics if t[1] == topic]
        return t and t[0][0] == kr.NONE and t[0][3] and all(p[0] == kr.NONE for p in t[0][3])
    wait_until(ready, timeout_s, msg="topic %s in metadata" % topic)


@pytest.fixture
def topic(broker):
    name = unique_topic("bad")
    create_topic(broker.bootstrap, name, 1, config={"max.message.bytes": "1000"})
    return name


@pytest.mark.timeout(60)
def test_unknown_topic_with_auto_create_disabled(broker_factory):
    broker = broker_factory(config={AUTO_CREATE_KEY: False})
    name = unique_topic("nope")
    with kr.RawConn(broker.host, broker.port) as c:
        md = c.metadata([name], version=1)
        (t,) = [t for t in md.topics if t[1] == name]
        assert t[0] == kr.UNKNOWN_TOPIC_OR_PARTITION, md
        r = c.produce(name, 0, kr.build_record_batch([(b"k", b"v")]))
        assert r["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, r
        # Still unknown afterwards: nothing was created as a side effect.
        md = c.metadata([name], version=1)
        (t,) = [t for t in md.topics if t[1] == name]
        assert t[0] == kr.UNKNOWN_TOPIC_OR_PARTITION, md
    # Explicit creation still works on that broker.
    create_topic(broker.bootstrap, name, 1)
    assert_healthy(broker, name)


@pytest.mark.timeout(60)
def test_unknown_topic_is_auto_created_by_default(broker):
    name = unique_topic("auto")
    with kr.RawConn(broker.host, broker.port) as c:
        wait_topic(c, name)
        md = c.metadata([name])
        (t,) = [t for t in md.topics if t[1] == name]
        assert len(t[3]) == 1, "default num.partitions is 1: %r" % (t,)
        r = c.produce(name, 0, kr.build_record_batch([(b"k", b"v")]))
        assert r["error_code"] == kr.NONE, r


@pytest.mark.timeout(60)
def test_batch_over_max_message_bytes(broker, topic):
    with kr.RawConn(broker.host, broker.port) as c:
        big = kr.build_record_batch([(b"k", b"x" * 2000)])
        r = c.produce(topic, 0, big)
        assert r["error_code"] == kr.MESSAGE_TOO_LARGE, r
        f = c.fetch(topic, 0, 0)
        assert f["high_watermark"] == 0, "rejected batch was written: %r" % f
        small = kr.build_record_batch([(b"k", b"y" * 500)])
        r = c.produce(topic, 0, small)
        assert r["error_code"] == kr.NONE, r
        assert r["base_offset"] == 0
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
def test_bad_crc_is_corrupt_message(broker, topic):
    with kr.RawConn(broker.host, broker.port) as c:
        bad = kr.build_record_batch([(b"k", b"v1"), (b"k", b"v2")], corrupt_crc=True)
        r = c.produce(topic, 0, bad)
        assert r["error_code"] == kr.CORRUPT_MESSAGE, r
        # A batch whose bytes were flipped after the CRC was computed.
        good = bytearray(kr.build_record_batch([(b"k", b"payload-123")]))
        good[-3] ^= 0x01
        r = c.produce(topic, 0, bytes(good))
        assert r["error_code"] == kr.CORRUPT_MESSAGE, r
        f = c.fetch(topic, 0, 0)
        assert f["high_watermark"] == 0, "corrupt batch was written: %r" % f
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
def test_api_versions_unsupported_version(broker, topic):
    with kr.RawConn(broker.host, broker.port) as c:
        supported = {k: (lo, hi) for k, lo, hi in c.api_versions(0).api_versions}
        corr = c.raw_request(kr.API_API_VERSIONS, 127, flexible_header=True)
        body = c.recv_frame()
        (got_corr,) = struct.unpack_from(">i", body, 0)
        assert got_corr == corr
        resp = kr.decode_api_versions_v0(body[4:])
        assert resp.error_code == kr.UNSUPPORTED_VERSION, resp
        listed = {k: (lo, hi) for k, lo, hi in resp.api_versions}
        assert listed.get(kr.API_API_VERSIONS) == supported[kr.API_API_VERSIONS], listed
        assert kr.API_PRODUCE in listed and kr.API_FETCH in listed, listed
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
def test_api_versions_advertises_required_apis(broker):
    with kr.RawConn(broker.host, broker.port) as c:
        for v in (0, 3):
            resp = c.api_versions(v)
            assert resp.error_code == kr.NONE
            listed = {k: (lo, hi) for k, lo, hi, *_ in resp.api_versions}
            # Produce, Fetch, ListOffsets, Metadata, ApiVersions, CreateTopics, DeleteTopics,
            # InitProducerId, DescribeConfigs, CreatePartitions.
            for key in (0, 1, 2, 3, 18, 19, 20, 22, 32, 37):
                assert key in listed, "api key %d missing from ApiVersions v%d" % (key, v)
            assert listed[0][0] <= 3 <= listed[0][1]
            assert listed[1][0] <= 4 <= listed[1][1]


@pytest.mark.timeout(60)
def test_produce_unsupported_version(broker, topic):
    with kr.RawConn(broker.host, broker.port) as c:
        corr = c.raw_request(kr.API_PRODUCE, 99, body=b"\x00" * 32, flexible_header=True)
        try:
            body = c.recv_frame(timeout=5)
            # A broker may answer instead of closing; the answer must be for this request.
            (got_corr,) = struct.unpack_from(">i", body, 0)
            assert got_corr == corr
        except kr.ConnectionClosed:
            pass
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
def test_huge_declared_frame_closes_without_allocating(broker, topic):
    rss_before = rss_kib(broker.pid)
    with kr.RawConn(broker.host, broker.port) as c:
        c.send_bytes(struct.pack(">i", 200 * 1024 * 1024) + b"\x00\x12\x00\x00" + b"\x00" * 60)
        assert c.wait_closed(timeout=5), "connection not closed after a 200 MiB frame header"
    rss_after = rss_kib(broker.pid)
    assert rss_after < 200 * 1024, "VmRSS %d KiB after a 200 MiB frame header" % rss_after
    assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff" + b"\xde\xad\xbe\xef" * 4,             # negative frame size
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                      # ~1.2 GB declared size
    struct.pack(">i", 16) + b"\x7f\x7f\x7f\x7f" + b"\xab" * 12,  # unknown api key, junk header
    struct.pack(">i", 2) + b"\x00\x00",                        # frame too short for a header
], ids=["negative-size", "http", "unknown-api-key", "short-header"])
def test_garbage_closes_connection(broker, topic, garbage):
    with kr.RawConn(broker.host, broker.port) as c:
        c.send_bytes(garbage)
        assert c.wait_closed(timeout=5), "connection still open after garbage %r" % garbage[:16]
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
def test_truncated_frames_close_connection(broker, topic):
    # 1. EOF in the middle of a frame.
    with kr.RawConn(broker.host, broker.port) as c:
        c.send_bytes(struct.pack(">i", 100) + b"\x00\x00\x00\x03" + b"\x00" * 10)
        c.sock.shutdown(1)  # SHUT_WR
        assert c.wait_closed(timeout=5)
    # 2. A complete frame whose Produce body ends mid-field.
    with kr.RawConn(broker.host, broker.port) as c:
        _corr, payload = c.encode_request(
            ProduceRequest[3](
                transactional_id=None, required_acks=-1, timeout=1000,
                topics=[(topic, [(0, kr.build_record_batch([(b"k", b"v")]))])]))
        c.send_frame(payload[:len(payload) - 20])
        assert c.wait_closed(timeout=5), "connection open after a truncated Produce body"
    with kr.RawConn(broker.host, broker.port) as c:
        f = c.fetch(topic, 0, 0)
    assert f["high_watermark"] == 0, "truncated produce wrote something: %r" % f
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
def test_unknown_partition_and_unknown_topic_fetch(broker, topic):
    with kr.RawConn(broker.host, broker.port) as c:
        r = c.produce(topic, 5, kr.build_record_batch([(b"k", b"v")]))
        assert r["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, r
        f = c.fetch(topic, 5, 0)
        assert f["error_code"] == kr.UNKNOWN_TOPIC_OR_PARTITION, f
    assert_healthy(broker, topic)


@pytest.mark.timeout(60)
def test_create_topics_errors(broker, topic):
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic
    from kafka_util import admin

    a = admin(broker.bootstrap)

    def create_error(new_topic):
        fut = a.create_topics([new_topic], request_timeout=20)[new_topic.topic]
        with pytest.raises(KafkaException) as ei:
            fut.result(timeout=20)
        return ei.value.args[0].code()

    assert create_error(NewTopic(topic, num_partitions=1, replication_factor=1)) \
        == KafkaError.TOPIC_ALREADY_EXISTS
    assert create_error(NewTopic(unique_topic("zero"), num_partitions=0, replication_factor=1)) \
        == KafkaError.INVALID_PARTITIONS
    assert create_error(NewTopic("bad/name", num_partitions=1, replication_factor=1)) \
        == KafkaError.TOPIC_EXCEPTION
    assert create_error(NewTopic("a" * 250, num_partitions=1, replication_factor=1)) \
        == KafkaError.TOPIC_EXCEPTION
    assert_healthy(broker, topic)
