"""The report of a monitoring window and the retraining decision (pure)."""

from __future__ import annotations

import pytest

from pipelines.scores.retraining import RetrainPolicy, cooldown_remaining, retrain_reason
from pipelines.scores.window_report import summarize_window


def _rows(n, anomalies, station="S1"):
    return [{"score": 0.9 if i < anomalies else 0.3, "is_anomaly": i < anomalies,
             "site_id": "0002", "station_id": station, "latency_ms": 10.0 * i,
             "model_version": "3"} for i in range(n)]


def test_window_health_and_retrain_reason():
    health = summarize_window(_rows(100, 30) + _rows(100, 0, station="S2"), 0, 300)
    assert (health.volume, health.anomalies, health.anomaly_rate) == (200, 30, 0.15)
    assert [(g.key, g.anomalies) for g in health.per_station] == [("S1", 30), ("S2", 0)]
    assert health.latency_ms["p50"] == pytest.approx(495)
    policy = RetrainPolicy(anomaly_rate=0.1, min_volume=50, cooldown_s=100)
    assert "anomaly rate 15.0% > 10.0%" in retrain_reason(health, None, policy)
    assert retrain_reason(summarize_window(_rows(20, 20), 0, 1), None, policy) is None  # too few
    assert retrain_reason(health, None, RetrainPolicy(anomaly_rate=0.5)) is None
    assert cooldown_remaining(1000, 1050, policy) == 50 and cooldown_remaining(None, 1, policy) == 0
    with pytest.raises(ValueError):
        RetrainPolicy(anomaly_rate=0)
