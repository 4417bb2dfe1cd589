"""DescribeLogDirs (API key 35): kafka-python's KafkaAdminClient.describe_log_dirs (v0; librdkafka
has no such admin call) and a hand-encoded v4 request for the volume's total and usable bytes."""

import os
import struct

import pytest
from kafka import KafkaAdminClient

import kafka_raw as kr
from conftest import unique_topic
from kafka_util import create_topic, produce_all, producer

API_DESCRIBE_LOG_DIRS = 35


def kafka_python_log_dirs(bootstrap):
    """{log_dir: {(topic, partition): (size_bytes, offset_lag, is_future)}} via kafka-python."""
    client = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    try:
        response = client.describe_log_dirs()
    finally:
        client.close()
    dirs = {}
    for error_code, log_dir, topics in response.log_dirs:
        assert error_code == 0, (log_dir, error_code)
        partitions = dirs.setdefault(log_dir, {})
        for name, parts in topics:
            for index, size_bytes, offset_lag, is_future in parts:
                partitions[(name, index)] = (size_bytes, offset_lag, is_future)
    return dirs


def sizes_of(dirs, topic):
    return {p: v[0] for partitions in dirs.values() for (t, p), v in partitions.items() if t == topic}


@pytest.mark.timeout(120)
def test_describe_log_dirs_reports_partition_sizes_that_grow_with_produced_records(broker):
    topic = unique_topic("logdirs")
    create_topic(broker.bootstrap, topic, 4)
    p = producer(broker.bootstrap)
    for partition in (0, 1):
        produce_all(p, [(b"k%d" % i, b"v" * 200) for i in range(100)], topic, partition=partition)

    dirs = kafka_python_log_dirs(broker.bootstrap)
    assert list(dirs) == [os.path.abspath(broker.data_dir)], dirs.keys()
    (partitions,) = dirs.values()
    ours = {key: value for key, value in partitions.items() if key[0] == topic}
    assert sorted(ours) == [(topic, p) for p in range(4)], ours
    assert all(lag == 0 and not future for _, lag, future in ours.values()), ours
    before = sizes_of(dirs, topic)
    assert before[0] >= 100 * 200 and before[1] >= 100 * 200, before
    assert before[2] == 0 and before[3] == 0, before

    produce_all(p, [(b"k%d" % i, b"w" * 300) for i in range(100)], topic, partition=0)
    after = sizes_of(kafka_python_log_dirs(broker.bootstrap), topic)
    assert after[0] >= before[0] + 100 * 300, (before, after)
    assert [after[p] for p in (1, 2, 3)] == [before[p] for p in (1, 2, 3)], (before, after)


# -- DescribeLogDirs v4 by hand (flexible versions: compact strings and arrays, tagged fields)


def uvarint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def compact_string(s):
    raw = s.encode()
    return uvarint(len(raw) + 1) + raw


def encode_v4_request(topics):
    """topics: None (all) or [(name, [partition, ...])]."""
    if topics is None:
        return uvarint(0) + b"\x00"
    body = uvarint(len(topics) + 1)
    for name, partitions in topics:
        body += compact_string(name) + uvarint(len(partitions) + 1)
        body += b"".join(struct.pack(">i", p) for p in partitions) + b"\x00"
    return body + b"\x00"


class Reader(object):
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def uvarint(self):
        shift = value = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    def compact_string(self):
        n = self.uvarint() - 1
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw.decode()

    def no_tagged_fields(self):
        assert self.uvarint() == 0, "unexpected tagged fields"


def decode_v4_response(frame, correlation_id):
    r = Reader(frame)
    assert r.take(">i") == correlation_id
    r.no_tagged_fields()  # response header v1
    r.take(">i")  # throttle_time_ms
    assert r.take(">h") == 0  # error_code
    results = []
    for _ in range(r.uvarint() - 1):
        error_code = r.take(">h")
        log_dir = r.compact_string()
        partitions = {}
        for _ in range(r.uvarint() - 1):
            name = r.compact_string()
            for _ in range(r.uvarint() - 1):
                index, size_bytes, lag, future = r.take(">i"), r.take(">q"), r.take(">q"), r.take(">?")
                r.no_tagged_fields()
                partitions[(name, index)] = (size_bytes, lag, future)
            r.no_tagged_fields()
        total_bytes, usable_bytes = r.take(">q"), r.take(">q")
        r.no_tagged_fields()
        results.append((error_code, log_dir, partitions, total_bytes, usable_bytes))
    r.no_tagged_fields()
    assert r.pos == len(frame), "trailing bytes"
    return results


def describe_log_dirs_v4(broker, topics):
    with kr.RawConn(broker.host, broker.port) as conn:
        corr = conn.raw_request(API_DESCRIBE_LOG_DIRS, 4, encode_v4_request(topics),
                                flexible_header=True)
        return decode_v4_response(conn.recv_frame(), corr)


@pytest.mark.timeout(120)
def test_describe_log_dirs_v4_has_volume_bytes_and_only_the_partitions_asked_for(broker):
    topic = unique_topic("logdirs4")
    create_topic(broker.bootstrap, topic, 3)
    produce_all(producer(broker.bootstrap), [(b"k", b"v" * 100)] * 50, topic, partition=2)

    asked = [(topic, [0, 2, 99]), (unique_topic("missing"), [0])]
    ((error_code, log_dir, partitions, total_bytes, usable_bytes),) = \
        describe_log_dirs_v4(broker, asked)
    assert error_code == 0
    assert log_dir == os.path.abspath(broker.data_dir)
    assert sorted(partitions) == [(topic, 0), (topic, 2)], partitions
    assert partitions[(topic, 0)] == (0, 0, False)
    assert partitions[(topic, 2)][0] >= 50 * 100, partitions

    volume = os.statvfs(broker.data_dir)
    assert total_bytes == volume.f_blocks * volume.f_frsize
    assert 0 < usable_bytes <= total_bytes

    (everything,) = describe_log_dirs_v4(broker, None)
    assert {(topic, p) for p in range(3)} <= set(everything[2]), everything[2]
