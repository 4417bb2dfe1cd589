"""Replication cost and failover time on a 3-node rmq-node cluster on this machine.

Starts three nodes (--cores 1 each, free ports, data dirs under target/, stopped at the end
even on failure; the tests' Broker/Cluster helpers), then in the same run:

  throughput  an RF1 and an RF3 topic with the same partitions; for each, confluent-kafka
              produces --value-bytes values with --acks (default all; linger.ms=--linger-ms, at most
              --max-outstanding unacknowledged records, explicit partitions round robin) for
              --seconds after a warm-up: msgs/s, MB/s, per-record latency (delivery report
              time - produce() time) p50/p99; --rounds rounds alternating RF1 and RF3 (this
              machine's disk and CPU are shared, single runs swing widely). Prints every run,
              the medians and the RF3/RF1 ratios of the medians.
  failover    an idempotent acks=all producer streams into the RF3 topic (tests' ProduceStream,
              --stream-rate records/s); --failovers times: kill -9 the leader of partition 0
              (from Metadata), time from the kill to the first acknowledged record on
              partition 0 sent after it and to the first /v1/cluster report of a survivor
              leading it in a later term (the server's share; the rest is the client finding
              the new leader), restart the node and wait until it has caught up. Prints each
              and the medians.

rmq-bench (benches/) produces through one broker address without following partition leaders,
so it cannot drive a cluster; this driver uses librdkafka through confluent-kafka.

Usage: bench_replication.py [--seconds S] [--rounds N] [--partitions N] [--value-bytes B]
       [--election-timeout-ms MS] [--failovers N] [--max-outstanding N] [--linger-ms MS]
       [--stream-rate N] [--acks all|1] [--idempotent] [--rmq-node PATH]
"""

import argparse
import os
import shutil
import statistics
import struct
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from confluent_kafka import Producer  # noqa: E402

from cluster_util import Cluster, wait_formed  # noqa: E402
from conftest import Broker, wait_until  # noqa: E402
from replication_util import (ProduceStream, agreed_partitions, caught_up,  # noqa: E402
                              leader_states, try_replica_states,
                              create_replicated, partition_metadata)

WARMUP_RECORDS = 2000
FLUSH_TIMEOUT_S = 120
FAILOVER_TIMEOUT_S = 60
CATCH_UP_TIMEOUT_S = 120
SEND_TIME = struct.Struct(">d")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Nodes(object):
    """broker_factory for Cluster outside pytest: every Broker it made is stopped by close()."""

    def __init__(self, root):
        self.root = root
        self.brokers = []

    def __call__(self, cores=1, start=True, extra_args=()):
        idx = len(self.brokers)
        b = Broker(os.path.join(self.root, "node%d-data" % idx),
                   os.path.join(self.root, "node%d.stderr.log" % idx),
                   cores=cores, extra_args=extra_args)
        self.brokers.append(b)
        if start:
            b.start()
        return b

    def close(self):
        for b in self.brokers:
            try:
                b.stop()
            except AssertionError as e:
                print("warning: %s" % str(e).splitlines()[0], file=sys.stderr)
            finally:
                b.kill9()


def wait_topic(cluster, topic, partitions, rf):
    def ready():
        if rf == 3:
            return agreed_partitions(cluster.running(), topic, partitions)
        for b in cluster.running():
            _, error, parts = partition_metadata(b, topic)
            if error or sorted(parts) != list(range(partitions)) or \
                    any(p["leader"] < 0 for p in parts.values()):
                return None
        return True
    wait_until(ready, 60, interval_s=0.1, msg="topic %s ready on every node" % topic)


def produce_for(bootstrap, topic, partitions, args):
    """(records, seconds, latencies_s) of produce with args.acks for args.seconds."""
    latencies = []
    errors = []
    state = {"last_ack": None, "acked": 0}

    def on_delivery(err, msg):
        now = time.monotonic()
        if err is not None:
            errors.append(str(err))
            return
        latencies.append(now - SEND_TIME.unpack_from(msg.value())[0])
        state["acked"] += 1
        state["last_ack"] = now

    p = Producer({"bootstrap.servers": bootstrap, "acks": args.acks, "linger.ms": args.linger_ms,
                  "queue.buffering.max.messages": args.max_outstanding,
                  "enable.idempotence": args.idempotent, "message.timeout.ms": 60000})
    padding = b"x" * max(0, args.value_bytes - SEND_TIME.size)

    def send(i):
        while True:
            try:
                p.produce(topic, value=SEND_TIME.pack(time.monotonic()) + padding,
                          partition=i % partitions, on_delivery=on_delivery)
                return
            except BufferError:
                p.poll(0.001)

    for i in range(WARMUP_RECORDS):
        send(i)
    if p.flush(FLUSH_TIMEOUT_S) != 0 or errors:
        raise RuntimeError("warm-up records not delivered: %s" % errors[:3])
    latencies.clear()
    state["acked"] = 0
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < args.seconds:
        send(i)
        i += 1
        p.poll(0)
    if p.flush(FLUSH_TIMEOUT_S) != 0 or errors:
        raise RuntimeError("records not delivered: %s" % errors[:3])
    return state["acked"], state["last_ack"] - start, latencies


