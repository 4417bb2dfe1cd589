"""MQTT core: CONNECT at levels 3.1/3.1.1/5, QoS 0/1/2 both ways, wildcards, $-topics,
unsubscribe, retained messages, cross-shard delivery, mosquitto tools, bad input."""

import subprocess

import pytest

from conftest import wait_until
from mqtt_util import (LEVELS, LEVEL_NAMES, V31, V311, V5, Client, Raw, clients_on_every_shard,
                       connect_packet, publish_packet, raw_connect, shard_of, subscribe_packet,
                       unique_id)


def test_ready_line_reports_the_mqtt_port(broker):
    assert broker.mqtt_port and broker.mqtt_port != broker.port
    line = broker.stdout_lines[0]
    assert line.startswith("rmq-node ready kafka=127.0.0.1:%d mqtt=127.0.0.1:%d"
                           % (broker.port, broker.mqtt_port))


@pytest.mark.parametrize("level", LEVELS, ids=lambda l: LEVEL_NAMES[l])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_each_level_and_qos_delivers_in_order(broker, level, qos):
    topic = "lvl/%s/q%d" % (unique_id(), qos)
    sub = Client(broker.mqtt_port, protocol=level)
    assert sub.connacks[0][0] == 0
    assert sub.subscribe(topic, qos) == [qos]
    pub = Client(broker.mqtt_port, protocol=level)
    for i in range(20):
        pub.publish(topic, b"m%d" % i, qos=qos)
    messages = sub.wait_messages(20)
    assert [m.payload for m in messages] == [b"m%d" % i for i in range(20)]
    assert {m.qos for m in messages} == {qos}
    assert {m.topic for m in messages} == {topic}
    assert not any(m.retain for m in messages)
    pub.disconnect()
    sub.disconnect()


def test_granted_qos_caps_delivery_qos(broker):
    topic = "cap/" + unique_id()
    sub = Client(broker.mqtt_port)
    assert sub.subscribe(topic, 1) == [1]
    pub = Client(broker.mqtt_port)
    pub.publish(topic, b"two", qos=2)
    pub.publish(topic, b"zero", qos=0)
    messages = sub.wait_messages(2)
    assert [(m.payload, m.qos) for m in messages] == [(b"two", 1), (b"zero", 0)]


def test_publishes_reach_subscribers_on_every_shard(broker):
    """Eight subscribers and three publishers spread over both shards (SO_REUSEPORT): every
    subscriber gets every message exactly once, in each publisher's order."""
    base = "fan/" + unique_id()
    subs = [Client(broker.mqtt_port, protocol=LEVELS[i % 3]) for i in range(8)]
    for i, s in enumerate(subs):
        assert s.subscribe(base + ("/#" if i % 2 else "/+/x"), 1) == [1]
    pubs = [Client(broker.mqtt_port) for _ in range(3)]
    for n in range(30):
        for p, pub in enumerate(pubs):
            pub.publish("%s/p%d/x" % (base, p), b"%d:%d" % (p, n), qos=1, wait=False)
    for s in subs:
        got = s.wait_messages(90)
        assert len(got) == 90
        for p in range(3):
            mine = [m.payload for m in got if m.payload.startswith(b"%d:" % p)]
            assert mine == [b"%d:%d" % (p, n) for n in range(30)]
    # Nothing more arrives: each subscriber got each message once.
    pubs[0].publish(base + "/done/x", b"end", qos=1)
    for s in subs:
        s.wait_messages(91)
        assert len(s.messages) == 91


# Messages per publisher in the cross-shard order test: enough that many PUBLISHes arrive in one
# socket read and travel to the other shard as one batch.
CROSS_SHARD_MESSAGES = 10000


@pytest.mark.parametrize("qos", [0, 1])
def test_cross_shard_publisher_order_is_kept(broker_factory, qos):
    """A publisher on one shard and its subscriber on the other, both ways at once: every one of
    10,000 messages arrives once, in publish order, at the QoS sent (deliveries to another shard
    travel in batches of the PUBLISHes of one socket read)."""
    broker = broker_factory(cores=2)
    on_0_sub, on_0_pub, on_1_sub, on_1_pub = clients_on_every_shard(broker.mqtt_port,
                                                                    per_shard=2)
    assert [shard_of(c) for c in (on_0_sub, on_0_pub, on_1_sub, on_1_pub)] == [0, 0, 1, 1]
    base = "xshard/" + unique_id()
    assert on_0_sub.subscribe(base + "/to-0", qos) == [qos]
    assert on_1_sub.subscribe(base + "/to-1", qos) == [qos]
    infos = []
    for n in range(CROSS_SHARD_MESSAGES):
        infos.append(on_1_pub.publish(base + "/to-0", b"%d" % n, qos=qos, wait=False))
        infos.append(on_0_pub.publish(base + "/to-1", b"%d" % n, qos=qos, wait=False))
    expected = [b"%d" % n for n in range(CROSS_SHARD_MESSAGES)]
    for sub in (on_0_sub, on_1_sub):
        got = sub.wait_messages(CROSS_SHARD_MESSAGES, timeout_s=60)
        assert [m.payload for m in got] == expected
        assert {m.qos for m in got} == {qos}
    if qos == 1:
        publishers = [on_1_pub, on_0_pub] * CROSS_SHARD_MESSAGES

        def all_acked():
            return all(info.mid in pub.acked for pub, info in zip(publishers, infos))
        wait_until(all_acked, 30, msg="PUBACK of every publish")
    # Nothing more arrives: each message was delivered once.
    on_0_pub.publish(base + "/to-1", b"end", qos=1)
    on_1_pub.publish(base + "/to-0", b"end", qos=1)
    for sub in (on_0_sub, on_1_sub):
        sub.wait_messages(CROSS_SHARD_MESSAGES + 1)
        assert len(sub.messages) == CROSS_SHARD_MESSAGES + 1
        assert sub.messages[-1].payload == b"end"


