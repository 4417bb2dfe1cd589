"""MQTT state across a broker restart (issue 5, item 8): retained messages and persistent
sessions (subscriptions, queued and in-flight QoS 1/2 messages) are written to the internal
compacted topic __mqtt_state and read back at startup. A clean stop (SIGTERM) loses nothing;
after kill -9 the tests first wait until confluent-kafka sees the state record in __mqtt_state
(it is written every mqtt.state_flush_interval_ms)."""

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from conftest import wait_until
from mqtt_util import (V31, V311, V5, Client, ack_packet, publish_fields, raw_connect,
                       session_expiry, subscribe_packet, unique_id)

STATE_TOPIC = "__mqtt_state"
FLUSH_MS = 50
CONFIG = "[mqtt]\nstate_flush_interval_ms = %d\n" % FLUSH_MS


def state_records(bootstrap):
    """Latest value per key of __mqtt_state (None: tombstone), read with confluent-kafka."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_id("state-reader"),
                         "enable.auto.commit": False})
    try:
        tp = TopicPartition(STATE_TOPIC, 0, OFFSET_BEGINNING)
        _, high = consumer.get_watermark_offsets(tp, timeout=10)
        consumer.assign([tp])
        latest = {}
        deadline = time.monotonic() + 20
        next_offset = 0
        while next_offset < high and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            latest[msg.key()] = msg.value()
            next_offset = msg.offset() + 1
        assert next_offset >= high, "read %d of %d state records" % (next_offset, high)
        return latest
    finally:
        consumer.close()


def wait_state(broker, key, pred, what):
    wait_until(lambda: pred(state_records(broker.bootstrap).get(key, b"<absent>")), 20,
               interval_s=0.1, msg="state record %r: %s" % (key, what))


def v5_props(**fields):
    props = Properties(PacketTypes.PUBLISH)
    for name, value in fields.items():
        setattr(props, name, value)
    return props


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_retained_messages_survive_a_restart(broker_factory, stop):
    broker = broker_factory(config=CONFIG)
    base = "ret/" + unique_id()
    pub = Client(broker.mqtt_port, protocol=V5)
    pub.publish(base + "/a", b"a-1", qos=1, retain=True)
    pub.publish(base + "/a", b"a-2", qos=1, retain=True)  # replaces a-1
    pub.publish(base + "/b", b"b-1", qos=0, retain=True,
                properties=v5_props(ContentType="text/plain", UserProperty=[("k", "v")],
                                    MessageExpiryInterval=3600))
    pub.publish(base + "/gone", b"x", qos=1, retain=True)
    pub.publish(base + "/gone", b"", qos=1, retain=True)  # deletes it
    pub.publish(base + "/c", b"c-1", qos=2, retain=True)
    pub.disconnect()
    if stop == "kill9":
        wait_state(broker, b"r" + (base + "/c").encode(), lambda v: v and b"c-1" in v, "c-1")
        wait_state(broker, b"r" + (base + "/a").encode(), lambda v: v and b"a-2" in v, "a-2")
        wait_state(broker, b"r" + (base + "/gone").encode(), lambda v: v is None, "tombstone")
    broker.restart(clean=(stop == "sigterm"))
    sub = Client(broker.mqtt_port, protocol=V5)
    sub.subscribe(base + "/#", 2)
    got = sub.wait_messages(3)
    marker = Client(broker.mqtt_port)
    marker.publish(base + "/zz-marker", b"m", qos=1)
    sub.wait_messages(4)
    by_topic = {m.topic: m for m in sub.messages}
    assert sorted(by_topic) == sorted([base + "/a", base + "/b", base + "/c", base + "/zz-marker"])
    assert by_topic[base + "/a"].payload == b"a-2" and by_topic[base + "/a"].retain
    assert by_topic[base + "/c"].payload == b"c-1" and by_topic[base + "/c"].qos == 2
    b = by_topic[base + "/b"]
    assert b.payload == b"b-1" and b.retain
    assert b.properties.ContentType == "text/plain"
    assert ("k", "v") in b.properties.UserProperty
    assert 3500 <= b.properties.MessageExpiryInterval <= 3600
    assert len(got) == 3


@pytest.mark.parametrize("level", [V31, V311, V5])
@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_a_persistent_session_keeps_subscriptions_and_queued_messages(broker_factory, level,
                                                                      stop):
    broker = broker_factory(config=CONFIG)
    topic = "persist/" + unique_id()
    client_id = unique_id("keep")
    props = session_expiry(3600) if level == V5 else None
    sub = Client(broker.mqtt_port, client_id=client_id, protocol=level, clean=False,
                 connect_properties=props)
    assert sub.subscribe(topic, 1) == [1]
    assert sub.subscribe(topic + "/two/+", 2) == [2]
    sub.disconnect()
    pub = Client(broker.mqtt_port)
    for i in range(20):
        pub.publish(topic, b"q%02d" % i, qos=1)
    pub.publish(topic + "/two/x", b"last-qos2", qos=2)
    pub.disconnect()
    if stop == "kill9":
        wait_state(broker, b"s" + client_id.encode(), lambda v: v and b"last-qos2" in v and b"q19" in v,
                   "session with its queue")
    broker.restart(clean=(stop == "sigterm"))
    back = Client(broker.mqtt_port, client_id=client_id, protocol=level, clean=False,
                  connect_properties=props)
    assert back.session_present
    got = back.wait_messages(21)
    assert [m.payload for m in got[:20]] == [b"q%02d" % i for i in range(20)]
    assert (got[20].payload, got[20].qos) == (b"last-qos2", 2)
    # The subscriptions are routed again: a publish after the restart reaches the session.
    pub = Client(broker.mqtt_port)
    pub.publish(topic, b"live", qos=1)
    back.wait_messages(22)
    assert back.payloads()[21] == b"live"
    assert len(back.messages) == 22


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_unacknowledged_messages_are_resent_with_dup_after_a_restart(broker_factory, stop):
    broker = broker_factory(config=CONFIG)
    topic = "inflight/" + unique_id()
    client_id = unique_id("inflight")
    conn, _ = raw_connect(broker.mqtt_port, client_id, level=4, clean=False)
    conn.send(subscribe_packet(1, [(topic, 1)]))
    assert conn.read_packet()[0] == 9  # SUBACK
    pub = Client(broker.mqtt_port)
    pub.publish(topic, b"unacked-1", qos=1)
    pub.publish(topic, b"unacked-2", qos=1)
    pkids = []
    for expected in (b"unacked-1", b"unacked-2"):
        ptype, flags, body = conn.read_packet()
        assert ptype == 3 and not flags & 0x08, "first delivery without DUP"
        _, pkid, payload = publish_fields(body, 1)
        assert payload == expected
        pkids.append(pkid)
    conn.close()  # never acknowledged
    pub.disconnect()
    if stop == "kill9":
        wait_state(broker, b"s" + client_id.encode(),
                   lambda v: v and b"unacked-2" in v, "in-flight messages")
    broker.restart(clean=(stop == "sigterm"))
    conn, connack = raw_connect(broker.mqtt_port, client_id, level=4, clean=False)
    assert connack[0] & 1, "session present"
    for expected, pkid in zip((b"unacked-1", b"unacked-2"), pkids):
        ptype, flags, body = conn.read_packet()
        assert ptype == 3 and flags & 0x08, "PUBLISH again with DUP"
        _, got_pkid, payload = publish_fields(body, 1)
        assert (got_pkid, payload) == (pkid, expected)
    for pkid in pkids:
        conn.send(ack_packet("puback", pkid))
    assert conn.nothing_within(0.3)
    conn.close()


def test_a_v5_session_expiry_counts_the_time_the_broker_was_down(broker_factory):
    broker = broker_factory(config=CONFIG)
    short_id, long_id = unique_id("short"), unique_id("long")
    for client_id, expiry in ((short_id, 2), (long_id, 3600)):
        c = Client(broker.mqtt_port, client_id=client_id, protocol=V5, clean=False,
                   connect_properties=session_expiry(expiry))
        c.subscribe("exp/" + client_id, 1)
        c.disconnect()
    broker.stop()
    stopped_at = time.monotonic()
    wait_until(lambda: time.monotonic() - stopped_at > 2.5, 5, msg="the short expiry to pass")
    broker.start()
    short = Client(broker.mqtt_port, client_id=short_id, protocol=V5, clean=False,
                   connect_properties=session_expiry(2))
    assert not short.session_present
    long = Client(broker.mqtt_port, client_id=long_id, protocol=V5, clean=False,
                  connect_properties=session_expiry(3600))
    assert long.session_present


@pytest.mark.parametrize("level", [V311, V5])
def test_clean_sessions_and_discarded_sessions_are_not_restored(broker_factory, level):
    broker = broker_factory(config=CONFIG)
    clean_id, discarded_id = unique_id("clean"), unique_id("discard")
    props = session_expiry(3600) if level == V5 else None
    c = Client(broker.mqtt_port, client_id=clean_id, protocol=level, clean=True)
    c.subscribe("x/" + clean_id, 1)
    c.disconnect()
    d = Client(broker.mqtt_port, client_id=discarded_id, protocol=level, clean=False,
               connect_properties=props)
    d.subscribe("x/" + discarded_id, 1)
    d.disconnect()
    d = Client(broker.mqtt_port, client_id=discarded_id, protocol=level, clean=True)
    assert not d.session_present
    d.disconnect()
    broker.restart()
    for client_id in (clean_id, discarded_id):
        back = Client(broker.mqtt_port, client_id=client_id, protocol=level, clean=False,
                      connect_properties=props)
        assert not back.session_present, client_id
        back.disconnect()
