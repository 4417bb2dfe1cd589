"""Consumer-group benchmarks against a running Kafka-protocol broker (scripts/bench-groups.sh
starts rmq-node and calls this with its address).

  join     time from a fresh confluent-kafka Consumer's subscribe() to its first record
           (cold: the Consumer is created just before subscribe; warm: its bootstrap
           connection and metadata are up first; see JOIN_CASES), REPS repetitions each,
           p50 and max.
  commits  OffsetCommit throughput over GROUPS group ids (generation -1, empty member id: the
           commit of a consumer that assigns itself), each commit one partition offset,
           answered durably by the broker:
             raw     a lean asyncio client (hand-encoded OffsetCommit v2), for each of
                     --raw-runs: connections x requests in flight per connection, each
                     connection committing for its own share of the groups; afterwards
                     OffsetFetch checks every group's last offset
             librdkafka  confluent-kafka Consumer.commit(offsets=..., asynchronous=False),
                     one Consumer per group id (created untimed), CK_COMMITS timed commits each

Usage: bench_groups.py HOST:PORT [--reps N] [--groups N] [--duration-s S]
       [--raw-runs 1x1,16x4,1000x1] [--ck-commits N] [--only join|commits] [--json PATH]
"""

import argparse
import asyncio
import json
import statistics
import struct
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
CLIENT_ID = b"rmq-bench-groups"
JOIN_PARTITIONS = 6
RECORDS_PER_PARTITION = 10
FIRST_RECORD_TIMEOUT_S = 60.0
# One connection with one commit at a time (latency), 16 connections with 4 each, and one
# connection per group (1,000 consumers committing). A connection's requests are answered in
# order, so in-flight requests on one connection mostly wait for the ones before them.
DEFAULT_RAW_RUNS = "1x1,16x4,1000x1"


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def create_topic(bootstrap, name, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                        operation_timeout=30)[name].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        topic = admin.list_topics(topic=name, timeout=10).topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) == partitions \
                and all(p.leader >= 0 for p in topic.partitions.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("topic %s never got %d partitions with leaders" % (name, partitions))
        time.sleep(0.05)


# -- (1) subscribe() -> first record


def fill_join_topic(bootstrap, topic):
    create_topic(bootstrap, topic, JOIN_PARTITIONS)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for partition in range(JOIN_PARTITIONS):
        for i in range(RECORDS_PER_PARTITION):
            producer.produce(topic, value=b"record-%d" % i, partition=partition)
    if producer.flush(60) != 0:
        raise RuntimeError("records for the join benchmark were not delivered")


# (case, connect before subscribe(), group has committed offsets). librdkafka starts a
# partition without a committed offset on a fixed 100 ms timer (rd_kafka_offset_reset's
# backoff for "no previously committed offset"), so the last case shows the path without it.
JOIN_CASES = (
    ("cold consumer, new group", False, False),
    ("warm consumer, new group", True, False),
    ("warm consumer, group with committed offsets", True, True),
)


def commit_start_offsets(bootstrap, topic, group):
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                          "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(topic, p, 0) for p in range(JOIN_PARTITIONS)],
                         asynchronous=False)
    finally:
        committer.close()


def subscribe_to_first_record_s(bootstrap, topic, warm, committed):
    group = "join-" + uuid.uuid4().hex
    if committed:
        commit_start_offsets(bootstrap, topic, group)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        if warm:
            consumer.list_topics(topic=topic, timeout=10)
        start = time.perf_counter()
        consumer.subscribe([topic])
        deadline = time.monotonic() + FIRST_RECORD_TIMEOUT_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.01)
            if message is not None and message.error() is None:
                return time.perf_counter() - start
            if message is not None:
                raise RuntimeError("consumer error: %s" % message.error())
        raise RuntimeError("no record within %.0fs of subscribe()" % FIRST_RECORD_TIMEOUT_S)
    finally:
        consumer.close()


def bench_join(bootstrap, reps):
    topic = "bench-join-" + uuid.uuid4().hex[:8]
    fill_join_topic(bootstrap, topic)
    rows = []
    for name, warm, committed in JOIN_CASES:
        samples_ms = [1000 * subscribe_to_first_record_s(bootstrap, topic, warm, committed)
                      for _ in range(reps)]
        rows.append({"case": "subscribe() -> first record, %s" % name,
                     "reps": reps, "p50_ms": statistics.median(samples_ms),
                     "max_ms": max(samples_ms), "min_ms": min(samples_ms),
                     "samples_ms": samples_ms})
    return rows


# -- (2) offset commits: lean raw client


def kafka_string(raw):
    return struct.pack(">h", len(raw)) + raw


def request_header(api_key, api_version, correlation_id):
    return struct.pack(">hhi", api_key, api_version, correlation_id) + kafka_string(CLIENT_ID)


