"""Drift of features and score against the reference (pure)."""

from __future__ import annotations

import numpy as np

from pipelines.scores.drift import drift_report, ks_statistic, psi


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 2000)
    assert psi(ref, rng.normal(0, 1, 1000)) < 0.05
    assert psi(ref, rng.normal(1.5, 1, 1000)) > 0.5
    assert ks_statistic(ref, rng.normal(1.5, 1, 1000)) > 0.4
    assert psi([2.0] * 50, [2.0] * 20) < 1e-9  # constant reference
    assert psi([2.0] * 50, [5.0] * 20) > 1
    assert np.isnan(psi([], [1.0]))


def test_drift_report_flags_only_shared_columns_over_the_threshold():
    rng = np.random.default_rng(1)
    ref = {"a": rng.normal(0, 1, 500).tolist(), "b": rng.normal(0, 1, 500).tolist(), "c": [1.0]}
    cur = {"a": rng.normal(3, 1, 200).tolist(), "b": rng.normal(0, 1, 200).tolist()}
    report = drift_report(ref, cur, psi_threshold=0.25)
    assert [c.name for c in report.columns] == ["a", "b"]
    assert [c.name for c in report.drifted] == ["a"]
    few = drift_report(ref, {"a": cur["a"][:10]}, min_current=50)
    assert few.drifted == []
    calendar = drift_report(ref, cur, ignore={"a"})
    assert calendar.drifted == [] and calendar.columns[0].ignored and calendar.columns[0].psi > 1
