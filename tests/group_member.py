"""A consumer-group member for the tests, run as a subprocess so a test can kill it.

    group_member.py BOOTSTRAP TOPIC GROUP [--instance-id ID] [--session-timeout-ms MS]

Subscribes (confluent-kafka), commits synchronously after every batch it reads and prints one
JSON object per line on stdout:
  {"event": "assign", "partitions": [..]}  /  {"event": "revoke", "partitions": [..]}
  {"event": "records", "items": [[partition, offset, value], ...]}
SIGTERM closes the consumer (a dynamic member leaves the group; a static one does not, by
KIP-345) and exits 0.
"""

import argparse
import json
import signal
import sys

from confluent_kafka import Consumer, KafkaException


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("group")
    parser.add_argument("--instance-id")
    parser.add_argument("--session-timeout-ms", type=int, default=6000)
    args = parser.parse_args()
    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": args.session_timeout_ms,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
        "topic.metadata.refresh.interval.ms": 1000,
    }
    if args.instance_id:
        conf["group.instance.id"] = args.instance_id
    consumer = Consumer(conf)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    def on_assign(c, partitions):
        emit({"event": "assign", "partitions": sorted(p.partition for p in partitions)})

    def on_revoke(c, partitions):
        emit({"event": "revoke", "partitions": sorted(p.partition for p in partitions)})

    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
    while not stopping:
        msgs = consumer.consume(num_messages=1000, timeout=0.2)
        items = [[m.partition(), m.offset(), m.value().decode()] for m in msgs if not m.error()]
        if items:
            emit({"event": "records", "items": items})
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as e:
                # A commit refused during a rebalance: the records are read again after it.
                emit({"event": "commit_failed", "error": str(e)})
    consumer.close()


if __name__ == "__main__":
    main()
