"""Micro-batches on the real broker: the first message, then the linger."""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from messaging import consume_micro_batch


def _topic_with_one_message(servers: str) -> str:
    topic = f"micro-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(20)
    _produce(servers, topic, b"first")
    return topic


def _produce(servers: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": servers})
    producer.produce(topic, value=value)
    assert producer.flush(20) == 0


def _micro_batch(servers: str, topic: str, linger_s: float) -> list[bytes]:
    """One micro-batch of at most 2 while a second message is produced 1.5 s after it starts."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": topic,
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    later = threading.Timer(1.5, _produce, (servers, topic, b"second"))
    try:
        later.start()
        return [m.value() for m in consume_micro_batch(consumer, 2, 20.0, linger_s)]
    finally:
        later.join()
        consumer.close()


def test_the_linger_gathers_what_arrives_after_the_first_message(kafka_settings):
    servers = kafka_settings.kafka_servers
    started = time.monotonic()
    assert _micro_batch(servers, _topic_with_one_message(servers), linger_s=10.0) == [
        b"first", b"second"]
    assert time.monotonic() - started < 10.0  # back as soon as the batch was full


def test_without_a_linger_a_batch_is_what_had_arrived(kafka_settings):
    servers = kafka_settings.kafka_servers
    assert _micro_batch(servers, _topic_with_one_message(servers), linger_s=0.0) == [b"first"]
