"""Smoke test of `monitor_flow` under a Prefect test harness, with the real RabbitMQ.

A stream whose anomaly rate jumps must leave a flow run of the training
deployment with the reason as its parameter, and the window's health artifact.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import pika
import pytest

from monitoring.rabbit import declare_queue, dlq_name

KIT = Path(__file__).resolve().parents[1] / "monitoring" / "score_messages.py"


def _kit():
    name = "evguard_tests_score_messages"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KIT)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def flow_env(rabbit_settings, tmp_path, monkeypatch):
    """The flow builds its settings from the environment: point it at private resources."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "STATE_DIR": str(tmp_path / "state"),
        "RABBITMQ_URL": rabbit_settings.rabbitmq_url,
        "RABBITMQ_EXCHANGE": f"ev.scores.flow-{tag}",
        "MONITORING_QUEUE": f"monitoring-flow-{tag}",
        "MONITORING_DB_URL": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'no-champion.db'}",
        "MONITOR_WINDOW_S": "600",
        "MONITOR_MIN_VOLUME": "50",
        "RETRAIN_ANOMALY_RATE": "0.2",
        "RETRAIN_DEPLOYMENT": f"train_flow/retrain-test-{tag}",
    }
    for key, value in env.items():
        monkeypatch.setenv(f"EVGUARD_{key}", value)
    settings = rabbit_settings.model_copy(update={
        "rabbitmq_exchange": env["RABBITMQ_EXCHANGE"], "monitoring_queue": env["MONITORING_QUEUE"]})
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        declare_queue(conn.channel(), settings.rabbitmq_exchange, settings.monitoring_queue,
                      "score.#")
    yield settings, env
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.queue_delete(settings.monitoring_queue)
        ch.queue_delete(dlq_name(settings.monitoring_queue))
        ch.exchange_delete(settings.rabbitmq_exchange)


def test_a_stream_gone_bad_starts_the_training_deployment_with_the_reason(
        prefect_harness, flow_env):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        DeploymentFilter,
        DeploymentFilterId,
    )

    from flows.monitor import MonitorParams, monitor_flow

    settings, env = flow_env

    @flow(name="train_flow")
    def stand_in_training(reason: str = "scheduled") -> str:
        return reason

    deployment_id = stand_in_training.to_deployment(
        name=env["RETRAIN_DEPLOYMENT"].split("/")[1]).apply()

    kit = _kit()
    messages = [kit.score_message(station=f"CA-{i % 5}", score=0.9 if i % 5 < 2 else 0.3)
                for i in range(100)]
    kit.publish(settings, messages)
    result = monitor_flow(MonitorParams(once=True))

    assert result["stats"]["stored"] == 100
    report = result["report"]
    assert report["volume"] == 100 and report["anomaly_rate"] == pytest.approx(0.4)
    assert report["retrain"]["state"] == "triggered"
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["monitoring-health"])))
    assert len(runs) == 1
    assert str(runs[0].id) == report["retrain"]["flow_run_id"]
    assert "anomaly rate 40.0% > 20.0%" in runs[0].parameters["reason"]
    assert any("anomaly rate 40.0% > 20.0%" in a.data for a in artifacts)
