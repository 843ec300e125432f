"""Evaluation on a sample: the stated error holds against the full computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pipelines.models.candidates import EvalSplit
from pipelines.models.detection_metrics import label_metrics
from pipelines.models.sampling import (
    EVERY_ROW,
    SamplePlan,
    average_precision,
    sample_split,
    stratified_rows,
    uniform_subset,
)
from pipelines.models.tuning import evaluate_scores

TYPES = ("meter_fault", "over_delivery", "stuck_session", "zero_energy")


def _held_out(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and types of a held-out set: 3 % anomalies of four types, each type
    separated from the normal rows by a different margin (some overlap, some not)."""
    rng = np.random.default_rng(seed)
    types = np.full(n, "", dtype=object)
    anomalous = rng.random(n) < 0.03
    types[anomalous] = rng.choice(TYPES, anomalous.sum())
    shift = {"": 0.0, "meter_fault": 0.4, "over_delivery": 1.0, "stuck_session": 2.0,
             "zero_energy": 3.0}
    scores = rng.normal(size=n) + np.array([shift[t] for t in types])
    return np.round(scores, 3), types  # rounded: tied scores, as forests produce


def test_average_precision_matches_scikit_learn_with_ties_and_weights():
    scores, types = _held_out(5000, seed=1)
    labels = types != ""
    weights = np.random.default_rng(2).uniform(0.5, 3.0, len(scores))
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels, weights) == pytest.approx(
        average_precision_score(labels, scores, sample_weight=weights), abs=1e-12)
    assert math.isnan(average_precision(scores, np.zeros(len(scores), bool)))


@pytest.mark.parametrize(("rows_total", "seed"),
                         [(200_000, 3), (200_000, 4), (200_000, 5), (60_000, 6), (60_000, 7)])
def test_sampled_pr_auc_is_within_the_stated_error_of_the_full_one(rows_total, seed):
    """20,000 of the held-out rows scored: |sampled - full| <= 3 standard errors. With
    200,000 rows every stratum is sampled; with 60,000 the anomaly types are kept whole."""
    scores, types = _held_out(rows_total, seed)
    labels = types != ""
    full = label_metrics(scores, labels, threshold=2.0, alert_budget=0.01)
    rows, weights = stratified_rows(types, len(scores), 20_000, 0.25,
                                    np.random.default_rng(seed))
    assert len(rows) == 20_000 and weights is not None
    split = EvalSplit(np.zeros((1, 1)), np.zeros((len(rows), 1)), types[rows],
                      eval_weights=weights)
    sampled = evaluate_scores(scores[rows], split, threshold=2.0, alert_budget=0.01,
                              bootstrap=50, seed=seed)
    se = sampled["pr_auc_se"]
    assert 0 < se < 0.02
    assert abs(sampled["pr_auc"] - full["pr_auc"]) <= 3 * se
    # the other weighted metrics estimate the full ones too
    assert sampled["recall_at_budget"] == pytest.approx(full["recall_at_budget"], abs=0.02)
    assert sampled["alert_rate"] == pytest.approx(full["alert_rate"], abs=0.005)
    assert sampled["roc_auc"] == pytest.approx(full["roc_auc"], abs=0.01)


def test_stratified_sample_keeps_every_type_and_weights_sum_to_the_rows():
    _, types = _held_out(100_000, seed=6)
    rows, weights = stratified_rows(types, len(types), 10_000, 0.25,
                                    np.random.default_rng(0))
    assert len(rows) == 10_000 and np.all(np.diff(rows) > 0)
    for kind in ("", *TYPES):
        in_type = types[rows] == kind
        assert in_type.any()
        assert weights[in_type].sum() == pytest.approx((types == kind).sum())
    # the uniform part: every held-out row equally likely, so anomalies at their real share
    uniform = uniform_subset(weights, seed=0)
    assert (types[rows][uniform] != "").mean() == pytest.approx((types != "").mean(), abs=0.01)


def test_small_split_is_not_sampled_and_large_one_is():
    rng = np.random.default_rng(0)
    types = np.where(rng.random(3000) < 0.05, "meter_fault", "").astype(object)
    small = EvalSplit(rng.normal(size=(7000, 3)), rng.normal(size=(3000, 3)), types)
    assert sample_split(small, SamplePlan(), seed=1) is small
    assert sample_split(small, EVERY_ROW, seed=1) is small
    cut = sample_split(small, SamplePlan(fit_rows=1000, eval_rows=1000), seed=1)
    assert cut.X_train.shape == (1000, 3) and cut.X_eval.shape == (1000, 3)
    assert cut.train_rows_total == 7000 and cut.eval_rows_total == 3000 and cut.sampled
    assert cut.eval_weights.sum() == pytest.approx(3000)
    again = sample_split(small, SamplePlan(fit_rows=1000, eval_rows=1000), seed=1)
    np.testing.assert_array_equal(cut.X_eval, again.X_eval)  # seeded
    with pytest.raises(ValueError):
        SamplePlan(fit_rows=10)
