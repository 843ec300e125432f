"""Fixtures of the telemetry processor tests: uuid-named topics, exchange and group on the
embedded broker and RabbitMQ, queues that collect what the processor publishes, and a
processor running on a thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pika
import pytest
from confluent_kafka import Consumer, TopicPartition

from evguard.services.process import free_port
from pipelines.contracts.sessions import decode_session
from pipelines.settings import Settings
from telemetry.kafka import ensure_topics
from telemetry.processor import ProcessorOptions, TelemetryProcessor
from tests.support.brokers import delete_topics
from tests.support.queues import ResultQueue

FAST = ProcessorOptions(batch_timeout_s=0.02, tick_s=0.2, commit_interval_s=0.05,
                        session_timeout_ms=6000, shutdown_timeout_s=10)


@pytest.fixture
def telemetry_settings(kafka_settings: Settings, rabbit_settings: Settings) -> Iterator[Settings]:
    """Own topics, changelog, group and exchange for one test; deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    s = kafka_settings.model_copy(update={
        "topic_telemetry": f"telemetry-{tag}", "topic_telemetry_dlq": f"telemetry-{tag}.dlq",
        "topic_telemetry_state": f"telemetry-{tag}.state", "topic_sessions": f"sessions-{tag}",
        "telemetry_group": f"telemetry-{tag}", "rabbitmq_exchange": f"ev.scores.tel-{tag}",
        "telemetry_metrics_port": free_port(), "telemetry_status_interval_s": 1.0,
        "rabbitmq_url": rabbit_settings.rabbitmq_url})
    ensure_topics(s)
    yield s
    delete_topics(s, [s.topic_telemetry, s.topic_telemetry_dlq, s.topic_telemetry_state,
                      s.topic_sessions])
    try:
        with pika.BlockingConnection(pika.URLParameters(s.rabbitmq_url)) as conn:
            conn.channel().exchange_delete(s.rabbitmq_exchange)
    except pika.exceptions.AMQPError:
        pass


@pytest.fixture
def live_queue(telemetry_settings: Settings) -> Iterator[ResultQueue]:
    """Every live alert the processor publishes (`live.#`)."""
    queue = ResultQueue(telemetry_settings.rabbitmq_url, telemetry_settings.rabbitmq_exchange,
                        "live.#")
    yield queue
    queue.close()


@pytest.fixture
def status_queue(telemetry_settings: Settings) -> Iterator[ResultQueue]:
    """Every connector snapshot (`connector.#`)."""
    queue = ResultQueue(telemetry_settings.rabbitmq_url, telemetry_settings.rabbitmq_exchange,
                        "connector.#")
    yield queue
    queue.close()


@contextmanager
def running_processor(settings: Settings, options: ProcessorOptions = FAST,
                      ) -> Iterator[TelemetryProcessor]:
    """A processor on a thread, once it owns its partitions; stopped (and committed) after."""
    processor = TelemetryProcessor(settings, options)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            processor.run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: processor._assigned or failure, 30, "the processor owns no partition")
    assert not failure, failure
    try:
        yield processor
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()
    assert not failure, failure


def wait_until(predicate, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(message)


def read_sessions(settings: Settings, expected: int, timeout: float = 20.0) -> list[dict]:
    """Decode the sessions on the sessions topic (all partitions, from the start), waiting
    until `expected` arrived."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": f"read-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "log_level": 2})
    partitions = consumer.list_topics(settings.topic_sessions, timeout=10) \
        .topics[settings.topic_sessions].partitions
    consumer.assign([TopicPartition(settings.topic_sessions, p, 0) for p in partitions])
    found = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.2):
                if message.error() is None:
                    found.append((message.key(), decode_session(message.value())))
    finally:
        consumer.close()
    return found
