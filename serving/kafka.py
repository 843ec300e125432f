"""Kafka for evguard: the clients' configurations and the topics the platform needs.

Both the worker and the development stack (`evguard services up`) create topics
through `ensure_topics`; producers and consumers take their settings from here,
so a change of delivery guarantees happens in one place.
"""

from __future__ import annotations

import os
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipelines.settings import Settings


class KafkaUnavailable(ConnectionError):
    """The broker does not answer, or a topic could not be created."""


def consumer_config(settings: Settings) -> dict:
    session = settings.serve_session_timeout_ms
    static = {"group.instance.id": settings.serve_instance_id} if settings.serve_instance_id else {}
    return {**static,
        "bootstrap.servers": settings.kafka_servers,
        "group.id": settings.consumer_group,
        "client.id": f"evguard-serving-{os.getpid()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session,
        "heartbeat.interval.ms": max(500, min(3000, session // 3)),
        # the embedded broker answers a fetch with the whole backlog, ignoring fetch.max.bytes
        # (measured: 125 MB for 200,000 sessions, over librdkafka's 100 MB default, and the
        # worker stalled); real Kafka keeps to fetch.max.bytes (50 MB), far below this
        "receive.message.max.bytes": 1_000_000_000,
        # errors reach error_cb, which logs them at most every 10 s; librdkafka would repeat
        # a refused connection on stderr several times a second
        "log_level": 2,
    }


def pacing_wait_s(wait_s: float, longest_s: float = 0.05) -> float:
    """How long a pacing loop should `poll` a librdkafka client to wait `wait_s`.

    librdkafka waits in whole milliseconds and returns at once for less, so a loop that
    polled the sub-millisecond remainder would spin (the latency benchmark's
    1,000 sessions/s replay kept most of a core busy). Waiting at least 1 ms sends a
    session up to 1 ms late; the loop's absolute targets keep the rate.
    """
    return min(max(wait_s, 0.001), longest_s)


def producer_config(bootstrap: str) -> dict:
    # librdkafka's own log lines would cut through the progress bar; failures are
    # reported by the pre-flight check and the delivery reports instead
    return {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "client.id": "evguard-replay", "log_level": 2}


def dead_letter_producer_config(bootstrap: str) -> dict:
    return {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "client.id": "evguard-serving-dlq", "log_level": 2}


def ensure_topics(settings: Settings, timeout: float = 20.0) -> None:
    """Create the sessions and telemetry topics and their dead-letter topics if missing.

    Raises:
        KafkaUnavailable: a topic could not be created, or did not appear in time.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_servers})
    wanted = {settings.topic_sessions: settings.topic_partitions, settings.topic_dlq: 1,
              settings.topic_telemetry: settings.topic_partitions,
              settings.topic_telemetry_dlq: 1}

    def missing() -> list[str]:
        try:
            have = admin.list_topics(timeout=2).topics
        except KafkaException:  # broker still starting
            return list(wanted)
        return [t for t in wanted if t not in have]

    todo = missing()
    if todo:
        futures = admin.create_topics([NewTopic(t, wanted[t], 1) for t in todo])
        for topic, fut in futures.items():
            try:
                fut.result(timeout=timeout)
            except Exception as exc:  # a concurrent `up` may have created it
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KafkaUnavailable(f"kafka: cannot create topic {topic}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while (absent := missing()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if absent:
        raise KafkaUnavailable(f"kafka: topics {absent} did not appear within {timeout:.0f}s")


def check_topic(producer, settings: Settings, topic: str, timeout_s: float = 5.0) -> None:
    """Fail fast, and readably, when the broker is down or the topic is missing.

    Raises:
        ConnectionError: the broker does not answer.
        LookupError: the topic does not exist.
    """
    try:
        topics = producer.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise ConnectionError(f"Kafka does not answer at {settings.kafka_servers} "
                              f"({exc.args[0].str()}); start it with `evguard services up`") from None
    if topic not in topics:
        raise LookupError(f"topic {topic!r} does not exist at {settings.kafka_servers}; "
                          f"`evguard services up` creates {settings.topic_sessions!r}")
