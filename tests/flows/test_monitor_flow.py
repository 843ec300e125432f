"""Smoke test of `monitor_flow` under the Prefect test harness, with the real RabbitMQ and MLflow.

A real champion is registered (small Isolation Forest on synthetic sessions);
a stream whose energy features have drifted away from its training data must
leave a flow run of the training deployment with the reason as its parameter,
and the window's health artifact.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import pika
import pytest

from monitoring.rabbit import declare_queue
from pipelines.contracts.dead_letters import dlq_name

KIT = Path(__file__).resolve().parents[1] / "monitoring" / "score_messages.py"
DRIFTED = ("kwh_delivered", "avg_kw", "charging_kw")


def _kit():
    name = "evguard_tests_score_messages"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KIT)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def register_champion(settings, tmp_path):
    """Train, log and alias a small champion the way the training flow leaves one."""
    import mlflow
    import numpy as np

    from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
    from pipelines.data.synth import generate_sessions
    from pipelines.models import registry
    from pipelines.models.anomaly_model import SessionAnomalyModel
    from pipelines.models.estimators import make_detector

    records, _ = generate_sessions(600, seed=3)
    X = feature_matrix(records).to_numpy()
    detector = make_detector("iforest", n_estimators=30, random_state=0).fit(X)
    threshold = float(np.quantile(detector.score_samples(X), 0.98))
    model = SessionAnomalyModel(detector, threshold, FEATURE_COLUMNS, FEATURE_VERSION, X, 0.02,
                                "iforest-test")
    client = registry.mlflow_client(settings)
    experiment = client.create_experiment("monitor-flow-test",
                                          artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        logged = mlflow.pyfunc.log_model(name="model", python_model=model)
    version = mlflow.register_model(logged.model_uri, settings.model_name).version
    client.set_registered_model_alias(settings.model_name, registry.CHAMPION, version)
    return model, str(version)


def scored_stream(kit, model, version: str, n: int, energy_factor: float) -> list[dict]:
    """Fresh synthetic sessions, energy scaled by `energy_factor`, scored by the champion."""
    from pipelines.data.features import feature_matrix
    from pipelines.data.synth import generate_sessions

    records, _ = generate_sessions(n, seed=11)
    frame = feature_matrix(records)
    for column in DRIFTED:
        frame[column] *= energy_factor
    scores = model.score(frame)
    return [kit.score_message(station=r["stationID"], score=float(s), threshold=model.threshold,
                              version=version, features=dict(row))
            for r, s, (_, row) in zip(records, scores, frame.iterrows(), strict=True)]


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
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MONITOR_WINDOW_S": "600",
        "MONITOR_MIN_VOLUME": "50",
        "RETRAIN_ANOMALY_RATE": "0.9",  # so only drift can trigger here
        "RETRAIN_DEPLOYMENT": f"train_flow/retrain-test-{tag}",
    }
    for key, value in env.items():
        monkeypatch.setenv(f"EVGUARD_{key}", value)
    settings = rabbit_settings.model_copy(update={
        "rabbitmq_exchange": env["RABBITMQ_EXCHANGE"], "monitoring_queue": env["MONITORING_QUEUE"],
        "mlflow_tracking_uri": env["MLFLOW_TRACKING_URI"], "state_dir": tmp_path / "state"})
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        declare_queue(conn.channel(), settings.rabbitmq_exchange, settings.monitoring_queue,
                      "score.#")
    yield settings, env
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        ch = conn.channel()
        ch.queue_delete(settings.monitoring_queue)
        ch.queue_delete(dlq_name(settings.monitoring_queue))
        ch.exchange_delete(settings.rabbitmq_exchange)


def test_a_drifted_stream_starts_the_training_deployment_with_the_reason(
        prefect_harness, flow_env, tmp_path):
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
    model, version = register_champion(settings, tmp_path)
    kit = _kit()

    kit.publish(settings, scored_stream(kit, model, version, 120, energy_factor=4.0))
    result = monitor_flow(MonitorParams(once=True, window_seconds=600))
    report = result["report"]
    assert result["stats"]["stored"] == 120 and report["volume"] == 120
    assert report["retrain"]["state"] == "triggered"
    drifted = {c["name"] for c in report["drift"]["columns"] if c["drifted"]}
    # energy features drifted; durations did not, and calendar features are not judged
    assert {"avg_kw", "kwh_delivered"} <= drifted
    assert not drifted & {"connection_hours", "idle_hours", "weekday"}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["monitoring-health"])))
    assert len(runs) == 1
    assert str(runs[0].id) == report["retrain"]["flow_run_id"]
    reason = runs[0].parameters["reason"]
    assert "drift over PSI 0.25" in reason and "avg_kw PSI" in reason
    assert any("avg_kw PSI" in a.data for a in artifacts)
