"""MQTT access control: `mqtt.allow_anonymous`, the password file (`mqtt.password_file`, users
added with `rmq user add`) and `[[mqtt.acl]]` rules (first match wins, default allow), with
paho-mqtt at 3.1/3.1.1/5, mosquitto_pub/sub and raw packets for exact return/reason codes."""

import os
import struct
import subprocess

import pytest

from conftest import node_bin, wait_until
from mqtt_util import (LEVELS, V31, V311, V5, Client, Raw, mqtt_string, packet, publish_packet,
                       subscribe_packet, unique_id)

SUBACK, PUBACK, PUBREC, PUBLISH = 9, 4, 5, 3
PASSWORD_LEVELS = [3, 4, 5]


def rmq_bin():
    return os.environ.get("RMQ_CLI_BIN") or os.path.join(os.path.dirname(node_bin()), "rmq")


def rmq_user(*args, stdin=None, check=True):
    out = subprocess.run([rmq_bin(), "user", *args], input=stdin, capture_output=True,
                         timeout=60)
    if check:
        assert out.returncode == 0, "rmq user %s failed:\n%s" % (args, out.stderr.decode())
    return out


def login_connect(client_id, level, username=None, password=None, will=None):
    """A CONNECT (clean session) with optional username/password and will (topic, payload)."""
    name = b"MQIsdp" if level == 3 else b"MQTT"
    flags = 0x02
    payload = mqtt_string(client_id)
    if will is not None:
        flags |= 0x04
        if level == 5:
            payload += b"\x00"
        payload += mqtt_string(will[0]) + mqtt_string(will[1])
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += mqtt_string(password)
    body = mqtt_string(name) + bytes([level, flags]) + struct.pack(">H", 60)
    if level == 5:
        body += b"\x00"
    return packet(0x10, body + payload)


def connack_code(port, level, username=None, password=None):
    """The CONNACK return/reason code; a refused connection must then be closed."""
    raw = Raw(port)
    try:
        raw.send(login_connect(unique_id(), level, username, password))
        ptype, _, body = raw.read_packet()
        assert ptype == 2
        code = body[1]
        if code != 0:
            assert raw.expect_closed() == []
        return code
    finally:
        raw.close()


def make_password_file(path, users):
    for username, password in users.items():
        rmq_user("add", "--password-file", path, "--username", username, "--password", password)


def logged_in_client(port, level, username, password, client_id=None):
    return Client(port, protocol=level, client_id=client_id, username=username,
                  password=password)


# ------------------------------------------------------------------ authentication

@pytest.fixture
def secured(broker_factory, tmp_path):
    path = str(tmp_path / "passwords")
    make_password_file(path, {"alice": "wonderland", "bob": "builder"})
    broker = broker_factory(config="[mqtt]\nallow_anonymous = false\npassword_file = \"%s\"\n"
                                   % path)
    broker.password_file = path
    return broker


@pytest.mark.parametrize("level", PASSWORD_LEVELS)
def test_anonymous_client_is_refused_when_anonymous_is_disallowed(secured, level):
    expected = 0x87 if level == 5 else 5
    assert connack_code(secured.mqtt_port, level) == expected


@pytest.mark.parametrize("level", PASSWORD_LEVELS)
def test_good_password_is_accepted_and_bad_ones_are_refused(secured, level):
    port = secured.mqtt_port
    bad = 0x86 if level == 5 else 4
    assert connack_code(port, level, "alice", "wonderland") == 0
    # Again: served from the shard's cache of verified logins, still accepted.
    assert connack_code(port, level, "alice", "wonderland") == 0
    assert connack_code(port, level, "alice", "wonderland!") == bad
    assert connack_code(port, level, "alice", "builder") == bad
    assert connack_code(port, level, "alice") == bad
    assert connack_code(port, level, "mallory", "wonderland") == bad
    assert connack_code(port, level, "bob", "builder") == 0


@pytest.mark.parametrize("level", LEVELS)
def test_paho_logs_in_and_exchanges_messages(secured, level):
    topic = "auth/" + unique_id()
    sub = logged_in_client(secured.mqtt_port, level, "alice", "wonderland")
    assert sub.connacks[0][0] == 0
    assert sub.subscribe(topic, qos=1) == [1]
    pub = logged_in_client(secured.mqtt_port, level, "bob", "builder")
    pub.publish(topic, b"hello", qos=1)
    assert [m.payload for m in sub.wait_messages(1)] == [b"hello"]
    sub.disconnect()
    pub.disconnect()


def test_anonymous_allowed_without_password_file_and_usernames_unchecked(broker_factory):
    broker = broker_factory(config="mqtt.allow_anonymous = true\n")
    assert connack_code(broker.mqtt_port, 4) == 0
    assert connack_code(broker.mqtt_port, 5, "anyone", "anything") == 0


