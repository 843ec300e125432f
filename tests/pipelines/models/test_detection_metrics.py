"""Metrics: threshold calibration, Goix's EM/MV and the label metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.models.detection_metrics import (
    calibrate_threshold,
    excess_mass,
    has_nan,
    label_metrics,
    mass_volume,
    recall_by_type,
    type_recall_name,
    uniform_box_sample,
)


def test_threshold_alerts_on_the_budget_share():
    scores = np.random.default_rng(0).random(10_000)
    threshold = calibrate_threshold(scores, 0.01)
    assert (scores >= threshold).mean() == pytest.approx(0.01, abs=0.001)
    assert math.isnan(calibrate_threshold(np.array([]), 0.01))
    with pytest.raises(ValueError):
        calibrate_threshold(scores, 1.5)


def test_em_and_mv_prefer_the_true_density_to_noise():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3000, 2))
    uniform, volume = uniform_box_sample(data, 20_000, rng)
    assert (uniform.min(axis=0) >= data.min(axis=0)).all()
    assert (uniform.max(axis=0) <= data.max(axis=0)).all()
    assert volume == pytest.approx(np.prod(data.max(axis=0) - data.min(axis=0)))

    def density_anomaly(x):  # anomaly score = distance from the mode: the ideal ranking
        return (x ** 2).sum(axis=1)

    def noise(x):
        return np.random.default_rng(2).random(len(x))

    good = (density_anomaly(data), density_anomaly(uniform))
    bad = (noise(data), noise(uniform))
    assert excess_mass(*good, 1.0) > excess_mass(*bad, 1.0)
    assert mass_volume(*good, 1.0) < mass_volume(*bad, 1.0)
    assert math.isnan(excess_mass(np.array([]), good[1], 1.0))


def test_label_metrics_reward_ranking_anomalies_first():
    labels = np.zeros(1000, dtype=bool)
    labels[:20] = True
    perfect = np.where(labels, 0.9, 0.4) + np.linspace(0, 0.01, 1000)
    reversed_ = -perfect
    good = label_metrics(perfect, labels, threshold=0.8, alert_budget=0.01)
    bad = label_metrics(reversed_, labels, threshold=-0.3, alert_budget=0.01)
    assert good["pr_auc"] == pytest.approx(1.0)
    assert good["precision_at_k"] == 1.0 and good["recall_at_budget"] == 1.0
    assert good["alert_rate"] == pytest.approx(0.02)
    assert bad["pr_auc"] < 0.1 and bad["roc_auc"] < 0.1 and bad["precision_at_k"] == 0.0
    single_class = label_metrics(perfect, np.zeros(1000, bool), 0.8, 0.01)
    assert math.isnan(single_class["pr_auc"]) and math.isnan(single_class["recall_at_budget"])
    assert has_nan(single_class, ["pr_auc", "alert_rate"]) == ["pr_auc"]


def test_recall_is_reported_per_anomaly_type():
    scores = np.array([0.9, 0.2, 0.95, 0.1, 0.3])
    types = ["stuck_session", "stuck_session", "impossible_power", None, ""]
    recalls = recall_by_type(scores, types, threshold=0.5)
    assert recalls == {type_recall_name("impossible_power"): 1.0,
                       type_recall_name("stuck_session"): 0.5}
