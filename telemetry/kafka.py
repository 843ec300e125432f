"""Kafka for the telemetry processor: client configurations and the topics it needs."""

from __future__ import annotations

import os
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipelines.settings import Settings


class KafkaUnavailable(ConnectionError):
    """The broker does not answer, or a topic could not be created."""


def consumer_config(settings: Settings, session_timeout_ms: int = 10000) -> dict:
    """The group consumer: manual commits, static membership when an instance id is set."""
    static = ({"group.instance.id": settings.telemetry_instance_id}
              if settings.telemetry_instance_id else {})
    return {**static,
            "bootstrap.servers": settings.kafka_servers,
            "group.id": settings.telemetry_group,
            "client.id": f"evguard-telemetry-{os.getpid()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(500, min(3000, session_timeout_ms // 3)),
            # see serving.kafka: the embedded broker answers a fetch with the whole backlog
            "receive.message.max.bytes": 1_000_000_000,
            "log_level": 2}


def producer_config(bootstrap: str) -> dict:
    """Sessions and dead letters: acks=all and idempotent, so a retry neither loses nor doubles."""
    return {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "compression.type": "lz4",
            "client.id": f"evguard-telemetry-out-{os.getpid()}", "log_level": 2}


def ensure_topics(settings: Settings, timeout: float = 20.0) -> int:
    """Create the telemetry topic, its dead-letter topic and the sessions topic if missing.

    Returns:
        the telemetry topic's partition count (its state changelog needs as many).

    Raises:
        KafkaUnavailable: the broker does not answer or a topic could not be created.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_servers, "log_level": 2})
    wanted = {settings.topic_telemetry: settings.topic_partitions,
              settings.topic_telemetry_dlq: 1,
              settings.topic_sessions: settings.topic_partitions}
    deadline = time.monotonic() + timeout

    def existing() -> dict:
        try:
            return admin.list_topics(timeout=min(5.0, timeout)).topics
        except KafkaException as exc:
            raise KafkaUnavailable(f"Kafka does not answer at {settings.kafka_servers} "
                                   f"({exc.args[0].str()})") from None

    have = existing()
    missing = [t for t in wanted if t not in have]
    if missing:
        futures = admin.create_topics([NewTopic(t, wanted[t], 1) for t in missing])
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:  # another process may have created it meanwhile
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KafkaUnavailable(f"cannot create topic {topic}: {exc}") from None
    while True:
        have = existing()
        if all(t in have for t in wanted) and have[settings.topic_telemetry].partitions:
            return len(have[settings.topic_telemetry].partitions)
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"topics {sorted(wanted)} did not appear within "
                                   f"{timeout:.0f}s")
        time.sleep(0.1)
