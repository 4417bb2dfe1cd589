"""A mass disconnect of clients with their own filters: every filter's last subscriber leaving is
one interest change broadcast to the other shards. 160 clients x 1,000 filters = 160,000
changes at once (about 80,000 per shard with 2 shards), more than the old fixed broadcast
queue of a shard (65,536) held: it asserted and took the process down (reproduced with the
old binary). Now pending changes coalesce per filter: the broker stays up, routes nothing to
the gone filters, and routes new subscriptions on every shard."""

import pytest

from mqtt_util import Client, raw_connect, subscribe_packet, unique_id

CLIENTS = 160
FILTERS_PER_CLIENT = 1000    # MAX_SUBSCRIPTIONS_PER_SESSION
FILTERS_PER_SUBSCRIBE = 250


@pytest.mark.timeout(300)
def test_mass_disconnect_of_160k_filters_keeps_the_broker_routing(broker_factory):
    broker = broker_factory(cores=2)
    port = broker.mqtt_port
    run = unique_id("mass")
    raws = []
    for c in range(CLIENTS):
        raw, _ = raw_connect(port, "%s-%d" % (run, c))
        pkid = 1
        for start in range(0, FILTERS_PER_CLIENT, FILTERS_PER_SUBSCRIBE):
            filters = [("%s/%d/%d" % (run, c, f), 0)
                       for f in range(start, start + FILTERS_PER_SUBSCRIBE)]
            raw.send(subscribe_packet(pkid, filters))
            ptype, _, body = raw.read_packet(timeout_s=60)
            assert ptype == 9, "expected SUBACK, got type %d" % ptype
            assert body[2:] == bytes(FILTERS_PER_SUBSCRIBE), "refused: %r" % body[2:12]
            pkid += 1
        raws.append(raw)
    # Every client drops at once (no DISCONNECT): 160,000 last-subscriber-gone changes.
    for raw in raws:
        raw.close()

    assert broker.proc.poll() is None, "broker died"
    # Routing still works: several subscribers (spread over the shards by SO_REUSEPORT), each
    # on its own new filter, each gets its own message.
    subscribers = [Client(port) for _ in range(4)]
    # A SUBACK waits until every shard applied the change, i.e. behind the 160,000 queued
    # ones: sent in batches (INTEREST_BATCH_MAX per mesh message) that takes well under a
    # second (one change per round trip took 5-25 s and missed the default deadline).
    for i, s in enumerate(subscribers):
        s.subscribe("%s/new/%d" % (run, i), qos=1)
    publisher = Client(port)
    for i in range(len(subscribers)):
        publisher.publish("%s/new/%d" % (run, i), b"after-%d" % i, qos=1)
    for i, s in enumerate(subscribers):
        got = s.wait_messages(1, timeout_s=60)
        assert [m.payload for m in got] == [b"after-%d" % i]
    # A publish to a filter whose subscriber is gone reaches nobody and breaks nothing.
    watcher = Client(port)
    watcher.subscribe("%s/0/#" % run, qos=1)
    publisher.publish("%s/0/7" % run, b"late", qos=1)
    assert [m.payload for m in watcher.wait_messages(1, timeout_s=30)] == [b"late"]
    for c in subscribers + [publisher, watcher]:
        c.disconnect()
    assert broker.proc.poll() is None, "broker died"
