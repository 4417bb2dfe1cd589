"""librdkafka AdminClient (confluent-kafka) against rmq-node: every admin call and its effect."""

import time

import pytest
from confluent_kafka import (Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions,
                             KafkaError, KafkaException, TopicPartition)
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic)

from conftest import unique_topic, wait_until
from kafka_util import admin, consume_all, create_topic, produce_all, producer, topic_partitions


def describe_topic_configs(a, topic):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return a.describe_configs([resource])[resource].result(timeout=20)


@pytest.mark.timeout(120)
def test_create_partitions_delete_topics_and_describe_cluster(broker):
    a = admin(broker.bootstrap)
    topic = unique_topic("adm")
    create_topic(broker.bootstrap, topic, 2)
    a.create_partitions([NewPartitions(topic, 5)])[topic].result(timeout=20)
    wait_until(lambda: topic_partitions(broker.bootstrap, topic) == 5, 20, msg="5 partitions")

    cluster = a.describe_cluster().result(timeout=20)
    assert cluster.cluster_id
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(0, broker.host, broker.port)]
    assert cluster.controller.id == 0

    assert "__consumer_offsets" not in a.list_topics(timeout=10).topics
    a.delete_topics([topic])[topic].result(timeout=20)
    wait_until(lambda: topic not in a.list_topics(timeout=10).topics, 20, msg="topic deleted")


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_alter_configs_take_effect_at_once_and_describe_shows_sources(broker):
    a = admin(broker.bootstrap)
    topic = unique_topic("cfg")
    create_topic(broker.bootstrap, topic, 1)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "2000",
                    incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
    ])
    a.incremental_alter_configs([resource])[resource].result(timeout=20)
    configs = describe_topic_configs(a, topic)
    assert configs["max.message.bytes"].value == "2000"
    assert configs["max.message.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    # The new limit holds on the next produce: a 3000-byte record is refused.
    p = producer(broker.bootstrap, **{"enable.idempotence": False, "message.timeout.ms": 5000,
                                      "retries": 0})
    with pytest.raises(AssertionError, match="MSG_SIZE_TOO_LARGE"):
        produce_all(p, [(None, b"x" * 3000)], topic, timeout_s=20)

    delete = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE)])
    a.incremental_alter_configs([delete])[delete].result(timeout=20)
    configs = describe_topic_configs(a, topic)
    assert configs["max.message.bytes"].value == "1048588"
    assert configs["retention.ms"].value == "3600000"
    produce_all(producer(broker.bootstrap), [(None, b"x" * 3000)], topic)

    # Legacy AlterConfigs replaces the whole set: retention.ms goes back to its default.
    legacy = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"segment.ms": "60000"})
    a.alter_configs([legacy])[legacy].result(timeout=20)
    configs = describe_topic_configs(a, topic)
    assert configs["segment.ms"].value == "60000"
    assert configs["retention.ms"].value == "604800000"

    bad = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as refused:
        a.incremental_alter_configs([bad])[bad].result(timeout=20)
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG

    broker_resource = ConfigResource(ConfigResource.Type.BROKER, "0")
    broker_configs = a.describe_configs([broker_resource])[broker_resource].result(timeout=20)
    assert broker_configs["group.initial.rebalance.delay.ms"].value == "0"
    assert broker_configs["group.initial.rebalance.delay.ms"].is_default


@pytest.mark.timeout(120)
def test_delete_records_moves_the_log_start_offset(broker):
    a = admin(broker.bootstrap)
    topic = unique_topic("delrec")
    create_topic(broker.bootstrap, topic, 1)
    produce_all(producer(broker.bootstrap), [(None, b"%d" % i) for i in range(100)], topic)
    deleted = a.delete_records([TopicPartition(topic, 0, 60)])
    result = list(deleted.values())[0].result(timeout=20)
    assert result.low_watermark == 60

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g")})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (60, 100)
    finally:
        c.close()
    out, _ = consume_all(broker.bootstrap, topic, 1)
    assert [o for o, _, _, _ in out[0]] == list(range(60, 100))

    broker.restart()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g")})
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (60, 100)
    finally:
        c.close()


