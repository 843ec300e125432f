"""Evaluation on a sample: what keeps training cost flat as the network grows.

Forests draw only `max_samples` rows per tree, so fitting cost does not grow with the
data; scoring every training row (trim, threshold) and every held-out row (metrics,
EM/MV) for every candidate does. `sample_split` caps both:

- **Training rows**: a uniform sample of `fit_rows` (time order kept). A tree draws
  `max_samples` rows uniformly from the pool, and a uniform sample of a uniform
  sample is uniform, so the forests are drawn from the same distribution; the trim
  share and the alert-budget quantile are estimated on `fit_rows` rows (the 99th
  percentile of 20,000 rows has a standard error of 0.07 % alert rate).
- **Held-out rows**: a stratified sample of `eval_rows`. Each anomaly type is a
  stratum that keeps up to `anomaly_share * eval_rows / n_types` rows (all of them on
  ordinary data sets), the normal rows fill the rest. Every row carries the weight
  `N_h / n_h` of its stratum, and the metrics are weighted, so they estimate the
  metrics of the whole held-out set (Horvitz-Thompson).

**Stated error.** The PR-AUC of the sample comes with `pr_auc_se`, its standard
error from a stratified bootstrap (`bootstrap` resamples within each sampled stratum;
strata kept whole have no sampling error and are not resampled; it ignores the
finite-population correction, so it overstates the error of a stratum mostly kept).
The sampled PR-AUC is within `3 * pr_auc_se` of the PR-AUC of
all held-out rows; `tests/pipelines/models/test_sampling.py` checks this against the
full computation. Every candidate is scored on the same rows, so the difference
between two candidates has a far smaller error than either value. When nothing is
sampled (data below both caps) the split is returned unchanged and the error is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.models.candidates import EvalSplit


@dataclass(frozen=True)
class SamplePlan:
    """How many rows tuning fits on and scores.

    Args:
        fit_rows: training rows kept (uniform sample); 0 keeps all.
        eval_rows: held-out rows kept (stratified by anomaly type); 0 keeps all.
        anomaly_share: share of `eval_rows` the anomaly strata may take together.
        bootstrap: resamples for the standard error of the sampled PR-AUC.
    """

    fit_rows: int = 20_000
    eval_rows: int = 20_000
    anomaly_share: float = 0.25
    bootstrap: int = 50

    def __post_init__(self) -> None:
        if self.fit_rows < 0 or self.eval_rows < 0 or self.bootstrap < 0:
            raise ValueError("fit_rows, eval_rows and bootstrap must be >= 0")
        if 0 < self.fit_rows < 100 or 0 < self.eval_rows < 100:
            raise ValueError("fit_rows and eval_rows must be 0 (all) or at least 100")
        if not 0 < self.anomaly_share < 1:
            raise ValueError(f"anomaly_share must be in (0, 1), got {self.anomaly_share}")


EVERY_ROW = SamplePlan(fit_rows=0, eval_rows=0)


def uniform_rows(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `k` of `n` rows drawn without replacement (all when k is 0 or >= n)."""
    if k == 0 or k >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def stratified_rows(types: np.ndarray | None, n: int, k: int, anomaly_share: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of a stratified sample of `k` of `n` held-out rows, and their weights.

    Args:
        types: anomaly type per row ("" = normal), or None without labels (one stratum).
        n: held-out rows.
        k: rows to keep (0 or >= n keeps all, weights None).
        anomaly_share: share of `k` the anomaly strata may take together.
        rng: the sampling generator.

    Returns:
        Sorted row indices and the weight `N_h / n_h` of each kept row (None when all kept).
    """
    if k == 0 or k >= n:
        return np.arange(n), None
    strata = np.zeros(n, dtype=object) if types is None else np.asarray(types, dtype=object)
    kinds = sorted(set(strata.tolist()) - {"", 0})
    per_type = int(anomaly_share * k) // max(len(kinds), 1)
    chosen, weights = [], []
    taken = 0
    for kind in kinds:
        rows = np.flatnonzero(strata == kind)
        keep = uniform_rows(len(rows), min(per_type, len(rows)), rng)
        chosen.append(rows[keep])
        weights.append(np.full(len(keep), len(rows) / len(keep)))
        taken += len(keep)
    normal = np.flatnonzero((strata == "") | (strata == 0))
    keep = uniform_rows(len(normal), max(min(k - taken, len(normal)), 1), rng)
    chosen.append(normal[keep])
    weights.append(np.full(len(keep), len(normal) / len(keep)))
    index = np.concatenate(chosen)
    order = np.argsort(index, kind="stable")
    return index[order], np.concatenate(weights)[order]


def sample_split(split: EvalSplit, plan: SamplePlan, seed: int) -> EvalSplit:
    """`split` with at most `plan.fit_rows` training and `plan.eval_rows` held-out rows.

    The probes are kept whole. Returns `split` itself when nothing needs sampling.
    """
    rng = np.random.default_rng([seed, 7])
    train = uniform_rows(len(split.X_train), plan.fit_rows, rng)
    held_out, weights = stratified_rows(split.eval_types, len(split.X_eval), plan.eval_rows,
                                        plan.anomaly_share, rng)
    if len(train) == len(split.X_train) and weights is None:
        return split
    return EvalSplit(split.X_train[train], split.X_eval[held_out],
                     None if split.eval_types is None else split.eval_types[held_out],
                     split.X_probe, weights, len(split.X_train), len(split.X_eval))


def average_precision(scores: np.ndarray, labels: np.ndarray,
                      weights: np.ndarray | None = None) -> float:
    """Average precision (scikit-learn's definition, tied scores form one step), weighted.

    `sum_i (R_i - R_{i-1}) P_i` over the distinct score levels, highest first, with
    precision and recall computed from the weighted counts. NaN without both classes.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(-scores, kind="stable")
    ends = _tie_group_ends(scores[order])
    return _sorted_average_precision(labels[order], weights[order], ends)


def _tie_group_ends(descending: np.ndarray) -> np.ndarray:
    return np.r_[np.flatnonzero(np.diff(descending) != 0), len(descending) - 1]


def _sorted_average_precision(labels: np.ndarray, weights: np.ndarray,
                              ends: np.ndarray) -> float:
    """Average precision of rows sorted by descending score; `ends` closes each tie group."""
    if len(labels) == 0:
        return math.nan
    tp = np.cumsum(weights * labels)[ends]
    fp = np.cumsum(weights * ~labels)[ends]
    if tp[-1] <= 0 or fp[-1] <= 0:
        return math.nan
    total = tp + fp  # 0 where a bootstrap resample left out every row so far
    precision = np.divide(tp, total, out=np.zeros_like(tp), where=total > 0)
    recall_step = np.diff(np.r_[0.0, tp]) / tp[-1]
    return float(np.sum(recall_step * precision))


def pr_auc_standard_error(scores: np.ndarray, types: np.ndarray, weights: np.ndarray,
                          reps: int, seed: int) -> float:
    """Standard error of the weighted PR-AUC of a stratified sample (stratified bootstrap).

    Args:
        scores: anomaly scores of the sampled held-out rows.
        types: their anomaly types ("" = normal); the strata.
        weights: their sampling weights.
        reps: bootstrap resamples (fewer than 2 give NaN).
        seed: seed of the resampling.

    Returns:
        The bootstrap standard deviation of the weighted PR-AUC.
    """
    if reps < 2 or len(scores) == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ends = _tie_group_ends(np.asarray(scores, dtype=float)[order])
    types = np.asarray(types, dtype=object)[order]
    labels = types != ""
    weights = np.asarray(weights, dtype=float)[order]
    rng = np.random.default_rng([seed, 11])
    groups = [np.flatnonzero(types == kind) for kind in sorted(set(types.tolist()))]
    # a stratum kept whole (weight 1) has no sampling error: it is not resampled
    groups = [rows for rows in groups if weights[rows].max() > 1]
    values = np.empty(reps)
    counts = np.ones(len(types))
    for rep in range(reps):
        for rows in groups:  # resample each sampled stratum to its own size
            counts[rows] = np.bincount(rng.integers(0, len(rows), len(rows)),
                                       minlength=len(rows))
        values[rep] = _sorted_average_precision(labels, weights * counts, ends)
    finite = values[np.isfinite(values)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def uniform_subset(weights: np.ndarray | None, seed: int) -> np.ndarray | None:
    """Mask of sampled held-out rows forming a uniform sample (None: the rows already are).

    A stratified sample over-represents anomaly strata (smaller weights); keeping a
    row with probability `weight / max(weight)` leaves every held-out row with the same
    inclusion probability, which unweighted criteria (EM/MV) need.
    """
    if weights is None:
        return None
    rng = np.random.default_rng([seed, 13])
    return rng.random(len(weights)) < weights / weights.max()
