"""Tuning: deterministic choice for a fixed seed, and the documented selection rule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pipelines.data.features import feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.models.candidates import Candidate, CandidateResult, EvalSplit, SearchSpace
from pipelines.models.selection import NoEligibleCandidate, select_best
from pipelines.models.tuning import TuningConfig, tune

TIMINGS = {"fit_seconds", "score_rows_per_s"}


@pytest.fixture(scope="module")
def split() -> EvalSplit:
    records, labels = generate_sessions(2400, seed=3, anomaly_rate=0.04)
    X = feature_matrix(records).to_numpy()
    types = np.array([labels.get(r["sessionID"], "") for r in records], dtype=object)
    order = np.random.default_rng(0).permutation(len(X))
    train, held_out = order[:1400], order[1400:]
    return EvalSplit(X[train], X[held_out], types[held_out])


SPACE = SearchSpace(n_estimators=(20,), max_samples=(64,), max_features=(0.5, 1.0),
                    extension_levels=(0, 2))
CONFIG = TuningConfig(seed=11, em_draws=2, em_uniform=2000, n_jobs=2)


def test_fixed_seed_gives_same_choice_and_metrics(split):
    """Parallel (2 worker processes) and sequential runs agree to the last bit."""
    progress: list[tuple[int, int]] = []
    first = tune(split, SPACE, CONFIG, progress=lambda done, total, _r: progress.append((done, total)))
    second = tune(split, SPACE, replace(CONFIG, n_jobs=1))
    assert len(first.results) == 6 and progress[-1] == (6, 6)  # 2 per detector family
    assert first.criterion == "pr_auc"
    assert first.best.candidate == second.best.candidate
    for a, b in zip(first.results, second.results):
        assert a.candidate == b.candidate and a.threshold == b.threshold
        assert {k: v for k, v in a.metrics.items() if k not in TIMINGS} == \
            {k: v for k, v in b.metrics.items() if k not in TIMINGS}
    best = first.best.metrics
    for name in ("pr_auc", "roc_auc", "precision_at_k", "recall_at_budget", "em", "mv",
                 "recall_type_stuck_session"):
        assert math.isfinite(best[name]), name
    assert best["pr_auc"] > split.eval_labels.mean()  # better than a random ranking
    assert TuningConfig(seed=12) != CONFIG


def test_label_free_split_uses_em_mv_rank(split):
    unlabelled = EvalSplit(split.X_train, split.X_eval, None)
    result = tune(unlabelled, SearchSpace(kinds=("iforest",), n_estimators=(20,),
                                          max_samples=(64,), max_features=(0.5, 1.0)), CONFIG)
    assert result.criterion == "em_mv_rank"
    assert "pr_auc" not in result.best.metrics and math.isfinite(result.best.metrics["em"])


def _result(n_estimators: int, pr_auc: float, threshold: float = 0.6) -> CandidateResult:
    candidate = Candidate("iforest", (("n_estimators", n_estimators), ("max_samples", 256)))
    return CandidateResult(candidate, {"pr_auc": pr_auc}, threshold, np.zeros(1))


def test_selection_prefers_the_cheaper_of_near_equal_candidates():
    results = [_result(200, 0.800), _result(100, 0.797), _result(50, 0.700)]
    assert select_best(results, "pr_auc", tolerance=0.005) == 1
    assert select_best(results, "pr_auc", tolerance=0.0) == 0


def test_selection_gates_out_nan_metric_and_missing_threshold():
    results = [_result(100, math.nan), _result(100, 0.9, threshold=math.nan), _result(100, 0.5)]
    assert select_best(results, "pr_auc", tolerance=0.005) == 2
    with pytest.raises(ValueError, match="no candidate passed"):
        select_best(results[:2], "pr_auc", tolerance=0.005)


def test_probe_gate_excludes_candidates_that_miss_impossible_sessions():
    weak, strong = _result(100, 0.95), _result(200, 0.80)
    weak.metrics["probe_recall"], strong.metrics["probe_recall"] = 0.5, 0.97
    assert select_best([weak, strong], "pr_auc", 0.005, min_probe_recall=0.9) == 1
    with pytest.raises(NoEligibleCandidate, match="probe recall"):
        select_best([weak], "pr_auc", 0.005, min_probe_recall=0.9)


def test_grid_caps_extension_level_and_config_is_validated():
    names = [c.name for c in SearchSpace(kinds=("eif", "isotree", "eif"), n_estimators=(10,),
                                         max_samples=(64,), extension_levels=(0, 5, 9))
             .candidates(n_features=4)]
    assert names == ["eif-n10-s64-ext0", "eif-n10-s64-ext3", "isotree-n10-s64-ext0",
                     "isotree-n10-s64-ext3"]
    with pytest.raises(ValueError):
        TuningConfig(alert_budget=0)
