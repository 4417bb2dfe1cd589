"""Raw Kafka wire-protocol helpers for integration tests.

Request/response bodies are encoded and decoded with kafka-python's protocol classes
(kafka.protocol.*), which follow the Kafka protocol spec; this module adds framing over a
plain socket, hand-built RecordBatch v2 bytes (CRC32C included) and a RecordBatch parser, so
tests can send exactly the bytes they want (bad CRCs, oversized batches, garbage, truncated
frames) and compare fetched bytes with produced bytes.
"""

import gzip
import io
import socket
import struct
import time

from kafka.protocol.api_versions import ApiVersionsRequest, ApiVersionsResponse_v0
from kafka.protocol.fetch import FetchRequest
from kafka.protocol.list_offsets import ListOffsetsRequest
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.produce import ProduceRequest
from kafka.protocol.api import ResponseHeader
from kafka.record.util import calc_crc32c

# Kafka error codes used by the tests.
NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18

COMPRESSION_NONE = 0
COMPRESSION_GZIP = 1


# ---------------------------------------------------------------------------------------------
# varints (zigzag, as in RecordBatch v2 records)


def zigzag_varint(value):
    v = (value << 1) ^ (value >> 63)
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_zigzag_varint(buf, pos):
    shift = 0
    v = 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
        if shift > 63:
            raise ValueError("varint too long")
    return (v >> 1) ^ -(v & 1), pos


# ---------------------------------------------------------------------------------------------
# RecordBatch v2


def encode_record(offset_delta, timestamp_delta, key, value, headers=()):
    body = bytearray()
    body.append(0)  # record attributes
    body += zigzag_varint(timestamp_delta)
    body += zigzag_varint(offset_delta)
    for field in (key, value):
        if field is None:
            body += zigzag_varint(-1)
        else:
            body += zigzag_varint(len(field)) + field
    body += zigzag_varint(len(headers))
    for hk, hv in headers:
        hk = hk.encode() if isinstance(hk, str) else hk
        body += zigzag_varint(len(hk)) + hk
        if hv is None:
            body += zigzag_varint(-1)
        else:
            body += zigzag_varint(len(hv)) + hv
    return zigzag_varint(len(body)) + bytes(body)


