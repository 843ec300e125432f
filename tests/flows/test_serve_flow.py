"""Smoke test of `replay_flow` and `serve_flow` under the Prefect test harness.

The real broker, RabbitMQ and an MLflow champion: sessions replayed by one
flow are scored by the other, which stops once the topic is idle.
"""

from __future__ import annotations

import uuid

import pika
import pytest

from serving.kafka import ensure_topics
from tests.support.brokers import delete_topics
from tests.support.champion import register_champion
from tests.support.queues import ResultQueue


@pytest.fixture
def serve_env(kafka_settings, rabbit_settings, tmp_path, monkeypatch):
    """The flows build their settings from the environment: point it at private resources."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "STATE_DIR": str(tmp_path / "state"),
        "KAFKA_PORT": str(kafka_settings.kafka_port),
        "TOPIC_SESSIONS": f"flow-sessions-{tag}",
        "TOPIC_DLQ": f"flow-sessions-{tag}.dlq",
        "TOPIC_STATION_STATE": f"flow-sessions-{tag}.station-state",
        "CONSUMER_GROUP": f"flow-scoring-{tag}",
        "RABBITMQ_URL": rabbit_settings.rabbitmq_url,
        "RABBITMQ_EXCHANGE": f"ev.scores.flow-{tag}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "METRICS_PORT": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(f"EVGUARD_{key}", value)
    settings = kafka_settings.model_copy(update={
        "topic_sessions": env["TOPIC_SESSIONS"], "topic_dlq": env["TOPIC_DLQ"],
        "topic_station_state": env["TOPIC_STATION_STATE"],
        "rabbitmq_exchange": env["RABBITMQ_EXCHANGE"], "state_dir": tmp_path / "state",
        "mlflow_tracking_uri": env["MLFLOW_TRACKING_URI"]})
    ensure_topics(settings)
    version = register_champion(settings, seed=3).version
    queue = ResultQueue(settings.rabbitmq_url, settings.rabbitmq_exchange)
    yield settings, version, queue
    queue.close()
    delete_topics(settings, [settings.topic_sessions, settings.topic_dlq,
                              settings.topic_station_state])
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        conn.channel().exchange_delete(settings.rabbitmq_exchange)


def test_replayed_sessions_are_scored_by_the_serving_flow(prefect_harness, serve_env):
    from flows.replay import ReplayParams, replay_flow
    from flows.serve import ServeParams, serve_flow

    _settings, version, queue = serve_env
    replayed = replay_flow(ReplayParams(sessions=120, seed=4, anomaly_rate=0.05))
    assert replayed["delivered"] == 120 and replayed["failed"] == 0

    served = serve_flow(ServeParams(idle_exit_seconds=2.0, model_poll_seconds=5))
    assert served["scored"] == 120 and served["consumed"] == 120
    results = queue.wait_for(lambda r: len(r.bodies) >= 120, timeout=20)
    assert len(results.sessions()) == 120
    assert results.versions() == {version: 120}


def test_replay_params_refuse_two_paces_and_files_without_paths():
    from flows.replay import ReplayParams

    with pytest.raises(ValueError):
        ReplayParams(rate=10, speedup=60)
    with pytest.raises(ValueError):
        ReplayParams(source="files")
