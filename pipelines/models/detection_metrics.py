"""Evaluation metrics of anomaly scores: label-free (Goix 2016) and label-based.

All functions take anomaly scores oriented like `pipelines.models.estimators`
(higher = more anomalous) and are pure: no I/O, randomness only through an
explicit `numpy.random.Generator`.

Label-free criteria (N. Goix, "How to Evaluate the Quality of Unsupervised
Anomaly Detection Algorithms?", ICML AD workshop 2016). With `s` the normality
score (here the negated anomaly score), `P_n` the empirical distribution of
held-out data and `Leb` the Lebesgue measure, estimated by Monte Carlo on the
bounding box of the held-out data:

- Excess-Mass curve `EM(t) = max_u P_n(s >= u) - t * Leb(s >= u)`; the EM score
  is its area over `t in [0, t_max]`, where `EM(t_max) = em_mass` (0.9):
  **higher is better**.
- Mass-Volume curve `MV(a) = Leb({s >= u_a})` with `P_n(s >= u_a) = a`; the
  MV score is its area over `a in [0.9, 0.999]`: **lower is better**.

Both are in units of the feature space's volume, so they compare models on the
same data only. Label metrics use the `threshold` calibrated to the alert budget
(`calibrate_threshold`), the same rule serving applies: alert when
`score >= threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

MetricName = Literal[
    "em",                # Excess-Mass area, label-free, higher is better
    "mv",                # Mass-Volume area, label-free, lower is better
    "pr_auc",            # average precision of the scores against labels
    "pr_auc_se",         # standard error of a sampled pr_auc (0 = every held-out row)
    "roc_auc",
    "precision_at_k",    # precision among the k highest scores, k = budget * rows
    "recall_at_budget",  # share of labelled anomalies with score >= threshold
    "alert_rate",        # share of evaluation rows with score >= threshold
    "probe_recall",      # share of impossible-power probes with score >= threshold (gate)
    "fit_seconds",
    "score_rows_per_s",  # scoring throughput
]
METRIC_NAMES: tuple[MetricName, ...] = get_args(MetricName)
HIGHER_IS_BETTER: dict[MetricName, bool] = {
    "em": True, "mv": False, "pr_auc": True, "pr_auc_se": False, "roc_auc": True,
    "precision_at_k": True, "recall_at_budget": True, "alert_rate": False, "probe_recall": True, "fit_seconds": False,
    "score_rows_per_s": True,
}
TYPE_RECALL_PREFIX = "recall_type_"


def type_recall_name(anomaly_type: str) -> str:
    """Metric name of the recall for one anomaly type, e.g. `recall_type_zero_energy`."""
    return f"{TYPE_RECALL_PREFIX}{anomaly_type}"


def calibrate_threshold(scores: np.ndarray, alert_budget: float) -> float:
    """The score at which a share `alert_budget` of `scores` would alert.

    Args:
        scores: anomaly scores of the training rows.
        alert_budget: share of sessions that may alert, in (0, 1), e.g. 0.01.

    Returns:
        The threshold; rows with `score >= threshold` alert. NaN if `scores` is empty.
    """
    if not 0 < alert_budget < 1:
        raise ValueError(f"alert_budget must be in (0, 1), got {alert_budget}")
    scores = np.asarray(scores, dtype=float)
    if scores.size == 0:
        return math.nan
    return float(np.quantile(scores, 1 - alert_budget, method="higher"))


def uniform_box_sample(X: np.ndarray, n_samples: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Uniform points on the bounding box of `X`, and the box's volume.

    Degenerate axes (constant columns) get unit width so the volume stays finite.
    """
    low, high = X.min(axis=0), X.max(axis=0)
    width = np.where(high > low, high - low, 1.0)
    points = low + rng.random((n_samples, X.shape[1])) * width
    return points, float(np.prod(width))


def excess_mass(scores: np.ndarray, uniform_scores: np.ndarray, volume: float,
                em_mass: float = 0.9, n_levels: int = 512, n_t: int = 1000) -> float:
    """Area under the Excess-Mass curve up to the level where it falls to `em_mass`.

    Args:
        scores: anomaly scores of held-out rows.
        uniform_scores: anomaly scores of uniform points on their bounding box.
        volume: volume of that box.
        em_mass: the EM value that ends the integration range (Goix: 0.9).
        n_levels: score levels `u` tried (quantiles of `scores`).
        n_t: points of the `t` grid.

    Returns:
        The EM score (higher is better); NaN when inputs are empty.
    """
    normal, uniform = -np.asarray(scores, float), -np.asarray(uniform_scores, float)
    if normal.size == 0 or uniform.size == 0:
        return math.nan
    levels = np.unique(np.quantile(normal, np.linspace(0, 1, n_levels)))
    mass = (normal[None, :] >= levels[:, None]).mean(axis=1)
    leb = np.searchsorted(np.sort(uniform), levels, side="left")
    leb = (uniform.size - leb) / uniform.size * volume
    # EM(t) is the upper envelope of the lines mass - t * leb; it reaches em_mass
    # at t = max over levels with mass > em_mass of (mass - em_mass) / leb
    useful = mass > em_mass
    if not useful.any():
        return math.nan
    with np.errstate(divide="ignore"):
        t_end = np.max(np.where(leb[useful] > 0, (mass[useful] - em_mass) / leb[useful], np.inf))
    if not np.isfinite(t_end):  # the whole mass fits in zero estimated volume
        t_end = 100.0 / volume
    t = np.linspace(0.0, t_end, n_t)
    curve = np.max(mass[None, :] - t[:, None] * leb[None, :], axis=1)
    return float(np.trapezoid(curve, t))