def make_group(bootstrap, topic, group, records=10):
    """A group that consumed `records` and committed, then left (state Empty)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 30
    while got < records:
        assert time.monotonic() < deadline, "consumed %d of %d" % (got, records)
        m = c.poll(0.2)
        if m is not None and not m.error():
            got += 1
    c.commit(asynchronous=False)
    return c


@pytest.mark.timeout(120)
def test_list_describe_delete_groups_and_their_offsets(broker):
    a = admin(broker.bootstrap)
    topic = unique_topic("grp")
    create_topic(broker.bootstrap, topic, 2)
    # Five records in each partition: keyless records would all go to one partition (sticky
    # partitioner), and then only that partition would have a committed offset.
    p = producer(broker.bootstrap)
    for partition in (0, 1):
        produce_all(p, [(None, b"%d-%d" % (partition, i)) for i in range(5)], topic,
                    partition=partition)
    active, idle = unique_topic("active"), unique_topic("idle")
    member = make_group(broker.bootstrap, topic, active)
    make_group(broker.bootstrap, topic, idle).close()

    listed = {g.group_id: g for g in a.list_consumer_groups().result(timeout=20).valid}
    assert listed[active].state == ConsumerGroupState.STABLE
    assert listed[idle].state == ConsumerGroupState.EMPTY

    described = a.describe_consumer_groups([active])[active].result(timeout=20)
    assert described.state == ConsumerGroupState.STABLE
    assert len(described.members) == 1
    assert sorted(tp.partition for tp in described.members[0].assignment.topic_partitions) == [0, 1]

    offsets = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(idle)])[idle]
    committed = {tp.partition: tp.offset for tp in offsets.result(timeout=20).topic_partitions}
    assert committed == {0: 5, 1: 5}

    with pytest.raises(KafkaException) as refused:
        a.delete_consumer_groups([active])[active].result(timeout=20)
    assert refused.value.args[0].code() == KafkaError.NON_EMPTY_GROUP

    a.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(idle, [TopicPartition(topic, 0, 1)])])[idle].result(timeout=20)
    offsets = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(idle)])[idle]
    altered = {tp.partition: tp.offset for tp in offsets.result(timeout=20).topic_partitions}
    assert altered == {0: 1, 1: committed[1]}

    a.delete_consumer_groups([idle])[idle].result(timeout=20)
    listed = {g.group_id for g in a.list_consumer_groups().result(timeout=20).valid}
    assert idle not in listed and active in listed
    member.close()
    wait_until(lambda: a.describe_consumer_groups([active])[active].result(timeout=20).state
               == ConsumerGroupState.EMPTY, 20, msg="group empty after close")


@pytest.mark.timeout(60)
def test_offset_for_leader_epoch_answers_the_current_epoch_end(broker):
    from kafka.protocol.offset_for_leader_epoch import OffsetForLeaderEpochRequest

    import kafka_raw as kr

    topic = unique_topic("epoch")
    create_topic(broker.bootstrap, topic, 1)
    produce_all(producer(broker.bootstrap), [(None, b"%d" % i) for i in range(7)], topic)
    with kr.RawConn(broker.host, broker.port) as c:
        # partition, current_leader_epoch, leader_epoch: epoch 0 ends at 7; epoch 5 is unknown.
        response = c.request(OffsetForLeaderEpochRequest[2](
            topics=[(topic, [(0, -1, 0)]), ("no-such-topic", [(0, -1, 0)])]))
        later = c.request(OffsetForLeaderEpochRequest[2](topics=[(topic, [(0, -1, 5)])]))
    answers = {t[0]: t[1][0] for t in response.topics}
    # (error_code, partition, leader_epoch, end_offset)
    assert tuple(answers[topic]) == (0, 0, 0, 7)
    assert answers["no-such-topic"][0] == kr.UNKNOWN_TOPIC_OR_PARTITION
    assert tuple(later.topics[0][1][0]) == (0, 0, -1, -1)
