"""MQTT helpers shared by the tests: a paho-mqtt client wrapper that records everything it
sees, and a tiny raw-socket client for what paho hides (acks withheld, bad input, exact bytes).
"""

import collections
import socket
import struct
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import wait_until

V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5
LEVELS = [V31, V311, V5]
LEVEL_NAMES = {V31: "3.1", V311: "3.1.1", V5: "5"}


def unique_id(prefix="c"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


class Client(object):
    """A connected paho client (over WebSocket when websocket_path is given); received messages
    are kept in order in .messages."""

    def __init__(self, port, client_id=None, protocol=V311, clean=True, keepalive=60,
                 will=None, connect_properties=None, host="127.0.0.1", wait=True,
                 websocket_path=None, username=None, password=None):
        self.protocol = protocol
        self.client_id = client_id if client_id is not None else unique_id()
        self.lock = threading.Lock()
        self.messages = []
        self.connacks = []
        self.disconnects = []
        self.subacks = {}
        self.unsubacks = {}
        self.acked = set()
        kwargs = {}
        if protocol != V5:
            kwargs["clean_session"] = clean
        if websocket_path is not None:
            kwargs["transport"] = "websockets"
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=protocol, reconnect_on_failure=False, **kwargs)
        if websocket_path is not None:
            self.c.ws_set_options(path=websocket_path)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        if will is not None:
            self.c.will_set(**will)
        if username is not None:
            self.c.username_pw_set(username, password)
        connect_kwargs = {}
        if protocol == V5:
            connect_kwargs["clean_start"] = clean
            connect_kwargs["properties"] = connect_properties
        self.c.connect(host, port, keepalive=keepalive, **connect_kwargs)
        self.c.loop_start()
        if wait:
            wait_until(lambda: self.connacks, 10, msg="CONNACK for %s" % self.client_id)

    # -- callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.connacks.append((reason_code, flags, properties))

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append(msg)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.disconnects.append(reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            self.subacks[mid] = reason_codes

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            self.unsubacks[mid] = reason_codes

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.acked.add(mid)

    # -- actions
    @property
    def session_present(self):
        return self.connacks[-1][1].session_present

    def subscribe(self, topic, qos=0, options=None, properties=None, timeout_s=10):
        if options is not None:
            result, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.c.subscribe(topic, qos, properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS
        wait_until(lambda: mid in self.subacks, timeout_s, msg="SUBACK %s" % topic)
        return [int(rc.value) if hasattr(rc, "value") else int(rc) for rc in self.subacks[mid]]

    def unsubscribe(self, topic, timeout_s=10):
        result, mid = self.c.unsubscribe(topic)
        assert result == mqtt.MQTT_ERR_SUCCESS
        wait_until(lambda: mid in self.unsubacks, timeout_s, msg="UNSUBACK %s" % topic)
        codes = self.unsubacks[mid]
        if isinstance(codes, list):
            return [int(rc.value) for rc in codes]
        return codes

    def publish(self, topic, payload, qos=0, retain=False, properties=None, wait=True):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if wait and qos > 0:
            wait_until(lambda: info.mid in self.acked, 10, msg="ack of publish to %s" % topic)
        return info

    def wait_messages(self, count, timeout_s=10):
        wait_until(lambda: len(self.messages) >= count, timeout_s,
                   msg="%d messages at %s (have %d)" % (count, self.client_id, len(self.messages)))
        return list(self.messages)

    def payloads(self):
        with self.lock:
            return [m.payload for m in self.messages]

    def disconnect(self, properties=None, reasoncode=None):
        self.c.disconnect(reasoncode=reasoncode, properties=properties)
        self.c.loop_stop()

    def kill(self):
        """Close the socket without DISCONNECT (an abrupt client failure)."""
        sock = self.c.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.c.loop_stop()


# Connections tried by clients_on_every_shard before giving up on the spread.
MAX_CONNECT_ATTEMPTS = 40


def shard_of(client):
    """The shard a v5 client with an assigned id (empty client id at CONNECT) landed on: the
    first four hex digits of `rmq-<16 hex digits>`."""
    assigned = client.connacks[0][2].AssignedClientIdentifier
    assert assigned.startswith("rmq-") and len(assigned) == 20, assigned
    return int(assigned[4:8], 16)


def clients_on_every_shard(port, per_shard, shards=2):
    """v5 clients with assigned ids, `per_shard` on each shard (SO_REUSEPORT spreads them)."""
    kept = collections.defaultdict(list)
    for _ in range(MAX_CONNECT_ATTEMPTS):
        c = Client(port, client_id="", protocol=V5)
        shard = shard_of(c)
        if len(kept[shard]) < per_shard:
            kept[shard].append(c)
        else:
            c.disconnect()
        if all(len(kept[s]) == per_shard for s in range(shards)):
            return [c for s in range(shards) for c in kept[s]]
    raise AssertionError("connections did not spread over %d shards: %r"
                         % (shards, {s: len(cs) for s, cs in kept.items()}))


def session_expiry(seconds):
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = seconds
    return props


def sub_options(qos=0, no_local=False, retain_as_published=False, retain_handling=0):
    return mqtt.SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=retain_as_published,
                                 retainHandling=retain_handling)


# ---------------------------------------------------------------- raw client

def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def mqtt_string(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">H", len(s)) + s


def packet(first_byte, body):
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(client_id, level=4, clean=True, keepalive=60, properties=b"", will=None):
    name = b"MQIsdp" if level == 3 else b"MQTT"
    flags = 0x02 if clean else 0
    payload = mqtt_string(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        if level == 5:
            payload += varint(0)
        payload += mqtt_string(topic) + mqtt_string(message)
    body = mqtt_string(name) + bytes([level, flags]) + struct.pack(">H", keepalive)
    if level == 5:
        body += varint(len(properties)) + properties
    return packet(0x10, body + payload)


def publish_packet(topic, payload, qos=0, pkid=0, level=4, dup=False, retain=False,
                   properties=b""):
    body = mqtt_string(topic)
    if qos:
        body += struct.pack(">H", pkid)
    if level == 5:
        body += varint(len(properties)) + properties
    return packet(0x30 | (dup << 3) | (qos << 1) | int(retain), body + payload)


def subscribe_packet(pkid, filters, level=4, properties=b""):
    body = struct.pack(">H", pkid)
    if level == 5:
        body += varint(len(properties)) + properties
    for f, options in filters:
        body += mqtt_string(f) + bytes([options])
    return packet(0x82, body)


def ack_packet(kind, pkid):
    first = {"puback": 0x40, "pubrec": 0x50, "pubrel": 0x62, "pubcomp": 0x70}[kind]
    return packet(first, struct.pack(">H", pkid))


class Raw(object):
    """A blocking socket speaking raw MQTT; read_packet() returns (type, flags, body)."""

    def __init__(self, port, host="127.0.0.1", timeout_s=10):
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def read_packet(self, timeout_s=10):
        deadline = time.monotonic() + timeout_s
        self._fill(2, deadline)
        length, shift, i = 0, 0, 1
        while True:
            self._fill(i + 1, deadline)
            byte = self.buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
        self._fill(i + length, deadline)
        first, body = self.buf[0], self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return first >> 4, first & 0x0F, body

    def expect_closed(self, timeout_s=10):
        """Reads until the server closes; returns the packets it sent before closing."""
        packets = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                packets.append(self.read_packet(max(0.01, deadline - time.monotonic())))
            except (EOFError, ConnectionResetError):
                return packets
            except socket.timeout:
                raise AssertionError("server did not close the connection; got %r" % packets)

    def nothing_within(self, seconds):
        """True if no packet arrives within `seconds` (a bounded negative check)."""
        try:
            self.read_packet(seconds)
        except socket.timeout:
            return True
        return False

    def close(self):
        self.sock.close()


def raw_connect(port, client_id, level=4, clean=True, keepalive=60, properties=b"", will=None):
    raw = Raw(port)
    raw.send(connect_packet(client_id, level, clean, keepalive, properties, will))
    ptype, _, body = raw.read_packet()
    assert ptype == 2, "expected CONNACK, got type %d" % ptype
    assert body[1] == 0, "CONNACK refused with %#x" % body[1]
    return raw, body


def publish_fields(body, qos, level=4):
    """(topic, pkid, payload) of a PUBLISH body."""
    (tlen,) = struct.unpack(">H", body[:2])
    topic = body[2:2 + tlen].decode()
    rest = body[2 + tlen:]
    pkid = 0
    if qos:
        (pkid,) = struct.unpack(">H", rest[:2])
        rest = rest[2:]
    if level == 5:
        plen, n, shift = 0, 0, 0
        while True:
            byte = rest[n]
            plen |= (byte & 0x7F) << shift
            n += 1
            shift += 7
            if not byte & 0x80:
                break
        rest = rest[n + plen:]
    return topic, pkid, rest


# v5 property identifiers by value type (MQTT 5 section 2.2.2.2).
_BYTE_PROPS = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_U16_PROPS = {0x13, 0x21, 0x22, 0x23}
_U32_PROPS = {0x02, 0x11, 0x18, 0x27}
_STRING_PROPS = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}


def read_varint(data, offset):
    """(value, next offset) of the variable byte integer at data[offset:]."""
    value, shift = 0, 0
    while True:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        shift += 7
        if not byte & 0x80:
            return value, offset


def read_properties(data, offset):
    """v5 properties at data[offset:] (length first): ({identifier: [values]}, next offset).
    Integers decode to int, strings and binary data stay bytes, user properties are pairs."""
    length, i = read_varint(data, offset)
    end = i + length
    props = {}
    while i < end:
        ident = data[i]
        i += 1
        if ident in _BYTE_PROPS:
            value, i = data[i], i + 1
        elif ident in _U16_PROPS:
            (value,), i = struct.unpack(">H", data[i:i + 2]), i + 2
        elif ident in _U32_PROPS:
            (value,), i = struct.unpack(">I", data[i:i + 4]), i + 4
        elif ident == 0x0B:
            value, i = read_varint(data, i)
        elif ident in _STRING_PROPS:
            (n,) = struct.unpack(">H", data[i:i + 2])
            value, i = data[i + 2:i + 2 + n], i + 2 + n
        elif ident == 0x26:
            (n,) = struct.unpack(">H", data[i:i + 2])
            key, i = data[i + 2:i + 2 + n], i + 2 + n
            (n,) = struct.unpack(">H", data[i:i + 2])
            value, i = (key, data[i + 2:i + 2 + n]), i + 2 + n
        else:
            raise AssertionError("unknown property identifier %#x" % ident)
        props.setdefault(ident, []).append(value)
    return props, end


def publish_v5_fields(body, qos):
    """(topic, pkid, properties, payload) of a v5 PUBLISH body."""
    (tlen,) = struct.unpack(">H", body[:2])
    topic = body[2:2 + tlen].decode()
    offset = 2 + tlen
    pkid = 0
    if qos:
        (pkid,) = struct.unpack(">H", body[offset:offset + 2])
        offset += 2
    props, offset = read_properties(body, offset)
    return topic, pkid, props, body[offset:]
