"""Faults: a killed worker, RabbitMQ restarting, two workers in a group, a new champion.

Every case checks from the results on RabbitMQ that no session was lost;
duplicates are allowed (at-least-once) and counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from evguard.services.process import free_port
from evguard.services.stack import RABBITMQ_SERVER
from pipelines.data.synth import generate_sessions
from pipelines.models import registry
from serving.replay import ReplayPace, replay
from tests.support.champion import register_champion
from tests.support.queues import ResultQueue
from tests.support.workers import InProcessWorker, start_worker_process


def synthetic(n: int, seed: int) -> list[dict]:
    return generate_sessions(n, seed=seed, anomaly_rate=0.03)[0]


def replay_in_background(settings, records, rate: float) -> threading.Thread:
    def run() -> None:
        report = replay(settings, records, ReplayPace(rate=rate))
        assert report.failed == 0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_healthy(port: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
            if body.get("partitions"):
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"worker on port {port} did not get partitions in {timeout}s")


def test_worker_killed_mid_stream_and_restarted_loses_nothing(serving_settings, result_queue,
                                                               tmp_path):
    records = synthetic(1500, seed=11)
    # static membership: the embedded broker never expires a dead member (docs/serving.md)
    settings = serving_settings.model_copy(update={"metrics_port": free_port(),
                                                   "serve_batch_size": 100,
                                                   "serve_instance_id": "worker-a"})
    log = tmp_path / "worker.log"
    worker = start_worker_process(settings, log)
    try:
        wait_healthy(settings.metrics_port)
        producer = replay_in_background(settings, records, rate=500)
        result_queue.wait_for(lambda r: len(r.bodies) >= 300)
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
    before_restart = result_queue.wait_for(lambda r: False, timeout=0.3)
    assert len(before_restart.sessions()) < len(records), "it finished before it was killed"
    # the same worker code and configuration, restarted (on a thread, to skip a second start-up)
    restarted = InProcessWorker(settings)
    producer.join(30)
    results = result_queue.wait_for(lambda r: r.sessions() >= {x["sessionID"] for x in records},
                                    timeout=60)
    outcome = restarted.finish()
    assert results.sessions() == {r["sessionID"] for r in records}
    assert outcome.code == 0
    print(f"kill -9 after {len(before_restart.bodies)} results: {len(records)} sessions, "
          f"{results.duplicates()} duplicates")


def set_memory_alarm(stack, on: bool) -> None:
    """Make the private node block publishers (memory alarm), or clear it."""
    proc = stack.rabbitmq_process()
    ctl = Path(RABBITMQ_SERVER).with_name("rabbitmqctl")
    subprocess.run([str(ctl), "-n", proc.env["RABBITMQ_NODENAME"], "set_vm_memory_high_watermark",
                    "0.00001" if on else "0.4"], env={**os.environ, **proc.env}, check=True,
                   capture_output=True, timeout=30)


def test_rabbitmq_restarted_or_blocking_mid_stream_loses_nothing(serving_settings,
                                                                 private_rabbitmq):
    rabbit_settings, stack = private_rabbitmq
    settings = serving_settings.model_copy(update={"rabbitmq_url": rabbit_settings.rabbitmq_url,
                                                   "serve_batch_size": 100,
                                                   "serve_publish_retry_max_s": 1.0,
                                                   "metrics_port": free_port()})
    records = synthetic(1500, seed=12)
    late = synthetic(1500, seed=16)  # more than the in-flight limit, so consumption must pause
    queue = ResultQueue(settings.rabbitmq_url, settings.rabbitmq_exchange)
    worker = InProcessWorker(settings)
    try:
        producer = replay_in_background(settings, records, rate=500)
        queue.wait_for(lambda r: len(r.bodies) >= 300)
        stack.rabbitmq_process().stop()
        time.sleep(1.0)
        stack.up(only=("rabbitmq",))
        producer.join(30)
        queue.wait_for(lambda r: r.sessions() >= {x["sessionID"] for x in records}, timeout=60)

        set_memory_alarm(stack, on=True)  # RabbitMQ now blocks publishing connections
        replay(settings, late)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            health = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/healthz").json()
            if health["paused"]:
                break
            time.sleep(0.1)
        assert health["paused"] and health["rabbitmq"] == "unavailable"
        while_blocked = queue.wait_for(lambda r: False, timeout=1.0).sessions()
        assert not while_blocked & {x["sessionID"] for x in late}
        set_memory_alarm(stack, on=False)
        everything = {x["sessionID"] for x in records + late}
        results = queue.wait_for(lambda r: r.sessions() >= everything, timeout=60)
    finally:
        outcome = worker.finish()
        queue.close()
    assert results.sessions() == everything
    assert outcome.code == 0
    print(f"RabbitMQ restart and block: {len(everything)} sessions, "
          f"{results.duplicates()} duplicates")


def test_two_workers_in_one_group_split_the_partitions_without_loss(serving_settings,
                                                                    result_queue):
    ports = [free_port(), free_port()]
    workers = [InProcessWorker(serving_settings.model_copy(update={"metrics_port": p}))
               for p in ports]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            owned = [wait_healthy(p)["partitions"] for p in ports]
            if sorted(owned[0] + owned[1]) == list(range(serving_settings.topic_partitions)):
                break
            time.sleep(0.2)
        assert owned[0] and owned[1] and not set(owned[0]) & set(owned[1]), owned
        records = synthetic(900, seed=13)
        replay(serving_settings, records)
        results = result_queue.wait_for(
            lambda r: r.sessions() >= {x["sessionID"] for x in records})
    finally:
        outcomes = [w.finish() for w in workers]
    assert results.sessions() == {r["sessionID"] for r in records}
    assert all(o.report.scored > 0 for o in outcomes)
    # a rebalance during the replay (a failed commit) re-scores what it had not committed:
    # those copies may still be on their way when every session has arrived once
    scored = sum(o.report.scored for o in outcomes)
    results = result_queue.wait_for(lambda r: len(r.bodies) >= scored, timeout=30)
    assert len(results.bodies) == scored
    partitions_seen = [{b["kafka"]["partition"] for b in results.bodies}]
    assert partitions_seen[0] == set(range(serving_settings.topic_partitions))


def test_promoting_a_new_champion_switches_the_version_without_a_restart(serving_settings,
                                                                         result_queue, tmp_path):
    store = {"mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
             "state_dir": tmp_path / "state"}
    settings = serving_settings.model_copy(update={**store, "serve_model_poll_s": 0.3})
    first = register_champion(settings, seed=1).version
    second = register_champion(settings, seed=2, promote=False).version
    worker = InProcessWorker(settings)
    try:
        early = synthetic(300, seed=14)
        replay(settings, early)
        result_queue.wait_for(lambda r: len(r.bodies) >= len(early))
        registry.mlflow_client(settings).set_registered_model_alias(
            settings.model_name, registry.CHAMPION, second)
        late = synthetic(300, seed=15)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the worker has swapped
            replay(settings, late[:10])
            results = result_queue.wait_for(lambda r: r.versions()[second] > 0, timeout=1)
            if results.versions()[second]:
                break
        replay(settings, late)
        results = result_queue.wait_for(
            lambda r: r.sessions() >= {x["sessionID"] for x in early + late})
    finally:
        outcome = worker.finish()
    version_of = {}
    for body in results.bodies:
        version_of.setdefault(body["sessionID"], set()).add(body["model"]["version"])
    assert all(version_of[r["sessionID"]] == {first} for r in early)
    assert all(second in version_of[r["sessionID"]] for r in late)
    assert outcome.code == 0  # the same worker served both
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for body in results.bodies:
        by_partition.setdefault(body["kafka"]["partition"], []).append(
            (body["kafka"]["offset"], body["model"]["version"]))
    for rows in by_partition.values():  # one switch per partition, never back
        versions = [v for _o, v in sorted(rows)]
        assert versions == sorted(versions, key=lambda v: v != first)


def test_kafka_broker_restart_mid_stream_is_survived_without_loss(serving_settings, result_queue,
                                                                  tmp_path):
    from evguard.services.stack import LocalStack
    from serving.kafka import ensure_topics

    settings = serving_settings.model_copy(update={"kafka_port": free_port(),
                                                   "state_dir": tmp_path / "kafka-state",
                                                   "serve_batch_size": 100})
    broker = LocalStack(settings)  # a broker of this test alone, which it may restart
    broker.up(only=("kafka",))
    try:
        ensure_topics(settings)
        records = synthetic(1500, seed=17)
        worker = InProcessWorker(settings)
        try:
            replay(settings, records[:500])
            result_queue.wait_for(lambda r: len(r.sessions()) >= 500)
            broker.kafka_process().stop()
            time.sleep(2.0)
            broker.up(only=("kafka",))
            assert replay(settings, records[500:]).failed == 0
            results = result_queue.wait_for(
                lambda r: r.sessions() >= {x["sessionID"] for x in records}, timeout=60)
        finally:
            outcome = worker.finish()
    finally:
        broker.kafka_process().stop()
    assert results.sessions() == {r["sessionID"] for r in records}
    assert outcome.code == 0


def committed_offsets(settings) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": settings.consumer_group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(settings.topic_sessions, p)
                      for p in range(settings.topic_partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)
                if tp.offset >= 0}
    finally:
        consumer.close()


def test_sigterm_finishes_what_is_in_flight_and_commits_exactly_what_was_published(
        serving_settings, result_queue):
    from serving.run import run_worker

    settings = serving_settings.model_copy(update={"serve_batch_size": 100})
    records = synthetic(1500, seed=18)
    producer = replay_in_background(settings, records, rate=1000)

    def terminate_when_flowing() -> None:
        flowing = result_queue.wait_for(lambda r: len(r.bodies) >= 300)
        if len(flowing.bodies) >= 300:  # the worker's handler is installed: it is running
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_flowing, daemon=True).start()
    outcome = run_worker(settings)  # on the main thread, so with the real signal handlers
    producer.join(30)
    assert outcome.code == 0 and 0 < outcome.report.scored < len(records)
    published = result_queue.wait_for(lambda r: len(r.bodies) >= outcome.report.scored,
                                      timeout=10)
    ends: dict[int, int] = {}
    for body in published.bodies:
        k = body["kafka"]
        ends[k["partition"]] = max(ends.get(k["partition"], 0), k["offset"] + 1)
    assert committed_offsets(settings) == ends  # a restart scores nothing twice

    restarted = InProcessWorker(settings)
    try:
        results = result_queue.wait_for(
            lambda r: r.sessions() >= {x["sessionID"] for x in records})
    finally:
        restarted.finish()
    assert results.sessions() == {r["sessionID"] for r in records}
    assert results.duplicates() == 0