def bench_throughput(cluster, args):
    """--rounds rounds of RF1 then RF3 (one topic each, reused); returns the per-RF medians."""
    topics = {}
    for rf in (1, 3):
        topics[rf] = "bench-rf%d-%s" % (rf, uuid.uuid4().hex[:8])
        create_replicated(cluster.bootstrap(), topics[rf], args.partitions, replication_factor=rf)
        wait_topic(cluster, topics[rf], args.partitions, rf)
    rows = []
    for rnd in range(args.rounds):
        for rf in (1, 3):
            n, elapsed_s, latencies = produce_for(cluster.bootstrap(), topics[rf],
                                                  args.partitions, args)
            rows.append({"round": rnd + 1, "rf": rf, "records": n, "msgs_s": n / elapsed_s,
                         "mb_s": n * args.value_bytes / elapsed_s / 1e6,
                         "p50_ms": percentile(latencies, 0.5) * 1000,
                         "p99_ms": percentile(latencies, 0.99) * 1000})
    print("\nacks=%s%s produce, %d partitions, %d-byte values, linger.ms=%d, <= %d outstanding, "
          "%.0f s per run" % (args.acks, " idempotent" if args.idempotent else "", args.partitions, args.value_bytes, args.linger_ms,
                              args.max_outstanding, args.seconds))
    print("%-6s %-4s %10s %10s %8s %9s %9s" % (
        "round", "RF", "records", "msgs/s", "MB/s", "p50 ms", "p99 ms"))
    for r in rows:
        print("%-6d %-4d %10d %10.0f %8.2f %9.2f %9.2f" % (
            r["round"], r["rf"], r["records"], r["msgs_s"], r["mb_s"], r["p50_ms"], r["p99_ms"]))
    medians = {}
    for rf in (1, 3):
        mine = [r for r in rows if r["rf"] == rf]
        medians[rf] = {key: statistics.median(r[key] for r in mine)
                       for key in ("msgs_s", "mb_s", "p50_ms", "p99_ms")}
        print("median RF%d: %.0f msgs/s, %.2f MB/s, p50 %.2f ms, p99 %.2f ms" % (
            rf, medians[rf]["msgs_s"], medians[rf]["mb_s"], medians[rf]["p50_ms"],
            medians[rf]["p99_ms"]))
    rf1, rf3 = medians[1], medians[3]
    print("RF3/RF1 (medians): throughput x%.2f, p50 x%.2f, p99 x%.2f" % (
        rf3["msgs_s"] / rf1["msgs_s"], rf3["p50_ms"] / rf1["p50_ms"],
        rf3["p99_ms"] / rf1["p99_ms"]))
    return rf1, rf3


