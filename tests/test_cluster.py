"""Three rmq-node processes on 127.0.0.1 forming a cluster (--node-id, --rpc-addr, --seeds): the
controller Raft group agrees on brokers and a controller, replicates topics created through any
node, fails over when its leader is killed with kill -9, and a restarted node catches up.

Each node's own view is read over its own Kafka listener (raw Metadata / DescribeConfigs
requests on one connection) and its admin HTTP /v1/cluster, so a node that lags cannot hide
behind another. Partitions are placed on the node that handled the CreateTopics request (no
replication yet); Metadata names that node as their leader on every node."""

import re
import subprocess
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic
from kafka.protocol.admin import DescribeConfigsRequest
from kafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest
from kafka.protocol.find_coordinator import FindCoordinatorRequest
from kafka.protocol.list_offsets import ListOffsetsRequest

from cluster_util import (CATCH_UP_TIMEOUT_S, FAILOVER_TIMEOUT_S, FORM_TIMEOUT_S, Cluster,
                          cluster_status, expected_brokers, free_ports, node_metadata, rmq_bin,
                          wait_formed)
from conftest import node_bin, unique_topic, wait_until
from kafka_raw import RawConn
from kafka_util import admin, consume_all, produce_all, producer

RESOURCE_TOPIC = 2
NOT_LEADER_OR_FOLLOWER = 6
NOT_COORDINATOR = 16
CONFIG_SOURCE_TOPIC = 1


def node_topic_configs(b, topic):
    """The configs set on `topic` (not defaults), as this node describes them."""
    with RawConn(b.host, b.port) as conn:
        resp = conn.request(DescribeConfigsRequest[1](
            resources=[(RESOURCE_TOPIC, topic, None)], include_synonyms=False))
    error, message, _type, _name, entries = resp.resources[0]
    assert error == 0, "DescribeConfigs %s: %s %s" % (topic, error, message)
    return {entry[0]: entry[1] for entry in entries if entry[3] == CONFIG_SOURCE_TOPIC}


def create_through(b, name, partitions, config):
    """CreateTopics through an AdminClient bootstrapped at node b only."""
    a = admin(b.bootstrap)
    fut = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                    config=config)],
                          operation_timeout=30, request_timeout=30)[name]
    fut.result(timeout=60)


def wait_topic_everywhere(nodes, name, partitions, config, timeout_s=CATCH_UP_TIMEOUT_S):
    """Every node lists `name` with `partitions` partitions, one leader for all, and `config`."""
    def seen():
        leaders = set()
        for b in nodes:
            _, _, topics = node_metadata(b, [name])
            if name not in topics or [p for p, _ in topics[name]] != list(range(partitions)):
                return False
            leaders.update(leader for _, leader in topics[name])
        return len(leaders) == 1
    wait_until(seen, timeout_s, interval_s=0.2,
               msg="topic %s with %d partitions did not appear on every node" % (name, partitions))
    for b in nodes:
        configs = node_topic_configs(b, name)
        for key, value in config.items():
            assert configs.get(key) == value, "node %d: %s=%r, want %r" % (
                b.rmq_node_id, key, configs.get(key), value)
    _, _, topics = node_metadata(nodes[0], [name])
    return topics[name][0][1]


