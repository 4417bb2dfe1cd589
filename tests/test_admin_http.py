"""The admin HTTP endpoint: health, topics, groups, and /metrics as Prometheus text whose
counters move with traffic."""

import json
import re
import urllib.request

import pytest
from confluent_kafka import Consumer

from conftest import unique_topic, wait_until
from kafka_util import create_topic, produce_all, producer

ADMIN_RE = re.compile(r"\sadmin=(?P<host>[^\s:]+):(?P<port>\d+)(\s|$)")
# Prometheus text format 0.0.4: comments, or `name{labels} value`.
SAMPLE_RE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
                       r'(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
                       r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*)\})? (?P<value>[-+0-9.eEInf]+|NaN)$')


def admin_url(broker, path):
    m = ADMIN_RE.search(broker.stdout_lines[0])
    assert m, "ready line without admin=: %r" % broker.stdout_lines[0]
    return "http://%s:%s%s" % (m.group("host"), m.group("port"), path)


def get(broker, path):
    with urllib.request.urlopen(admin_url(broker, path), timeout=10) as response:
        return response.status, response.headers.get("Content-Type"), response.read().decode()


def parse_metrics(text):
    """{(name, frozenset(labels)): value}; asserts every line is valid exposition format."""
    samples = {}
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not Prometheus text: %r" % line
        labels = frozenset(re.findall(r'([a-zA-Z_]+)="([^"]*)"', m.group("labels") or ""))
        base = re.sub(r"_(bucket|sum|count|total)$", "", m.group("name"))
        assert m.group("name") in typed or base in typed or base + "_total" in typed, line
        samples[(m.group("name"), labels)] = float(m.group("value"))
    return samples


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and want <= set(l))


@pytest.mark.timeout(60)
def test_health_topics_and_groups(broker):
    status, content_type, body = get(broker, "/v1/health")
    assert status == 200 and content_type == "application/json"
    assert json.loads(body) == {"status": "ok"}
    topic = unique_topic("http")
    create_topic(broker.bootstrap, topic, 3)
    topics = {t["name"]: t for t in json.loads(get(broker, "/v1/topics")[2])}
    assert topics[topic]["partitions"] == 3

    group = unique_topic("g")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        c.subscribe([topic])
        wait_until(lambda: c.poll(0.1) is None and c.assignment(), 30, msg="assigned")
        groups = {g["group"]: g for g in json.loads(get(broker, "/v1/groups")[2])}
        assert groups[group]["state"] == "Stable"
    finally:
        c.close()
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(broker, "/v1/nope")
    assert missing.value.code == 404


@pytest.mark.timeout(60)
def test_metrics_are_prometheus_text_and_counters_move_with_traffic(broker):
    status, content_type, body = get(broker, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    before = parse_metrics(body)
    topic = unique_topic("metrics")
    create_topic(broker.bootstrap, topic, 2)
    produce_all(producer(broker.bootstrap), [(None, b"x" * 100) for _ in range(1000)], topic)

    def moved():
        after = parse_metrics(get(broker, "/metrics")[2])
        produced = (total(after, "rmq_kafka_request_latency_us_count", api="Produce")
                    - total(before, "rmq_kafka_request_latency_us_count", api="Produce"))
        appended = (total(after, "rmq_storage_appended_bytes_total")
                    - total(before, "rmq_storage_appended_bytes_total"))
        bytes_in = (total(after, "rmq_kafka_bytes_in_total")
                    - total(before, "rmq_kafka_bytes_in_total"))
        return produced > 0 and appended >= 100000 and bytes_in >= 100000 and after
    after = wait_until(moved, 10, msg="produce counters moved")
    assert total(after, "rmq_partitions") >= 2 + 16   # the topic and __consumer_offsets
    shards = {dict(l)["shard"] for (n, l) in after if n == "rmq_kafka_bytes_in_total"}
    assert shards == {"0", "1"}
