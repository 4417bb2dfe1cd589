"""MQTT <-> Kafka bridge rules ([[bridge.mqtt_to_kafka]]): one stored copy, read by both.

paho-mqtt publishes land in the Kafka topic (key = MQTT topic, value = payload, headers = v5
user properties + mqtt.qos), QoS 1 PUBACK only once the record is readable, failed appends get
v5 reason codes / disconnect 3.1.1 clients; confluent-kafka records reach MQTT subscribers
exactly once, MQTT-originated records are not delivered twice; restart keeps the records.
"""

import struct

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from conftest import wait_until
from test_admin_http import get, parse_metrics, total
from kafka_util import admin, consume_all, topic_partitions
from mqtt_util import (Client, V311, V5, LEVEL_NAMES, raw_connect, publish_packet, unique_id,
                       Properties, PacketTypes)

TOPIC = "sensors"


def bridge_config(partitions):
    return ('[[bridge.mqtt_to_kafka]]\nfilter = "sensors/#"\ntopic = "%s"\npartitions = %d\n'
            % (TOPIC, partitions))


def high_watermarks(bootstrap, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rmq-test-nogroup"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)]
    finally:
        c.close()


def user_props(pairs):
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = pairs
    return props


@pytest.mark.parametrize("level", [V311, V5], ids=lambda l: "mqtt" + LEVEL_NAMES[l])
def test_mqtt_publishes_reach_kafka_once_in_order(broker_factory, level):
    b = broker_factory(cores=2, config=bridge_config(3))
    assert topic_partitions(b.bootstrap, TOPIC) == 3, "bridge topic created at startup"
    sub = Client(b.mqtt_port, protocol=V5)
    sub.subscribe("sensors/#", qos=1)
    pub = Client(b.mqtt_port, protocol=level)
    sent = {}  # key -> [(payload, qos)]
    for i in range(12):
        qos = i % 3
        for key in ("sensors/a/b", "sensors/c"):
            payload = ("%s-%d" % (key, i)).encode()
            props = user_props([("seq", str(i)), ("unit", "C")]) if level == V5 else None
            pub.publish(key, payload, qos=qos, properties=props)
            sent.setdefault(key, []).append((payload, qos))
        pub.publish("other/x", b"not bridged", qos=1)
    # The last publish was QoS 1 and acknowledged: every earlier one on this connection was
    # appended before it (publishes are handled in order).
    total = sum(len(v) for v in sent.values())
    records, hw = consume_all(b.bootstrap, TOPIC, 3, timeout_s=60)
    assert sum(hw.values()) == total, "only sensors/# publishes are appended, each once"
    by_key = {}
    for partition, recs in records.items():
        for offset, key, value, headers in recs:
            by_key.setdefault(key.decode(), []).append((partition, value, dict(headers or [])))
    assert set(by_key) == set(sent)
    for key, expected in sent.items():
        got = by_key[key]
        assert len({p for p, _, _ in got}) == 1, "one MQTT topic stays in one partition"
        assert [v for _, v, _ in got] == [p for p, _ in expected], "in publish order"
        for (_, _, headers), (i, (_, qos)) in zip(got, enumerate(expected)):
            assert headers["mqtt.qos"] == str(qos).encode()
            if level == V5:
                assert headers["seq"] == str(i).encode()
                assert headers["unit"] == b"C"
            else:
                assert set(headers) == {"mqtt.qos"}
    # MQTT subscribers got each bridged publish once (routed when published, not again by the
    # Kafka -> MQTT tailer): a Kafka record produced last arrives after all of them.
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    p.produce(TOPIC, key=b"sensors/c", value=b"end")
    assert p.flush(30) == 0
    wait_until(lambda: any(m.payload == b"end" for m in sub.messages), 20, msg="end marker")
    received = {}
    for m in list(sub.messages):
        received.setdefault(m.topic, []).append(m.payload)
    assert received["sensors/c"][-1] == b"end"
    received["sensors/c"].pop()
    # Exactly once per topic (QoS 0 and QoS 1 deliveries may interleave differently).
    assert {k: sorted(v) for k, v in received.items()} == \
        {k: sorted(p for p, _ in v) for k, v in sent.items()}
    pub.disconnect()
    sub.disconnect()


def test_kafka_records_reach_mqtt_subscribers_exactly_once(broker_factory):
    # One partition: the tailer sees every record in one order, so the last marker proves
    # nothing else is still on its way.
    b = broker_factory(cores=2, config=bridge_config(1))
    sub5 = Client(b.mqtt_port, protocol=V5)
    sub5.subscribe("sensors/#", qos=1)
    sub3 = Client(b.mqtt_port, protocol=V311)
    sub3.subscribe("sensors/a/+", qos=1)
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(5):
        p.produce(TOPIC, key=b"sensors/a/b", value=b"k%d" % i,
                  headers=[("origin", b"kafka"), ("content-type", b"text/plain")])
    p.produce(TOPIC, key=None, value=b"no key")
    p.produce(TOPIC, key=b"other/x", value=b"outside the filter")
    p.produce(TOPIC, key=b"sensors/#", value=b"wildcard key")
    assert p.flush(30) == 0
    # An MQTT publish on the bridged topic: stored once (in Kafka), delivered once.
    pub = Client(b.mqtt_port, protocol=V5)
    pub.publish("sensors/a/b", b"from-mqtt", qos=1)
    p.produce(TOPIC, key=b"sensors/a/b", value=b"last")
    assert p.flush(30) == 0
    wait_until(lambda: any(m.payload == b"last" for m in sub5.messages), 20, msg="last at v5")
    wait_until(lambda: any(m.payload == b"last" for m in sub3.messages), 20, msg="last at 3.1.1")
    expected = [b"k0", b"k1", b"k2", b"k3", b"k4", b"from-mqtt", b"last"]
    for sub in (sub5, sub3):
        msgs = list(sub.messages)
        assert [m.payload for m in msgs] == expected
        assert {m.topic for m in msgs} == {"sensors/a/b"}
        assert all(m.qos == 1 for m in msgs)
    first = sub5.messages[0]
    assert first.properties.ContentType == "text/plain"
    assert ("origin", "kafka") in first.properties.UserProperty
    records, hw = consume_all(b.bootstrap, TOPIC, 1)
    assert hw[0] == 10, "the MQTT publish is stored once, in the Kafka topic"
    # The bridge counters in /metrics: 6 Kafka records routed (k0-k4, last; the keyless, the
    # outside-the-filter, the wildcard-key and the MQTT-origin records are not), 1 MQTT publish
    # appended, no failures.
    def bridge_counters():
        samples = parse_metrics(get(b, "/metrics")[2])
        return (total(samples, "rmq_mqtt_bridged_from_kafka_total"),
                total(samples, "rmq_mqtt_bridged_to_kafka_total"),
                total(samples, "rmq_mqtt_bridge_append_failures_total"))
    wait_until(lambda: bridge_counters() == (6, 1, 0), 10,
               msg="bridge counters (6, 1, 0), have %r" % (bridge_counters(),))
    pub.disconnect()
    sub5.disconnect()
    sub3.disconnect()


def test_qos1_puback_only_after_the_record_is_readable(broker_factory):
    b = broker_factory(cores=2, config=bridge_config(2))
    pub = Client(b.mqtt_port, protocol=V311)
    for i in range(10):
        pub.publish("sensors/t%d" % (i % 3), b"m%d" % i, qos=1)  # waits for the PUBACK
        assert sum(high_watermarks(b.bootstrap, TOPIC, 2)) == i + 1, \
            "PUBACK %d sent before the record was readable" % i
    for i in range(3):
        pub.publish("sensors/q2", b"x%d" % i, qos=2)  # waits for PUBCOMP
    assert sum(high_watermarks(b.bootstrap, TOPIC, 2)) == 13
    pub.disconnect()


def test_failed_append_gets_v5_reason_code_and_disconnects_3_1_1(broker_factory):
    b = broker_factory(cores=2, config=bridge_config(1))
    a = admin(b.bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, TOPIC, incremental_configs=[
        ConfigEntry("max.message.bytes", "512", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([resource])[resource].result(timeout=30)
    big = b"x" * 2048
    raw5, _ = raw_connect(b.mqtt_port, unique_id("v5"), level=5)
    raw5.send(publish_packet("sensors/big", big, qos=1, pkid=7, level=5))
    ptype, _, body = raw5.read_packet()
    assert ptype == 4 and struct.unpack(">H", body[:2])[0] == 7
    assert body[2] == 0x97, "PUBACK reason %#x" % body[2]
    raw5.send(publish_packet("sensors/big", big, qos=2, pkid=8, level=5))
    ptype, _, body = raw5.read_packet()
    assert ptype == 5 and struct.unpack(">H", body[:2])[0] == 8
    assert body[2] == 0x97, "PUBREC reason %#x" % body[2]
    # The connection stays usable and a small publish goes through.
    raw5.send(publish_packet("sensors/small", b"ok", qos=1, pkid=9, level=5))
    ptype, _, body = raw5.read_packet()
    assert ptype == 4 and struct.unpack(">H", body[:2])[0] == 9
    assert len(body) == 2 or body[2] in (0x00, 0x10)
    raw5.close()
    raw3, _ = raw_connect(b.mqtt_port, unique_id("v3"), level=4)
    raw3.send(publish_packet("sensors/big", big, qos=1, pkid=1, level=4))
    packets = raw3.expect_closed()
    assert not any(p[0] == 4 for p in packets), "a 3.1.1 client gets no PUBACK for a failed append"
    raw3.close()
    records, hw = consume_all(b.bootstrap, TOPIC, 1)
    assert [r[2] for r in records[0]] == [b"ok"]


def test_restart_keeps_the_appended_records(broker_factory):
    b = broker_factory(cores=2, config=bridge_config(2))
    pub = Client(b.mqtt_port, protocol=V5)
    for i in range(20):
        pub.publish("sensors/r%d" % (i % 4), b"v%d" % i, qos=1)
    pub.disconnect()
    b.restart()
    records, hw = consume_all(b.bootstrap, TOPIC, 2)
    assert topic_partitions(b.bootstrap, TOPIC) == 2
    values = sorted(int(r[2][1:]) for recs in records.values() for r in recs)
    assert values == list(range(20))
    # The tailer goes on where it stopped: routed records are not delivered again.
    sub = Client(b.mqtt_port, protocol=V5)
    sub.subscribe("sensors/#", qos=1)
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    p.produce(TOPIC, key=b"sensors/r0", value=b"after")
    assert p.flush(30) == 0
    wait_until(lambda: sub.messages, 20, msg="record produced after the restart")
    assert [m.payload for m in sub.messages] == [b"after"]
    sub.disconnect()


def test_a_will_on_a_bridged_topic_is_appended_and_routed_once(broker_factory):
    b = broker_factory(cores=2, config=bridge_config(1))
    sub = Client(b.mqtt_port, protocol=V5)
    sub.subscribe("sensors/#", qos=1)
    dying = Client(b.mqtt_port, protocol=V311,
                   will={"topic": "sensors/will", "payload": b"gone", "qos": 1})
    dying.kill()
    wait_until(lambda: high_watermarks(b.bootstrap, TOPIC, 1) == [1], 20, msg="will in Kafka")
    records, _ = consume_all(b.bootstrap, TOPIC, 1)
    [(_, key, value, headers)] = records[0]
    assert (key, value, dict(headers)["mqtt.qos"]) == (b"sensors/will", b"gone", b"1")
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    p.produce(TOPIC, key=b"sensors/end", value=b"end")
    assert p.flush(30) == 0
    wait_until(lambda: len(sub.messages) >= 2, 20, msg="will and end marker")
    assert [(m.topic, m.payload) for m in sub.messages] == \
        [("sensors/will", b"gone"), ("sensors/end", b"end")]
    sub.disconnect()


def test_the_tailer_goes_on_where_it_stopped_across_restarts(broker_factory):
    """Kafka records appended while no tailer ran (the rule was taken out for one run) reach
    the MQTT subscriber once the rule is back: the tailer's position is kept in __mqtt_state.
    Records routed before are not delivered again."""
    b = broker_factory(cores=2, config=bridge_config(1))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    sub_id = unique_id("bridge-sub")
    sub = Client(b.mqtt_port, client_id=sub_id, protocol=V5, clean=False, connect_properties=props)
    sub.subscribe("sensors/#", qos=1)
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    for i in range(3):
        p.produce(TOPIC, key=b"sensors/x", value=b"before-%d" % i)
    assert p.flush(30) == 0
    wait_until(lambda: len(sub.messages) >= 3, 20, msg="records routed before the restart")
    sub.disconnect()
    with open(b.config_file, "w") as f:
        f.write("")  # no bridge rule for one run: nothing tails the topic
    b.restart()
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    for i in range(4):
        p.produce(TOPIC, key=b"sensors/x", value=b"while-off-%d" % i)
    assert p.flush(30) == 0
    with open(b.config_file, "w") as f:
        f.write(bridge_config(1))
    b.restart()
    back = Client(b.mqtt_port, client_id=sub_id, protocol=V5, clean=False,
                  connect_properties=props)
    assert back.session_present
    wait_until(lambda: len(back.messages) >= 4, 20, msg="records appended while no tailer ran")
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    p.produce(TOPIC, key=b"sensors/x", value=b"marker")
    assert p.flush(30) == 0
    wait_until(lambda: len(back.messages) >= 5, 20, msg="marker")
    assert [m.payload for m in back.messages] == \
        [b"while-off-%d" % i for i in range(4)] + [b"marker"]
    back.disconnect()
