"""Choosing among evaluated candidates: the documented, deterministic selection rule.

Selection rule (`select_best`):
1. A candidate is eligible only if it passes the evaluation gates: a finite
   threshold, a finite criterion value, and (when probes are given) an alert
   on at least `min_probe_recall` of the *probes*: held-out sessions rewritten
   to physically impossible power (e.g. 60 kWh in 15 min). An Isolation Forest
   saturates beyond the training range and can miss them at a 1% budget
   (docs/models.md), so this is checked, not assumed.
2. With labels (real, or anomalies injected into the held-out split) the
   criterion is **PR-AUC** (average precision): it rewards ranking the labelled
   anomalies first, which is what the alert budget consumes.
   Without labels it is the **mean rank of Excess-Mass (higher) and
   Mass-Volume (lower)** (Goix 2016).
3. Among the eligible candidates within `tolerance` of the best criterion
   value, the cheapest wins: fewest trees, then fewest samples per tree (faster
   scoring and explanations for the same quality). Remaining ties go to the
   better criterion value, then to grid order. All of this is deterministic for
   a fixed seed; timings are reported but never decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from pipelines.models.candidates import CandidateResult, EvalSplit

Criterion = Literal["pr_auc", "em_mv_rank"]


def criterion_for(split: EvalSplit) -> Criterion:
    return "pr_auc" if split.has_labels else "em_mv_rank"


def criterion_values(results: Sequence[CandidateResult], criterion: Criterion,
                     min_probe_recall: float = 0.0) -> np.ndarray:
    """Criterion value per result, higher = better; NaN where a gate fails."""
    if criterion == "pr_auc":
        values = np.array([r.metrics.get("pr_auc", math.nan) for r in results], float)
    else:
        em = np.array([r.metrics.get("em", math.nan) for r in results], float)
        mv = np.array([r.metrics.get("mv", math.nan) for r in results], float)
        ok = np.isfinite(em) & np.isfinite(mv)
        values = np.full(len(results), math.nan)
        if ok.any():
            em_rank = (-em[ok]).argsort().argsort()
            mv_rank = mv[ok].argsort().argsort()
            values[ok] = -(em_rank + mv_rank) / 2.0
    thresholds = np.array([r.threshold for r in results], float)
    values[~np.isfinite(thresholds)] = math.nan
    probes = np.array([r.metrics.get("probe_recall", 1.0) for r in results], float)
    values[~(probes >= min_probe_recall)] = math.nan
    return values


class NoEligibleCandidate(ValueError):
    """Every candidate failed an evaluation gate."""


def select_best(results: Sequence[CandidateResult], criterion: Criterion,
                tolerance: float, min_probe_recall: float = 0.0) -> int:
    """Index of the chosen candidate by the module's documented rule.

    Raises:
        NoEligibleCandidate: no candidate passes the evaluation gates.
    """
    values = criterion_values(results, criterion, min_probe_recall)
    eligible = [i for i in range(len(results)) if math.isfinite(values[i])]
    if not eligible:
        probes = [round(r.metrics.get("probe_recall", math.nan), 3) for r in results]
        raise NoEligibleCandidate(
            "no candidate passed the evaluation gates (finite threshold and criterion, "
            f"probe recall >= {min_probe_recall}); probe recalls: {probes}. Widen the grid "
            "(more max_samples, EIF extension levels) or check the data")
    best = max(values[i] for i in eligible)
    band = tolerance if criterion == "pr_auc" else 0.0
    close = [i for i in eligible if values[i] >= best - band]
    return min(close, key=lambda i: (results[i].candidate.cost(), -values[i], i))