def offset_commit_v2(correlation_id, group, topic, partition, offset):
    body = (kafka_string(group) + struct.pack(">i", -1) + kafka_string(b"")
            + struct.pack(">qi", -1, 1) + kafka_string(topic)
            + struct.pack(">iiqh", 1, partition, offset, -1))
    payload = request_header(API_OFFSET_COMMIT, 2, correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


def parse_offset_commit_v2(frame):
    """(correlation id, [error codes])."""
    (correlation_id, topic_count) = struct.unpack_from(">ii", frame, 0)
    position = 8
    errors = []
    for _ in range(topic_count):
        (name_bytes,) = struct.unpack_from(">h", frame, position)
        position += 2 + name_bytes
        (partition_count,) = struct.unpack_from(">i", frame, position)
        position += 4
        for _ in range(partition_count):
            (_, error_code) = struct.unpack_from(">ih", frame, position)
            position += 6
            errors.append(error_code)
    return correlation_id, errors


def offset_fetch_v1(correlation_id, group, topic, partition):
    body = kafka_string(group) + struct.pack(">i", 1) + kafka_string(topic) \
        + struct.pack(">ii", 1, partition)
    payload = request_header(API_OFFSET_FETCH, 1, correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


def parse_offset_fetch_v1(frame):
    """(correlation id, offset, error code) of the one partition asked for."""
    (correlation_id, _topics) = struct.unpack_from(">ii", frame, 0)
    (name_bytes,) = struct.unpack_from(">h", frame, 8)
    position = 10 + name_bytes + 4
    (_, offset, metadata_bytes) = struct.unpack_from(">iqh", frame, position)
    position += 14 + max(metadata_bytes, 0)
    (error_code,) = struct.unpack_from(">h", frame, position)
    return correlation_id, offset, error_code


async def read_frame(reader):
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


class CommitLoad(object):
    """Shared state of one commit run: what each group committed last, latencies, counts."""

    def __init__(self, topic):
        self.topic = topic
        self.last_offset = {}
        self.latencies_us = []
        self.answered = 0
        self.errors = 0
        self.measuring = False
        self.stop = False


async def commit_connection(host, port, load, groups, depth):
    """Commits for `groups` (this connection's own, so each group's commits stay in order),
    round robin, each group's offset one higher than its last, `depth` requests in flight."""
    reader, writer = await asyncio.open_connection(host, port)
    in_flight = {}
    correlation_id = 0
    try:
        while not load.stop or in_flight:
            while not load.stop and len(in_flight) < depth:
                group = groups[correlation_id % len(groups)]
                offset = correlation_id // len(groups) + 1
                correlation_id += 1
                in_flight[correlation_id] = (group, offset, time.perf_counter(), load.measuring)
                writer.write(offset_commit_v2(correlation_id, group, load.topic, 0, offset))
            await writer.drain()
            answered, errors = parse_offset_commit_v2(await read_frame(reader))
            group, offset, sent_at, measured = in_flight.pop(answered)
            if any(errors):
                load.errors += 1
            else:
                load.last_offset[group] = max(load.last_offset.get(group, 0), offset)
            if load.measuring:
                load.answered += 1
                if measured:
                    load.latencies_us.append(1e6 * (time.perf_counter() - sent_at))
    finally:
        writer.close()


async def verify_commits(host, port, load):
    """Every group's committed offset is the last one it was told succeeded."""
    reader, writer = await asyncio.open_connection(host, port)
    mismatched = 0
    try:
        for index, (group, offset) in enumerate(sorted(load.last_offset.items())):
            writer.write(offset_fetch_v1(index + 1, group, load.topic, 0))
            await writer.drain()
            _, fetched, error_code = parse_offset_fetch_v1(await read_frame(reader))
            if error_code or fetched != offset:
                mismatched += 1
    finally:
        writer.close()
    return mismatched


async def run_commits(bootstrap, topic, groups, connections, depth, duration_s, warmup_s):
    host, port = bootstrap.rsplit(":", 1)
    load = CommitLoad(topic)
    connections = min(connections, len(groups))
    tasks = [asyncio.create_task(commit_connection(host, int(port), load,
                                                   groups[index::connections], depth))
             for index in range(connections)]
    await asyncio.sleep(warmup_s)
    load.measuring = True
    started_at, cpu_started_s = time.perf_counter(), time.process_time()
    await asyncio.sleep(duration_s)
    load.measuring = False
    elapsed_s = time.perf_counter() - started_at
    client_cpu_pct = 100 * (time.process_time() - cpu_started_s) / elapsed_s
    answered = load.answered
    load.stop = True
    await asyncio.gather(*tasks)
    mismatched = await verify_commits(host, int(port), load)
    latencies = load.latencies_us
    return {"case": "raw OffsetCommit v2, %d conn x %d in flight" % (connections, depth),
            "groups": len(groups), "commits": answered, "seconds": elapsed_s,
            "commits_per_s": answered / elapsed_s,
            "p50_us": percentile(latencies, 0.5) if latencies else None,
            "p99_us": percentile(latencies, 0.99) if latencies else None,
            "errors": load.errors, "groups_checked": len(load.last_offset),
            "groups_mismatched": mismatched, "client_cpu_pct": client_cpu_pct}


def parse_raw_runs(text):
    """"1x1,16x4,1000x1" -> [(connections, in flight per connection), ...]."""
    runs = []
    for item in text.split(","):
        connections, depth = item.strip().lower().split("x")
        runs.append((int(connections), int(depth)))
        if runs[-1][0] < 1 or runs[-1][1] < 1:
            raise ValueError("raw run %r needs at least 1 connection and 1 in flight" % item)
    return runs


def bench_commits_raw(bootstrap, topic, group_count, raw_runs, duration_s):
    rows = []
    for conns, in_flight in raw_runs:
        groups = [b"commit-%s-%04d" % (uuid.uuid4().hex[:6].encode(), g) for g in range(group_count)]
        rows.append(asyncio.run(run_commits(bootstrap, topic, groups, conns, in_flight,
                                            duration_s, warmup_s=1.0)))
    return rows


# -- (2b) offset commits through librdkafka


def bench_commits_librdkafka(bootstrap, topic, group_count, commits_per_group):
    timed_s = 0.0
    latencies_us = []
    setup_started = time.perf_counter()
    prefix = "ck-" + uuid.uuid4().hex[:6]
    for g in range(group_count):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "%s-%04d" % (prefix, g),
                             "enable.auto.commit": False})
        try:
            # The first commit finds the coordinator; it is not timed.
            consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
            for offset in range(2, commits_per_group + 2):
                started = time.perf_counter()
                consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
                took = time.perf_counter() - started
                timed_s += took
                latencies_us.append(1e6 * took)
        finally:
            consumer.close()
    total_s = time.perf_counter() - setup_started
    return {"case": "librdkafka Consumer.commit(sync), 1 per group at a time",
            "groups": group_count, "commits": len(latencies_us), "seconds": timed_s,
            "commits_per_s": len(latencies_us) / timed_s,
            "p50_us": percentile(latencies_us, 0.5), "p99_us": percentile(latencies_us, 0.99),
            "errors": 0, "wall_s_with_consumer_setup": total_s}


