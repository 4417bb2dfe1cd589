"""The `rmq` CLI end to end against a real rmq-node: every subcommand and its effect."""

import json
import os
import subprocess

import pytest

from conftest import node_bin, unique_topic
from kafka_util import admin, consume_all


def rmq_bin():
    return os.environ.get("RMQ_CLI_BIN") or os.path.join(os.path.dirname(node_bin()), "rmq")


def rmq(broker, *args, stdin=None, check=True, timeout_s=60):
    out = subprocess.run([rmq_bin(), *args], input=stdin, capture_output=True, timeout=timeout_s,
                         env=dict(os.environ, RMQ_BROKERS=broker.bootstrap))
    if check:
        assert out.returncode == 0, "rmq %s failed:\n%s" % (" ".join(args), out.stderr.decode())
    return out


@pytest.mark.timeout(120)
def test_rmq_topic_commands(broker):
    topic = unique_topic("cli")
    out = rmq(broker, "topic", "create", topic, "-p", "3", "-c", "retention.ms=60000")
    assert b"3 partitions" in out.stdout
    assert topic in rmq(broker, "topic", "list").stdout.decode()
    described = rmq(broker, "topic", "describe", topic).stdout.decode()
    assert "partitions: 3" in described and "retention.ms=60000 (set on topic)" in described

    rmq(broker, "topic", "alter", topic, "--set", "segment.ms=120000", "--delete",
        "retention.ms", "--partitions", "4")
    described = rmq(broker, "topic", "describe", topic).stdout.decode()
    assert "partitions: 4" in described
    assert "segment.ms=120000 (set on topic)" in described
    assert "retention.ms=604800000 (default)" in described

    refused = rmq(broker, "topic", "create", topic, check=False)
    assert refused.returncode == 1 and b"TopicAlreadyExists" in refused.stderr
    rmq(broker, "topic", "delete", topic)
    assert topic not in rmq(broker, "topic", "list").stdout.decode()
    missing = rmq(broker, "topic", "describe", topic, check=False)
    assert missing.returncode == 1 and b"UnknownTopicOrPartition" in missing.stderr


@pytest.mark.timeout(120)
def test_rmq_produce_and_consume_alone_and_in_a_group(broker):
    topic = unique_topic("clidata")
    rmq(broker, "topic", "create", topic, "-p", "2")
    lines = "".join("k%d:v%d\n" % (i % 5, i) for i in range(100)).encode()
    out = rmq(broker, "produce", topic, "--key-separator", ":", stdin=lines)
    assert b"produced 100 records" in out.stderr

    records, _ = consume_all(broker.bootstrap, topic, 2)
    got = [(k.decode(), v.decode()) for part in records.values() for _, k, v, _ in part]
    assert sorted(got) == sorted(("k%d" % (i % 5), "v%d" % i) for i in range(100))
    for part in records.values():   # one key, one partition
        keys = {k for _, k, _, _ in part}
        assert all(k not in {kk for p in records.values() if p is not part
                             for _, kk, _, _ in p} for k in keys)

    out = rmq(broker, "consume", topic, "--from-beginning", "-n", "100", "--format", "json")
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert sorted(r["value"] for r in rows) == sorted("v%d" % i for i in range(100))
    assert all(r["key"] == "k%d" % (int(r["value"][1:]) % 5) for r in rows)

    group = unique_topic("cligroup")
    first = rmq(broker, "consume", topic, "-g", group, "--from-beginning", "-n", "60")
    second = rmq(broker, "consume", topic, "-g", group, "-n", "40")
    values = first.stdout.decode().split() + second.stdout.decode().split()
    assert sorted(values) == sorted("v%d" % i for i in range(100)), "group resumed from its commit"

    listed = rmq(broker, "group", "list").stdout.decode()
    assert group in listed and "Empty" in listed
    described = rmq(broker, "group", "describe", group).stdout.decode()
    assert "state: Empty" in described and topic in described

    rmq(broker, "group", "delete-offsets", group, "--topic", topic)
    assert topic not in rmq(broker, "group", "describe", group, check=False).stdout.decode()
    rmq(broker, "group", "reset-offsets", group, "--topic", topic, "--to-earliest")
    again = rmq(broker, "consume", topic, "-g", group, "-n", "100", "--format", "key-value")
    assert len(again.stdout.decode().splitlines()) == 100
    assert all("\t" in line for line in again.stdout.decode().splitlines())

    rmq(broker, "group", "delete", group)
    assert group not in rmq(broker, "group", "list").stdout.decode()
    gone = rmq(broker, "group", "delete", group, check=False)
    assert gone.returncode == 1 and b"GroupIdNotFound" in gone.stderr


@pytest.mark.timeout(60)
def test_rmq_cluster_info_help_and_unreachable_broker(broker):
    info = rmq(broker, "cluster", "info").stdout.decode()
    a = admin(broker.bootstrap)
    cluster_id = a.describe_cluster().result(timeout=20).cluster_id
    assert "cluster id:  %s" % cluster_id in info
    assert "%s:%d" % (broker.host, broker.port) in info
    for sub in (["topic", "create"], ["produce"], ["consume"], ["group", "reset-offsets"],
                ["cluster", "info"]):
        helped = subprocess.run([rmq_bin(), *sub, "--help"], capture_output=True, timeout=10)
        assert helped.returncode == 0 and b"Usage:" in helped.stdout, sub
    down = subprocess.run([rmq_bin(), "--brokers", "127.0.0.1:1", "topic", "list"],
                          capture_output=True, timeout=30)
    assert down.returncode == 1 and b"RMQ_BROKERS" in down.stderr
