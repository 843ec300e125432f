"""Smoke test of `monitor_flow` under the Prefect test harness, with the real RabbitMQ and MLflow.

A real champion is registered (small Isolation Forest on synthetic sessions);
a stream whose energy features have drifted away from its training data must
leave a flow run of the training deployment with the reason as its parameter,
and the window's health artifact.
"""

from __future__ import annotations

import uuid

import pytest

from pipelines.data.features import feature_matrix
from pipelines.data.synth import generate_sessions
from tests.support.champion import register_champion
from tests.support.queues import consumer_queues

DRIFTED = ("kwh_delivered", "avg_kw", "charging_kw")


def scored_stream(kit, model, version: str, n: int, energy_factor: float) -> list[dict]:
    """Fresh synthetic sessions, energy scaled by `energy_factor`, scored by the champion."""
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
    base = rabbit_settings.model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "state_dir": tmp_path / "state"})
    with consumer_queues(base) as settings:
        env = {
            "STATE_DIR": str(tmp_path / "state"),
            "RABBITMQ_URL": settings.rabbitmq_url,
            "RABBITMQ_EXCHANGE": settings.rabbitmq_exchange,
            "MONITORING_QUEUE": settings.monitoring_queue,
            "MONITORING_DB_URL": f"sqlite:///{tmp_path / 'monitoring.db'}",
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "MONITOR_WINDOW_S": "600",
            "MONITOR_MIN_VOLUME": "50",
            "RETRAIN_ANOMALY_RATE": "0.9",  # so only drift can trigger here
            "RETRAIN_DEPLOYMENT": f"train_flow/retrain-test-{uuid.uuid4().hex[:8]}",
        }
        for key, value in env.items():
            monkeypatch.setenv(f"EVGUARD_{key}", value)
        yield settings, env


def test_a_drifted_stream_starts_the_training_deployment_with_the_reason(
        prefect_harness, flow_env, kit):
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
    champion = register_champion(settings, seed=3, sessions=600, n_estimators=30,
                                 alert_share=0.02)
    model, version = champion.model, champion.version

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
