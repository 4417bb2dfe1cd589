"""MQTT 5 specifics: CONNACK properties, assigned client id, user properties and other
message properties passed through, topic aliases, message expiry, receive maximum, maximum
packet size, subscription options and identifiers, AUTH."""

import struct

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import wait_until
from mqtt_util import (V5, Client, Raw, ack_packet, connect_packet, publish_fields,
                       publish_packet, raw_connect, session_expiry, sub_options,
                       subscribe_packet, unique_id, varint)


def publish_props(**values):
    props = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        setattr(props, key, value)
    return props


def test_connack_announces_limits_and_assigns_a_client_id(broker):
    c = Client(broker.mqtt_port, client_id="", protocol=V5)
    reason, flags, props = c.connacks[0]
    assert int(reason.value) == 0
    assert props.AssignedClientIdentifier.startswith("rmq-")
    assert props.ReceiveMaximum == 1024
    assert props.TopicAliasMaximum == 64
    assert props.MaximumPacketSize == 1024 * 1024
    assert props.SharedSubscriptionAvailable == 1


def test_message_properties_pass_through(broker):
    topic = "props/" + unique_id()
    sub = Client(broker.mqtt_port, protocol=V5)
    sub.subscribe(topic, 1)
    pub = Client(broker.mqtt_port, protocol=V5)
    props = publish_props(UserProperty=[("k1", "v1"), ("k2", "v2")], ContentType="text/plain",
                          ResponseTopic="reply/" + topic, CorrelationData=b"corr-1",
                          PayloadFormatIndicator=1)
    pub.publish(topic, b"with props", qos=1, properties=props)
    (m,) = sub.wait_messages(1)
    got = m.properties
    assert got.UserProperty == [("k1", "v1"), ("k2", "v2")]
    assert got.ContentType == "text/plain"
    assert got.ResponseTopic == "reply/" + topic
    assert got.CorrelationData == b"corr-1"
    assert got.PayloadFormatIndicator == 1
    # A 3.1.1 subscriber gets the same message without properties.
    old = Client(broker.mqtt_port)
    old.subscribe(topic, 1)
    pub.publish(topic, b"to old", qos=1, properties=props)
    assert old.wait_messages(1)[0].payload == b"to old"


def test_client_topic_aliases_are_honoured(broker):
    topic = "alias/" + unique_id()
    sub = Client(broker.mqtt_port)
    sub.subscribe(topic, 1)
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    alias = b"\x23\x00\x05"  # Topic Alias 5
    raw.send(publish_packet(topic, b"sets alias", qos=1, pkid=1, level=5, properties=alias))
    assert raw.read_packet()[0] == 4
    raw.send(publish_packet("", b"uses alias", qos=1, pkid=2, level=5, properties=alias))
    assert raw.read_packet()[0] == 4
    sub.wait_messages(2)
    assert [(m.topic, m.payload) for m in sub.messages] == [(topic, b"sets alias"),
                                                            (topic, b"uses alias")]
    # An unknown alias is a protocol error; an alias above our maximum is 0x94.
    raw.send(publish_packet("", b"x", level=5, properties=b"\x23\x00\x06"))
    packets = raw.expect_closed()
    assert packets[-1][0] == 14 and packets[-1][2][0] == 0x82
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    raw.send(publish_packet(topic, b"x", level=5, properties=b"\x23\x00\x41"))
    packets = raw.expect_closed()
    assert packets[-1][0] == 14 and packets[-1][2][0] == 0x94


def test_message_expiry_counts_down_and_drops_expired_queued_messages(broker):
    topic = "expiry/" + unique_id()
    client_id = unique_id("expiry")
    sub = Client(broker.mqtt_port, client_id=client_id, protocol=V5, clean=False,
                 connect_properties=session_expiry(300))
    sub.subscribe(topic, 1)
    sub.disconnect()
    pub = Client(broker.mqtt_port, protocol=V5)
    pub.publish(topic, b"short", qos=1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish(topic, b"long", qos=1, properties=publish_props(MessageExpiryInterval=100))
    published_at = __import__("time").monotonic()
    wait_until(lambda: __import__("time").monotonic() - published_at >= 1.5, 5,
               msg="the short message's expiry")
    back = Client(broker.mqtt_port, client_id=client_id, protocol=V5, clean=False,
                  connect_properties=session_expiry(300))
    pub.publish(topic, b"marker", qos=1)
    got = back.wait_messages(2)
    assert [m.payload for m in got] == [b"long", b"marker"]
    assert 95 <= got[0].properties.MessageExpiryInterval <= 100


def test_receive_maximum_bounds_unacknowledged_messages(broker):
    topic = "rmax/" + unique_id()
    receive_maximum = b"\x21\x00\x02"
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5, properties=receive_maximum)
    raw.send(subscribe_packet(1, [(topic, 1)], level=5))
    assert raw.read_packet()[0] == 9
    pub = Client(broker.mqtt_port)
    for i in range(5):
        pub.publish(topic, b"m%d" % i, qos=1)
    first = [publish_fields(raw.read_packet()[2], 1, level=5) for _ in range(2)]
    assert [p for _, _, p in first] == [b"m0", b"m1"]
    assert raw.nothing_within(0.3)  # the window is full
    raw.send(ack_packet("puback", first[0][1]))
    _, pkid, payload = publish_fields(raw.read_packet()[2], 1, level=5)
    assert payload == b"m2"
    assert raw.nothing_within(0.3)
    for ack in (first[1][1], pkid):
        raw.send(ack_packet("puback", ack))
    rest = [publish_fields(raw.read_packet()[2], 1, level=5)[2] for _ in range(2)]
    assert rest == [b"m3", b"m4"]


