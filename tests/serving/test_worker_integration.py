"""The worker against the real Kafka-compatible broker, RabbitMQ and an MLflow champion."""

from __future__ import annotations

import time
import uuid

import httpx
import orjson
from confluent_kafka import Consumer

from evguard.services.process import free_port
from pipelines.contracts.score_result import routing_key
from pipelines.contracts.sessions import encode_session
from pipelines.data.synth import generate_sessions
from tests.support.brokers import private_kafka_broker, produce
from tests.support.workers import InProcessWorker


def synthetic(n: int, seed: int = 3, anomaly_rate: float = 0.05) -> list[dict]:
    records, _ = generate_sessions(n, seed=seed, anomaly_rate=anomaly_rate)
    return records


def read_topic(settings, topic: str, count: int, timeout: float = 20.0) -> list:
    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(100, 0.2) if m.error() is None]
    consumer.close()
    return messages


def test_every_session_produced_gets_one_result_with_its_routing_key(serving_settings,
                                                                     result_queue,
                                                                     champion_store):
    records = synthetic(600)
    produce(serving_settings, [encode_session(r) for r in records],
            [r["stationID"] for r in records])
    port = free_port()
    worker = InProcessWorker(serving_settings.model_copy(update={"metrics_port": port}))
    try:
        results = result_queue.wait_for(lambda r: len(r.bodies) >= len(records))
        by_session = {b["sessionID"]: (b, k) for b, k in zip(results.bodies, results.keys)}
        assert set(by_session) == {r["sessionID"] for r in records}
        assert results.duplicates() == 0
        for record in records:
            body, key = by_session[record["sessionID"]]
            assert key == routing_key(record["siteID"], body["is_anomaly"])
            assert body["is_anomaly"] == (body["score"] >= body["threshold"])
            assert body["model"]["version"] == champion_store["version"]
            assert (body["explanation"] != []) == body["is_anomaly"]
        flagged = sum(b["is_anomaly"] for b in results.bodies)
        assert 0 < flagged < len(records) / 2

        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert f"evguard_serving_scored_total {float(len(records))}" in metrics
        assert f"evguard_serving_anomalies_total {float(flagged)}" in metrics
        assert f'version="{champion_store["version"]}"' in metrics
        assert "evguard_serving_end_to_end_seconds_bucket" in metrics
        health = httpx.get(f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        outcome = worker.finish()
    assert outcome.code == 0 and outcome.report.scored == len(records)


def test_a_full_chain_with_rabbitmq_confirming_never_pauses_the_consumer(serving_settings,
                                                                         result_queue,
                                                                         champion_store, caplog):
    """A backlog through a chain of one batch in flight: the chain pushes back all the time,
    but RabbitMQ confirms, so the worker waits for room rather than pausing (a pause makes
    librdkafka drop what it prefetched), and every session still gets its result once."""
    records = synthetic(2000, seed=9)
    produce(serving_settings, [encode_session(r) for r in records],
            [r["stationID"] for r in records])
    settings = serving_settings.model_copy(update={
        "metrics_port": free_port(), "serve_batch_size": 50, "serve_max_inflight_batches": 1})
    caplog.set_level("INFO", logger="evguard.serving")
    worker = InProcessWorker(settings)
    try:
        results = result_queue.wait_for(lambda r: len(r.bodies) >= len(records))
    finally:
        outcome = worker.finish()
    assert {b["sessionID"] for b in results.bodies} == {r["sessionID"] for r in records}
    assert results.duplicates() == 0 and outcome.code == 0
    logged = [r.getMessage() for r in caplog.records]
    assert [m for m in logged if "consumption paused" in m] == []
    assert outcome.report.scored == len(records)
    # `make install` built the station modules, so the worker runs them compiled
    assert "station context and health run compiled (mypyc)" in logged


def test_planted_bad_messages_land_in_the_dlq_and_the_rest_is_scored(serving_settings,
                                                                    result_queue):
    good = synthetic(200, seed=4)
    bad = [b"{not json", encode_session({**good[0], "kWhDelivered": -5.0}),
           orjson.dumps({"hello": "world"}), b"\xff\xfe", encode_session({**good[1],
                                                                         "siteID": "9999"})]
    values = [encode_session(r) for r in good]
    for i, value in enumerate(bad):  # interleave them
        values.insert(20 + 35 * i, value)
    produce(serving_settings, values)
    worker = InProcessWorker(serving_settings)
    results = result_queue.wait_for(lambda r: len(r.bodies) >= len(good))
    dead = read_topic(serving_settings, serving_settings.topic_dlq, len(bad))
    outcome = worker.finish()

    assert results.sessions() == {r["sessionID"] for r in good} and results.duplicates() == 0
    assert sorted(m.value() for m in dead) == sorted(bad)
    for message in dead:
        headers = dict(message.headers())
        assert headers["source_topic"].decode() == serving_settings.topic_sessions
        assert headers["error"]
        position = (int(headers["source_partition"]), int(headers["source_offset"]))
        original = read_at(serving_settings, *position)
        assert original == message.value()
    assert outcome.report.dead_lettered == len(bad)


def read_at(settings, partition: int, offset: int) -> bytes:
    from confluent_kafka import TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_servers,
                         "group.id": f"reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(settings.topic_sessions, partition, offset)])
    try:
        for _ in range(50):
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                return message.value()
    finally:
        consumer.close()
    raise AssertionError(f"nothing at partition {partition} offset {offset}")


def test_a_producer_gone_mad_stops_the_worker_loudly(serving_settings, result_queue):
    settings = serving_settings.model_copy(update={"serve_max_invalid_ratio": 0.3,
                                                   "serve_invalid_window": 100})
    produce(settings, [encode_session(r) for r in synthetic(50, seed=5)] + [b"garbage"] * 150)
    worker = InProcessWorker(settings)
    worker.thread.join(30)
    outcome = worker.finish()
    assert outcome.code == 3 and "invalid" in outcome.message


def test_no_champion_at_start_exits_with_a_clear_message(serving_settings):
    from serving.run import EXIT_NO_MODEL, run_worker

    unknown = serving_settings.model_copy(update={"model_name": f"never-{uuid.uuid4().hex[:6]}"})
    outcome = run_worker(unknown)
    assert outcome.code == EXIT_NO_MODEL and "evguard train" in outcome.message




def test_the_worker_consumer_reads_a_200k_backlog_from_the_broker(serving_settings, tmp_path):
    """A worker that starts behind a large backlog: a fresh embedded broker answers the first
    fetch with the whole backlog (about 130 MB for 200,000 sessions), over librdkafka's
    default receive limit of 100 MB, and the worker stalled on it (seen in the serving
    benchmark). The worker's own consumer settings must read every message without error."""
    from confluent_kafka import Producer

    from serving.kafka import consumer_config

    with private_kafka_broker(serving_settings, tmp_path / "state") as (settings, _):
        values = [encode_session(r) for r in synthetic(1_000, seed=11)]
        total = 200_000
        producer = Producer({"bootstrap.servers": settings.kafka_servers, "linger.ms": 5})
        for i in range(total):
            while True:
                try:
                    producer.produce(settings.topic_sessions, value=values[i % len(values)],
                                     key=str(i))
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.01)
            producer.poll(0)
        assert producer.flush(60) == 0

        errors: list[str] = []
        consumer = Consumer({**consumer_config(settings),
                             "error_cb": lambda e: errors.append(str(e))})
        consumer.subscribe([settings.topic_sessions])
        received, deadline = 0, time.monotonic() + 120
        try:
            while received < total and time.monotonic() < deadline and not errors:
                received += sum(m.error() is None for m in consumer.consume(10_000, 0.5))
        finally:
            consumer.close()
    assert not errors, errors[:3]
    assert received == total
