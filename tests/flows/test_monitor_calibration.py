"""`monitor_flow` re-calibrates the champion's threshold from the scores it stored, under the
Prefect test harness, with the real RabbitMQ and a sqlite MLflow.

The stream's scores are the champion's own training reference scores shifted up, as
when the sessions drift: at the trained threshold far more than the budget would alert.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.models import registry
from tests.support.champion import register_champion
from tests.support.queues import consumer_queues

BUDGET = 0.02  # the champion's alert share; a window needs 10 / 0.02 = 500 scores


@pytest.fixture
def flow_env(rabbit_settings, tmp_path, monkeypatch):
    """The flow builds its settings from the environment: point it at private resources."""
    base = rabbit_settings.model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "state_dir": tmp_path / "state"})
    with consumer_queues(base) as settings:
        env = {"STATE_DIR": str(tmp_path / "state"), "RABBITMQ_URL": settings.rabbitmq_url,
               "RABBITMQ_EXCHANGE": settings.rabbitmq_exchange,
               "MONITORING_QUEUE": settings.monitoring_queue,
               "MONITORING_DB_URL": f"sqlite:///{tmp_path / 'monitoring.db'}",
               "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
               "MONITOR_WINDOW_S": "600", "THRESHOLD_RECALIBRATION": "true"}
        for key, value in env.items():
            monkeypatch.setenv(f"EVGUARD_{key}", value)
        yield settings


def test_a_drifted_stream_recalibrates_the_champion_threshold_in_mlflow(
        prefect_harness, flow_env, kit):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.monitor import MonitorParams, monitor_flow

    settings = flow_env
    champion = register_champion(settings, seed=3, sessions=800, n_estimators=30,
                                 alert_share=BUDGET)
    trained = champion.model.threshold
    reference = np.asarray(champion.model.reference["score"])
    scores = np.random.default_rng(0).choice(reference, 700) + 0.04
    assert np.mean(scores >= trained) > 2 * BUDGET
    kit.publish(settings, [kit.score_message(score=float(s), threshold=trained,
                                             version=champion.version) for s in scores])

    result = monitor_flow(MonitorParams(once=True, window_seconds=600,
                                        trigger_retraining=False))
    calibration = result["calibration"]
    assert result["stats"]["stored"] == 700
    assert calibration["decision"] == "recalibrated", calibration["reason"]
    assert calibration["window_scores"] == 700 and calibration["threshold"] > trained
    served = registry.load_champion(settings)
    assert served.threshold == pytest.approx(calibration["threshold"])
    assert served.original_threshold == pytest.approx(trained)
    assert served.calibration["calibration_window"] == "700"
    assert registry.champion_stamp(settings) == calibration["stamp"] != champion.version
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["threshold-calibration"])))
    assert any(f"v{champion.version}" in a.data and "recalibrated" in a.data for a in artifacts)

    # the same window again: the served threshold now lets the budget alert, so it is kept
    again = monitor_flow(MonitorParams(once=True, window_seconds=600, trigger_retraining=False))
    assert again["calibration"]["decision"] == "kept"
    assert registry.champion_stamp(settings) == calibration["stamp"]