@pytest.mark.timeout(240)
def test_three_nodes_agree_on_brokers_and_one_controller(broker_factory):
    cluster = Cluster(broker_factory)
    controller = wait_formed(cluster)
    assert controller in cluster.nodes
    expected = [(node_id, host, port) for node_id, host, port in expected_brokers(cluster)]
    ids = set()
    for b in cluster.nodes.values():
        a = admin(b.bootstrap)
        desc = a.describe_cluster(request_timeout=20).result(timeout=30)
        assert sorted((n.id, n.host, n.port) for n in desc.nodes) == expected
        assert desc.controller is not None and desc.controller.id == controller
        ids.add(desc.cluster_id)
    assert len(ids) == 1 and ids.pop(), "one cluster id for every node"
    # The leader's /v1/cluster has every node with its replication lag; every node's names
    # the same controller.
    def leader_sees_all_matched():
        status = cluster_status(cluster.nodes[controller])
        nodes = {n["node_id"]: n for n in status["nodes"]}
        return (status["state"] == "Leader" and sorted(nodes) == [1, 2, 3]
                and all(n["registered"] and n["voter"] and n["lag"] == 0 for n in nodes.values()))
    wait_until(leader_sees_all_matched, 30, interval_s=0.2,
               msg="the leader did not report all three nodes caught up")
    for b in cluster.nodes.values():
        status = cluster_status(b)
        assert status["mode"] == "cluster" and status["controller"] == controller
        assert status["node_id"] == b.rmq_node_id
    out = subprocess.run([rmq_bin(), "-b", cluster.nodes[2].bootstrap,
                          "cluster", "info", "--admin", cluster.nodes[controller].admin_url],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert "controller:  %d" % controller in text
    for node_id, host, port in expected:
        assert re.search(r"^\s+%d\s+%s:%d\s.*lag 0\b" % (node_id, host, port), text, re.M), text


@pytest.mark.timeout(300)
def test_topic_created_through_node_2_appears_on_every_node(broker_factory):
    cluster = Cluster(broker_factory)
    wait_formed(cluster)
    nodes = list(cluster.nodes.values())
    name = unique_topic("cl")
    config = {"retention.ms": "3600000", "cleanup.policy": "delete"}
    create_through(cluster.nodes[2], name, 3, config)
    leader = wait_topic_everywhere(nodes, name, 3, config)
    assert leader in cluster.nodes
    # A second create of the same name fails on any node.
    with pytest.raises(Exception) as e:
        create_through(cluster.nodes[3], name, 1, {})
    assert "TOPIC_ALREADY_EXISTS" in str(e.value)
    # Produce through node 3, consume through node 1: clients follow Metadata to the leader.
    records = [(b"k%d" % (i % 7), b"v%d" % i) for i in range(300)]
    delivered = produce_all(producer(cluster.nodes[3].bootstrap), records, name)
    assert len(delivered) == len(records)
    got, _ = consume_all(cluster.nodes[1].bootstrap, name, 3)
    assert sum(len(v) for v in got.values()) == len(records)
    for partition, items in got.items():
        sent = [(o, k, v) for p, o, k, v in sorted(delivered) if p == partition]
        assert [(o, k, v) for o, k, v, _ in items] == sent
    # A consumer group bootstrapped at node 1 (its coordinator is whichever seed its offsets
    # partition maps to) reads the partitions from their leader and commits offsets for them.
    group = unique_topic("g")
    c = Consumer({"bootstrap.servers": cluster.nodes[1].bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.subscribe([name])
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < len(records):
            assert time.monotonic() < deadline, "group consumer got %d of %d" % (
                len(seen), len(records))
            for m in c.consume(num_messages=500, timeout=0.5):
                assert m.error() is None, m.error()
                seen.append(m.value())
        assert sorted(seen) == sorted(v for _, v in records)
        c.commit(asynchronous=False)
        committed = c.committed([TopicPartition(name, p) for p in range(3)], timeout=30)
        ends = {p: 1 + max(o for q, o, _, _ in delivered if q == p) for p in range(3)}
        assert {tp.partition: tp.offset for tp in committed} == ends
    finally:
        c.close()
    # A node that does not lead the partitions refuses to serve them.
    other = next(b for b in nodes if b.rmq_node_id != leader)
    with RawConn(other.host, other.port) as conn:
        resp = conn.request(ListOffsetsRequest[1](replica_id=-1, topics=[(name, [(0, -1)])]))
        assert resp.topics[0][1][0][1] == NOT_LEADER_OR_FOLLOWER, resp
    # Group offsets live on the group's coordinator: the coordinating node keeps them, the
    # others answer NOT_COORDINATOR.
    standalone = unique_topic("standalone")
    coordinator = cluster.nodes[find_coordinator(other, standalone)[0]]
    with RawConn(coordinator.host, coordinator.port) as conn:
        resp = conn.request(OffsetCommitRequest[2](standalone, -1, "", -1, [(name, [(1, 5, "")])]))
        assert resp.topics[0][1] == [(1, 0)], resp
        resp = conn.request(OffsetFetchRequest[1](standalone, [(name, [1])]))
        assert [(p, o, e) for p, o, _m, e in resp.topics[0][1]] == [(1, 5, 0)], resp
    for b in nodes:
        if b is coordinator:
            continue
        with RawConn(b.host, b.port) as conn:
            resp = conn.request(OffsetCommitRequest[2](standalone, -1, "", -1,
                                                       [(name, [(1, 6, "")])]))
            assert resp.topics[0][1] == [(1, NOT_COORDINATOR)], resp
    # Deleting through another node removes it everywhere.
    a = admin(cluster.nodes[1].bootstrap)
    a.delete_topics([name], operation_timeout=30, request_timeout=30)[name].result(timeout=60)
    wait_until(lambda: all(name not in node_metadata(b, None)[2] for b in nodes), 30,
               interval_s=0.2, msg="deleted topic still listed")


def find_coordinator(b, group):
    """(node id, port) node b names as `group`'s coordinator (FindCoordinator v1)."""
    with RawConn(b.host, b.port) as conn:
        resp = conn.request(FindCoordinatorRequest[1](group, 0))
    assert resp.error_code == 0, resp
    return resp.coordinator_id, resp.port


@pytest.mark.timeout(300)
def test_a_group_has_one_coordinator_whichever_node_its_members_ask(broker_factory):
    """Every node names the same coordinator for a group (a seed, by the group's offsets
    partition), so two members bootstrapped at different nodes form one group and share the
    partitions, and a member joining later through the third node resumes from the offsets
    the group committed."""
    cluster = Cluster(broker_factory)
    wait_formed(cluster)
    nodes = list(cluster.nodes.values())
    name = unique_topic("grp")
    create_through(cluster.nodes[1], name, 2, {})
    wait_topic_everywhere(nodes, name, 2, {})
    for partition in (0, 1):
        records = [(None, b"p%d-%d" % (partition, i)) for i in range(100)]
        delivered = produce_all(producer(cluster.nodes[1].bootstrap), records, name,
                                partition=partition)
        assert [o for _p, o, _k, _v in delivered] == list(range(100))
    groups = [unique_topic("g") for _ in range(6)]
    for group in groups:
        named = {find_coordinator(b, group) for b in nodes}
        assert len(named) == 1, "nodes name different coordinators for %s: %s" % (group, named)
        node_id, port = named.pop()
        assert port == cluster.nodes[node_id].port, (group, node_id, port)
    group = groups[0]

    def member(b):
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        c.subscribe([name])
        return c
    first, second = member(cluster.nodes[1]), member(cluster.nodes[2])
    try:
        assigned = {}

        def both_assigned():
            for c in (first, second):
                c.poll(0.1)
                assigned[c] = sorted(tp.partition for tp in c.assignment())
            return assigned[first] and assigned[second]
        wait_until(both_assigned, 60, interval_s=0.05,
                   msg="both members assigned a partition of %s" % name)
        assert sorted(assigned[first] + assigned[second]) == [0, 1], \
            "members bootstrapped at nodes 1 and 2 are one group: %s" % list(assigned.values())
        # Each member commits each record it reads up to offset 49 of its partition.
        committed = {}
        deadline = time.monotonic() + 60
        while committed != {0: 50, 1: 50}:
            assert time.monotonic() < deadline, "the group committed %s" % committed
            for c in (first, second):
                for m in c.consume(num_messages=100, timeout=0.2):
                    assert m.error() is None, m.error()
                    if m.offset() < 50:
                        c.commit(message=m, asynchronous=False)
                        committed[m.partition()] = m.offset() + 1
    finally:
        first.close()
        second.close()
    # Offsets 0..49 of both partitions were committed; a member that asks node 3 resumes at 50.
    later = member(cluster.nodes[3])
    try:
        starts = {}
        deadline = time.monotonic() + 60
        while len(starts) < 2:
            assert time.monotonic() < deadline, "the later member started at %s" % starts
            for m in later.consume(num_messages=100, timeout=0.5):
                assert m.error() is None, m.error()
                starts.setdefault(m.partition(), m.offset())
        assert starts == {0: 50, 1: 50}, starts
    finally:
        later.close()
    # `rmq group describe` through any node reaches the coordinator (FindCoordinator first).
    for b in nodes:
        out = subprocess.run([rmq_bin(), "-b", b.bootstrap, "group", "describe", group],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        rows = [line.split() for line in out.stdout.decode().splitlines()
                if line.startswith(name + " ")]
        assert sorted((int(r[1]), int(r[2])) for r in rows) == [(0, 50), (1, 50)], \
            out.stdout.decode()


@pytest.mark.timeout(360)
def test_controller_leader_killed_new_one_elected_and_old_node_catches_up(broker_factory):
    cluster = Cluster(broker_factory)
    old = wait_formed(cluster)
    before = unique_topic("before")
    create_through(cluster.nodes[old], before, 2, {})
    wait_topic_everywhere(list(cluster.nodes.values()), before, 2, {})
    victim = cluster.nodes[old]
    killed_at = time.monotonic()
    victim.kill9()
    survivors = cluster.running()
    assert len(survivors) == 2
    new = {}

    def elected():
        seen = set()
        for b in survivors:
            try:
                _, controller, _ = node_metadata(b)
                seen.add(controller)
                seen.add(cluster_status(b)["controller"])
            except (OSError, ValueError):
                return False
        if len(seen) != 1:
            return False
        new["id"] = seen.pop()
        return new["id"] is not None and new["id"] not in (-1, old)

    wait_until(elected, FAILOVER_TIMEOUT_S, interval_s=0.1,
               msg="no new controller within %ds of killing node %d" % (FAILOVER_TIMEOUT_S, old))
    failover_s = time.monotonic() - killed_at
    assert new["id"] in [b.rmq_node_id for b in survivors]
    print("controller failover: node %d -> node %d in %.2f s" % (old, new["id"], failover_s))
    # Topic creation works again, through either survivor.
    during = unique_topic("during")
    create_through(survivors[-1], during, 4, {"retention.ms": "7200000"})
    wait_topic_everywhere(survivors, during, 4, {"retention.ms": "7200000"})
    # The old node restarts on the same data dir and RPC port and catches up.
    Cluster.start(victim)
    wait_topic_everywhere(list(cluster.nodes.values()), during, 4, {"retention.ms": "7200000"})
    wait_topic_everywhere(list(cluster.nodes.values()), before, 2, {})
    controller = wait_formed(cluster)
    assert controller == new["id"], "the new controller keeps leading after the old node returns"
    # The restarted node registered its new Kafka port: everyone lists it.
    for b in cluster.nodes.values():
        brokers, _, _ = node_metadata(b)
        assert (victim.rmq_node_id, victim.host, victim.port) in brokers


def failed_start(args, timeout_s=60, kafka_addr="127.0.0.1:0"):
    """Runs rmq-node with `args` (other listeners on port 0) expecting it to exit with an
    error."""
    out = subprocess.run([node_bin(), "--cores", "1", "--kafka-addr", kafka_addr,
                          "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0",
                          "--admin-addr", "127.0.0.1:0", *args],
                         capture_output=True, timeout=timeout_s)
    assert out.returncode != 0, "rmq-node started with %s" % (args,)
    assert b"rmq-node ready" not in out.stdout
    return out.stderr.decode()


@pytest.mark.timeout(180)
def test_bad_cluster_flags_and_data_dirs_stop_startup_with_a_clear_error(broker_factory, tmp_path):
    port = free_ports(1)[0]
    data = str(tmp_path / "bad")
    cases = [
        (["--node-id", "1", "--seeds", "1@127.0.0.1:%d,1@127.0.0.1:%d" % (port, port + 1)],
         "--seeds: node id 1 appears twice"),
        (["--node-id", "1", "--seeds", "1@127.0.0.1:0"], "a seed needs a fixed port"),
        (["--node-id", "1", "--seeds", "1127.0.0.1:%d" % port], "is not ID@HOST:PORT"),
        (["--node-id=-2"], "--node-id must be 0 or more"),
        (["--rpc-addr", "no-port"], "--rpc-addr"),
    ]
    for args, message in cases:
        err = failed_start(["--data-dir", data, *args])
        assert message in err, "%s: %s" % (args, err)
    # A single node's data dir (with a topic) cannot become a cluster node's.
    single = broker_factory(cores=1)
    create_through(single, unique_topic("solo"), 1, {})
    single.stop()
    err = failed_start(["--data-dir", single.data_dir, "--node-id", "0",
                        "--rpc-addr", "127.0.0.1:%d" % port, "--seeds", "0@127.0.0.1:%d" % port])
    assert "topics of a single node" in err, err
    # A one-seed cluster is a cluster of one (quorum 1); its data dir then needs --seeds.
    seeds = "5@127.0.0.1:%d" % port
    solo = broker_factory(cores=1, start=False, extra_args=[
        "--node-id", "5", "--rpc-addr", "127.0.0.1:%d" % port, "--seeds", seeds])
    solo.rmq_node_id = 5
    Cluster.start(solo)
    wait_until(lambda: cluster_status(solo)["controller"] == 5, FORM_TIMEOUT_S, interval_s=0.1,
               msg="the only seed did not become the controller group's leader")
    assert node_metadata(solo)[1] == 5
    # Ports a running node listens on are refused to a second node, not shared (the Kafka
    # listener of each shard sets SO_REUSEPORT; only shards of one process may share it).
    err = failed_start(["--data-dir", str(tmp_path / "kafka-clash")],
                       kafka_addr="127.0.0.1:%d" % solo.port)
    assert "cannot listen on 127.0.0.1:%d" % solo.port in err and "in use" in err, err
    err = failed_start(["--data-dir", str(tmp_path / "rpc-clash"), "--node-id", "6",
                        "--rpc-addr", "127.0.0.1:%d" % port, "--seeds", "6@127.0.0.1:%d" % port])
    assert "--rpc-addr: cannot listen on 127.0.0.1:%d" % port in err and "in use" in err, err
    assert node_metadata(solo)[1] == 5, "the refused nodes disturbed the running one"
    name = unique_topic("one")
    create_through(solo, name, 2, {})
    wait_topic_everywhere([solo], name, 2, {})
    solo.stop()
    err = failed_start(["--data-dir", solo.data_dir, "--node-id", "5"])
    assert "belongs to a cluster node; start it with --seeds" in err, err