def test_client_maximum_packet_size_is_respected(broker):
    topic = "maxpkt/" + unique_id()
    max_packet = b"\x27" + struct.pack(">I", 100)
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5, properties=max_packet)
    raw.send(subscribe_packet(1, [(topic, 0)], level=5))
    assert raw.read_packet()[0] == 9
    pub = Client(broker.mqtt_port)
    pub.publish(topic, b"x" * 200, qos=1)
    pub.publish(topic, b"small", qos=1)
    _, _, payload = publish_fields(raw.read_packet()[2], 0, level=5)
    assert payload == b"small"


def test_packets_over_our_maximum_are_refused(broker):
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    # The header alone announces too much: the broker refuses before reading the body.
    body = b"\x00\x01a\x00" + b"x" * 1000
    raw.send(b"\x30" + varint(1024 * 1024 + 4) + body)
    packets = raw.expect_closed()
    assert packets[-1][0] == 14 and packets[-1][2][0] == 0x95


def test_no_local_retain_as_published_and_subscription_identifiers(broker):
    topic = "opts/" + unique_id()
    me = Client(broker.mqtt_port, protocol=V5)
    assert me.subscribe(topic, options=sub_options(qos=1, no_local=True)) == [1]
    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 42
    other = Client(broker.mqtt_port, protocol=V5)
    other.subscribe(topic, options=sub_options(qos=1, retain_as_published=True),
                    properties=sub_props)
    me.publish(topic, b"mine", qos=1, retain=True)
    (m,) = other.wait_messages(1)
    assert (m.payload, m.retain) == (b"mine", True)
    assert m.properties.SubscriptionIdentifier == [42]
    other.publish(topic, b"theirs", qos=1)
    got = me.wait_messages(1)
    assert [x.payload for x in got] == [b"theirs"]


def test_retain_handling_never_and_only_on_new_subscription(broker):
    topic = "rh/" + unique_id()
    pub = Client(broker.mqtt_port)
    pub.publish(topic, b"kept", qos=1, retain=True)
    c = Client(broker.mqtt_port, protocol=V5)
    c.subscribe(topic, options=sub_options(qos=1, retain_handling=2))
    c.subscribe(topic + "/m", 1)
    pub.publish(topic + "/m", b"marker", qos=1)
    c.wait_messages(1)
    assert c.payloads() == [b"marker"]
    d = Client(broker.mqtt_port, protocol=V5)
    d.subscribe(topic, options=sub_options(qos=1, retain_handling=1))
    d.wait_messages(1)
    d.subscribe(topic, options=sub_options(qos=1, retain_handling=1))  # not new: no resend
    d.subscribe(topic + "/m", 1)
    pub.publish(topic + "/m", b"marker", qos=1)
    d.wait_messages(2)
    assert d.payloads() == [b"kept", b"marker"]


def test_bad_filters_get_reason_codes(broker):
    c = Client(broker.mqtt_port, protocol=V5)
    assert c.subscribe("$share/g", 1) == [0x8F]
    for level, codes in ((5, b"\x00\x01\x00\x01\x8f"), (4, b"\x00\x01\x01\x80")):
        raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=level)
        raw.send(subscribe_packet(1, [("ok/t", 1), ("a/#/b", 1)], level=level))
        ptype, _, body = raw.read_packet()
        assert (ptype, body) == (9, codes)


def test_authentication_methods_are_refused_and_auth_is_a_protocol_error(broker):
    method = b"\x15" + struct.pack(">H", 5) + b"SCRAM"
    raw = Raw(broker.mqtt_port)
    raw.send(connect_packet(unique_id(), level=5, properties=method))
    packets = raw.expect_closed()
    assert packets[0][0] == 2 and packets[0][2][1] == 0x8C
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    raw.send(b"\xf0\x00")
    packets = raw.expect_closed()
    assert packets[-1][0] == 14 and packets[-1][2][0] == 0x82


def test_disconnect_with_will_publishes_the_will(broker):
    topic = "dww/" + unique_id()
    watcher = Client(broker.mqtt_port)
    watcher.subscribe(topic, 1)
    c = Client(broker.mqtt_port, protocol=V5,
               will={"topic": topic, "payload": b"asked for", "qos": 1})
    c.disconnect(reasoncode=__import__("paho.mqtt.reasoncodes", fromlist=["ReasonCode"])
                 .ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    (m,) = watcher.wait_messages(1)
    assert m.payload == b"asked for"


def test_inbound_qos2_beyond_our_receive_maximum_is_0x93(broker):
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    for pkid in range(1, 1026):
        raw.send(publish_packet("rm/x", b"", qos=2, pkid=pkid, level=5))
    packets = raw.expect_closed(timeout_s=20)
    assert sum(1 for p in packets if p[0] == 5) == 1024
    assert packets[-1][0] == 14 and packets[-1][2][0] == 0x93
