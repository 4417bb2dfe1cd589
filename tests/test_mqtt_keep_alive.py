"""Server keep-alive cap (`mqtt.max_keep_alive_s`): v5 clients asking more (or 0) are told the
cap in CONNACK (Server Keep Alive) and held to 1.5 x it; 3.1.1 clients, which cannot be told,
are held to it silently; without the setting nothing is capped."""

import time

import pytest

from mqtt_util import V5, Client, Raw, connect_packet, raw_connect, read_properties, unique_id

CAP_S = 5


def connack_properties(body):
    """The properties of a raw v5 CONNACK body: {identifier: [values]}."""
    return read_properties(body, 2)[0]


@pytest.fixture
def capped(broker_factory):
    return broker_factory(cores=2, config={"mqtt.max_keep_alive_s": CAP_S})


def test_v5_client_is_told_the_capped_keep_alive(capped):
    c = Client(capped.mqtt_port, protocol=V5, keepalive=600)
    assert c.connacks[0][2].ServerKeepAlive == CAP_S
    _, body = raw_connect(capped.mqtt_port, unique_id(), level=5, keepalive=0)
    assert connack_properties(body)[0x13] == [CAP_S]
    # A keep-alive within the cap is granted as asked: no Server Keep Alive.
    _, body = raw_connect(capped.mqtt_port, unique_id(), level=5, keepalive=3)
    assert 0x13 not in connack_properties(body)


@pytest.mark.parametrize("level", [4, 5])
def test_silent_client_is_closed_after_one_and_a_half_capped_intervals(capped, level):
    raw, _ = raw_connect(capped.mqtt_port, unique_id("silent"), level=level, keepalive=600)
    started = time.monotonic()
    packets = raw.expect_closed(timeout_s=CAP_S * 1.5 + 5)
    elapsed = time.monotonic() - started
    assert CAP_S * 1.5 - 0.5 <= elapsed <= CAP_S * 1.5 + 3, elapsed
    if level == 5:
        assert [(p[0], p[2][0]) for p in packets] == [(14, 0x8D)]


def test_without_a_cap_keep_alive_is_granted_as_asked(broker):
    _, body = raw_connect(broker.mqtt_port, unique_id(), level=5, keepalive=0)
    assert 0x13 not in connack_properties(body)
    raw = Raw(broker.mqtt_port)
    raw.send(connect_packet(unique_id(), level=5, keepalive=600))
    ptype, _, body = raw.read_packet()
    assert ptype == 2 and 0x13 not in connack_properties(body)