def print_tables(join_rows, commit_rows):
    if join_rows:
        print("%-60s %5s %9s %9s %9s" % ("join", "reps", "p50 ms", "max ms", "min ms"))
        for r in join_rows:
            print("%-60s %5d %9.1f %9.1f %9.1f" % (r["case"], r["reps"], r["p50_ms"], r["max_ms"],
                                                   r["min_ms"]))
        print()
    if commit_rows:
        print("%-60s %6s %8s %10s %8s %8s %6s %9s %7s" % (
            "offset commits", "groups", "commits", "commits/s", "p50 us", "p99 us", "errors",
            "mismatch", "cli cpu"))
        for r in commit_rows:
            cpu = r.get("client_cpu_pct")
            print("%-60s %6d %8d %10.0f %8.0f %8.0f %6d %9s %7s" % (
                r["case"], r["groups"], r["commits"], r["commits_per_s"], r["p50_us"],
                r["p99_us"], r["errors"], r.get("groups_mismatched", "-"),
                "-" if cpu is None else "%.0f%%" % cpu))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bootstrap")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--raw-runs", type=parse_raw_runs, default=parse_raw_runs(DEFAULT_RAW_RUNS),
                        help="CONNECTIONSxIN_FLIGHT,... (default %s)" % DEFAULT_RAW_RUNS)
    parser.add_argument("--ck-commits", type=int, default=3,
                        help="timed librdkafka commits per group (0 skips that run)")
    parser.add_argument("--only", choices=("join", "commits"))
    parser.add_argument("--json")
    args = parser.parse_args()

    join_rows = [] if args.only == "commits" else bench_join(args.bootstrap, args.reps)
    commit_rows = []
    if args.only != "join":
        topic = "bench-commits-" + uuid.uuid4().hex[:8]
        create_topic(args.bootstrap, topic, 1)
        commit_rows += bench_commits_raw(args.bootstrap, topic.encode(), args.groups,
                                         args.raw_runs, args.duration_s)
        if args.ck_commits > 0:
            commit_rows.append(bench_commits_librdkafka(args.bootstrap, topic, args.groups,
                                                        args.ck_commits))
    print_tables(join_rows, commit_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"join": join_rows, "commits": commit_rows}, f, indent=2)
    failed = any(r["errors"] or r.get("groups_mismatched") for r in commit_rows)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as e:
        print("kafka error: %s" % e, file=sys.stderr)
        sys.exit(1)
