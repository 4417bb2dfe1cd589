"""The process contract scripts and tests rely on: ready line, flags, SIGTERM."""

import pytest
from kafka.protocol.fetch import FetchRequest

import kafka_raw as kr
from conftest import READY_RE, cpu_load
from kafka_util import create_topic


@pytest.mark.timeout(60)
def test_ready_line_and_sigterm_exit(broker):
    assert len(broker.stdout_lines) == 1 and READY_RE.match(broker.stdout_lines[0]), broker.stdout_lines
    assert broker.host == "127.0.0.1"
    with kr.RawConn(broker.host, broker.port) as c:
        assert c.api_versions(0).error_code == kr.NONE
    broker.stop()   # asserts exit 0 within 5 s
    assert broker.stdout_lines == [broker.stdout_lines[0]], \
        "stdout must hold only the ready line; got %r" % broker.stdout_lines


@pytest.mark.timeout(60)
def test_sigterm_with_open_connections(broker):
    # Idle clients and a client blocked in a long-poll Fetch must not hold up shutdown.
    conns = [kr.RawConn(broker.host, broker.port) for _ in range(5)]
    try:
        conns[0].api_versions(0)
        create_topic(broker.bootstrap, "cli-longpoll", 1)
        conns[1].send_request(FetchRequest[4](
            replica_id=-1, max_wait_time=30000, min_bytes=1, max_bytes=1 << 20,
            isolation_level=0, topics=[("cli-longpoll", [(0, 0, 1 << 20)])]))
        broker.stop()   # asserts exit 0 within 5 s
    finally:
        for c in conns:
            c.close()


@pytest.mark.timeout(120)
def test_repeated_restarts_sigterm_right_after_ready(broker):
    # SIGTERM immediately after the ready line must still be a clean exit (the signal
    # handlers must be installed before the ready line is printed), also under CPU load.
    with cpu_load(2):
        for _ in range(10):
            broker.restart()
    broker.stop()


@pytest.mark.timeout(60)
def test_advertised_addr_and_node_id_in_metadata(broker_factory):
    b = broker_factory(extra_args=["--advertised-kafka-addr", "localhost:19092", "--node-id", "7"])
    with kr.RawConn(b.host, b.port) as c:
        md = c.metadata([], version=1)
    brokers = [(x[0], x[1], x[2]) for x in md.brokers]
    assert brokers == [(7, "localhost", 19092)], md
    assert md.controller_id == 7, md


@pytest.mark.timeout(60)
def test_second_node_on_the_same_data_dir_is_refused(broker):
    import subprocess
    from conftest import node_bin
    second = subprocess.run(
        [node_bin(), "--cores", "1", "--data-dir", broker.data_dir,
         "--kafka-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0",
         "--admin-addr", "127.0.0.1:0"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert second.returncode != 0, second
    assert b"ready" not in second.stdout, second.stdout
    assert b"in use by another rmq-node" in second.stderr, second.stderr
    # The first node is untouched and still serves.
    with kr.RawConn(broker.host, broker.port) as c:
        assert c.api_versions(0).error_code == kr.NONE
