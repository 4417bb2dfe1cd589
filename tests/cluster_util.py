"""Helpers for tests that run several rmq-node processes as one cluster (test_cluster.py,
test_replication.py): start nodes 1..n as seeds (and later non-seed nodes), read each node's
own view over its own Kafka listener (raw Metadata) and its admin HTTP /v1/cluster, and wait
for the nodes to agree on brokers and a controller."""

import json
import os
import random
import re
import socket
import urllib.request

from conftest import node_bin, wait_until
from kafka_raw import RawConn

ADMIN_RE = re.compile(r"\badmin=(?P<host>[^\s:]+):(?P<port>\d+)")
RPC_RE = re.compile(r"\brpc=(?P<host>[^\s:]+):(?P<port>\d+)")

FORM_TIMEOUT_S = 60
FAILOVER_TIMEOUT_S = 30
CATCH_UP_TIMEOUT_S = 60
HTTP_TIMEOUT_S = 10


def rmq_bin():
    return os.environ.get("RMQ_CLI_BIN") or os.path.join(os.path.dirname(node_bin()), "rmq")


# Fixed ports (seeds' RPC, kept Kafka ports) come from below the kernel's ephemeral range, so
# no listener on port 0 and no outgoing connection can take one between the probe and the
# node's bind (listeners bind with SO_REUSEPORT: two processes could share a port silently).
FIXED_PORT_LOW = 10000


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n):
    """n distinct TCP ports on 127.0.0.1, free when probed (all bound at once, then released),
    below the ephemeral port range."""
    high = _ephemeral_low()
    socks = []
    try:
        for port in random.sample(range(FIXED_PORT_LOW, high), min(high - FIXED_PORT_LOW, 200)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            if len(socks) == n:
                return [s.getsockname()[1] for s in socks]
        raise AssertionError("no %d free ports in %d..%d" % (n, FIXED_PORT_LOW, high))
    finally:
        for s in socks:
            s.close()


class Cluster(object):
    """Nodes 1..n started through broker_factory as the seeds (stopped by its teardown, even
    on failure). `extra_args` go to every node, e.g. ["--raft-election-timeout-ms", "500"].
    `keep_kafka_ports`: every node's Kafka listener gets a fixed port, so a restarted node
    listens where clients knew it, as a real node does (otherwise a new free port each start)."""

    def __init__(self, broker_factory, n=3, extra_args=(), keep_kafka_ports=False):
        self.broker_factory = broker_factory
        self.extra_args = list(extra_args)
        self.keep_kafka_ports = keep_kafka_ports
        ports = free_ports(2 * n if keep_kafka_ports else n)
        self.rpc_ports = ports[:n]
        self.seeds = ",".join("%d@127.0.0.1:%d" % (i + 1, port)
                              for i, port in enumerate(self.rpc_ports))
        self.nodes = {}
        for i, port in enumerate(self.rpc_ports):
            self.nodes[i + 1] = self._make(i + 1, port, ports[n + i] if keep_kafka_ports else None)
        for b in list(self.nodes.values()):
            self.start(b)

    def _make(self, node_id, rpc_port, kafka_port):
        b = self.broker_factory(cores=1, start=False, extra_args=[
            "--node-id", str(node_id), "--rpc-addr", "127.0.0.1:%d" % rpc_port,
            "--seeds", self.seeds] + self.extra_args)
        b.rmq_node_id = node_id
        b.fixed_kafka_port = kafka_port
        # Relative, as the README's cluster example runs with the default ./rmq-data (a
        # relative path once broke every Raft vote write).
        b.relative_data_dir = True
        return b

    def add_node(self, node_id):
        """Starts a non-seed node `node_id` (its RPC port fixed, so a restart keeps it) that
        joins through the seeds."""
        assert node_id not in self.nodes
        ports = free_ports(2)
        b = self._make(node_id, ports[0], ports[1] if self.keep_kafka_ports else None)
        self.nodes[node_id] = b
        self.start(b)
        return b

    @staticmethod
    def start(b):
        """Starts (or restarts) node b."""
        b.start()
        line = b.stdout_lines[0]
        rpc = RPC_RE.search(line)
        assert rpc, "a cluster node's ready line names its rpc address: %r" % line
        admin_addr = ADMIN_RE.search(line)
        b.admin_url = "http://%s:%s" % (admin_addr.group("host"), admin_addr.group("port"))
        return int(rpc.group("port"))

    def running(self):
        return [b for b in self.nodes.values() if b.alive()]

    def bootstrap(self, nodes=None):
        """Comma-separated Kafka addresses of `nodes` (default: every running node)."""
        return ",".join(b.bootstrap for b in (nodes if nodes is not None else self.running()))


def node_metadata(b, topics=None):
    """Metadata v1 from exactly this node:
    (brokers, controller_id, {topic: [(partition, leader)]})."""
    with RawConn(b.host, b.port) as conn:
        resp = conn.metadata(topics, version=1)
    brokers = sorted((node_id, host, port) for node_id, host, port, _rack in resp.brokers)
    topics = {}
    for error, name, _internal, partitions in resp.topics:
        if error == 0:
            topics[name] = sorted((p[1], p[2]) for p in partitions)
    return brokers, resp.controller_id, topics


def cluster_status(b):
    with urllib.request.urlopen(b.admin_url + "/v1/cluster", timeout=HTTP_TIMEOUT_S) as r:
        return json.loads(r.read().decode())


def expected_brokers(cluster):
    return sorted((b.rmq_node_id, b.host, b.port) for b in cluster.nodes.values())


def agreed_controller(nodes, expected):
    """The controller id every node in `nodes` reports, if they agree and list `expected`."""
    seen = set()
    for b in nodes:
        try:
            brokers, controller, _ = node_metadata(b)
        except (OSError, ValueError):
            return None
        if brokers != expected or controller < 0:
            return None
        seen.add(controller)
        # A node names itself while it knows no leader: /v1/cluster tells the real one.
        seen.add(cluster_status(b)["controller"])
    return seen.pop() if len(seen) == 1 else None


def wait_formed(cluster, timeout_s=FORM_TIMEOUT_S):
    """Waits until every running node lists every node of `cluster` and names one controller."""
    expected = expected_brokers(cluster)
    found = {}

    def formed():
        found["controller"] = agreed_controller(cluster.running(), expected)
        return found["controller"] is not None

    wait_until(formed, timeout_s, interval_s=0.2,
               msg="nodes did not agree on brokers %s and one controller" % expected)
    return found["controller"]