def test_rmq_user_add_then_mosquitto_clients_log_in(broker_factory, tmp_path):
    path = str(tmp_path / "users.txt")
    # Password from stdin; the file does not exist yet.
    rmq_user("add", "--password-file", path, "--username", "carol", stdin=b"c4r0l\n")
    rmq_user("add", "--password-file", path, "--username", "dave", "--password", "temp")
    rmq_user("add", "--password-file", path, "--username", "dave", "--password", "d4ve")
    rmq_user("add", "--password-file", path, "--username", "erin", "--password", "x")
    rmq_user("delete", "--password-file", path, "--username", "erin")
    with open(path) as f:
        lines = f.read().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["carol", "dave"]
    assert all(line.split(":", 1)[1].startswith("$argon2id$v=19$") for line in lines)
    assert os.stat(path).st_mode & 0o777 == 0o600
    missing = rmq_user("delete", "--password-file", path, "--username", "erin", check=False)
    assert missing.returncode != 0 and b"no user" in missing.stderr

    broker = broker_factory(config="[mqtt]\nallow_anonymous = false\npassword_file = \"%s\"\n"
                                   % path)
    port = str(broker.mqtt_port)
    topic = "users/" + unique_id()
    for version in ["mqttv311", "mqttv5"]:
        common = ["-h", "127.0.0.1", "-p", port, "-V", version]
        sub = subprocess.Popen(["mosquitto_sub"] + common + ["-u", "carol", "-P", "c4r0l",
                               "-t", topic, "-q", "1", "-C", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            def delivered():
                subprocess.run(["mosquitto_pub"] + common + ["-u", "dave", "-P", "d4ve", "-t",
                               topic, "-m", "hi", "-q", "1"], check=True, timeout=10)
                return sub.poll() is not None
            wait_until(delivered, 15, interval_s=0.05, msg="mosquitto_sub to get a message")
            out, err = sub.communicate(timeout=10)
        finally:
            sub.kill()
        assert out.decode().splitlines() == ["hi"], err
        for user, password in [("dave", "temp"), ("erin", "x"), (None, None)]:
            creds = ["-u", user, "-P", password] if user else []
            refused = subprocess.run(["mosquitto_pub"] + common + creds + ["-t", topic, "-m",
                                     "no", "-q", "1"], capture_output=True, timeout=10)
            assert refused.returncode != 0, (user, refused.stdout, refused.stderr)


def test_bad_password_file_is_a_clear_startup_error(tmp_path):
    path = tmp_path / "passwords"
    path.write_text("# users\nalice:$argon2id$v=19$broken\n")
    config = tmp_path / "node.toml"
    config.write_text("mqtt.password_file = \"%s\"\n" % path)
    out = subprocess.run([node_bin(), "--config", str(config), "--data-dir",
                          str(tmp_path / "data"), "--kafka-addr", "127.0.0.1:0",
                          "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0",
                          "--admin-addr", "127.0.0.1:0"], capture_output=True, timeout=30)
    assert out.returncode == 2
    assert ("%s:2: not a PHC string" % path) in out.stderr.decode(), out.stderr
    config.write_text("[[mqtt.acl]]\npermission = \"deny\"\naction = \"read\"\ntopic = \"a\"\n")
    out = subprocess.run([node_bin(), "--config", str(config), "--data-dir",
                          str(tmp_path / "data")], capture_output=True, timeout=30)
    assert out.returncode == 2
    assert "mqtt.acl rule 1: unknown action \"read\"" in out.stderr.decode(), out.stderr
    assert b"panicked" not in out.stderr


# ------------------------------------------------------------------ ACL

ACL = """
[[mqtt.acl]]
permission = "allow"
action = "subscribe"
topic = "secret/open"

[[mqtt.acl]]
permission = "deny"
action = "subscribe"
topic = "secret/#"

[[mqtt.acl]]
permission = "deny"
action = "publish"
topic = "readonly/#"

[[mqtt.acl]]
permission = "allow"
action = "all"
topic = "clients/%c/#"

[[mqtt.acl]]
permission = "allow"
action = "all"
topic = "users/%u/#"

[[mqtt.acl]]
permission = "deny"
action = "all"
topic = "clients/#"

[[mqtt.acl]]
permission = "deny"
action = "all"
topic = "users/#"

[[mqtt.acl]]
permission = "deny"
action = "publish"
topic = "admin/#"
"""


@pytest.fixture
def acl_broker(broker_factory):
    return broker_factory(config=ACL)


def raw_subscribe(port, level, filters, username=None, client_id=None):
    """SUBACK codes of one SUBSCRIBE with `filters` (QoS 1 each)."""
    raw = Raw(port)
    try:
        raw.send(login_connect(client_id or unique_id(), level, username, "pw" if username
                               else None))
        ptype, _, body = raw.read_packet()
        assert ptype == 2 and body[1] == 0
        raw.send(subscribe_packet(1, [(f, 1) for f in filters], level=level))
        ptype, _, body = raw.read_packet()
        assert ptype == SUBACK
        return list(body[3:] if level == 5 else body[2:])
    finally:
        raw.close()


@pytest.mark.parametrize("level", PASSWORD_LEVELS)
def test_denied_subscribe_fails_in_suback(acl_broker, level):
    denied = 0x87 if level == 5 else 0x80
    codes = raw_subscribe(acl_broker.mqtt_port, level,
                          ["secret/a", "secret/#", "public/a", "#", "secret/open", "secret/+/x",
                           "$share/g/secret/a"])
    # secret/open: the allow before the deny wins (first match); `#` is not covered by
    # `secret/#` and is granted.
    assert codes == [denied, denied, 1, 1, 1, denied, denied]


@pytest.mark.parametrize("level", LEVELS)
def test_denied_subscribe_with_paho(acl_broker, level):
    c = Client(acl_broker.mqtt_port, protocol=level)
    assert c.subscribe("secret/x", qos=1) == ([0x87] if level == V5 else [0x80])
    assert c.subscribe("secret/open", qos=1) == [1]
    c.disconnect()


@pytest.mark.parametrize("level", LEVELS)
def test_denied_publish_is_not_delivered(acl_broker, level):
    port = acl_broker.mqtt_port
    sub = Client(port, protocol=V5)
    assert sub.subscribe("readonly/#", qos=1) == [1]
    assert sub.subscribe("ok/#", qos=1) == [1]
    pub = Client(port, protocol=level)
    for qos in (0, 1, 2):
        pub.publish("readonly/%d" % qos, b"denied", qos=qos)
    pub.publish("ok/marker", b"marker", qos=1)
    sub.wait_messages(1)
    assert [(m.topic, m.payload) for m in sub.messages] == [("ok/marker", b"marker")]
    sub.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("level", [4, 5])
def test_denied_publish_acks(acl_broker, level):
    """v5: PUBACK/PUBREC 0x87; 3.1.1: acknowledged normally (QoS 2 completes with PUBREL)."""
    raw = Raw(acl_broker.mqtt_port)
    try:
        raw.send(login_connect(unique_id(), level))
        assert raw.read_packet()[0] == 2
        raw.send(publish_packet("readonly/x", b"p", qos=1, pkid=7, level=level))
        ptype, _, body = raw.read_packet()
        assert ptype == PUBACK and body[:2] == b"\x00\x07"
        assert (body[2] if len(body) > 2 else 0) == (0x87 if level == 5 else 0)
        raw.send(publish_packet("readonly/x", b"p", qos=2, pkid=8, level=level))
        ptype, _, body = raw.read_packet()
        assert ptype == PUBREC and body[:2] == b"\x00\x08"
        assert (body[2] if len(body) > 2 else 0) == (0x87 if level == 5 else 0)
        if level == 4:
            raw.send(packet(0x62, b"\x00\x08"))
            ptype, _, body = raw.read_packet()
            assert ptype == 7 and body[:2] == b"\x00\x08"
        # Allowed topics are still acknowledged with success (0x10: no subscribers, v5).
        raw.send(publish_packet("fine/x", b"p", qos=1, pkid=9, level=level))
        ptype, _, body = raw.read_packet()
        assert ptype == PUBACK and body[:2] == b"\x00\x09"
        assert (body[2] if len(body) > 2 else 0) in (0, 0x10)
    finally:
        raw.close()


@pytest.mark.parametrize("level", LEVELS)
def test_client_id_and_username_expansion(acl_broker, level):
    port = acl_broker.mqtt_port
    me = unique_id("me")
    c = Client(port, protocol=level, client_id=me)
    assert c.subscribe("clients/%s/#" % me, qos=1) == [1]
    denied = [0x87] if level == V5 else [0x80]
    assert c.subscribe("clients/someone-else/#", qos=1) == denied
    assert c.subscribe("users/%s/#" % me, qos=1) == denied  # anonymous: %u matches nothing
    other = Client(port, protocol=V5)
    assert other.subscribe("clients/#", qos=1) == [0x87]
    # Publishing into someone else's tree is dropped; into one's own is delivered.
    other.publish("clients/%s/in" % me, b"from-other", qos=1)
    c.publish("clients/%s/self" % me, b"from-me", qos=1)
    c.wait_messages(1)
    assert [m.payload for m in c.messages] == [b"from-me"]
    c.disconnect()
    other.disconnect()
    # %u: a client logged in as (unchecked, no password file) user "zed".
    codes = raw_subscribe(port, 4 if level != V31 else 3,
                          ["users/zed/inbox", "users/ann/inbox"], username="zed")
    assert codes == [1, 0x80]


@pytest.mark.parametrize("level", LEVELS)
def test_wide_subscription_does_not_receive_denied_topics(acl_broker, level):
    """`#` is granted (no deny rule covers it), but each live message is checked against the
    subscribe rules on delivery: secret/... stays out, secret/open (allowed first) gets in."""
    port = acl_broker.mqtt_port
    sub = Client(port, protocol=level)
    assert sub.subscribe("#", qos=1) == [1]
    pub = Client(port, protocol=V5)
    tag = unique_id("w")
    pub.publish("secret/%s" % tag, b"hidden", qos=1)
    pub.publish("secret/open", b"open-" + tag.encode(), qos=1)
    pub.publish("public/%s" % tag, b"marker", qos=1)
    # One publisher, one subscriber: order is kept, so the denied message would have come first.
    sub.wait_messages(2)
    got = [(m.topic, m.payload) for m in sub.messages if not m.topic.startswith("$")]
    assert got == [("secret/open", b"open-" + tag.encode()), ("public/%s" % tag, b"marker")]
    sub.disconnect()
    pub.disconnect()


def test_retained_messages_on_denied_topics_are_not_sent(acl_broker):
    port = acl_broker.mqtt_port
    pub = Client(port, protocol=V5)
    tag = unique_id("r")
    pub.publish("secret/%s" % tag, b"hidden", qos=1, retain=True)
    pub.publish("visible/%s/a" % tag, b"shown-a", qos=1, retain=True)
    pub.publish("visible/%s/b" % tag, b"shown-b", qos=1, retain=True)
    raw = Raw(port)
    try:
        raw.send(login_connect(unique_id(), 4))
        assert raw.read_packet()[0] == 2
        raw.send(subscribe_packet(1, [("#", 0)], level=4))
        ptype, _, body = raw.read_packet()
        assert ptype == SUBACK and body[2:] == b"\x00"
        topics = []
        while not all(t in topics for t in ("visible/%s/a" % tag, "visible/%s/b" % tag)):
            ptype, _, body = raw.read_packet()
            assert ptype == PUBLISH
            (tlen,) = struct.unpack(">H", body[:2])
            topics.append(body[2:2 + tlen].decode())
        # The retained messages are queued in one pass: the denied one would have come by now.
        assert raw.nothing_within(0.5)
        assert "secret/%s" % tag not in topics
    finally:
        raw.close()
    pub.disconnect()


def test_will_on_a_denied_topic_is_dropped(acl_broker):
    port = acl_broker.mqtt_port
    sub = Client(port, protocol=V5)
    assert sub.subscribe("readonly/#", qos=1) == [1]
    assert sub.subscribe("wills/#", qos=1) == [1]
    denied = Client(port, protocol=V311,
                    will={"topic": "readonly/will", "payload": b"denied-will", "qos": 1})
    allowed = Client(port, protocol=V311,
                     will={"topic": "wills/ok", "payload": b"allowed-will", "qos": 1})
    denied.kill()
    allowed.kill()
    sub.wait_messages(1)
    assert [m.payload for m in sub.messages] == [b"allowed-will"]
    sub.disconnect()


def test_username_rule_applies_only_to_that_user(broker_factory, tmp_path):
    path = str(tmp_path / "passwords")
    make_password_file(path, {"ops": "ops-pw", "dev": "dev-pw"})
    broker = broker_factory(config=(
        "[mqtt]\npassword_file = \"%s\"\n\n"
        "[[mqtt.acl]]\npermission = \"allow\"\naction = \"subscribe\"\ntopic = \"ops/#\"\n"
        "username = \"ops\"\n\n"
        "[[mqtt.acl]]\npermission = \"deny\"\naction = \"subscribe\"\ntopic = \"ops/#\"\n") % path)
    ops = logged_in_client(broker.mqtt_port, V5, "ops", "ops-pw")
    dev = logged_in_client(broker.mqtt_port, V5, "dev", "dev-pw")
    anon = Client(broker.mqtt_port, protocol=V311)
    assert ops.subscribe("ops/alerts", qos=1) == [1]
    assert dev.subscribe("ops/alerts", qos=1) == [0x87]
    assert anon.subscribe("ops/alerts", qos=1) == [0x80]
    for c in (ops, dev, anon):
        c.disconnect()


def test_rmq_user_help_texts():
    out = subprocess.run([rmq_bin(), "user", "--help"], capture_output=True, timeout=10)
    assert out.returncode == 0
    text = out.stdout.decode()
    assert "add" in text and "delete" in text
    out = subprocess.run([rmq_bin(), "user", "add", "--help"], capture_output=True, timeout=10)
    assert b"--password-file" in out.stdout and b"stdin" in out.stdout
