"""rmq-bench end to end: short Kafka runs against a real rmq-node and MQTT runs against
mosquitto (the MQTT peer until rmq-node speaks MQTT), each with --json, checking that every
published message was consumed and that the latency percentiles are present and ordered.

Binary: $RMQ_BENCH_BIN, else <repo>/target/release/rmq-bench (built with
`cargo build --release -p rmq-bench` here if it is missing). mosquitto comes from the Debian
package `mosquitto`; these tests fail (not skip) without it.
"""

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import REPO, _die_with_parent, wait_until

BENCH_BUILD_TIMEOUT_S = 1800
RUN_SECONDS = 5
# A run's process deadline: test duration + connection setup + drain, with room for a slow CI.
RUN_TIMEOUT_S = 120
PERCENTILES = ["p50", "p75", "p95", "p99", "p99_9", "p99_99", "max"]


def bench_bin():
    path = os.environ.get("RMQ_BENCH_BIN") or os.path.join(REPO, "target", "release", "rmq-bench")
    if not os.path.exists(path) and not os.environ.get("RMQ_BENCH_BIN"):
        subprocess.run(["cargo", "build", "--release", "-p", "rmq-bench"], cwd=REPO, check=True,
                       timeout=BENCH_BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert os.path.exists(path), "rmq-bench not found at %s (build it or set RMQ_BENCH_BIN)" % path
    return path


def run_bench(args, json_path):
    cmd = [bench_bin()] + args + ["--json", str(json_path)]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=RUN_TIMEOUT_S, preexec_fn=_die_with_parent)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, "rmq-bench exited %s:\n%s" % (p.returncode, out[-6000:])
    with open(json_path) as f:
        return json.load(f), out


def assert_ordered(pct, what):
    values = [pct[k] for k in PERCENTILES]
    assert pct["count"] > 0, "%s: no samples: %r" % (what, pct)
    assert values[0] > 0, "%s: p50 is 0: %r" % (what, pct)
    assert values == sorted(values), "%s percentiles out of order: %r" % (what, pct)


def assert_every_message_consumed(r, out):
    assert r["published_total"] > 0, out[-3000:]
    assert r["publish_errors"] == 0, out[-3000:]
    assert r["consumer_errors"] == 0, out[-3000:]
    assert r["error_codes"] == {}, out[-3000:]
    assert r["drained"], out[-3000:]
    assert r["consumed_total"] == r["expected_consumed_total"], out[-3000:]


