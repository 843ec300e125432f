"""Fixtures of the serving tests: private topics, exchanges and a real MLflow champion."""

from __future__ import annotations

import uuid

import pika
import pytest

from pipelines.settings import Settings
from tests.support.brokers import delete_topics
from tests.support.champion import register_champion
from tests.support.queues import ResultQueue


@pytest.fixture(scope="session")
def champion_store(tmp_path_factory) -> dict:
    """An MLflow sqlite store with one champion, shared by the serving tests (read-only)."""
    root = tmp_path_factory.mktemp("serving-mlflow")
    updates = {"mlflow_tracking_uri": f"sqlite:///{root}/mlflow.db", "state_dir": root / "state"}
    settings = Settings(_env_file=None, **updates)
    version = register_champion(settings, seed=0).version
    return {**updates, "version": version}


@pytest.fixture
def serving_settings(kafka_settings, rabbit_settings, champion_store):
    """Uuid-named topics, group and exchange on the real broker and RabbitMQ."""
    from serving.kafka import ensure_topics

    tag = uuid.uuid4().hex[:8]
    settings = kafka_settings.model_copy(update={
        "topic_sessions": f"sessions-{tag}", "topic_dlq": f"sessions-{tag}.dlq",
        "topic_station_state": f"sessions-{tag}.station-state",
        "consumer_group": f"scoring-{tag}", "rabbitmq_exchange": f"ev.scores.serving-{tag}",
        "rabbitmq_url": rabbit_settings.rabbitmq_url, "metrics_port": 0,
        "serve_model_poll_s": 1.0, "serve_batch_timeout_ms": 20,
        "serve_session_timeout_ms": 6000,
        **{k: v for k, v in champion_store.items() if k != "version"}})
    ensure_topics(settings)
    yield settings
    delete_topics(settings, [settings.topic_sessions, settings.topic_dlq,
                              settings.topic_station_state])
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        conn.channel().exchange_delete(settings.rabbitmq_exchange)


@pytest.fixture
def result_queue(serving_settings):
    queue = ResultQueue(serving_settings.rabbitmq_url, serving_settings.rabbitmq_exchange)
    yield queue
    queue.close()
