"""The logged model: detector, threshold, feature contract, explainer and drift reference.

`SessionAnomalyModel` is an `mlflow.pyfunc.PythonModel`, which MLflow pickles
with cloudpickle. What it pickles is plain state (`state()`: the libraries' own
estimators, numpy arrays, numbers and names) plus one function of this module,
`restore_model`, which rebuilds the model from it. No class of the project is in
the pickle, so a registered version keeps loading when the code is reorganised;
only `restore_model` must stay importable where it is (or be listed in
`pipelines.models.registry.LEGACY_MODULES`). The EIF forest is refitted
deterministically on restore (see `pipelines.models.estimators`), so every load
scores identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipelines.models.estimators import Detector, detector_state, restore_detector
from pipelines.models.explain import Explainer, explain

REFERENCE_ROWS = 2000
SCORE_REFERENCE = "score"
STATE_FORMAT = 1


class SessionAnomalyModel(mlflow.pyfunc.PythonModel):
    """A fitted detector with everything serving needs.

    Args:
        detector: fitted detector (higher score = more anomalous).
        threshold: alert when `score >= threshold` (calibrated to `alert_budget`).
        feature_columns: the model's input columns, in order.
        feature_version: `pipelines.data.features.FEATURE_VERSION` at training time.
        training_rows: training matrix; gives explainer medians and the drift reference.
        alert_budget: share of sessions the threshold lets alert.
        candidate: name of the tuning candidate.
        seed: seed of the reference subsample.
    """

    def __init__(self, detector: Detector, threshold: float, feature_columns: Sequence[str],
                 feature_version: str, training_rows: np.ndarray, alert_budget: float,
                 candidate: str, seed: int = 0):
        self.detector = detector
        self.threshold = float(threshold)
        self.feature_columns = list(feature_columns)
        self.feature_version = feature_version
        self.alert_budget = float(alert_budget)
        self.candidate = candidate
        self.explainer = Explainer(detector, training_rows, self.feature_columns)
        rng = np.random.default_rng(seed)
        take = rng.choice(len(training_rows), size=min(REFERENCE_ROWS, len(training_rows)),
                          replace=False)
        sample = training_rows[np.sort(take)]
        self.reference: dict[str, list[float]] = {
            name: sample[:, j].astype(float).tolist() for j, name in enumerate(self.feature_columns)
        }
        self.reference[SCORE_REFERENCE] = detector.score_samples(sample).astype(float).tolist()

    def matrix(self, features: Any) -> np.ndarray:
        """The model's input matrix from a frame holding (at least) `feature_columns`."""
        if isinstance(features, pd.DataFrame):
            missing = [c for c in self.feature_columns if c not in features.columns]
            if missing:
                raise ValueError(f"missing feature columns {missing} "
                                 f"(model feature version {self.feature_version})")
            return features[self.feature_columns].to_numpy(dtype=np.float64)
        return np.asarray(features, dtype=np.float64)

    def score(self, features: Any) -> np.ndarray:
        """Anomaly score per row, higher = more anomalous."""
        return self.detector.score_samples(self.matrix(features))

    def explain(self, features: Any, top_k: int = 3) -> list[list[dict]]:
        """Top contributing features per row (see `pipelines.models.explain.explain`)."""
        return explain(self.explainer, self.matrix(features), top_k=top_k)

    # a DataFrame hint is one MLflow infers no schema from, so it validates nothing
    def predict(self, context, model_input: pd.DataFrame, params=None):
        """pyfunc entry point: a frame with `score` and `is_anomaly` per input row."""
        scores = self.score(pd.DataFrame(model_input))
        return pd.DataFrame({"score": scores, "is_anomaly": scores >= self.threshold})

    def state(self) -> dict[str, Any]:
        """Everything the model holds, as plain data (see the module docstring)."""
        return {"format": STATE_FORMAT, "detector": detector_state(self.detector),
                "threshold": self.threshold, "feature_columns": list(self.feature_columns),
                "feature_version": self.feature_version, "alert_budget": self.alert_budget,
                "candidate": self.candidate, "explainer": self.explainer.state(),
                "reference": self.reference}

    def __reduce__(self):
        # what MLflow's pickle holds: plain state and `restore_model`, never this class
        return restore_model, (self.state(),)


def restore_model(state: dict[str, Any]) -> SessionAnomalyModel:
    """The model of `SessionAnomalyModel.state()`; what unpickling a logged model calls.

    Raises:
        ValueError: the state was written in a format this code does not know.
    """
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown model state format {state.get('format')!r}; "
                         f"this code reads format {STATE_FORMAT}")
    model = SessionAnomalyModel.__new__(SessionAnomalyModel)
    detector = restore_detector(state["detector"])
    model.__dict__.update(
        detector=detector, threshold=float(state["threshold"]),
        feature_columns=list(state["feature_columns"]), feature_version=state["feature_version"],
        alert_budget=float(state["alert_budget"]), candidate=state["candidate"],
        explainer=Explainer.restore(detector, state["explainer"]), reference=state["reference"])
    return model
