"""Partition-scale benchmark (issue 6 item 7): many partitions on one rmq-node.

scripts/bench-partitions.sh starts the broker and calls this with its address and pid. Steps:
  create   TOTAL partitions as TOPICS topics (TOTAL / TOPICS partitions each), created with
           CreateTopics in batches of BATCH topics; reports the time and partitions/s
  idle     RSS growth per partition (RSS after create - RSS before, / TOTAL), open files
  metadata a Metadata request for every topic (confluent-kafka list_topics), time
  produce  RECORDS 100-byte records to uniformly random partitions (acks=all, librdkafka),
           time and acked count; then open files and RSS again
The restart figures (SIGTERM + start, kill -9 + start) are measured by the shell script.

Usage: bench_partitions.py HOST:PORT PID [--total N] [--topics N] [--batch N] [--records N]
       [--json PATH]
"""

import argparse
import json
import os
import random
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

CREATE_TIMEOUT_S = 600


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def create(admin, names, partitions, batch):
    start = time.monotonic()
    for i in range(0, len(names), batch):
        chunk = names[i:i + batch]
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in chunk],
            operation_timeout=CREATE_TIMEOUT_S, request_timeout=CREATE_TIMEOUT_S)
        for name, future in futures.items():
            future.result(timeout=CREATE_TIMEOUT_S)
        done = i + len(chunk)
        if done % max(batch, len(names) // 10) < batch:
            print(f"  created {done * partitions} partitions in {time.monotonic() - start:.1f} s",
                  flush=True)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("pid", type=int)
    ap.add_argument("--total", type=int, default=100_000)
    ap.add_argument("--topics", type=int, default=1_000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    assert args.total % args.topics == 0, "--total must be a multiple of --topics"
    per_topic = args.total // args.topics
    prefix = "scale-%d" % int(time.time())
    names = [f"{prefix}-{i:05d}" for i in range(args.topics)]
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    result = {"partitions": args.total, "topics": args.topics}

    rss_before = rss_kib(args.pid)
    files_before = open_files(args.pid)
    print(f"create: {args.total} partitions as {args.topics} topics x {per_topic}, "
          f"{args.batch} topics per CreateTopics", flush=True)
    result["create_s"] = create(admin, names, per_topic, args.batch)
    result["create_partitions_per_s"] = args.total / result["create_s"]
    rss_after = rss_kib(args.pid)
    result["rss_before_kib"] = rss_before
    result["rss_after_create_kib"] = rss_after
    result["rss_per_idle_partition_bytes"] = (rss_after - rss_before) * 1024 / args.total
    result["open_files_before"] = files_before
    result["open_files_after_create"] = open_files(args.pid)

    start = time.monotonic()
    listed = admin.list_topics(timeout=120)
    found = sum(len(listed.topics[n].partitions) for n in names if n in listed.topics)
    result["metadata_s"] = time.monotonic() - start
    assert found == args.total, f"Metadata lists {found} of {args.total} partitions"

    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all",
                         "linger.ms": 5, "queue.buffering.max.messages": 1_000_000,
                         "enable.idempotence": False})
    acked = [0]
    errors = []

    def on_delivery(err, _msg):
        if err is None:
            acked[0] += 1
        else:
            errors.append(err)

    rng = random.Random(7)
    payload = b"x" * 100
    start = time.monotonic()
    for _ in range(args.records):
        producer.produce(names[rng.randrange(args.topics)], payload,
                         partition=rng.randrange(per_topic), on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(300)
    result["produce_s"] = time.monotonic() - start
    result["produce_acked"] = acked[0]
    assert remaining == 0 and not errors and acked[0] == args.records, \
        f"acked {acked[0]} of {args.records}, errors {errors[:3]}"
    result["open_files_after_produce"] = open_files(args.pid)
    result["rss_after_produce_kib"] = rss_kib(args.pid)

    print(f"created  {args.total} partitions in {result['create_s']:.1f} s "
          f"({result['create_partitions_per_s']:.0f}/s)")
    print(f"idle     RSS {rss_before} KiB -> {rss_after} KiB: "
          f"{result['rss_per_idle_partition_bytes']:.0f} bytes per partition; open files "
          f"{files_before} -> {result['open_files_after_create']}")
    print(f"metadata all {args.total} partitions listed in {result['metadata_s']:.2f} s")
    print(f"produce  {args.records} records to random partitions (acks=all) in "
          f"{result['produce_s']:.1f} s; open files {result['open_files_after_produce']}, "
          f"RSS {result['rss_after_produce_kib']} KiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print("names " + prefix)


if __name__ == "__main__":
    sys.exit(main())
