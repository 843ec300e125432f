"""The telemetry processor across a RabbitMQ restart: nothing is committed before RabbitMQ
confirms it, and what was detected meanwhile is published once RabbitMQ is back."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from tests.support.queues import ResultQueue
from tests.telemetry.conftest import running_processor, wait_until
from tests.telemetry.kit import produce_events, transaction


def no_current(cp: str) -> list:
    return transaction(lambda i: (30.0 if i < 5 else 0.0, 32.0, "Charging"), samples=10,
                       cp=cp, rx0=time.time(), speedup=100.0)


def committed(settings) -> int:
    """Events of the telemetry topic whose offsets the processors' group committed."""
    reader = Consumer({"bootstrap.servers": settings.kafka_servers,
                       "group.id": settings.telemetry_group, "log_level": 2})
    try:
        offsets = reader.committed([TopicPartition(settings.topic_telemetry, p)
                                    for p in range(settings.topic_partitions)], timeout=10)
    finally:
        reader.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def test_nothing_is_committed_until_rabbitmq_confirms_and_alerts_arrive_once_it_is_back(
        telemetry_settings, private_rabbitmq):
    node_settings, stack = private_rabbitmq
    s = telemetry_settings.model_copy(update={"rabbitmq_url": node_settings.rabbitmq_url})
    before, during = no_current("CP-before"), no_current("CP-during")
    queue = ResultQueue(s.rabbitmq_url, s.rabbitmq_exchange, "live.#")
    try:
        with running_processor(s) as processor:
            produce_events(s, before)
            queue.wait_for(lambda r: len(r.bodies) >= 2, 20)
            wait_until(lambda: committed(s) == len(before), 10, "confirmed events not committed")
            stack.rabbitmq_process().stop()
            produce_events(s, during)
            wait_until(lambda: processor.report.live_alerts >= 4, 20, "not detected")
            assert processor.liveness()[1]["rabbitmq"] == "unavailable"
            time.sleep(0.5)
            assert committed(s) == len(before)  # detected, not confirmed: not committed
            stack.up(only=("rabbitmq",))
            results = queue.wait_for(lambda r: {"CP-during"} <= {b["chargePointId"]
                                                               for b in r.bodies}, 60)
            wait_until(lambda: committed(s) == len(before) + len(during), 20,
                       "not committed after the confirms")
    finally:
        queue.close()
    kinds = [(b["kind"], b["status"]) for b in results.bodies if b["chargePointId"] == "CP-during"]
    assert ("no_current", "open") in kinds and ("no_current", "closed") in kinds
