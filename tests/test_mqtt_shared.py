"""Shared subscriptions ($share/GROUP/FILTER): each message goes to one member of each group,
members on every shard share the load, leaving members stop getting messages, retained
messages are not sent to them, and No Local on one is a v5 protocol error.

Which shard a connection landed on is observable: a v5 client that connects with an empty
client id is assigned `rmq-<16 hex digits>`, whose first four digits are the shard id."""

import collections

from conftest import wait_until
from mqtt_util import (V311, V5, Client, clients_on_every_shard, publish_packet, raw_connect,
                       shard_of, subscribe_packet, unique_id)

def test_group_members_on_both_shards_split_the_messages(broker_factory):
    broker = broker_factory(cores=2)
    topic = "shared/" + unique_id()
    members = clients_on_every_shard(broker.mqtt_port, per_shard=2)
    for m in members:
        assert m.subscribe("$share/workers/" + topic, 1) == [1]
    normal = Client(broker.mqtt_port, protocol=V5)
    assert normal.subscribe(topic, 1) == [1]
    pub = Client(broker.mqtt_port)
    count = 400
    infos = [pub.publish(topic, b"%d" % n, qos=1, wait=False) for n in range(count)]
    wait_until(lambda: all(i.mid in pub.acked for i in infos), 20, msg="PUBACKs")
    wait_until(lambda: sum(len(m.messages) for m in members) >= count, 20,
               msg="%d messages over the group" % count)
    normal.wait_messages(count)
    assert sorted(int(p) for p in normal.payloads()) == list(range(count))
    got = [int(p) for m in members for p in m.payloads()]
    assert sorted(got) == list(range(count)), "each message to exactly one member"
    for m in members:
        share = len(m.messages)
        assert share >= count // 10, "member on shard %d got only %d" % (shard_of(m), share)
        assert all(msg.topic == topic and msg.qos == 1 for msg in m.messages)
    # Nothing more arrives: a marker goes to one member, the totals stay exact.
    pub.publish(topic, b"%d" % count, qos=1)
    wait_until(lambda: sum(len(m.messages) for m in members) == count + 1, 10, msg="marker")
    normal.wait_messages(count + 1)
    assert len(normal.messages) == count + 1


def test_two_groups_on_one_filter_each_get_every_message_once(broker_factory):
    broker = broker_factory(cores=2)
    base = "groups/" + unique_id()
    members = clients_on_every_shard(broker.mqtt_port, per_shard=2)
    groups = {"a": members[0::2], "b": members[1::2]}
    for name, group in groups.items():
        for m in group:
            assert m.subscribe("$share/%s/%s/+" % (name, base), 1) == [1]
    pub = Client(broker.mqtt_port, protocol=V5)
    count = 100
    for n in range(count):
        pub.publish("%s/x%d" % (base, n % 3), b"%d" % n, qos=1, wait=False)
    for name, group in groups.items():
        wait_until(lambda: sum(len(m.messages) for m in group) >= count, 20,
                   msg="group %s" % name)
        got = sorted(int(p) for m in group for p in m.payloads())
        assert got == list(range(count)), "group %s" % name
        assert all(len(m.messages) > 0 for m in group)


def test_unsubscribe_and_disconnect_remove_members(broker_factory):
    broker = broker_factory(cores=2)
    topic = "leave/" + unique_id()
    first, second = clients_on_every_shard(broker.mqtt_port, per_shard=1)
    share = "$share/g/" + topic
    assert first.subscribe(share, 1) == [1]
    assert second.subscribe(share, 1) == [1]
    pub = Client(broker.mqtt_port, protocol=V5)
    for n in range(10):
        pub.publish(topic, b"before%d" % n, qos=1)
    wait_until(lambda: len(first.messages) + len(second.messages) == 10, 10, msg="10 messages")
    assert len(first.messages) == 5 and len(second.messages) == 5
    # After UNSUBACK no shard picks the member that left.
    assert second.unsubscribe(share) == [0]
    for n in range(20):
        pub.publish(topic, b"after%d" % n, qos=1, wait=False)
    first.wait_messages(25)
    assert len(second.messages) == 5
    # The last member disconnects: once its session is gone nobody matches (v5 PUBACK 0x10).
    first.disconnect()
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    pkid = [0]

    def nobody_matches():
        pkid[0] += 1
        raw.send(publish_packet(topic, b"probe", qos=1, pkid=pkid[0], level=5))
        ptype, _, body = raw.read_packet()
        assert ptype == 4
        return body[2:3] == b"\x10"

    wait_until(nobody_matches, 10, msg="PUBACK 0x10 after the last member left")


def test_shared_subscriptions_get_no_retained_messages_and_work_on_311(broker):
    topic = "ret/" + unique_id()
    pub = Client(broker.mqtt_port)
    pub.publish(topic, b"kept", qos=1, retain=True)
    old = Client(broker.mqtt_port, protocol=V311)
    assert old.subscribe("$share/g/" + topic, 1) == [1]
    new = Client(broker.mqtt_port, protocol=V5)
    assert new.subscribe("$share/h/" + topic, 1) == [1]
    pub.publish(topic, b"live", qos=1)
    assert [(m.payload, m.retain) for m in old.wait_messages(1)] == [(b"live", False)]
    assert [(m.payload, m.retain) for m in new.wait_messages(1)] == [(b"live", False)]


def test_bad_share_filters_and_no_local_are_refused(broker):
    bad = ["$share/g", "$share//t", "$share/g+/t", "$share/g/a/#/b", "$share/g/"]
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    raw.send(subscribe_packet(1, [(f, 1) for f in bad] + [("$share/g/ok", 1)], level=5))
    assert raw.read_packet() == (9, 0, b"\x00\x01\x00" + b"\x8f" * len(bad) + b"\x01")
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=4)
    raw.send(subscribe_packet(1, [("$share/g", 1)], level=4))
    assert raw.read_packet() == (9, 0, b"\x00\x01\x80")
    raw, _ = raw_connect(broker.mqtt_port, unique_id(), level=5)
    no_local = 0x04 | 1
    raw.send(subscribe_packet(1, [("$share/g/t", no_local)], level=5))
    packets = raw.expect_closed()
    assert packets[-1][0] == 14 and packets[-1][2][0] == 0x82
