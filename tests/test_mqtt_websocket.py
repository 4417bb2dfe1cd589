"""MQTT over WebSocket (`--mqtt-ws-addr`, path /mqtt, subprotocol mqtt): paho clients over
WebSocket publish and subscribe at 3.1.1 and 5, with each other and with TCP clients; other
paths are refused."""

import socket

import pytest

from mqtt_util import V311, V5, Client, unique_id

WS_PATH = "/mqtt"


def test_ready_line_reports_the_websocket_port(broker):
    assert broker.mqtt_ws_port and broker.mqtt_ws_port not in (broker.port, broker.mqtt_port)
    assert " mqtt-ws=127.0.0.1:%d " % broker.mqtt_ws_port in broker.stdout_lines[0]


@pytest.mark.parametrize("level", [V311, V5], ids=["3.1.1", "5"])
def test_pub_sub_round_trip_over_websocket(broker, level):
    topic = "ws/" + unique_id()
    ws_sub = Client(broker.mqtt_ws_port, protocol=level, websocket_path=WS_PATH)
    assert ws_sub.subscribe(topic + "/#", 1) == [1]
    tcp_sub = Client(broker.mqtt_port, protocol=level)
    assert tcp_sub.subscribe(topic + "/#", 1) == [1]
    ws_pub = Client(broker.mqtt_ws_port, protocol=level, websocket_path=WS_PATH)
    tcp_pub = Client(broker.mqtt_port, protocol=level)
    for n in range(20):
        ws_pub.publish(topic + "/ws", b"ws%d" % n, qos=1)
        tcp_pub.publish(topic + "/tcp", b"tcp%d" % n, qos=1)
    # A payload larger than one read chunk crosses several WebSocket reads.
    big = bytes(range(256)) * 400
    ws_pub.publish(topic + "/big", big, qos=1)
    for sub in (ws_sub, tcp_sub):
        got = sub.wait_messages(41)
        assert [m.payload for m in got if m.topic == topic + "/ws"] == [
            b"ws%d" % n for n in range(20)]
        assert [m.payload for m in got if m.topic == topic + "/tcp"] == [
            b"tcp%d" % n for n in range(20)]
        assert [m.payload for m in got if m.topic == topic + "/big"] == [big]


def test_other_paths_are_refused(broker):
    request = ("GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", broker.mqtt_ws_port), timeout=10)
    sock.sendall(request.encode())
    status = sock.recv(1024).split(b"\r\n", 1)[0]
    sock.close()
    assert status.startswith(b"HTTP/1.1 404"), status


def test_mqtt_path_answers_the_mqtt_subprotocol(broker):
    request = ("GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqttv3.1, mqtt\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", broker.mqtt_ws_port), timeout=10)
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1024)
        assert chunk, "connection closed during the handshake: %r" % response
        response += chunk
    sock.close()
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 101"), head
    assert b"\r\nsec-websocket-protocol: mqtt" in head, head
