"""Faults: RabbitMQ, then (separately) the Kafka-compatible broker, restarted during a replay.

The worker runs on a thread of the test, the producer is the project's replay; only
private brokers of the test are restarted (never the machine's RabbitMQ). Nothing may be
lost; duplicates (at-least-once) are counted.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer

from evguard.services.process import port_open
from tests.support.faultkit import ContinuousReplay, read_topic, tally, wait_for_partitions
from tests.support.queues import ResultQueue
from tests.support.workers import InProcessWorker


def restart_during_replay(settings, queue: ResultQueue, restart) -> tuple:
    """Replay, restart a broker once results flow, replay on, then wait for every result."""
    worker = InProcessWorker(settings)
    replay = ContinuousReplay(settings, rate=300, seed=41, round_size=300)
    try:
        wait_for_partitions(settings.metrics_port, alive=worker.thread.is_alive)
        replay.start()
        queue.wait_for(lambda r: len(r.sessions()) >= 300, timeout=60)
        during = replay.running()
        restart()
        seen = len(queue.wait_for(lambda r: False, timeout=0).sessions())
        queue.wait_for(lambda r: len(r.sessions()) >= seen + 600, timeout=90)
        replay.stop()
        expected = set(replay.expected)
        results = queue.wait_for(lambda r: r.sessions() >= expected, timeout=90)
    finally:
        if replay.running():
            replay.stop()
        outcome = worker.finish()
    return tally(expected, results.bodies), replay, outcome, during


def test_rabbitmq_restarted_during_a_replay_loses_nothing(fault_settings, private_rabbitmq,
                                                          fault_figures):
    rabbit, stack = private_rabbitmq
    settings = fault_settings.model_copy(update={"rabbitmq_url": rabbit.rabbitmq_url,
                                                 "serve_publish_retry_max_s": 1.0})
    queue = ResultQueue(settings.rabbitmq_url, settings.rabbitmq_exchange)
    down_s = []

    def restart() -> None:
        t0 = time.monotonic()
        assert stack.rabbitmq_process().stop()
        stack.up(only=("rabbitmq",))
        down_s.append(round(time.monotonic() - t0, 1))

    try:
        counted, replay, outcome, during = restart_during_replay(settings, queue, restart)
    finally:
        queue.close()
    fault_figures("broker_restart_rabbitmq", messages=counted.messages, lost=counted.lost,
                  duplicates=counted.duplicates, broker_down_s=down_s[0],
                  replay_failed=replay.failed)
    assert counted.lost == 0, counted.lost_ids
    assert during and outcome.code == 0 and replay.failed == 0


def test_kafka_broker_restarted_during_a_replay_loses_nothing(private_kafka, result_queue,
                                                              fault_figures):
    settings, stack = private_kafka
    down_s = []

    def restart() -> None:
        t0 = time.monotonic()
        kafka = stack.kafka_process()
        assert kafka.stop()
        assert not port_open("127.0.0.1", settings.kafka_port)
        time.sleep(2.0)  # producer and consumer see it gone, not a blip
        assert kafka.start()  # same data dir
        down_s.append(round(time.monotonic() - t0, 1))

    counted, replay, outcome, during = restart_during_replay(settings, result_queue, restart)
    fault_figures("broker_restart_kafka", messages=counted.messages, lost=counted.lost,
                  duplicates=counted.duplicates, broker_down_s=down_s[0],
                  replay_failed=replay.failed)
    assert counted.lost == 0, counted.lost_ids
    assert during and outcome.code == 0 and replay.failed == 0


def test_messages_the_broker_acknowledged_survive_its_restarts(private_kafka, fault_figures):
    """What the broker acknowledged (acks=all) is still there after a stop and start under
    write load, three times over: every loss above would otherwise be the broker's."""
    settings, stack = private_kafka
    producer = Producer({"bootstrap.servers": settings.kafka_servers, "acks": "all",
                         "linger.ms": 5})
    acked: set[bytes] = set()
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            value = f"m{i}".encode()
            producer.produce(settings.topic_sessions, value=value, key=value[-2:],
                             on_delivery=lambda err, msg: err or acked.add(msg.value()))
            producer.poll(0)
            i += 1
            time.sleep(0.002)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for _ in range(3):
            time.sleep(1.0)
            kafka = stack.kafka_process()
            assert kafka.stop()
            assert kafka.start()
        time.sleep(1.0)
    finally:
        stop.set()
        writer.join(10)
        producer.flush(30)
    stored = {m.value() for m in read_topic(settings, settings.topic_sessions, len(acked))}
    lost = acked - stored
    fault_figures("broker_restart_kafka_durability", messages=len(acked), lost=len(lost),
                  duplicates=0, restarts=3)
    assert acked and not lost, sorted(lost)[:5]
