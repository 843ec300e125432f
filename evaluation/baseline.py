"""The seed's approach, re-created as the baseline every evaluation runs side by side.

The project's seed fitted scikit-learn's `IsolationForest` on three features
(kWhDelivered, kWhRequested and the charging hours) and tuned it with
`GridSearchCV`, scoring each grid point by the mean of `score_samples` on the
validation folds. That criterion has no labels and rewards whatever makes the
average session look normal, so it does not measure detection; it is kept
here exactly for that comparison. The three columns come from
`pipelines.data.features` (same parsing and imputation as evguard), and the alert
threshold is calibrated to the same alert budget, so that only the model and
its tuning differ.

`benchmarks/tuning_vs_seed.py` (the model benchmark) may keep its own copy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.model_selection import GridSearchCV, KFold

from pipelines.data.features import feature_matrix
from pipelines.models.detection_metrics import calibrate_threshold

SEED_FEATURES: tuple[str, ...] = ("kwh_delivered", "kwh_requested", "charging_hours")
SEED_GRID: Mapping[str, Sequence[Any]] = {
    "n_estimators": (50, 100, 200),
    "max_samples": ("auto", 512, 1.0),
    "max_features": (1.0, 0.67),
}


@dataclass
class BaselineResult:
    """Scores of the scored sessions (higher = more anomalous) and how the baseline was chosen."""

    scores: np.ndarray = field(repr=False)
    threshold: float
    best_params: dict[str, Any]
    cv_mean_score: float
    fit_seconds: float
    train_rows: int
    features: tuple[str, ...] = SEED_FEATURES


def seed_baseline(train_records: Sequence[dict], scored_records: Sequence[dict],
                  alert_budget: float, seed: int, grid: Mapping[str, Sequence[Any]] = SEED_GRID,
                  n_jobs: int = 2) -> BaselineResult:
    """Tune and fit the seed's Isolation Forest on `train_records`, then score `scored_records`.

    Args:
        train_records: ACN sessions it learns from.
        scored_records: ACN sessions to score.
        alert_budget: share of training sessions allowed to alert; sets the threshold.
        seed: `random_state` of the forests and of the folds' shuffling.
        grid: `GridSearchCV` parameter grid.
        n_jobs: parallel fits.

    Returns:
        Scores of `scored_records`, the threshold, and the chosen grid point.
    """
    columns = list(SEED_FEATURES)
    X_train = feature_matrix(train_records)[columns].to_numpy(dtype=np.float64)
    X_scored = feature_matrix(scored_records)[columns].to_numpy(dtype=np.float64)

    def mean_score(estimator, X, _y=None) -> float:
        return float(np.mean(estimator.score_samples(X)))

    started = time.perf_counter()
    search = GridSearchCV(IsolationForest(random_state=seed), {k: list(v) for k, v in grid.items()},
                          scoring=mean_score, cv=KFold(3, shuffle=True, random_state=seed),
                          n_jobs=n_jobs, refit=True)
    search.fit(X_train)
    fit_seconds = time.perf_counter() - started
    model = search.best_estimator_
    threshold = calibrate_threshold(-model.score_samples(X_train), alert_budget)
    return BaselineResult(scores=-model.score_samples(X_scored), threshold=threshold,
                          best_params=dict(search.best_params_),
                          cv_mean_score=float(search.best_score_), fit_seconds=fit_seconds,
                          train_rows=len(X_train))
