"""Replicated partitions (issue 7): topics created with replication factor 3 in a 3-node
cluster have every partition as a Raft group over three nodes. Real confluent-kafka clients
produce with acks=all while partition leaders are killed with kill -9 or cut off from their
peers (--fault-injection), and every acknowledged record must survive exactly once, in order.

Each node's own view is read from its own Kafka listener (raw Metadata v7: leader, leader
epoch, replicas, ISR) and its admin HTTP /v1/cluster ("partitions": role, term, committed
index), so a lagging node cannot hide behind another."""

import os
import socket
import statistics
import subprocess
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from cluster_util import (CATCH_UP_TIMEOUT_S, FAILOVER_TIMEOUT_S, Cluster, cluster_status,
                          node_metadata, rmq_bin, wait_formed)
from conftest import unique_topic, wait_until
from kafka_raw import RawConn, build_record_batch
from kafka_util import produce_all, producer
from replication_util import (ProduceStream, TermWatcher, agreed_partitions, caught_up,
                              consume_to_end, create_replicated, leader_states,
                              partition_metadata, post_json, replica_states,
                              try_replica_states)

# The default: a killed leader is replaced within 1 s (its lease is 500 ms, which on this
# loaded 2-core machine is as short as it goes without elections nobody asked for).
ELECTION_TIMEOUT_MS = 1000
REPLICATION_ARGS = ["--raft-election-timeout-ms", str(ELECTION_TIMEOUT_MS)]
KILL_CYCLES = int(os.environ.get("RMQ_REPL_KILL_CYCLES", "10"))

NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
INVALID_REPLICATION_FACTOR = 38


def replicated_cluster(broker_factory, extra_args=()):
    cluster = Cluster(broker_factory, extra_args=REPLICATION_ARGS + list(extra_args),
                      keep_kafka_ports=True)
    wait_formed(cluster)
    return cluster


def wait_replicated(nodes, topic, partitions, strict=False, timeout_s=CATCH_UP_TIMEOUT_S):
    """Waits until every node in `nodes` agrees on the replicas and leader of each partition
    (see agreed_partitions)."""
    found = {}

    def agreed():
        found["parts"] = agreed_partitions(nodes, topic, partitions, strict)
        return found["parts"] is not None

    wait_until(agreed, timeout_s, interval_s=0.1,
               msg="nodes %s agreeing on 3 replicas and a leader for each partition of %s" % (
                   [b.rmq_node_id for b in nodes], topic))
    return found["parts"]


def wait_leader(cluster, topic, partitions, partition=0, exclude=(),
                timeout_s=FAILOVER_TIMEOUT_S):
    """The leader id every running node names for `partition` (not one of `exclude`)."""
    def leader():
        parts = agreed_partitions(cluster.running(), topic, partitions)
        if parts is None or parts[partition]["leader"] in exclude:
            return None
        return parts[partition]["leader"]
    return wait_until(leader, timeout_s, interval_s=0.05,
                      msg="running nodes agreeing on a leader of %s/%d" % (topic, partition))


def values_of(records):
    return [value for _offset, _key, value, _headers in records]


def check_stream_consumed(stream, got):
    """Every acknowledged record of `stream` appears exactly once at its acknowledged offset,
    and each partition holds its own records in the order they were produced."""
    for p in range(stream.partitions):
        seqs = []
        offsets = {}
        for offset, _key, value, _headers in got.get(p, []):
            name, seq = value.split(b"|", 1)[0].decode().split("-")
            assert name == "p%d" % p, "partition %d holds %r at offset %d" % (p, value, offset)
            seqs.append(int(seq))
            offsets[int(seq)] = offset
        dups = len(seqs) - len(set(seqs))
        assert dups == 0, "partition %d: %d records appear more than once" % (p, dups)
        assert seqs == sorted(seqs), "partition %d: records out of produce order" % p
        assert all(s < stream.sent[p] for s in seqs), "partition %d: unknown records" % p
        acked = {seq: offset for seq, offset, _sent, _acked in stream.acked[p]}
        missing = sorted(set(acked) - set(seqs))
        assert not missing, "partition %d: %d acknowledged records lost, first %s" % (
            p, len(missing), missing[:10])
        moved = [(s, acked[s], offsets[s]) for s in acked if acked[s] != offsets[s]]
        assert not moved, "partition %d: (seq, acked offset, found at) differ: %s" % (
            p, moved[:10])


