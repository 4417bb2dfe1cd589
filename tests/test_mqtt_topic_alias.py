"""Topic aliases from the server to v5 clients that announce a Topic Alias Maximum: the first
PUBLISH of a topic carries topic and alias, later ones an empty topic and the alias; a full
table reassigns the least recently used alias; clients that announce none get full topics.
Neither client installed here resolves aliases it receives (paho-mqtt 2.1 has no code for it;
libmosquitto gained it after 2.0.11, whose mosquitto_sub reports a protocol error on an
aliased PUBLISH), and neither announces a Topic Alias Maximum by default, so both keep getting
full topics; the wire format is checked here with raw sockets and in the codec's unit tests
with mqttbytes' decoder."""

import struct

from mqtt_util import (V5, Client, publish_v5_fields, raw_connect, subscribe_packet,
                       unique_id)


def alias_subscriber(port, topic_filter, alias_maximum):
    props = b"" if alias_maximum is None else b"\x22" + struct.pack(">H", alias_maximum)
    raw, _ = raw_connect(port, unique_id("alias"), level=5, properties=props)
    raw.send(subscribe_packet(1, [(topic_filter, 0)], level=5))
    assert raw.read_packet()[0] == 9
    return raw


def received(raw, count):
    """(topic, alias or None, payload) of the next `count` QoS 0 PUBLISHes."""
    out = []
    for _ in range(count):
        ptype, flags, body = raw.read_packet()
        assert ptype == 3 and flags == 0, (ptype, flags)
        topic, _, props, payload = publish_v5_fields(body, 0)
        alias = props.get(0x23, [None])
        assert len(alias) == 1
        out.append((topic, alias[0], payload))
    return out


def test_second_publish_on_a_topic_carries_only_the_alias(broker):
    base = "alias/" + unique_id()
    raw = alias_subscriber(broker.mqtt_port, base + "/#", 5)
    pub = Client(broker.mqtt_port)
    for topic, payload in (("a", b"1"), ("a", b"2"), ("b", b"3"), ("a", b"4"), ("b", b"5")):
        pub.publish("%s/%s" % (base, topic), payload, qos=1)
    assert received(raw, 5) == [
        (base + "/a", 1, b"1"), ("", 1, b"2"), (base + "/b", 2, b"3"), ("", 1, b"4"),
        ("", 2, b"5")]


def test_a_full_alias_table_reassigns_the_least_recently_used_alias(broker):
    base = "lru/" + unique_id()
    raw = alias_subscriber(broker.mqtt_port, base + "/#", 2)
    pub = Client(broker.mqtt_port)
    for topic in ("a", "b", "a", "c", "a", "b"):
        pub.publish("%s/%s" % (base, topic), topic.encode(), qos=1)
    assert received(raw, 6) == [
        (base + "/a", 1, b"a"), (base + "/b", 2, b"b"), ("", 1, b"a"),
        (base + "/c", 2, b"c"), ("", 1, b"a"), (base + "/b", 2, b"b")]


def test_clients_without_a_topic_alias_maximum_get_full_topics(broker):
    topic = "noalias/" + unique_id()
    raw = alias_subscriber(broker.mqtt_port, topic, None)
    paho = Client(broker.mqtt_port, protocol=V5)
    paho.subscribe(topic, 0)
    pub = Client(broker.mqtt_port)
    for n in range(3):
        pub.publish(topic, b"%d" % n, qos=1)
    assert received(raw, 3) == [(topic, None, b"%d" % n) for n in range(3)]
    assert [(m.topic, m.payload) for m in paho.wait_messages(3)] == [
        (topic, b"%d" % n) for n in range(3)]