def test_wildcards_and_dollar_topics(broker):
    root = unique_id()
    sub_all = Client(broker.mqtt_port)
    sub_all.subscribe("#", 0)
    sub_plus = Client(broker.mqtt_port)
    sub_plus.subscribe(root + "/+/c", 0)
    sub_sys = Client(broker.mqtt_port)
    sub_sys.subscribe("$" + root + "/#", 0)
    pub = Client(broker.mqtt_port)
    pub.publish(root + "/b/c", b"1", qos=1)
    pub.publish(root + "/b/c/d", b"2", qos=1)
    pub.publish("$" + root + "/x", b"3", qos=1)
    pub.publish(root + "/marker", b"4", qos=1)
    sub_all.wait_messages(3)
    sub_plus.wait_messages(1)
    sub_sys.wait_messages(1)
    assert [m.payload for m in sub_all.messages if m.topic.startswith((root, "$" + root))] \
        == [b"1", b"2", b"4"]
    assert sub_plus.payloads() == [b"1"]
    assert sub_sys.payloads() == [b"3"]


def test_unsubscribe_stops_delivery_and_v5_reports_missing_subscriptions(broker):
    topic = "unsub/" + unique_id()
    sub = Client(broker.mqtt_port, protocol=V5)
    sub.subscribe(topic, 1)
    pub = Client(broker.mqtt_port)
    pub.publish(topic, b"before", qos=1)
    sub.wait_messages(1)
    assert sub.unsubscribe(topic) == [0x00]
    assert sub.unsubscribe(topic) == [0x11]
    pub.publish(topic, b"after", qos=1)
    sub.subscribe(topic + "/marker", 1)
    pub.publish(topic + "/marker", b"marker", qos=1)
    sub.wait_messages(2)
    assert sub.payloads() == [b"before", b"marker"]


def test_retained_message_is_sent_on_subscribe_and_deleted_by_empty_payload(broker):
    topic = "ret/" + unique_id()
    pub = Client(broker.mqtt_port)
    pub.publish(topic + "/a", b"first", qos=1, retain=True)
    pub.publish(topic + "/a", b"second", qos=1, retain=True)
    pub.publish(topic + "/b", b"other", qos=1, retain=True)
    for level in LEVELS:
        sub = Client(broker.mqtt_port, protocol=level)
        sub.subscribe(topic + "/+", 1)
        got = sub.wait_messages(2)
        assert sorted((m.topic, m.payload, m.retain) for m in got) == [
            (topic + "/a", b"second", True), (topic + "/b", b"other", True)]
        sub.disconnect()
    # A live subscriber gets retained publishes with retain=0.
    live = Client(broker.mqtt_port)
    live.subscribe(topic + "/a", 1)
    live.wait_messages(1)
    pub.publish(topic + "/a", b"", qos=1, retain=True)
    got = live.wait_messages(2)
    assert (got[1].payload, got[1].retain) == (b"", False)
    late = Client(broker.mqtt_port)
    late.subscribe(topic + "/+", 1)
    late.wait_messages(1)
    late.subscribe(topic + "/marker", 1)
    pub.publish(topic + "/marker", b"m", qos=1)
    got = late.wait_messages(2)
    assert [(m.topic, m.payload) for m in got] == [(topic + "/b", b"other"),
                                                   (topic + "/marker", b"m")]