@pytest.mark.timeout(300)
def test_rf3_topic_same_replicas_and_leader_everywhere_rf4_refused(broker_factory):
    cluster = replicated_cluster(broker_factory)
    nodes = list(cluster.nodes.values())
    topic = unique_topic("rf3")
    create_replicated(cluster.bootstrap(), topic, 3)
    parts = wait_replicated(nodes, topic, 3, strict=True)
    for p, part in parts.items():
        assert part["replicas"] == [1, 2, 3], part
        assert part["epoch"] >= 1, "leader epoch is the Raft term: %s" % part
    # Every node hosts a replica of every partition; the leader's own entry is the one
    # Metadata names, in the term Metadata gives as leader epoch (asked again each time: the
    # broker may hand leadership to the preferred replica meanwhile).
    def statuses_agree():
        parts = agreed_partitions(nodes, topic, 3, strict=True)
        if parts is None:
            return None
        states = {b.rmq_node_id: replica_states(b, topic) for b in nodes}
        for p, part in parts.items():
            for node_id, mine in states.items():
                if p not in mine or sorted(mine[p]["replicas"]) != [1, 2, 3]:
                    return None
                entry = mine[p]
                if node_id == part["leader"]:
                    if entry["role"] != "Leader" or entry["term"] != part["epoch"]:
                        return None
                elif entry["role"] != "Follower" or entry["leader"] != part["leader"]:
                    return None
        return parts
    parts = wait_until(statuses_agree, CATCH_UP_TIMEOUT_S, interval_s=0.2,
                       msg="every node's /v1/cluster agreeing with Metadata on roles and terms")
    # acks=all records, consumed from the leaders.
    records = [(b"k%d" % i, b"v%d" % i) for i in range(600)]
    delivered = []
    for p in range(3):
        delivered += produce_all(producer(cluster.bootstrap()), records[p::3], topic, partition=p)
    got = consume_to_end(cluster.bootstrap(), topic, 3)
    for p in range(3):
        assert [(o, k, v) for o, k, v, _ in got[p]] == \
            sorted((o, k, v) for q, o, k, v in delivered if q == p), "partition %d" % p
    # A follower answers Produce with NOT_LEADER_OR_FOLLOWER.
    # (Neither the leader nor the preferred replica, which leadership may move to.)
    follower = next(b for b in nodes
                    if b.rmq_node_id not in (parts[0]["leader"], parts[0]["preferred"]))
    with RawConn(follower.host, follower.port) as conn:
        resp = conn.produce(topic, 0, build_record_batch([(None, b"to-a-follower")]), acks=-1)
    assert resp["error_code"] == NOT_LEADER_OR_FOLLOWER, resp
    # A replication factor above the number of brokers is refused.
    refused = unique_topic("rf4")
    with pytest.raises(KafkaException) as e:
        create_replicated(cluster.bootstrap(), refused, 3, replication_factor=4)
    assert e.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR == \
        INVALID_REPLICATION_FACTOR, e.value
    _, error, _ = partition_metadata(nodes[0], refused)
    assert error != 0, "the refused topic exists"
    # Fault injection is off without --fault-injection.
    assert post_json(nodes[0], "/v1/debug/rpc/isolate", {"peers": [2, 3]})[0] == 404
    assert post_json(nodes[0], "/v1/debug/rpc/heal", None)[0] == 404


