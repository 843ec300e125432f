"""The logged model: detector, threshold, feature contract, explainer and drift reference.

`SessionAnomalyModel` is an `mlflow.pyfunc.PythonModel`, pickled by MLflow with
cloudpickle. Its classes are imported from the installed `evguard` package when
loaded, so loading needs the project installed (as the worker and flows are).
The EIF detector inside re-fits deterministically on unpickling (see
`pipelines.estimators`), so every load scores identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipelines.estimators import Detector
from pipelines.explain import Explainer, explain

REFERENCE_ROWS = 2000
SCORE_REFERENCE = "score"


class SessionAnomalyModel(mlflow.pyfunc.PythonModel):
    """A fitted detector with everything serving needs.

    Args:
        detector: fitted detector (higher score = more anomalous).
        threshold: alert when `score >= threshold` (calibrated to `alert_budget`).
        feature_columns: the model's input columns, in order.
        feature_version: `pipelines.features.FEATURE_VERSION` at training time.
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
        """Top contributing features per row (see `pipelines.explain.explain`)."""
        return explain(self.explainer, self.matrix(features), top_k=top_k)

    # a DataFrame hint is one MLflow infers no schema from, so it validates nothing
    def predict(self, context, model_input: pd.DataFrame, params=None):
        """pyfunc entry point: a frame with `score` and `is_anomaly` per input row."""
        scores = self.score(pd.DataFrame(model_input))
        return pd.DataFrame({"score": scores, "is_anomaly": scores >= self.threshold})