def bench_failover(cluster, args):
    partitions = args.partitions
    topic = "bench-failover-%s" % uuid.uuid4().hex[:8]
    create_replicated(cluster.bootstrap(), topic, partitions)
    wait_topic(cluster, topic, partitions, 3)
    stream = ProduceStream(cluster.bootstrap(), topic, partitions, rate_per_s=args.stream_rate)
    results_ms = []
    elections_ms = []
    try:
        wait_until(lambda: stream.acks_since(0, 0), 30, msg="first ack on partition 0")
        for rep in range(args.failovers):
            leader_id = wait_until(
                lambda: (agreed_partitions(cluster.running(), topic, partitions) or {})
                .get(0, {}).get("leader"), 60, interval_s=0.05, msg="a leader of partition 0")
            victim = cluster.nodes[leader_id]
            old_term = try_replica_states(victim, topic)[0]["term"]
            killed_at = time.monotonic()
            victim.kill9()
            survivors = [b for b in cluster.running() if b is not victim]
            seen = {}

            def elected_and_acked():
                # A survivor reporting itself Leader in a later term (polled while waiting
                # for the ack: the server's part of the failover, the rest is the client's).
                if "elected" not in seen:
                    lead = leader_states(survivors, topic).get(0)
                    if lead and lead[1]["term"] > old_term:
                        seen["elected"] = time.monotonic()
                first_ack = stream.first_ack_after(0, killed_at)
                return first_ack if first_ack and "elected" in seen else None
            first = wait_until(elected_and_acked, FAILOVER_TIMEOUT_S, interval_s=0.005,
                               msg="a new leader and an ack on partition 0 after the kill")
            elected_ms = (seen["elected"] - killed_at) * 1000
            elections_ms.append(elected_ms)
            results_ms.append((first - killed_at) * 1000)
            print("failover %d: kill -9 node %d (leader of partition 0) -> new leader reported "
                  "%.0f ms, first ack %.0f ms" % (rep + 1, leader_id, elected_ms, results_ms[-1]),
                  flush=True)
            Cluster.start(victim)
            wait_until(lambda: caught_up(cluster.running(), victim, topic, partitions),
                       CATCH_UP_TIMEOUT_S, interval_s=0.1,
                       msg="node %d catching up" % leader_id)
    finally:
        stream.stop()
    print("failover kill -9 -> first ack on partition 0 (election timeout %d ms): %s ms; "
          "median %.0f ms" % (args.election_timeout_ms,
                              ", ".join("%.0f" % ms for ms in results_ms),
                              statistics.median(results_ms)))
    print("failover kill -9 -> a survivor reports itself leader (polled /v1/cluster): %s ms; "
          "median %.0f ms" % (", ".join("%.0f" % ms for ms in elections_ms),
                              statistics.median(elections_ms)))
    return results_ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per produce run")
    ap.add_argument("--rounds", type=int, default=3,
                    help="RF1-then-RF3 produce runs; the table's medians are over these")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--election-timeout-ms", type=int, default=1000)
    ap.add_argument("--failovers", type=int, default=5)
    ap.add_argument("--max-outstanding", type=int, default=1000)
    ap.add_argument("--linger-ms", type=int, default=1)
    ap.add_argument("--acks", choices=["all", "1"], default="all",
                    help="of the throughput runs (the failover producer always uses all)")
    ap.add_argument("--idempotent", action="store_true",
                    help="throughput runs with enable.idempotence=true (needs --acks all)")
    ap.add_argument("--stream-rate", type=int, default=1000,
                    help="records/s of the failover producer")
    ap.add_argument("--rmq-node", default=None, help="default: $RMQ_NODE_BIN or "
                    "target/release/rmq-node")
    args = ap.parse_args()
    if args.idempotent and args.acks != "all":
        ap.error("--idempotent needs --acks all (librdkafka's rule)")
    if args.value_bytes < SEND_TIME.size:
        ap.error("--value-bytes must be at least %d (the send time)" % SEND_TIME.size)
    if args.rmq_node:
        os.environ["RMQ_NODE_BIN"] = os.path.abspath(args.rmq_node)
    # Data dirs under target/ (tmpfs would silently drop O_DIRECT).
    root = os.path.join(REPO, "target", "bench-replication", uuid.uuid4().hex[:12])
    os.makedirs(root)
    nodes = Nodes(root)
    ok = False
    try:
        cluster = Cluster(nodes, extra_args=["--raft-election-timeout-ms",
                                             str(args.election_timeout_ms)],
                          keep_kafka_ports=True)
        wait_formed(cluster)
        rf1, rf3 = bench_throughput(cluster, args)
        failovers = bench_failover(cluster, args) if args.failovers > 0 else [float("nan")]
        print("\nREADME: 3 nodes (--cores 1) on one %d-core machine, acks=%s, %d partitions, "
              "%d-byte values, medians of %d runs: RF1 %.0f msgs/s p99 %.1f ms; RF3 %.0f msgs/s "
              "(x%.2f) p99 %.1f ms (x%.2f); kill -9 of a leader -> first ack %.0f ms median "
              "(%s; election timeout %d ms)" % (
                  os.cpu_count(), args.acks, args.partitions, args.value_bytes, args.rounds, rf1["msgs_s"],
                  rf1["p99_ms"], rf3["msgs_s"], rf3["msgs_s"] / rf1["msgs_s"], rf3["p99_ms"],
                  rf3["p99_ms"] / rf1["p99_ms"], statistics.median(failovers),
                  ", ".join("%.0f" % ms for ms in failovers), args.election_timeout_ms))
        ok = True
    finally:
        nodes.close()
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print("node logs kept in %s" % root, file=sys.stderr)


if __name__ == "__main__":
    main()
