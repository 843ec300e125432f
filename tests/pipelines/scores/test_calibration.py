"""Threshold re-calibration from recent scores: the rule and its guards (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.scores.calibration import (
    CalibrationPolicy,
    recalibrate,
    reference_bounds,
    version_scores,
)

POLICY = CalibrationPolicy(alert_budget=0.01)


def training_scores(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, float]:
    scores = np.random.default_rng(seed).normal(0.45, 0.05, n)
    return scores, float(np.quantile(scores, 0.99, method="higher"))


def test_a_drifted_window_brings_the_alert_rate_back_to_the_budget():
    reference, threshold = training_scores()
    drifted = np.random.default_rng(1).normal(0.47, 0.05, 5000)  # 2 % alert at `threshold`
    assert np.mean(drifted >= threshold) > 0.02
    calibration = recalibrate(drifted, threshold, POLICY, reference)
    assert calibration.recalibrated and calibration.threshold > threshold
    assert calibration.alert_rate_before == pytest.approx(np.mean(drifted >= threshold))
    assert calibration.alert_rate_after == pytest.approx(0.01, abs=0.001)
    fresh = np.random.default_rng(2).normal(0.47, 0.05, 50_000)  # the same drift, unseen
    assert np.mean(fresh >= calibration.threshold) == pytest.approx(0.01, abs=0.003)
    evidence = calibration.evidence()
    assert evidence["window"] == "5000" and evidence["quantile"] == "0.99"
    assert float(evidence["previous_threshold"]) == pytest.approx(threshold)


def test_a_window_that_looks_more_normal_lowers_the_threshold():
    reference, threshold = training_scores()
    quieter = np.random.default_rng(3).normal(0.43, 0.05, 5000)
    calibration = recalibrate(quieter, threshold, POLICY, reference)
    assert calibration.recalibrated and calibration.threshold < threshold


def test_too_few_scores_keep_the_threshold():
    reference, threshold = training_scores()
    drifted = np.random.default_rng(4).normal(0.55, 0.05, POLICY.min_scores - 1)
    calibration = recalibrate(drifted, threshold, POLICY, reference)
    assert not calibration.recalibrated and calibration.threshold == threshold
    assert f"{POLICY.min_scores} needed" in calibration.reason
    assert POLICY.min_scores == 1000 and CalibrationPolicy(0.03).min_scores == 334


def test_noise_within_the_dead_band_keeps_the_threshold():
    reference, threshold = training_scores()
    same = np.random.default_rng(5).normal(0.45, 0.05, 4000)  # alert rate ~1 % +- noise
    calibration = recalibrate(same, threshold, POLICY, reference)
    assert not calibration.recalibrated and calibration.threshold == threshold
    assert "within" in calibration.reason


def test_a_burst_of_faults_moves_the_threshold_only_up_to_the_bound():
    reference, threshold = training_scores()
    normal = np.random.default_rng(6).normal(0.45, 0.05, 3000)
    burst = np.full(300, 0.9)  # 10 % of the window are true faults, far above everything
    calibration = recalibrate(np.concatenate([normal, burst]), threshold, POLICY, reference)
    low, high = reference_bounds(reference, POLICY)
    assert calibration.recalibrated and calibration.clamped
    assert calibration.window_quantile == pytest.approx(0.9)
    assert calibration.threshold == high < 0.9  # every fault of the burst still alerts
    assert np.mean(reference >= high) == pytest.approx(0.01 / 4, abs=0.0005)
    assert low < threshold < high


def test_without_a_reference_the_move_is_unbounded():
    _, threshold = training_scores()
    window = np.concatenate([np.random.default_rng(7).normal(0.45, 0.05, 3000), np.full(300, 0.9)])
    calibration = recalibrate(window, threshold, POLICY, reference_scores=None)
    assert calibration.threshold == pytest.approx(0.9) and not calibration.clamped


def test_non_finite_scores_are_ignored():
    reference, threshold = training_scores()
    drifted = np.random.default_rng(8).normal(0.5, 0.05, 2000)
    with_gaps = np.concatenate([drifted, np.full(500, np.nan)])
    assert (recalibrate(with_gaps, threshold, POLICY, reference).threshold
            == recalibrate(drifted, threshold, POLICY, reference).threshold)
    assert recalibrate(with_gaps, threshold, POLICY, reference).window_scores == 2000


def test_only_the_serving_versions_scores_count():
    rows = [{"model_version": "3", "score": 0.4}, {"model_version": "4", "score": 0.9},
            {"model_version": "3", "score": 0.5}]
    assert version_scores(rows, "3").tolist() == [0.4, 0.5]
    assert version_scores(rows, "5").size == 0


@pytest.mark.parametrize("bad", [{"alert_budget": 0.0}, {"alert_budget": 0.01, "tolerance": 0.9},
                                 {"alert_budget": 0.01, "min_tail": 0},
                                 {"alert_budget": 0.3, "max_factor": 4.0}])
def test_policy_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        CalibrationPolicy(**bad)