def write_workload(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


KAFKA_WORKLOAD = """\
name: test / 1 topic / 4 partitions / 1Kb / 5000 msg/s
topics: 1
partitionsPerTopic: 4
messageSize: 1024
subscriptionsPerTopic: 1
consumerPerSubscription: 2
producersPerTopic: 2
producerRate: 5000
consumerBacklogSizeGB: 0
testDurationMinutes: 1
warmupDurationMinutes: 0
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("acks", ["1", "-1"])
def test_kafka_fixed_rate_run_consumes_every_message(broker, tmp_path, acks):
    wl = write_workload(tmp_path, "kafka.yaml", KAFKA_WORKLOAD)
    r, out = run_bench(["kafka", "--bootstrap", broker.bootstrap, "--workload", wl,
                        "--acks", acks, "--duration-s", str(RUN_SECONDS), "--warmup-s", "0"],
                       tmp_path / "kafka.json")
    assert_every_message_consumed(r, out)
    assert r["published_total"] == r["consumed_total"], out[-3000:]
    # 5000 msg/s for 5 s: the schedule must roughly be kept (a loaded CI box gets slack).
    assert r["publish"]["msgs"] >= 0.5 * 5000 * RUN_SECONDS, out[-3000:]
    assert r["partitions_per_topic"] == 4
    assert_ordered(r["publish_latency_us"], "publish latency")
    assert_ordered(r["end_to_end_latency_us"], "end-to-end latency")


@pytest.mark.timeout(300)
def test_kafka_max_rate_run_with_warmup_consumes_every_message(broker, tmp_path):
    wl = write_workload(tmp_path, "kafka-max.yaml",
                        KAFKA_WORKLOAD.replace("producerRate: 5000", "producerRate: 0"))
    r, out = run_bench(["kafka", "--bootstrap", broker.bootstrap, "--workload", wl,
                        "--duration-s", "3", "--warmup-s", "1"], tmp_path / "kafka-max.json")
    assert_every_message_consumed(r, out)
    assert r["published_total"] >= r["publish"]["msgs"] > 0
    assert_ordered(r["publish_latency_us"], "publish latency")
    assert_ordered(r["end_to_end_latency_us"], "end-to-end latency")


# ---------------------------------------------------------------- MQTT against mosquitto

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def mosquitto(tmp_path):
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        pytest.fail("mosquitto is not installed: the MQTT peer for rmq-bench comes from the Debian "
                    "package 'mosquitto' (apt-get install -y mosquitto); scripts/install-test-deps.sh "
                    "must install it")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    # No persistence, no queue cap: a QoS 1 run must not lose messages to mosquitto's default
    # max_queued_messages (1000), which drops once a subscriber lags.
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n" % port)
    log = open(str(tmp_path / "mosquitto.log"), "wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    try:
        wait_until(lambda: proc.poll() is not None or port_open(port), 15, msg="mosquitto listening")
        assert proc.poll() is None, "mosquitto exited: %s" % (tmp_path / "mosquitto.log").read_text()
        yield "127.0.0.1:%d" % port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


MQTT_WORKLOAD = """\
name: test / MQTT QoS{qos} v{version} 1 -> {subs} / 100b / {rate} msg/s
mode: fan-out
mqttVersion: {version}
qos: {qos}
publishers: 1
subscribers: {subs}
messageSize: 100
producerRate: {rate}
maxInflight: 64
testDurationMinutes: 1
warmupDurationMinutes: 0
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("version,qos,subs,rate", [
    (4, 1, 1, 2000),   # MQTT 3.1.1, QoS 1, 1 -> 1
    (5, 1, 10, 500),   # MQTT 5, QoS 1, 1 -> 10 fan-out
    (5, 2, 1, 1000),   # MQTT 5, QoS 2 (PUBREC / PUBREL / PUBCOMP)
])
def test_mqtt_run_against_mosquitto_receives_every_message(mosquitto, tmp_path, version, qos, subs, rate):
    wl = write_workload(tmp_path, "mqtt.yaml",
                        MQTT_WORKLOAD.format(version=version, qos=qos, subs=subs, rate=rate))
    r, out = run_bench(["mqtt", "--broker", mosquitto, "--workload", wl,
                        "--duration-s", str(RUN_SECONDS), "--warmup-s", "0"], tmp_path / "mqtt.json")
    assert r["protocol"] == "mqtt" and r["qos"] == qos and r["mqtt_version"] == version
    assert_every_message_consumed(r, out)
    assert r["protocol_errors"] == 0, out[-3000:]
    assert r["consumed_total"] == r["published_total"] * subs, out[-3000:]
    assert r["publish"]["msgs"] >= 0.5 * rate * RUN_SECONDS, out[-3000:]
    assert_ordered(r["publish_latency_us"], "publish latency")
    assert_ordered(r["end_to_end_latency_us"], "end-to-end latency")
    assert_ordered(r["connect_latency_us"], "connect latency")


@pytest.mark.timeout(120)
def test_mqtt_connection_storm_against_mosquitto(mosquitto, tmp_path):
    wl = write_workload(tmp_path, "storm.yaml", """\
name: test / storm 200
mode: connection-storm
publishers: 4
connections: 200
connectionRate: 0
holdConnections: true
testDurationMinutes: 1
""")
    t0 = time.monotonic()
    r, out = run_bench(["mqtt", "--broker", mosquitto, "--workload", wl], tmp_path / "storm.json")
    assert time.monotonic() - t0 < 60, "storm of 200 connections took too long:\n" + out[-3000:]
    assert r["connections"]["ok"] == 200 and r["connections"]["failed"] == 0, out[-3000:]
    assert_ordered(r["connect_latency_us"], "connect latency")