@pytest.mark.timeout(120)
def test_rmq_topic_create_with_replication_factor_3(broker_factory):
    cluster = replicated_cluster(broker_factory)
    nodes = list(cluster.nodes.values())
    topic = unique_topic("cli")
    out = subprocess.run([rmq_bin(), "-b", nodes[1].bootstrap, "topic", "create", topic,
                          "-p", "2", "-r", "3"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    parts = wait_replicated(nodes, topic, 2)
    assert all(part["replicas"] == [1, 2, 3] for part in parts.values())


@pytest.mark.timeout(600)
def test_no_acknowledged_record_is_lost_over_ten_leader_kills(broker_factory):
    cluster = replicated_cluster(broker_factory)
    topic = unique_topic("kills")
    partitions = 3
    create_replicated(cluster.bootstrap(), topic, partitions)
    wait_replicated(cluster.running(), topic, partitions)
    stream = ProduceStream(cluster.bootstrap(), topic, partitions)
    watcher = TermWatcher(cluster.nodes.values(), topic)
    failovers_ms = []
    try:
        wait_until(lambda: all(stream.acks_since(p, 0) for p in range(partitions)), 30,
                   msg="first acks on every partition")
        for cycle in range(KILL_CYCLES):
            leader_id = wait_leader(cluster, topic, partitions)
            victim = cluster.nodes[leader_id]
            killed_at = time.monotonic()
            victim.kill9()
            first = wait_until(lambda: stream.first_ack_after(0, killed_at), FAILOVER_TIMEOUT_S,
                               msg="an acknowledged record on partition 0 after killing its "
                                   "leader (node %d, cycle %d): %s" % (
                                       leader_id, cycle, stream.summary()))
            failovers_ms.append((first - killed_at) * 1000)
            wait_until(lambda: all(stream.acks_since(p, killed_at) for p in range(partitions)),
                       FAILOVER_TIMEOUT_S, msg="acks on every partition after the kill")
            print("cycle %d: killed node %d (leader of partition 0); first ack on partition 0 "
                  "%.0f ms later" % (cycle, leader_id, failovers_ms[-1]))
            Cluster.start(victim)
            wait_until(lambda: caught_up(cluster.running(), victim, topic, partitions),
                       CATCH_UP_TIMEOUT_S, interval_s=0.1,
                       msg="restarted node %d catching up with the leaders" % leader_id)
            wait_replicated(cluster.running(), topic, partitions)
    finally:
        stream.stop()
        watcher.stop()
    summary = stream.summary()
    print("failover ms (kill -9 -> first ack): %s; median %.0f; stream %s" % (
        ", ".join("%.0f" % ms for ms in failovers_ms), statistics.median(failovers_ms), summary))
    assert stream.unflushed == 0, "records neither acknowledged nor failed: %s" % summary
    assert not watcher.conflicts(), "two leaders in one term: %s" % watcher.conflicts()
    got = consume_to_end(cluster.bootstrap(), topic, partitions)
    check_stream_consumed(stream, got)
    assert sum(summary["acked"].values()) > 0


def raw_produce_to_leader(nodes, topic, batches, timeout_s=FAILOVER_TIMEOUT_S):
    """Each of `batches` (lists of values) as its own acks=all Produce (one record batch, one
    Raft entry) to partition 0, in order, at the node among `nodes` that reports itself
    Leader (found again after NOT_LEADER_OR_FOLLOWER: nothing was appended then). Returns
    the last leader."""
    deadline = time.monotonic() + timeout_s
    pending = list(batches)
    while True:
        leader = wait_until(lambda: leader_states(nodes, topic).get(0), timeout_s,
                            msg="a leader among nodes %s" % [b.rmq_node_id for b in nodes])[0]
        with RawConn(leader.host, leader.port, timeout=timeout_s) as conn:
            while pending:
                resp = conn.produce(topic, 0, build_record_batch([(None, v) for v in pending[0]]),
                                    acks=-1, timeout_ms=10000)
                if resp["error_code"] == NOT_LEADER_OR_FOLLOWER and \
                        time.monotonic() < deadline:
                    break
                assert resp["error_code"] == 0, "acks=all Produce to node %d: %s" % (
                    leader.rmq_node_id, resp)
                pending.pop(0)
        if not pending:
            return leader


@pytest.mark.timeout(300)
def test_an_isolated_leader_acknowledges_nothing(broker_factory):
    cluster = replicated_cluster(broker_factory, ["--fault-injection"])
    topic = unique_topic("iso")
    create_replicated(cluster.bootstrap(), topic, 1)
    wait_replicated(cluster.running(), topic, 1)
    watcher = TermWatcher(cluster.nodes.values(), topic)
    try:
        before = [b"before-%d" % i for i in range(100)]
        produce_all(producer(cluster.bootstrap()), [(None, v) for v in before], topic, partition=0)
        old, old_entry = wait_until(lambda: leader_states(cluster.running(), topic).get(0),
                                    FAILOVER_TIMEOUT_S, msg="a node reporting itself Leader")
        leader_id, old_term = old.rmq_node_id, old_entry["term"]
        peers = [b for b in cluster.nodes.values() if b is not old]
        status, _ = post_json(old, "/v1/debug/rpc/isolate",
                              {"peers": [b.rmq_node_id for b in peers]})
        assert 200 <= status < 300, status
        # A producer that only knows the isolated leader: nothing it sends is acknowledged.
        reports = []
        iso = Producer({"bootstrap.servers": old.bootstrap, "acks": "all",
                        "message.timeout.ms": 3000, "linger.ms": 5})
        for i in range(50):
            iso.produce(topic, value=b"iso-%d" % i, partition=0,
                        on_delivery=lambda err, msg: reports.append((err, msg.value())))
        iso.poll(0)
        # The raw protocol, straight to it: an error or no answer, never success.
        with RawConn(old.host, old.port, timeout=8) as conn:
            try:
                resp = conn.produce(topic, 0, build_record_batch([(None, b"iso-raw")]),
                                    acks=-1, timeout_ms=2000)
                assert resp["error_code"] != 0, "the isolated leader acknowledged %s" % resp
            except socket.timeout:
                pass
        # The two others elect a leader in a higher term and take acks=all writes.
        def new_leader():
            found = leader_states(peers, topic).get(0)
            return found if found and found[1]["term"] > old_term else None
        new_node, new_entry = wait_until(new_leader, FAILOVER_TIMEOUT_S, interval_s=0.05,
                                         msg="a new leader among nodes %s" % [
                                             b.rmq_node_id for b in peers])
        # The majority side takes acks=all writes. Raw Produce to the leader the peers name,
        # not librdkafka: it asks a random known broker for Metadata, and the isolated node
        # answers "no leader" for as long as the partition lasts (the client never learns
        # the new leader if it keeps asking that node).
        after = [b"after-%d" % i for i in range(100)]
        raw_produce_to_leader(peers, topic, [after[i:i + 10] for i in range(0, len(after), 10)])
        assert iso.flush(30) == 0, "the isolated producer's records were never reported"
        assert len(reports) == 50
        acked = [value for err, value in reports if err is None]
        assert not acked, "the isolated leader acknowledged %s" % acked[:5]
        print("isolated leader node %d (term %d): %d delivery errors, e.g. %s; new leader node "
              "%d in term %d" % (leader_id, old_term, len(reports), reports[0][0],
                                 new_node.rmq_node_id, new_entry["term"]))
        status, _ = post_json(old, "/v1/debug/rpc/heal", None)
        assert 200 <= status < 300, status

        # (Or leads again in a later term: the broker hands leadership back to the preferred
        # replica once it has caught up, which takes following the new leader first.)
        def old_follows():
            mine = (try_replica_states(old, topic) or {}).get(0)
            if not mine:
                return False
            if mine["role"] == "Leader":
                return mine["term"] > new_entry["term"]
            return mine["role"] == "Follower" and mine["term"] >= new_entry["term"] and \
                mine["leader"] in [b.rmq_node_id for b in peers]
        wait_until(old_follows, CATCH_UP_TIMEOUT_S, interval_s=0.1,
                   msg="healed node %d following the new leader %d" % (
                       leader_id, new_node.rmq_node_id))
        wait_replicated(cluster.running(), topic, 1)
        got = consume_to_end(cluster.bootstrap(), topic, 1)
        assert values_of(got[0]) == before + after
    finally:
        watcher.stop()
    assert watcher.snapshots > 0
    assert not watcher.conflicts(), "two leaders in one term: %s" % watcher.conflicts()


@pytest.mark.timeout(300)
def test_acks_1_answers_at_the_leaders_append(broker_factory):
    """acks=1 on a replicated partition is answered once the leader appended the batch, before
    a quorum has it: with its followers cut off (and an election timeout long enough that it
    still leads meanwhile), the leader acknowledges acks=1 at the next offset while the high
    watermark stays put and acks=all gets no success (T = 10 s: the isolated leader keeps
    serving for its 5 s lease). After healing, acks=all works again and
    the committed records come back in order."""
    cluster = Cluster(broker_factory, extra_args=["--raft-election-timeout-ms", "10000",
                                                  "--fault-injection"], keep_kafka_ports=True)
    wait_formed(cluster)
    topic = unique_topic("acks1")
    create_replicated(cluster.bootstrap(), topic, 1)
    leader_id = wait_replicated(cluster.running(), topic, 1, strict=True)[0]["leader"]
    leader = cluster.nodes[leader_id]
    peers = [b.rmq_node_id for b in cluster.nodes.values() if b is not leader]
    with RawConn(leader.host, leader.port, timeout=15) as conn:
        first = conn.produce(topic, 0, build_record_batch([(None, b"all-healthy")]), acks=-1)
        assert first["error_code"] == 0, first
        healthy = conn.produce(topic, 0, build_record_batch([(None, b"one-healthy")]), acks=1)
        assert healthy["error_code"] == 0, healthy
        assert healthy["base_offset"] == first["base_offset"] + 1, (first, healthy)
        committed_end = healthy["base_offset"] + 1
        wait_until(lambda: conn.list_offsets(topic, 0)["offset"] == committed_end,
                   CATCH_UP_TIMEOUT_S, interval_s=0.05,
                   msg="the acks=1 record committed while the followers listen")

        status, _ = post_json(leader, "/v1/debug/rpc/isolate", {"peers": peers})
        assert 200 <= status < 300, status
        isolated = conn.produce(topic, 0, build_record_batch([(None, b"one-isolated")]),
                                acks=1, timeout_ms=3000)
        assert isolated["error_code"] == 0, "acks=1 waited for followers: %s" % isolated
        assert isolated["base_offset"] == committed_end, isolated
        visible = conn.list_offsets(topic, 0)
        assert visible["error_code"] != 0 or visible["offset"] == committed_end, \
            "an uncommitted acks=1 record became visible: %s" % visible
        quorum = conn.produce(topic, 0, build_record_batch([(None, b"all-isolated")]),
                              acks=-1, timeout_ms=1000)
        assert quorum["error_code"] in (NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT), \
            "acks=all succeeded without followers: %s" % quorum
    status, _ = post_json(leader, "/v1/debug/rpc/heal", None)
    assert 200 <= status < 300, status
    wait_replicated(cluster.running(), topic, 1)
    after = [b"after-%d" % i for i in range(20)]
    raw_produce_to_leader(list(cluster.nodes.values()), topic, [after])
    got = values_of(consume_to_end(cluster.bootstrap(), topic, 1)[0])
    # The isolated leader's uncommitted records survive only if it kept leading (healed
    # before the others elected a new leader): in order, once each, or not at all.
    assert got[:2] == [b"all-healthy", b"one-healthy"], got
    assert got[-len(after):] == after, got
    middle = got[2:-len(after)]
    assert middle in ([], [b"one-isolated"], [b"one-isolated", b"all-isolated"]), middle


@pytest.mark.timeout(300)
def test_a_restarted_follower_catches_up(broker_factory):
    cluster = replicated_cluster(broker_factory)
    topic = unique_topic("follow")
    create_replicated(cluster.bootstrap(), topic, 1)
    leader = cluster.nodes[wait_replicated(cluster.running(), topic, 1)[0]["leader"]]
    follower, other = [b for b in cluster.nodes.values() if b is not leader]

    def produce(prefix, n):
        values = [b"%s-%d" % (prefix, i) for i in range(n)]
        produce_all(producer(cluster.bootstrap()), [(None, v) for v in values], topic,
                    partition=0)
        return values

    values = produce(b"a", 100)
    follower.kill9()
    values += produce(b"b", 3000)  # committed by the leader and `other`
    # One entry per batch: 1,100 single-record batches put the dead follower more than
    # ISR_LAG_ENTRIES_MAX (1,000) entries behind, and the leader's Metadata drops it from the
    # in-sync replicas.
    lagging = [b"isr-%d" % i for i in range(1100)]
    current = raw_produce_to_leader([leader, other], topic, [[v] for v in lagging])
    values += lagging
    isr = partition_metadata(current, topic)[2][0]["isr"]
    assert isr == sorted([leader.rmq_node_id, other.rmq_node_id]), \
        "ISR with node %d down 1,100 entries: %s" % (follower.rmq_node_id, isr)
    led = replica_states(current, topic)[0]
    Cluster.start(follower)

    def same_as_leader():
        lead = (try_replica_states(leader, topic) or {}).get(0)
        mine = (try_replica_states(follower, topic) or {}).get(0)
        return lead and mine and lead["committed_index"] is not None and \
            mine["committed_index"] == lead["committed_index"] and \
            mine["last_log_index"] == lead["last_log_index"]
    wait_until(same_as_leader, CATCH_UP_TIMEOUT_S, interval_s=0.1,
               msg="restarted follower %d at the leader's committed index" % follower.rmq_node_id)
    everyone = sorted(b.rmq_node_id for b in cluster.nodes.values())

    def back_in_sync():
        lead = leader_states(cluster.running(), topic).get(0)
        return lead and partition_metadata(lead[0], topic)[2][0]["isr"] == everyone
    wait_until(back_in_sync, CATCH_UP_TIMEOUT_S, interval_s=0.1,
               msg="caught-up follower %d back in the leader's ISR" % follower.rmq_node_id)
    # The restart disturbed nobody (pre-vote): the follower campaigned in vain while the
    # leader's lease held, so the same node leads in the same term.
    now = replica_states(current, topic)[0]
    assert (now["role"], now["term"]) == ("Leader", led["term"]), \
        "the follower's restart changed the leader's term: %s -> %s" % (led, now)
    # Without `other`, every commit needs the caught-up follower.
    other.kill9()
    values += produce(b"c", 100)
    # The old leader goes; `other` comes back without the c records, so only the caught-up
    # follower can win the next election, and it serves everything. (The first term after
    # the kill counts: leadership may later move to `other` as the preferred replica.)
    term = max(e["term"] for b in (leader, follower)
               for e in (try_replica_states(b, topic) or {}).values())
    watcher = TermWatcher([follower, other], topic)
    try:
        leader.kill9()
        Cluster.start(other)
        def first_new_term():
            with watcher.lock:
                return min([t for (_p, t) in watcher.leaders if t > term], default=None)
        first = wait_until(first_new_term, FAILOVER_TIMEOUT_S, interval_s=0.05,
                           msg="a leader named after the kill")
    finally:
        watcher.stop()
    with watcher.lock:
        assert list(watcher.leaders[(0, first)]) == [follower.rmq_node_id], watcher.leaders
    assert not watcher.conflicts(), watcher.conflicts()
    wait_leader(cluster, topic, 1, exclude=(leader.rmq_node_id,))
    got = consume_to_end(cluster.bootstrap(), topic, 1)
    assert values_of(got[0]) == values


@pytest.mark.timeout(300)
def test_a_fourth_node_joins_and_takes_replicas(broker_factory):
    cluster = replicated_cluster(broker_factory)
    fourth = cluster.add_node(4)
    assert "4@" not in cluster.seeds
    wait_formed(cluster)  # every node's Metadata lists the four brokers
    for b in cluster.nodes.values():
        assert [node_id for node_id, _, _ in node_metadata(b)[0]] == [1, 2, 3, 4]
    topic = unique_topic("four")
    create_replicated(cluster.bootstrap(), topic, 4)
    # Each node hosts 3 of the 4 partitions; for the fourth it names the leader and term the
    # leader reports, like the hosting nodes.
    parts = wait_replicated(cluster.running(), topic, 4, strict=True)
    hosted = {node_id: sorted(p for p, part in parts.items() if node_id in part["replicas"])
              for node_id in cluster.nodes}
    assert all(len(ps) == 3 for ps in hosted.values()), hosted
    wait_until(lambda: sorted(replica_states(fourth, topic)) == hosted[4], CATCH_UP_TIMEOUT_S,
               interval_s=0.2, msg="node 4's /v1/cluster listing its 3 replicas of %s" % topic)
    status = cluster_status(fourth)
    assert status["node_id"] == 4
    records = [(None, b"r%d" % i) for i in range(400)]
    for p in range(4):
        produce_all(producer(cluster.bootstrap()), records[p::4], topic, partition=p)
    got = consume_to_end(cluster.bootstrap(), topic, 4)
    for p in range(4):
        assert values_of(got[p]) == [v for _, v in records[p::4]], "partition %d" % p


@pytest.mark.timeout(300)
def test_replicas_on_every_shard_of_two_core_nodes(broker_factory):
    """With --cores 2 the partitions of a replicated topic spread over both shards of each
    node; the RPC server on shard 0 hands shard 1's groups their Raft traffic over the mesh,
    and a leader on shard 1 fails over like one on shard 0."""
    def two_cores(**kwargs):
        kwargs["cores"] = 2
        return broker_factory(**kwargs)
    cluster = replicated_cluster(two_cores)
    nodes = list(cluster.nodes.values())
    topic = unique_topic("shards")
    create_replicated(cluster.bootstrap(), topic, 4)
    wait_replicated(nodes, topic, 4, strict=True)
    shards = {}
    for b in nodes:
        for entry in cluster_status(b)["partitions"]:
            if entry["topic"] == topic:
                shards.setdefault(entry["partition"], set()).add(entry["shard"])
    assert sorted(shards) == [0, 1, 2, 3], shards
    assert all(len(s) == 1 for s in shards.values()), "one shard index per partition: %s" % shards
    assert {s.pop() for s in shards.values()} == {0, 1}, "both shards host partitions"
    shard_of = {}
    for entry in cluster_status(nodes[0])["partitions"]:
        if entry["topic"] == topic:
            shard_of[entry["partition"]] = entry["shard"]
    on_shard_1 = min(p for p, s in shard_of.items() if s == 1)

    def produce(prefix):
        values = {}
        for p in range(4):
            values[p] = [b"%s-%d-%d" % (prefix, p, i) for i in range(50)]
            produce_all(producer(cluster.bootstrap()), [(None, v) for v in values[p]], topic,
                        partition=p)
        return values

    before = produce(b"a")
    leader = wait_leader(cluster, topic, 4, partition=on_shard_1)
    cluster.nodes[leader].kill9()
    new_leader = wait_leader(cluster, topic, 4, partition=on_shard_1, exclude=(leader,))
    assert new_leader != leader
    after = produce(b"b")
    Cluster.start(cluster.nodes[leader])
    wait_replicated(cluster.running(), topic, 4)
    got = consume_to_end(cluster.bootstrap(), topic, 4)
    for p in range(4):
        assert values_of(got[p]) == before[p] + after[p], "partition %d" % p

    # Leader balancing: once the restarted node has caught up, the partitions it lost lead of
    # go back to their preferred replica (first in Metadata's replicas), so every partition
    # is led by its preferred replica again, spread over the three nodes.
    def balanced():
        parts = agreed_partitions(cluster.running(), topic, 4, strict=True)
        if parts and all(parts[p]["leader"] == parts[p]["preferred"] for p in range(4)):
            return parts
        return None
    parts = wait_until(balanced, CATCH_UP_TIMEOUT_S, interval_s=0.2,
                       msg="every partition of %s led by its preferred replica" % topic)
    assert len({parts[p]["leader"] for p in range(4)}) == 3, parts
