"""Compressed batches pass through: every codec round-trips, and fetched batch bytes are the
produced bytes (apart from baseOffset and partitionLeaderEpoch, which the broker assigns)."""

import pytest

import kafka_raw as kr
from conftest import unique_topic
from kafka_util import consume_all, create_topic, produce_all, producer

CODECS = ["gzip", "snappy", "lz4", "zstd"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("codec", CODECS)
def test_codec_round_trip(broker, codec):
    topic = unique_topic("comp-" + codec)
    create_topic(broker.bootstrap, topic, 2)
    # Compressible values (repeated text) and a few incompressible ones.
    records = []
    for i in range(3000):
        if i % 100 == 7:
            value = bytes((i * 7919 + j * 104729) % 251 for j in range(600))
        else:
            value = (b"%s record %06d " % (codec.encode(), i)) * 20
        records.append((b"k%04d" % (i % 50), value))
    p = producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20})
    delivered = produce_all(p, records, topic)
    assert len(delivered) == len(records)

    got, _hw = consume_all(broker.bootstrap, topic, 2)
    consumed = sorted((part, off, k, v) for part, msgs in got.items() for off, k, v, _h in msgs)
    assert consumed == sorted(delivered), "consumed records differ from delivered ones"
    # Same multiset of (key, value) as produced.
    assert sorted((k, v) for _p, _o, k, v in consumed) == sorted(records)


def _wait_for_topic_raw(conn, topic, timeout_s=30):
    from conftest import wait_until

    def ready():
        md = conn.metadata([topic])
        t = [t for t in md.topics if t[1] == topic]
        return t and t[0][0] == kr.NONE and len(t[0][3]) > 0 and all(p[0] == 0 for p in t[0][3])
    wait_until(ready, timeout_s, msg="metadata for %s" % topic)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", [kr.COMPRESSION_NONE, kr.COMPRESSION_GZIP],
                         ids=["none", "gzip"])
def test_fetched_batch_bytes_equal_produced_bytes(broker, compression):
    topic = unique_topic("rawbytes")
    create_topic(broker.bootstrap, topic, 1)
    batches = [
        kr.build_record_batch(
            [(b"key-a", b"value-a" * 10), (None, b"no key"), (b"key-c", None),
             (b"key-d", b"hdr", [("h1", b"v1"), ("h2", None)])],
            compression=compression, base_timestamp=1700000000000),
        kr.build_record_batch(
            [(b"k%03d" % i, (b"v%03d" % i) * 50) for i in range(100)],
            compression=compression, base_timestamp=1700000001000),
    ]
    with kr.RawConn(broker.host, broker.port) as conn:
        _wait_for_topic_raw(conn, topic)
        expected_offset = 0
        for b in batches:
            r = conn.produce(topic, 0, b, acks=-1)
            assert r["error_code"] == kr.NONE, r
            assert r["base_offset"] == expected_offset, r
            expected_offset += kr.Batch(b).count

        fetched = []
        offset = 0
        while len(fetched) < len(batches):
            f = conn.fetch(topic, 0, offset)
            assert f["error_code"] == kr.NONE, f
            assert f["high_watermark"] == expected_offset, f
            got = kr.parse_batches(f["records"])
            assert got, "fetch at offset %d returned no complete batch" % offset
            fetched.extend(got)
            offset = got[-1].base_offset + got[-1].last_offset_delta + 1

    assert len(fetched) == len(batches)
    offset = 0
    for sent_bytes, got in zip(batches, fetched):
        sent = kr.Batch(sent_bytes)
        assert got.base_offset == offset
        assert got.crc_ok(), "fetched batch has a bad CRC"
        assert len(got.raw) == len(sent_bytes)
        assert got.bytes_except_offset_and_epoch() == sent.bytes_except_offset_and_epoch(), \
            "fetched batch bytes differ from produced bytes"
        assert [r[1:] for r in got.records()] == [r[1:] for r in sent.records()]
        offset += sent.count
