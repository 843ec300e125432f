"""The drift replay: weekly re-calibration from earlier scores only (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.drift import WEEK_S, drift_section, replay_thresholds
from pipelines.scores.calibration import CalibrationPolicy

DAY = 86_400.0


def drifting_stream(seed: int = 0):
    """Ten weeks of 300 sessions each; from week 3 every score is 0.03 higher."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(0.45, 0.05, 2000)
    arrival = np.sort(rng.uniform(0, 10 * WEEK_S, 3000))
    scores = rng.normal(0.45, 0.05, 3000) + np.where(arrival >= 3 * WEEK_S, 0.03, 0.0)
    types = np.full(3000, "", dtype=object)
    faults = rng.choice(3000, 30, replace=False)
    scores[faults], types[faults] = 0.95, "meter_fault"
    return scores, arrival, types, reference


def test_recalibration_uses_only_earlier_scores_and_holds_the_budget():
    scores, arrival, types, reference = drifting_stream()
    trained = float(np.quantile(reference, 0.99, method="higher"))
    policy = CalibrationPolicy(0.01, max_factor=8.0)
    replayed = replay_thresholds(scores, arrival, trained, policy, reference, max_scores=1200)
    first_week = arrival < WEEK_S
    assert np.all(replayed.thresholds[first_week] == trained)  # nothing stored yet
    for start, calibration in replayed.steps:  # each decision saw only what came before
        assert calibration.window_scores == min(1200, int(np.sum(arrival < start)))
    assert replayed.recalibrations >= 1
    late = arrival >= 8 * WEEK_S  # the newest 1,200 scores are all drifted by then
    real = types == ""
    fixed_rate = np.mean(scores[late & real] >= trained)
    assert fixed_rate > 0.03
    assert np.mean(replayed.alerts[late & real]) < 0.02
    assert replayed.alerts[types != ""].all()  # far above any re-calibrated threshold


def test_a_window_limit_and_dead_letters():
    scores, arrival, _, reference = drifting_stream(1)
    scores[:10] = np.nan  # dead-lettered: never stored, never alert
    trained = float(np.quantile(reference, 0.99, method="higher"))
    replayed = replay_thresholds(scores, arrival, trained, CalibrationPolicy(0.01), reference,
                                 window_s=2 * WEEK_S, max_scores=1200)
    assert not replayed.alerts[:10].any()
    assert all(c.window_scores <= 1200 for _, c in replayed.steps)


def test_drift_section_compares_fixed_and_recalibrated_per_budget():
    scores, arrival, types, reference = drifting_stream(2)
    thresholds = {b: float(np.quantile(reference, 1 - b, method="higher")) for b in (0.01, 0.03)}
    section = drift_section(scores, arrival, types, thresholds, reference,
                            policy_options={"max_factor": 8.0})
    for budget in ("0.01", "0.03"):
        row = section["budgets"][budget]
        assert row["recalibrated"]["false_alert_rate"] < row["fixed"]["false_alert_rate"]
        assert row["recalibrated"]["recall"] == pytest.approx(1.0)
        assert row["recalibrated"]["final_threshold"] > row["trained_threshold"]
