"""Hyperparameter search for the detectors, on an honest criterion.

Every candidate is fitted on the training split and evaluated on the held-out
split; candidates run in parallel worker processes (joblib/loky). With
`TuningConfig.trim > 0` each fit is a trimmed refit (`estimators.fit_trimmed`)
and the threshold is set on the rows it kept: the training history holds faults
that pass validation, and a forest fitted on them, with a threshold set on them,
masks their kind (docs/models.md, "Training on a contaminated history").

The selection rule is in `pipelines.models.selection` (documented there and in
docs/models.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.models.candidates import Candidate, CandidateResult, EvalSplit, SearchSpace
from pipelines.models.detection_metrics import (
    calibrate_threshold,
    excess_mass,
    label_metrics,
    mass_volume,
    recall_by_type,
    uniform_box_sample,
)
from pipelines.models.estimators import fit_trimmed
from pipelines.models.sampling import pr_auc_standard_error, uniform_rows, uniform_subset
from pipelines.models.selection import Criterion, criterion_for, select_best


@dataclass(frozen=True)
class TuningConfig:
    """How candidates are evaluated and chosen.

    Args:
        alert_budget: share of sessions allowed to alert; sets the threshold.
        seed: seed of every detector and of the Monte Carlo volume estimates.
        n_jobs: parallel worker processes.
        tolerance: criterion values this close to the best count as equal (PR-AUC units).
        em_features: feature subsample size for EM/MV (Goix's high-dimension protocol).
        em_draws: feature subsamples averaged (0 disables EM/MV).
        em_uniform: uniform Monte Carlo points per draw.
        em_rows: held-out rows EM/MV are estimated on (a uniform sample; 0 = all). The
            Monte Carlo volume with `em_uniform` points is the coarser estimate, so more
            held-out rows than that only cost scoring time.
        min_probe_recall: share of impossible-power probes a candidate must flag.
        trim: share of the top-scored training rows each candidate is refitted without
            (`pipelines.models.estimators.fit_trimmed`; 0 = one plain fit).
        bootstrap: resamples for `pr_auc_se` on a sampled split (`pipelines.models.sampling`).
    """

    alert_budget: float = 0.01
    seed: int = 42
    n_jobs: int = 2
    tolerance: float = 0.005
    em_features: int = 5
    em_draws: int = 5
    em_uniform: int = 10_000
    em_rows: int = 5_000
    min_probe_recall: float = 0.9
    trim: float = 0.0
    bootstrap: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.alert_budget < 1:
            raise ValueError(f"alert_budget must be in (0, 1), got {self.alert_budget}")
        if self.n_jobs < 1 or self.em_features < 1 or self.em_draws < 0:
            raise ValueError("n_jobs and em_features must be >= 1, em_draws >= 0")
        if self.em_rows < 0 or self.bootstrap < 0:
            raise ValueError("em_rows and bootstrap must be >= 0")
        if not 0 <= self.min_probe_recall <= 1:
            raise ValueError(f"min_probe_recall must be in [0, 1], got {self.min_probe_recall}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")


def evaluate_scores(scores: np.ndarray, split: EvalSplit, threshold: float,
                    alert_budget: float, bootstrap: int = 50, seed: int = 0) -> dict[str, float]:
    """Label metrics and per-type recall of held-out `scores` (empty dict without labels).

    On a sampled split the metrics are weighted and `pr_auc_se` is the standard error
    of the sampled PR-AUC (0 when every held-out row is scored).
    """
    if not split.has_labels:
        return {}
    metrics: dict[str, float] = dict(label_metrics(scores, split.eval_labels, threshold,
                                                   alert_budget, split.eval_weights))
    metrics.update(recall_by_type(scores, split.eval_types, threshold))
    if split.eval_weights is None:
        metrics["pr_auc_se"] = 0.0
    else:
        metrics["pr_auc_se"] = pr_auc_standard_error(scores, split.eval_types,
                                                     split.eval_weights, bootstrap, seed)
    return metrics


def em_mv_scores(candidate: Candidate, split: EvalSplit, config: TuningConfig,
                 kept: np.ndarray | None = None) -> dict[str, float]:
    """Goix's EM and MV, averaged over random feature subsets with the candidate refitted.

    Volumes are shares of the held-out data's bounding box. Every candidate
    sees the same subsets and uniform points (same seed). The refits learn from the
    training rows `kept` (a mask; None = all), the rows the candidate's own fit kept.
    On a stratified sample of held-out rows they are judged on its uniform part.
    """
    n_features = split.X_train.shape[1]
    if config.em_draws == 0:
        return {}
    X_train = split.X_train if kept is None else split.X_train[kept]
    X_eval = em_rows(split, config.em_rows, config.seed)
    rng = np.random.default_rng(config.seed)
    k = min(config.em_features, n_features)
    ems, mvs = [], []
    for _ in range(config.em_draws if k < n_features else 1):
        cols = np.sort(rng.choice(n_features, size=k, replace=False))
        detector = candidate.build(config.seed, n_features=k).fit(X_train[:, cols])
        uniform, _volume = uniform_box_sample(X_eval[:, cols], config.em_uniform, rng)
        held_out = detector.score_samples(X_eval[:, cols])
        on_uniform = detector.score_samples(uniform)
        ems.append(excess_mass(held_out, on_uniform, 1.0))
        mvs.append(mass_volume(held_out, on_uniform, 1.0))
    return {"em": float(np.mean(ems)), "mv": float(np.mean(mvs))}


def em_rows(split: EvalSplit, limit: int, seed: int) -> np.ndarray:
    """Held-out rows for EM/MV: a uniform sample of at most `limit` (0 = no limit).

    On a stratified sample its uniform part (`sampling.uniform_subset`) is drawn from.
    Every candidate gets the same rows (same seed).
    """
    rows = uniform_subset(split.eval_weights, seed)
    X_eval = split.X_eval if rows is None else split.X_eval[rows]
    return X_eval[uniform_rows(len(X_eval), limit, np.random.default_rng([seed, 17]))]


def evaluate_candidate(candidate: Candidate, split: EvalSplit,
                       config: TuningConfig) -> CandidateResult:
    """Fit `candidate` on the training rows and compute every metric on the held-out rows.

    The threshold lets a share `alert_budget` of the kept training rows alert: the budget
    is one of ordinary sessions, and the trimmed rows, scored by a forest that no longer
    learns them, would otherwise fill it.
    """
    detector = candidate.build(config.seed, n_features=split.X_train.shape[1])
    started = time.perf_counter()
    kept = fit_trimmed(detector, split.X_train, config.trim)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    eval_scores = detector.score_samples(split.X_eval)
    score_seconds = max(time.perf_counter() - started, 1e-9)
    threshold = calibrate_threshold(detector.score_samples(split.X_train[kept]),
                                    config.alert_budget)
    metrics: dict[str, float] = {"fit_seconds": fit_seconds,
                                 "score_rows_per_s": len(split.X_eval) / score_seconds,
                                 "trimmed_rows": float((~kept).sum())}
    metrics.update(evaluate_scores(eval_scores, split, threshold, config.alert_budget,
                                   config.bootstrap, config.seed))
    if split.X_probe is not None and len(split.X_probe):
        metrics["probe_recall"] = probe_recall(detector, split.X_probe, threshold)
    metrics.update(em_mv_scores(candidate, split, config, kept))
    return CandidateResult(candidate, metrics, threshold, eval_scores.astype(np.float64))


def probe_recall(detector, X_probe: np.ndarray, threshold: float) -> float:
    """Share of probe rows that alert (`score >= threshold`)."""
    return float((detector.score_samples(X_probe) >= threshold).mean())


@dataclass
class TuningResult:
    results: list[CandidateResult]
    best_index: int
    criterion: Criterion
    seconds: float

    @property
    def best(self) -> CandidateResult:
        return self.results[self.best_index]


def tune(split: EvalSplit, space: SearchSpace, config: TuningConfig,
         progress: Callable[[int, int, CandidateResult], None] | None = None) -> TuningResult:
    """Evaluate every candidate of `space` in parallel and select the best.

    Args:
        split: training and held-out rows (and held-out labels, if any).
        space: the search grid.
        config: evaluation settings.
        progress: called as `progress(done, total, result)` after each candidate.

    Returns:
        All results in grid order, the chosen index and the criterion used.
    """
    from joblib import Parallel, delayed

    candidates = space.candidates(split.X_train.shape[1])
    started = time.perf_counter()
    jobs = (delayed(evaluate_candidate)(c, split, config) for c in candidates)
    results: list[CandidateResult] = []
    runner = Parallel(n_jobs=min(config.n_jobs, len(candidates)), backend="loky",
                      return_as="generator")
    for result in runner(jobs):
        results.append(result)
        if progress is not None:
            progress(len(results), len(candidates), result)
    criterion = criterion_for(split)
    best = select_best(results, criterion, config.tolerance, config.min_probe_recall)
    return TuningResult(results, best, criterion, time.perf_counter() - started)