def build_record_batch(records, base_offset=0, partition_leader_epoch=-1,
                       compression=COMPRESSION_NONE, base_timestamp=None,
                       producer_id=-1, producer_epoch=-1, base_sequence=-1,
                       corrupt_crc=False):
    """Build RecordBatch v2 bytes. records: list of (key, value) or (key, value, headers)."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    encoded = bytearray()
    for i, rec in enumerate(records):
        key, value = rec[0], rec[1]
        headers = rec[2] if len(rec) > 2 else ()
        encoded += encode_record(i, i, key, value, headers)
    payload = bytes(encoded)
    if compression == COMPRESSION_GZIP:
        payload = gzip.compress(payload)
    elif compression != COMPRESSION_NONE:
        raise ValueError("only none/gzip are built by hand")
    n = len(records)
    # Everything the CRC covers: attributes .. end of records.
    after_crc = struct.pack(
        ">hiqqqhii",
        compression,            # attributes
        n - 1,                  # lastOffsetDelta
        base_timestamp,         # baseTimestamp
        base_timestamp + n - 1, # maxTimestamp
        producer_id,
        producer_epoch,
        base_sequence,
        n,                      # records count
    ) + payload
    crc = calc_crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    # batchLength counts from partitionLeaderEpoch to the end.
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", base_offset, batch_length, partition_leader_epoch, 2, crc) + after_crc


class Batch(object):
    """One parsed RecordBatch v2."""

    def __init__(self, raw):
        self.raw = raw
        (self.base_offset, self.batch_length, self.partition_leader_epoch, self.magic,
         self.crc) = struct.unpack_from(">qiibI", raw, 0)
        (self.attributes, self.last_offset_delta, self.base_timestamp, self.max_timestamp,
         self.producer_id, self.producer_epoch, self.base_sequence,
         self.count) = struct.unpack_from(">hiqqqhii", raw, 21)
        self.compression = self.attributes & 0x7

    def crc_ok(self):
        return calc_crc32c(self.raw[21:]) == self.crc

    def bytes_except_offset_and_epoch(self):
        """Batch bytes with baseOffset (8 bytes) and partitionLeaderEpoch (4 bytes) blanked."""
        return b"\0" * 8 + self.raw[8:12] + b"\0" * 4 + self.raw[16:]

    def records(self):
        """Decode records (uncompressed or gzip): list of (offset, key, value, headers)."""
        payload = self.raw[61:]
        if self.compression == COMPRESSION_GZIP:
            payload = gzip.decompress(payload)
        elif self.compression != COMPRESSION_NONE:
            raise ValueError("cannot decode compression %d here" % self.compression)
        out = []
        pos = 0
        for _ in range(self.count):
            length, pos = read_zigzag_varint(payload, pos)
            end = pos + length
            pos += 1  # attributes
            _ts_delta, pos = read_zigzag_varint(payload, pos)
            off_delta, pos = read_zigzag_varint(payload, pos)
            fields = []
            for _f in range(2):
                flen, pos = read_zigzag_varint(payload, pos)
                if flen < 0:
                    fields.append(None)
                else:
                    fields.append(bytes(payload[pos:pos + flen]))
                    pos += flen
            nh, pos = read_zigzag_varint(payload, pos)
            headers = []
            for _h in range(nh):
                hl, pos = read_zigzag_varint(payload, pos)
                hk = bytes(payload[pos:pos + hl])
                pos += hl
                vl, pos = read_zigzag_varint(payload, pos)
                hv = None if vl < 0 else bytes(payload[pos:pos + vl])
                pos += max(vl, 0)
                headers.append((hk, hv))
            assert pos == end, "record length mismatch"
            out.append((self.base_offset + off_delta, fields[0], fields[1], headers))
        return out


def parse_batches(data):
    """Split a records blob (as in a Fetch response) into complete batches.

    A trailing partial batch (allowed by the protocol) is ignored."""
    batches = []
    pos = 0
    data = bytes(data or b"")
    while pos + 12 <= len(data):
        (batch_length,) = struct.unpack_from(">i", data, pos + 8)
        end = pos + 12 + batch_length
        if end > len(data):
            break
        batches.append(Batch(data[pos:end]))
        pos = end
    return batches


# ---------------------------------------------------------------------------------------------
# Framing over a socket


class ConnectionClosed(Exception):
    pass


class RawConn(object):
    """One TCP connection speaking length-prefixed Kafka frames."""

    def __init__(self, host, port, timeout=10.0, client_id="rmq-raw-test"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.client_id = client_id
        self.next_corr = 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- low level
    def send_bytes(self, data):
        self.sock.sendall(data)

    def send_frame(self, payload):
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def _recv_exact(self, n, deadline):
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out reading %d bytes" % n)
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise ConnectionClosed(str(e))
            if not chunk:
                raise ConnectionClosed("EOF after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def recv_frame(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        (size,) = struct.unpack(">i", self._recv_exact(4, deadline))
        return self._recv_exact(size, deadline)

    def wait_closed(self, timeout=5.0):
        """True if the peer closes the connection (EOF or reset) within timeout.

        Any bytes the peer sends first are drained and ignored."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True

    # -- requests
    def encode_request(self, request, correlation_id=None):
        if correlation_id is None:
            correlation_id = self.next_corr
            self.next_corr += 1
        header = request.build_header(correlation_id=correlation_id, client_id=self.client_id)
        return correlation_id, header.encode() + request.encode()

    def send_request(self, request, correlation_id=None):
        corr, payload = self.encode_request(request, correlation_id)
        self.send_frame(payload)
        return corr

    def request(self, request, timeout=None):
        """Send a kafka-python Request and decode its response."""
        corr = self.send_request(request)
        if not request.expect_response():
            return None
        body = self.recv_frame(timeout)
        buf = io.BytesIO(body)
        # ApiVersions responses always use header v0, even for flexible versions.
        if request.API_KEY == API_API_VERSIONS:
            header = ResponseHeader.decode(buf)
        else:
            header = request.RESPONSE_TYPE.parse_header(buf)
        got_corr = header.correlation_id if hasattr(header, "correlation_id") else header[0]
        assert got_corr == corr, "correlation id %r != %r" % (got_corr, corr)
        return request.RESPONSE_TYPE.decode(buf)

    def raw_request(self, api_key, api_version, body=b"", flexible_header=False,
                    correlation_id=None):
        """Send a request with a hand-made header; return (correlation_id)."""
        if correlation_id is None:
            correlation_id = self.next_corr
            self.next_corr += 1
        cid = self.client_id.encode()
        header = struct.pack(">hhih", api_key, api_version, correlation_id, len(cid)) + cid
        if flexible_header:
            header += b"\x00"  # empty tagged fields
        self.send_frame(header + body)
        return correlation_id

    # -- convenience wrappers
    def api_versions(self, version=0):
        if version >= 3:
            return self.request(ApiVersionsRequest[version](
                client_software_name="rmq-raw-test", client_software_version="1.0",
                _tagged_fields={}))
        return self.request(ApiVersionsRequest[version]())

    def metadata(self, topics, version=1):
        if version >= 4:
            return self.request(MetadataRequest[version](topics=topics, allow_auto_topic_creation=True))
        return self.request(MetadataRequest[version](topics=topics))

    def produce(self, topic, partition, batch_bytes, acks=-1, timeout_ms=10000, version=3):
        req = ProduceRequest[version](
            transactional_id=None, required_acks=acks, timeout=timeout_ms,
            topics=[(topic, [(partition, batch_bytes)])])
        resp = self.request(req)
        if acks == 0:
            return None
        (t_name, parts), = resp.topics
        assert t_name == topic
        p = parts[0]
        # v3+: (partition, error_code, offset, timestamp, ...)
        return {"partition": p[0], "error_code": p[1], "base_offset": p[2]}

    def fetch(self, topic, partition, offset, max_bytes=1 << 20, max_wait_ms=100, version=4):
        req = FetchRequest[version](
            replica_id=-1, max_wait_time=max_wait_ms, min_bytes=1, max_bytes=max_bytes,
            isolation_level=0,
            topics=[(topic, [(partition, offset, max_bytes)])])
        resp = self.request(req)
        (t_name, parts), = resp.topics
        assert t_name == topic
        p = parts[0]
        return {"partition": p[0], "error_code": p[1], "high_watermark": p[2],
                "records": p[-1] or b""}

    def list_offsets(self, topic, partition, timestamp=-1, version=1):
        req = ListOffsetsRequest[version](
            replica_id=-1, topics=[(topic, [(partition, timestamp)])])
        resp = self.request(req)
        (t_name, parts), = resp.topics
        p = parts[0]
        return {"partition": p[0], "error_code": p[1], "offset": p[-1]}


def decode_api_versions_v0(body_after_corr):
    """Decode an ApiVersions v0-format response body (after the correlation id)."""
    return ApiVersionsResponse_v0.decode(io.BytesIO(body_after_corr))
