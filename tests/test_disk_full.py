"""Disk full: a real rmq-node whose --data-dir is a small ext4 filesystem on a loop device.

When the filesystem fills up, producers get KAFKA_STORAGE_ERROR (56), the broker stays up and
keeps serving reads, and produce works again once space is freed. Needs root (mount); skipped
otherwise.
"""

import errno
import os
import shutil
import subprocess

import pytest
from confluent_kafka import KafkaError, Producer

from conftest import Broker, _data_root, unique_topic, wait_until
from kafka_util import consume_all, create_topic, produce_all, producer

IMAGE_BYTES = 64 * 1024 * 1024
FILL_CHUNK_BYTES = 1024 * 1024
VALUE_BYTES = 16 * 1024


def _run(*args):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)


@pytest.fixture
def small_fs(tmp_path):
    """A 64 MiB ext4 (no reserved blocks) mounted on a loop device; yields its mount point."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 to mount a loop filesystem")
    root = _data_root(tmp_path)
    image = os.path.join(root, "disk.img")
    mount_point = os.path.join(root, "mnt")
    os.makedirs(mount_point)
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    made = _run("mkfs.ext4", "-q", "-m", "0", image)
    assert made.returncode == 0, made.stdout
    mounted = _run("mount", "-o", "loop", image, mount_point)
    if mounted.returncode != 0:
        pytest.skip("loop mount refused here: %s" % mounted.stdout.decode(errors="replace"))
    try:
        yield mount_point
    finally:
        _run("umount", "-l", mount_point)
        os.unlink(image)


def fill(path):
    """Writes a file until the filesystem refuses (ENOSPC); returns the bytes written."""
    chunk = b"\xab" * FILL_CHUNK_BYTES
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
    return written


def produce_once(bootstrap, topic, value):
    """One acks=all produce without client retries; returns the delivery error or None."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0,
                  "enable.idempotence": False, "message.timeout.ms": 10000,
                  "linger.ms": 0})
    result = []
    p.produce(topic, value=value, on_delivery=lambda err, msg: result.append(err))
    assert p.flush(15) == 0, "produce got no answer"
    return result[0]


@pytest.mark.timeout(120)
def test_disk_full_gives_storage_error_keeps_reads_and_recovers(small_fs, tmp_path):
    broker = Broker(os.path.join(small_fs, "data"), os.path.join(str(tmp_path), "node.log"))
    broker.start()
    try:
        topic = unique_topic("full")
        create_topic(broker.bootstrap, topic, 1)
        before = [(b"k%d" % i, b"v%05d" % i) for i in range(200)]
        produce_all(producer(broker.bootstrap), before, topic, partition=0)

        filler = os.path.join(small_fs, "filler")
        assert fill(filler) > 0

        value = b"x" * VALUE_BYTES
        errors = []
        for _ in range(200):
            err = produce_once(broker.bootstrap, topic, value)
            if err is not None:
                errors.append(err)
                break
        assert errors, "the filesystem never filled up"
        assert errors[0].code() == KafkaError.KAFKA_STORAGE_ERROR, errors[0]
        assert broker.alive()

        got, _ = consume_all(broker.bootstrap, topic, 1)
        assert [(k, v) for _, k, v, _ in got[0][:len(before)]] == before

        os.unlink(filler)
        wait_until(lambda: produce_once(broker.bootstrap, topic, value) is None, 30,
                   msg="produce succeeding after space was freed")
        after = [(b"a%d" % i, b"after%d" % i) for i in range(50)]
        produce_all(producer(broker.bootstrap), after, topic, partition=0)
        got, _ = consume_all(broker.bootstrap, topic, 1)
        values = [v for _, _, v, _ in got[0]]
        assert values[:len(before)] == [v for _, v in before]
        assert values[-len(after):] == [v for _, v in after]
        broker.stop()
    finally:
        broker.kill9()
