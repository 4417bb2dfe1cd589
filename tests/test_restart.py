"""What a clean (SIGTERM) restart on the same data dir keeps."""

import pytest
from confluent_kafka.admin import ConfigResource, NewPartitions, ResourceType

from conftest import unique_topic
from kafka_util import admin, consume_all, create_topic, produce_all, producer, topic_partitions


def describe_topic_configs(bootstrap, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    a = admin(bootstrap)  # keep the client alive until the future completes
    fut = a.describe_configs([res], request_timeout=20)[res]
    entries = fut.result(timeout=20)
    return {k: v.value for k, v in entries.items()}


@pytest.mark.timeout(180)
def test_restart_keeps_topics_configs_and_data(broker):
    t_cfg = unique_topic("rs-cfg")
    t_plain = unique_topic("rs-plain")
    t_grow = unique_topic("rs-grow")
    t_gone = unique_topic("rs-gone")
    create_topic(broker.bootstrap, t_cfg, 3, config={"retention.ms": "123456",
                                                    "max.message.bytes": "500000"})
    create_topic(broker.bootstrap, t_plain, 5)
    create_topic(broker.bootstrap, t_grow, 2)
    create_topic(broker.bootstrap, t_gone, 1)

    # CreatePartitions 2 -> 4 and DeleteTopics before the restart.
    a = admin(broker.bootstrap)
    a.create_partitions([NewPartitions(t_grow, 4)], request_timeout=20)[t_grow].result(timeout=20)
    a.delete_topics([t_gone], request_timeout=20)[t_gone].result(timeout=20)

    cfg = describe_topic_configs(broker.bootstrap, t_cfg)
    assert cfg.get("retention.ms") == "123456", cfg
    assert cfg.get("max.message.bytes") == "500000", cfg
    plain_cfg = describe_topic_configs(broker.bootstrap, t_plain)
    assert plain_cfg.get("max.message.bytes") == "1048588", plain_cfg

    records = {t: [(b"%s-%d" % (t.encode(), i), b"v%06d" % i * 8) for i in range(2000)]
               for t in (t_cfg, t_plain, t_grow)}
    p = producer(broker.bootstrap)
    delivered = {t: produce_all(p, recs, t) for t, recs in records.items()}
    p.flush(10)

    broker.restart()   # SIGTERM (asserts exit 0 within 5 s), start on the same data dir

    assert topic_partitions(broker.bootstrap, t_cfg) == 3
    assert topic_partitions(broker.bootstrap, t_plain) == 5
    assert topic_partitions(broker.bootstrap, t_grow) == 4
    md = admin(broker.bootstrap).list_topics(timeout=10)
    assert t_gone not in md.topics, "deleted topic came back after restart"

    cfg = describe_topic_configs(broker.bootstrap, t_cfg)
    assert cfg.get("retention.ms") == "123456", cfg
    assert cfg.get("max.message.bytes") == "500000", cfg

    for t, parts in ((t_cfg, 3), (t_plain, 5), (t_grow, 4)):
        got, hw = consume_all(broker.bootstrap, t, parts)
        consumed = sorted((part, off, k, v) for part, msgs in got.items() for off, k, v, _h in msgs)
        assert consumed == sorted(delivered[t]), "topic %s data differs after restart" % t

    # Appends continue after the recovered end offsets.
    p = producer(broker.bootstrap)
    more = produce_all(p, [(b"after", b"restart")], t_plain, partition=0)
    before = max(o for part, o, _k, _v in delivered[t_plain] if part == 0)
    assert more[0][1] == before + 1
