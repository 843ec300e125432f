"""The proxy's Kafka mirror against the real embedded broker: while Kafka cannot be
reached it spools, a stop keeps every unacknowledged event on disk, and the next mirror
sends them in order and deletes the segments only once Kafka acknowledged them."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from evguard.services.process import free_port
from gateway.mirror import KafkaMirror, mirror_producer_config
from gateway.spool import Spool
from tests.support.brokers import delete_topics
from tests.support.faultkit import read_topic


@pytest.fixture
def topic(kafka_settings):
    name = f"test-mirror-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_settings.kafka_servers})
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(10)
    yield name
    delete_topics(kafka_settings, [name])


def wait_for(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_events_spooled_while_kafka_is_unreachable_reach_it_in_order_after_a_restart(
        kafka_settings, topic, tmp_path):
    spool_dir = tmp_path / "ocpp-spool"
    nowhere = f"127.0.0.1:{free_port()}"
    mirror = KafkaMirror(mirror_producer_config(nowhere), topic, Spool(spool_dir, 1 << 20,
                                                                      segment_bytes=2048),
                         in_flight_events=50, stall_s=0.3).start()
    sent = [(f"CP-{i % 4}".encode(), f"event-{i:04d}".encode()) for i in range(400)]
    for key, value in sent[:100]:
        mirror.offer(key, value)
    assert wait_for(lambda: mirror.stats.spooled > 0), "never spooled while Kafka was away"
    for key, value in sent[100:]:
        mirror.offer(key, value)
        time.sleep(0.001)
    mirror.close(timeout=0.5)
    assert mirror.stats.sent == 0 and not mirror.stats.dropped
    assert mirror.stats.spooled == len(sent)  # the unacknowledged direct sends too
    assert list(spool_dir.glob("*.seg"))

    spool = Spool(spool_dir, 1 << 20, segment_bytes=2048)
    assert spool.events == len(sent)
    again = KafkaMirror(mirror_producer_config(kafka_settings.kafka_servers), topic,
                        spool).start()
    try:
        assert wait_for(lambda: again.stats.replayed == len(sent)), again.stats
        assert wait_for(lambda: not list(spool_dir.glob("*.seg"))), "acknowledged, not deleted"
    finally:
        again.close()
    assert again.stats.spool_bytes == 0 and again.stats.spool_events == 0

    got = read_topic(kafka_settings, topic, len(sent), quiet_s=0.5)
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for message in got:
        by_key[message.key()].append(message.value())
    for key in {k for k, _v in sent}:
        assert by_key[key] == [v for k, v in sent if k == key]


def test_events_go_straight_to_kafka_while_it_keeps_up(kafka_settings, topic, tmp_path):
    spool_dir = tmp_path / "ocpp-spool"
    mirror = KafkaMirror(mirror_producer_config(kafka_settings.kafka_servers), topic,
                         Spool(spool_dir, 1 << 20)).start()
    try:
        for i in range(200):
            mirror.offer(b"CP-1", f"v{i}".encode())
        assert wait_for(lambda: mirror.stats.sent == 200), mirror.stats
    finally:
        mirror.close()
    assert mirror.stats.spooled == 0 and not list(spool_dir.glob("*.seg"))
    got = read_topic(kafka_settings, topic, 200, quiet_s=0.5)
    assert [m.value() for m in got] == [f"v{i}".encode() for i in range(200)]


def test_a_full_spool_drops_the_newest_events_and_counts_them(tmp_path):
    nowhere = f"127.0.0.1:{free_port()}"
    mirror = KafkaMirror(mirror_producer_config(nowhere), "t", Spool(tmp_path, 4096),
                         in_flight_events=10, stall_s=0.1).start()
    for i in range(400):
        mirror.offer(b"CP-1", f"event-{i:04d}".encode().ljust(64, b"."))
    mirror.close(timeout=0.2)
    spooled, dropped = mirror.stats.spooled, mirror.stats.dropped["spool_full"]
    assert dropped > 0 and spooled + dropped == 400
    assert sum(f.stat().st_size for f in tmp_path.glob("*.seg")) <= 4096
