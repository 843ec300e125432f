"""The local stack: real broker, real RabbitMQ, idempotent up, clean down, clear errors."""

from __future__ import annotations

import json
import socket
import uuid

import pika
import pytest
from confluent_kafka import Consumer, Producer

from evguard.services import stack as stack_module
from evguard.services.process import ServiceError, free_port, pid_alive, port_open
from evguard.services.stack import LocalStack
from pipelines.settings import Settings
from tests.support.listeners import listening_addresses


def test_message_on_sessions_topic_is_consumed_through_a_consumer_group(kafka_settings):
    s = kafka_settings
    marker = uuid.uuid4().hex
    producer = Producer({"bootstrap.servers": s.kafka_servers, "acks": "all",
                         "enable.idempotence": True})
    for i in range(30):
        producer.produce(s.topic_sessions, key=f"station-{i}", value=json.dumps({"m": marker, "i": i}))
    assert producer.flush(10) == 0

    group = f"test-{marker}"
    seen = _consume_marker(s, group, marker, want=30)
    assert sorted(seen) == list(range(30))
    # committed offsets mean a new member of the same group resumes after them
    assert _consume_marker(s, group, marker, want=1, timeout=4) == []


def _consume_marker(s: Settings, group: str, marker: str, want: int, timeout: float = 20) -> list[int]:
    import time

    consumer = Consumer({"bootstrap.servers": s.kafka_servers, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([s.topic_sessions])
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < want and time.monotonic() < deadline:
            batch = consumer.consume(100, 0.5)
            for msg in batch:
                if msg.error():
                    continue
                body = json.loads(msg.value())
                if body["m"] == marker:
                    seen.append(body["i"])
            if batch:
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return seen


def test_topics_have_the_configured_partitions(kafka_settings):
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": kafka_settings.kafka_servers}).list_topics(timeout=5).topics
    assert len(topics[kafka_settings.topic_sessions].partitions) == kafka_settings.topic_partitions
    assert kafka_settings.topic_dlq in topics


def test_message_published_to_rabbitmq_is_received(rabbit_settings):
    params = pika.URLParameters(rabbit_settings.rabbitmq_url)
    exchange = f"{rabbit_settings.rabbitmq_exchange}.{uuid.uuid4().hex[:6]}"
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.exchange_declare(exchange, "topic", auto_delete=True)
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, exchange, "score.#")
        ch.confirm_delivery()
        ch.basic_publish(exchange, "score.0002.anomaly", b'{"sessionID": "s1"}')
        method, body = None, None
        for _ in range(50):
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method:
                break
            conn.sleep(0.1)
        assert method is not None and method.routing_key == "score.0002.anomaly"
        assert json.loads(body) == {"sessionID": "s1"}
        ch.exchange_delete(exchange)


def test_up_twice_starts_nothing_twice_and_down_leaves_nothing(tmp_path):
    settings = Settings(_env_file=None, state_dir=tmp_path / "state", kafka_port=free_port(),
                        smtp_port=free_port(), prefect_port=free_port())
    stack = LocalStack(settings)
    services = ("kafka", "mlflow", "prefect", "smtp")
    try:
        first = stack.up(only=services)
        assert set(first) == {"kafka", "prefect", "smtp"}
        pids = {row.name: row.pid for row in stack.status() if row.state == "running"}
        assert set(pids) == {"kafka", "prefect", "smtp"}

        assert stack.up(only=services) == []
        assert {row.name: row.pid for row in stack.status() if row.state == "running"} == pids

        listening = listening_addresses(set(pids.values()))
        assert listening, "the services listen somewhere"
        assert {addr.rsplit(":", 1)[0] for addr in listening} == {"127.0.0.1"}, listening
    finally:
        stopped = stack.down()
    assert set(stopped) == {"kafka", "prefect", "smtp"}
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not port_open("127.0.0.1", settings.kafka_port)
    assert not port_open("127.0.0.1", settings.prefect_port)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = Settings(_env_file=None, state_dir=tmp_path / "s", smtp_port=port)
        with pytest.raises(ServiceError, match="already in use"):
            LocalStack(settings).smtp_process().start()


def test_missing_rabbitmq_says_what_to_do(tmp_path, monkeypatch):
    # a closed port and no server binary: the situation of a machine without RabbitMQ
    monkeypatch.setattr(stack_module, "RABBITMQ_SERVER", str(tmp_path / "no-rabbitmq-server"))
    settings = Settings(_env_file=None, state_dir=tmp_path / "s",
                        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    with pytest.raises(ServiceError) as err:
        LocalStack(settings).up(only=("rabbitmq",))
    message = str(err.value)
    assert "apt-get install" in message and "docker compose" in message
    assert "EVGUARD_RABBITMQ_URL" in message


def test_private_rabbitmq_node_starts_and_stops_by_pid(private_rabbitmq):
    settings, stack = private_rabbitmq
    proc = stack.rabbitmq_process()
    pid = proc.pid()
    assert pid is not None
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        assert conn.is_open
    assert stack.down() == ["rabbitmq"]
    assert not pid_alive(pid)
