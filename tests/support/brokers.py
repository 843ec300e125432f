"""Private brokers for the tests that restart them, producing raw values, cleaning up topics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from pipelines.settings import Settings


@contextlib.contextmanager
def private_kafka_broker(settings: Settings, state_dir: Path) -> Iterator[tuple[Settings,
                                                                                 LocalStack]]:
    """An embedded broker of the caller alone (own port and data dir, topics created), which
    it may restart; yields (settings pointed at it, its stack)."""
    settings = settings.model_copy(update={"kafka_port": free_port(), "state_dir": state_dir})
    stack = LocalStack(settings)
    stack.up(only=("kafka",))
    try:
        yield settings, stack
    finally:
        stack.kafka_process().stop()


@contextlib.contextmanager
def private_rabbitmq(state_dir: Path) -> Iterator[tuple[Settings, LocalStack]]:
    """A RabbitMQ node of the caller alone (own port and state), which it may restart; yields
    (settings pointed at it, its stack)."""
    settings = Settings(_env_file=None, state_dir=state_dir,
                        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    stack = LocalStack(settings)
    stack.up(only=("rabbitmq",))
    try:
        yield settings, stack
    finally:
        stack.down()


def delete_topics(settings: Settings, topics: list[str]) -> None:
    for future in AdminClient({"bootstrap.servers": settings.kafka_servers}).delete_topics(
            topics).values():
        with contextlib.suppress(Exception):  # cleanup is best effort
            future.result(timeout=10)


def produce(settings: Settings, values: list[bytes], keys: list[str | None] | None = None) -> None:
    """Produce raw values to the sessions topic and wait for every delivery."""
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 2})
    failed = []
    for i, value in enumerate(values):
        producer.produce(settings.topic_sessions, value=value,
                         key=None if keys is None else keys[i],
                         on_delivery=lambda err, _m: err and failed.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0 and not failed
