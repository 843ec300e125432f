"""The one champion registrar of the tests (and benchmarks): a small real model, logged,
registered and aliased the way training leaves one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import mlflow
import numpy as np

from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.models import registry, tracking
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.estimators import DetectorKind, make_detector
from pipelines.settings import Settings


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    model: SessionAnomalyModel


def register_champion(settings: Settings, seed: int = 0, promote: bool = True,
                      sessions: int = 1500, n_estimators: int = 40, alert_share: float = 0.03,
                      kind: DetectorKind = "iforest", **params) -> RegisteredModel:
    """Fit a detector on synthetic sessions, log and register it as a new version of
    `settings.model_name`, and (unless `promote` is False) alias it `champion`.

    Args:
        settings: the MLflow store and model name.
        seed: seed of the sessions and the forest.
        promote: set the `champion` alias.
        sessions: synthetic sessions it is fitted on.
        n_estimators: trees.
        alert_share: share of its training sessions at or above its threshold.
        kind: the detector family.
        **params: more hyperparameters of the detector.
    """
    records, _ = generate_sessions(sessions, seed=seed, anomaly_rate=0.0)
    X = feature_matrix(records).to_numpy()
    detector = make_detector(kind, n_estimators=n_estimators, max_samples=256,
                             random_state=seed, **params).fit(X)
    threshold = float(np.quantile(detector.score_samples(X), 1 - alert_share))
    model = SessionAnomalyModel(detector, threshold, FEATURE_COLUMNS, FEATURE_VERSION, X,
                                alert_share, f"test-{kind}-{seed}")
    return register_model(settings, model, promote)


def register_model(settings: Settings, model: SessionAnomalyModel,
                   promote: bool = False) -> RegisteredModel:
    """Log `model` and register it as a new version of `settings.model_name`, as training
    does; with `promote`, alias it `champion` (no promotion gate is applied)."""
    client = registry.mlflow_client(settings)
    experiment = client.create_experiment(f"tests-{uuid.uuid4().hex[:8]}",
                                          settings.mlflow_artifact_root.as_uri())
    with mlflow.start_run(experiment_id=experiment):
        logged = mlflow.pyfunc.log_model(name="model", python_model=model,
                                         pip_requirements=["scikit-learn", "numpy", "pandas"])
    version = tracking.register(settings, logged.model_uri, {"purpose": "tests"})
    if promote:
        client.set_registered_model_alias(settings.model_name, registry.CHAMPION, version)
    return RegisteredModel(version, model)
