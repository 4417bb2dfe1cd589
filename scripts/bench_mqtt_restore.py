"""MQTT restart with persistent state: rmq-node versus mosquitto (apt, `persistence true`), the
same client and steps for both.

For each broker: start it on an empty data dir, open N persistent sessions (MQTT 3.1.1,
clean session 0, each subscribed at QoS 1 to its own topic), publish one QoS 1 message of
100 bytes to every topic while the sessions are offline, stop the broker with SIGTERM (both
write their state then), start it again and time from the spawn until a client reconnecting
with the first session's id gets CONNACK with session present and its queued message. Prints
one line per broker and the ratio rmq/mosquitto (lower is better).

Usage: bench_mqtt_restore.py [--sessions N] [--rmq-node PATH] [--mosquitto PATH]
"""

import argparse
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import mqtt_util  # noqa: E402  (the tests' MQTT packet builders)
from mqtt_util import mqtt_string, packet  # noqa: E402

READY_TIMEOUT_S = 120
IO_TIMEOUT_S = 30


def connect_packet(client_id, clean):
    return mqtt_util.connect_packet(client_id, level=4, clean=clean, keepalive=600)


class Conn(object):
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
        self.buf = b""

    def read_packet(self):
        while True:
            if len(self.buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self.buf):
                    byte = self.buf[i]
                    length |= (byte & 0x7F) << shift
                    i += 1
                    if not byte & 0x80:
                        break
                    shift += 7
                else:
                    i = None
                if i is not None and len(self.buf) >= i + length:
                    first, body = self.buf[0], self.buf[i:i + length]
                    self.buf = self.buf[i + length:]
                    return first >> 4, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


def fill(port, sessions):
    for i in range(sessions):
        c = Conn(port)
        c.send(connect_packet("rs-%d" % i, clean=False))
        assert c.read_packet()[0] == 2
        c.send(packet(0x82, struct.pack(">H", 1) + mqtt_string("rs/%d" % i) + b"\x01"))
        assert c.read_packet()[0] == 9
        c.send(packet(0xE0, b""))
        c.close()
    pub = Conn(port)
    pub.send(connect_packet("rs-publisher", clean=True))
    assert pub.read_packet()[0] == 2
    for i in range(sessions):
        pkid = i % 65535 + 1
        pub.send(packet(0x32, mqtt_string("rs/%d" % i) + struct.pack(">H", pkid) + b"m" * 100))
        assert pub.read_packet()[0] == 4
    pub.send(packet(0xE0, b""))
    pub.close()


def wait_listening(port_of):
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        port = port_of()
        if port is not None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S).close()
                return
            except OSError:
                pass
        time.sleep(0.005)
    raise SystemExit("broker not listening within %d s" % READY_TIMEOUT_S)


def time_to_session(port_of, spawned_at):
    """Seconds from spawn until rs-0 reconnects with its session and gets its message."""
    deadline = spawned_at + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        port = port_of()
        if port is None:
            time.sleep(0.005)
            continue
        try:
            c = Conn(port)
        except OSError:
            time.sleep(0.005)
            continue
        try:
            c.send(connect_packet("rs-0", clean=False))
            ptype, body = c.read_packet()
            assert ptype == 2 and body[1] == 0, "CONNACK refused"
            assert body[0] & 1, "no session present after the restart"
            ptype, body = c.read_packet()
            assert ptype == 3, "expected the queued PUBLISH, got type %d" % ptype
            return time.monotonic() - spawned_at
        finally:
            c.close()
    raise SystemExit("no session within %d s" % READY_TIMEOUT_S)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


class Rmq(object):
    name = "rmq-node"

    def __init__(self, binary, work):
        self.binary, self.data = binary, os.path.join(work, "rmq-data")
        self.proc, self.port = None, None

    def start(self):
        self.port = None
        self.proc = subprocess.Popen(
            [self.binary, "--cores", "2", "--data-dir", self.data, "--kafka-addr", "127.0.0.1:0",
             "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0",
             "--admin-addr", "127.0.0.1:0", "--log-level", "warn"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        spawned = time.monotonic()
        line = self.proc.stdout.readline()
        m = re.search(r"\smqtt=[^\s]+:(\d+)", line)
        if not m:
            raise SystemExit("rmq-node did not report ready: %r" % line)
        self.port = int(m.group(1))
        return spawned

    def port_of(self):
        return self.port

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


class Mosquitto(object):
    name = "mosquitto"

    def __init__(self, binary, work):
        self.binary, self.work = binary, work
        self.dir = os.path.join(work, "mosquitto-data")
        os.makedirs(self.dir, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.fixed_port = s.getsockname()[1]
        self.conf = os.path.join(work, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write("user root\nlistener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    "persistence_location %s/\nautosave_interval 0\nmax_queued_messages 0\n"
                    % (self.fixed_port, self.dir))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        return time.monotonic()

    def port_of(self):
        return self.fixed_port

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def run(broker, sessions):
    broker.start()
    wait_listening(broker.port_of)
    fill(broker.port_of(), sessions)
    broker.stop()
    spawned = broker.start()
    seconds = time_to_session(broker.port_of, spawned)
    rss = rss_kib(broker.proc.pid)
    broker.stop()
    print("%-9s %d sessions, %d queued messages: session back %.3f s after the restart's spawn;"
          " RSS after %d KiB" % (broker.name, sessions, sessions, seconds, rss))
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10000)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--rmq-node", default=os.path.join(root, "target", "release", "rmq-node"))
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="rmq-restore-", dir="/var/tmp")
    try:
        rmq = run(Rmq(args.rmq_node, work), args.sessions)
        mosquitto = run(Mosquitto(args.mosquitto, work), args.sessions)
        print("ratio rmq/mosquitto (time to the session after a restart): %.2f" % (rmq / mosquitto))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