def mass_volume(scores: np.ndarray, uniform_scores: np.ndarray, volume: float,
                alpha_min: float = 0.9, alpha_max: float = 0.999, n_alpha: int = 1000) -> float:
    """Area under the Mass-Volume curve over masses `[alpha_min, alpha_max]`.

    Returns:
        The MV score (lower is better); NaN when inputs are empty.
    """
    normal, uniform = -np.asarray(scores, float), -np.asarray(uniform_scores, float)
    if normal.size == 0 or uniform.size == 0:
        return math.nan
    alphas = np.linspace(alpha_min, alpha_max, n_alpha)
    descending = np.sort(normal)[::-1]
    # smallest level set (highest u) holding at least a share alpha of the rows
    index = np.minimum(np.ceil(alphas * normal.size).astype(int) - 1, normal.size - 1)
    levels = descending[index]
    sorted_uniform = np.sort(uniform)
    inside = uniform.size - np.searchsorted(sorted_uniform, levels, side="left")
    return float(np.trapezoid(inside / uniform.size * volume, alphas))


def label_metrics(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float,
                  alert_budget: float,
                  weights: np.ndarray | None = None) -> dict[MetricName, float]:
    """PR-AUC, ROC-AUC, precision@k, recall at the alert budget and alert rate.

    Args:
        scores: anomaly scores of the evaluation rows.
        is_anomaly: boolean labels of those rows.
        threshold: the calibrated threshold (alert when `score >= threshold`).
        alert_budget: share of rows that may alert; sets `k = ceil(budget * rows)`.
        weights: rows each evaluation row stands for (a stratified sample,
            `pipelines.models.sampling`); None = 1 each. Weighted, every metric
            estimates its value on the rows the sample was drawn from.

    Returns:
        Metric name -> value; AUCs are NaN when only one class is present.
    """
    scores = np.asarray(scores, float)
    labels = np.asarray(is_anomaly, bool)
    if weights is None:
        weights = np.ones(scores.size)
    weights = np.asarray(weights, float)
    sample_weight = None if np.all(weights == 1) else weights
    alerts = scores >= threshold
    out: dict[MetricName, float] = {
        "alert_rate": float(np.average(alerts, weights=weights)) if scores.size else math.nan}
    both = labels.any() and not labels.all()
    out["pr_auc"] = float(average_precision_score(labels, scores, sample_weight=sample_weight)) \
        if both else math.nan
    out["roc_auc"] = float(roc_auc_score(labels, scores, sample_weight=sample_weight)) \
        if both else math.nan
    # the k highest scores of the rows sampled from: the top rows until their weight reaches k
    k = max(1, math.ceil(alert_budget * weights.sum()))
    top = np.argsort(-scores, kind="stable")
    within = top[np.cumsum(weights[top]) - weights[top] < k]
    out["precision_at_k"] = float(np.average(labels[within], weights=weights[within])) \
        if scores.size else math.nan
    out["recall_at_budget"] = float(np.average(alerts[labels], weights=weights[labels])) \
        if labels.any() else math.nan
    return out


def recall_by_type(scores: np.ndarray, anomaly_types: Sequence[str | None],
                   threshold: float) -> dict[str, float]:
    """Share of each anomaly type's rows that alert (`score >= threshold`).

    Args:
        scores: anomaly scores of the evaluation rows.
        anomaly_types: the type of each row, None (or "") for normal rows.
        threshold: the calibrated threshold.

    Returns:
        `type_recall_name(type)` -> recall, one entry per type present.
    """
    scores = np.asarray(scores, float)
    types = np.asarray([t or "" for t in anomaly_types], dtype=object)
    return {type_recall_name(str(kind)): float((scores[types == kind] >= threshold).mean())
            for kind in sorted(set(types) - {""})}


def has_nan(metrics: Mapping[str, float], names: Sequence[str]) -> list[str]:
    """The names among `names` whose value is missing or not finite."""
    return [n for n in names if not math.isfinite(float(metrics.get(n, math.nan)))]