@pytest.mark.parametrize("version", ["mqttv31", "mqttv311", "mqttv5"])
def test_mosquitto_clients_interoperate(broker, version):
    """mosquitto_pub stores retained messages at QoS 0/1/2; mosquitto_sub receives them and a
    live message published after its subscription is in place."""
    topic = "mosq/" + unique_id()
    port = str(broker.mqtt_port)
    common = ["-h", "127.0.0.1", "-p", port, "-V", version]
    for i in range(3):
        subprocess.run(["mosquitto_pub"] + common + ["-t", "%s/%d" % (topic, i), "-m",
                        "msg%d" % i, "-q", str(i), "-r"], check=True, timeout=10)
    sub = subprocess.Popen(["mosquitto_sub"] + common + ["-t", topic + "/#", "-q", "2", "-C",
                                                         "4", "-v"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Live messages until mosquitto_sub has its fourth: its subscription is routed by then.
        def got_live():
            subprocess.run(["mosquitto_pub"] + common + ["-t", topic + "/live", "-m", "live",
                                                         "-q", "1"], check=True, timeout=10)
            return sub.poll() is not None
        wait_until(got_live, 15, interval_s=0.05, msg="mosquitto_sub to receive 4 messages")
        out, err = sub.communicate(timeout=15)
    finally:
        sub.kill()
    lines = out.decode().splitlines()
    assert sorted(lines) == ["%s/%d msg%d" % (topic, i, i) for i in range(3)] \
        + [topic + "/live live"], err


def test_mqtt_31_connect_with_raw_bytes(broker):
    raw = Raw(broker.mqtt_port)
    raw.send(connect_packet("legacy-31", level=3))
    ptype, _, body = raw.read_packet()
    assert (ptype, body) == (2, b"\x00\x00")
    raw.send(subscribe_packet(1, [("legacy/t", 1)]))
    ptype, _, body = raw.read_packet()
    assert (ptype, body) == (9, b"\x00\x01\x01")
    raw.send(b"\xc0\x00")
    assert raw.read_packet()[:2] == (13, 0)
    raw.close()


def test_unsupported_protocol_level_is_refused(broker):
    raw = Raw(broker.mqtt_port)
    raw.send(connect_packet("x", level=6))
    packets = raw.expect_closed()
    assert packets == [(2, 0, b"\x00\x01")]


@pytest.mark.parametrize("bad", [
    b"\x30\x05\x00\x01a\x00\x00",                 # PUBLISH before CONNECT
    b"\xff\xff\xff\xff\xff",                       # garbage
    b"\x10\xff\xff\xff\xff\x7f",                  # bad remaining length
])
def test_bad_first_packets_close_only_that_connection(broker, bad):
    raw = Raw(broker.mqtt_port)
    raw.send(bad)
    assert raw.expect_closed() == []
    other = Client(broker.mqtt_port)
    assert other.connacks[0][0] == 0


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("case", ["wildcard_topic", "qos3", "second_connect", "subscribe_flags"])
def test_protocol_violations_disconnect_with_reason(broker, level, case):
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=level)
    bad = {
        "wildcard_topic": publish_packet("a/+", b"x", level=level),
        "qos3": bytes([0x36]) + publish_packet("a", b"x", qos=1, pkid=1, level=level)[1:],
        "second_connect": connect_packet("again", level=level),
        "subscribe_flags": bytes([0x80]) + subscribe_packet(1, [("a", 0)], level=level)[1:],
    }[case]
    raw.send(bad)
    packets = raw.expect_closed()
    if level == 5:
        expected = {"wildcard_topic": 0x90, "qos3": 0x81, "second_connect": 0x82,
                    "subscribe_flags": 0x81}[case]
        assert packets and packets[-1][0] == 14 and packets[-1][2][0] == expected, packets
    else:
        assert packets == []
    assert Client(broker.mqtt_port).connacks[0][0] == 0


def test_qos2_inbound_retransmission_is_delivered_once(broker):
    topic = "q2/" + unique_id()
    sub = Client(broker.mqtt_port)
    sub.subscribe(topic, 2)
    raw, _ = raw_connect(broker.mqtt_port, unique_id())
    raw.send(publish_packet(topic, b"once", qos=2, pkid=7))
    assert raw.read_packet() == (5, 0, b"\x00\x07")          # PUBREC
    raw.send(publish_packet(topic, b"once", qos=2, pkid=7, dup=True))
    assert raw.read_packet() == (5, 0, b"\x00\x07")          # PUBREC again, no second delivery
    raw.send(b"\x62\x02\x00\x07")                             # PUBREL
    assert raw.read_packet() == (7, 0, b"\x00\x07")          # PUBCOMP
    raw.send(publish_packet(topic, b"next", qos=2, pkid=7))  # the id is free again
    assert raw.read_packet() == (5, 0, b"\x00\x07")
    sub.wait_messages(2)
    assert sub.payloads() == [b"once", b"next"]


def test_sys_topics_describe_the_broker_and_skip_leading_wildcards(broker):
    sys_sub = Client(broker.mqtt_port)
    sys_sub.subscribe("$SYS/broker/#", 0)
    wanted = {"$SYS/broker/" + t for t in ("version", "uptime", "clients/connected",
                                           "messages/received", "messages/sent",
                                           "bytes/received", "bytes/sent")}
    wait_until(lambda: wanted <= {m.topic for m in sys_sub.messages}, 15,
               msg="every $SYS topic")
    by_topic = {m.topic: m for m in sys_sub.messages}
    assert by_topic["$SYS/broker/version"].payload.startswith(b"rmq-node ")
    assert by_topic["$SYS/broker/uptime"].payload.endswith(b" seconds")
    assert all(m.retain for m in by_topic.values())
    int(by_topic["$SYS/broker/clients/connected"].payload)
    everything = Client(broker.mqtt_port)
    everything.subscribe("#", 0)
    everything.subscribe("marker/" + unique_id(), 0)
    everything.publish(everything.client_id + "/m", b"m", qos=1)
    everything.wait_messages(1)
    assert not any(m.topic.startswith("$") for m in everything.messages)
