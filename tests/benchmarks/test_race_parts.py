"""The pieces of the serving race that decide its verdict: the confirmed publisher the Quix
and bare parts publish through, and the count of results each part delivered."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import orjson
import pika
import pytest

from pipelines.contracts.score_result import build_results
from pipelines.contracts.sessions import EXAMPLE_SESSION, Source
from pipelines.data.features import feature_matrix

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS / "race"))
sys.path.insert(0, str(BENCHMARKS))

from confirm_publisher import BatchConfirmPublisher, PublishError
from serving_throughput import result_items


@pytest.fixture
def exchange_and_queue(base_settings):
    name = f"race-test-{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(base_settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.exchange_declare(name, "topic", auto_delete=False)
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, name, "score.#")
    yield base_settings.rabbitmq_url, name
    with pika.BlockingConnection(pika.URLParameters(base_settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.queue_delete(name)
        ch.exchange_delete(name)


def depth(url: str, queue: str) -> int:
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        return conn.channel().queue_declare(queue, passive=True).method.message_count


def test_publish_returns_only_once_every_message_is_in_the_queue(exchange_and_queue):
    url, name = exchange_and_queue
    publisher = BatchConfirmPublisher(url, name)
    try:
        for size in (1, 700, 2500):
            assert publisher.publish((f"score.s{i % 3}.normal", b"{}") for i in range(size)) == size
        assert publisher.publish([("station.s1.silent", b"{}"), ("score.s1.anomaly", b"{}")]) == 2
    finally:
        publisher.close()
    assert depth(url, name) == 1 + 700 + 2500 + 1  # confirmed means enqueued: nothing waits
    assert publisher.published == 3203
    assert publisher.returned == 1  # no queue for station.#: counted, not an error


def test_publish_raises_when_the_exchange_is_gone(base_settings):
    with pytest.raises(PublishError):
        publisher = BatchConfirmPublisher(base_settings.rabbitmq_url,
                                          f"race-missing-{uuid.uuid4().hex[:8]}", timeout_s=10)
        publisher.publish([("score.s1.normal", b"{}")])


def test_results_are_counted_in_every_shape_the_parts_publish():
    records = [{**EXAMPLE_SESSION, "sessionID": f"s{i}", "siteID": f"site{i % 2}"}
               for i in range(5)]
    sources = [Source("t", 0, i, 1_700_000_000_000 + i) for i in range(5)]
    features = feature_matrix(records, None)
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.95])
    messages = build_results(records, sources, list(features.columns),
                             features.to_numpy(dtype=np.float64), scores, 0.5,
                             {1: [], 4: []}, {"name": "m", "version": "1",
                                              "feature_version": "f"}, "2026-01-01T00:00:00Z")
    found = [item for _key, body in messages for item in result_items(body)]
    assert sorted(found) == sorted((f"s{i}", 1_700_000_000_000 + i) for i in range(5))
    # the bare loop's bodies: a session per message, or a JSON list of them
    assert result_items(orjson.dumps(records[0])) == [("s0", None)]
    assert [i for i, _ in result_items(orjson.dumps(records))] == [f"s{i}" for i in range(5)]
