"""Pure logic of monitoring and alerting: parsing, drift, window health, severity, email."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.contracts.score_result import InvalidScoreResult, parse_score_result
from pipelines.scores.alerting import (
    SeverityPolicy,
    compose_email,
    in_cooldown,
    retry_delay,
    severity,
    webhook_payload,
)
from pipelines.scores.drift import drift_report, ks_statistic, psi
from pipelines.scores.retraining import RetrainPolicy, cooldown_remaining, retrain_reason
from pipelines.scores.window_report import window_health


def _msg(kit, **changes):
    body = kit.score_message(score=0.9)
    body.update(changes)
    return json.dumps(body)


def test_parse_accepts_the_contract_example_and_rejects_each_broken_field(kit):
    result = parse_score_result(_msg(kit))
    assert result.is_anomaly and result.model_version == "3"
    assert result.latency_ms == pytest.approx(40, abs=1)
    assert result.features["avg_kw"] == 2.4
    for field, value, words in [("score", float("nan"), "score"), ("is_anomaly", "yes", "is_anomaly"),
                                ("sessionID", "", "sessionID"), ("scored_at", "yesterday", "scored_at"),
                                ("model", None, "model"), ("features", [1], "features"),
                                ("stationID", "x" * 129, "longer than 128")]:
        with pytest.raises(InvalidScoreResult, match=words):
            parse_score_result(_msg(kit, **{field: value}))
    # values a JSON column cannot hold become null instead of losing the result
    odd = parse_score_result(_msg(kit, features={"avg_kw": float("nan"), "kwh": 3},
                                  explanation=[{"feature": "avg_kw", "value": float("inf")}]))
    assert odd.features == {"avg_kw": None, "kwh": 3.0}
    assert odd.explanation == [{"feature": "avg_kw", "value": None, "contribution": None,
                                "typical": None}]


@given(st.binary(max_size=200))
def test_parse_never_raises_anything_but_invalid_score_result(raw):
    try:
        parse_score_result(raw)
    except InvalidScoreResult:
        pass


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


def _rows(n, anomalies, station="S1"):
    return [{"score": 0.9 if i < anomalies else 0.3, "is_anomaly": i < anomalies,
             "site_id": "0002", "station_id": station, "latency_ms": 10.0 * i,
             "model_version": "3"} for i in range(n)]


def test_window_health_and_retrain_reason():
    health = window_health(_rows(100, 30) + _rows(100, 0, station="S2"), 0, 300)
    assert (health.volume, health.anomalies, health.anomaly_rate) == (200, 30, 0.15)
    assert [(g.key, g.anomalies) for g in health.per_station] == [("S1", 30), ("S2", 0)]
    assert health.latency_ms["p50"] == pytest.approx(495)
    policy = RetrainPolicy(anomaly_rate=0.1, min_volume=50, cooldown_s=100)
    assert "anomaly rate 15.0% > 10.0%" in retrain_reason(health, None, policy)
    assert retrain_reason(window_health(_rows(20, 20), 0, 1), None, policy) is None  # too few
    assert retrain_reason(health, None, RetrainPolicy(anomaly_rate=0.5)) is None
    assert cooldown_remaining(1000, 1050, policy) == 50 and cooldown_remaining(None, 1, policy) == 0
    with pytest.raises(ValueError):
        RetrainPolicy(anomaly_rate=0)


def test_severity_cooldown_and_backoff():
    policy = SeverityPolicy(major_margin=0.05, critical_margin=0.15)
    assert [severity(s, 0.6, policy) for s in (0.61, 0.64, 0.70)] == ["minor", "major", "critical"]
    assert in_cooldown(100.0, 150.0, 60) and not in_cooldown(100.0, 161.0, 60)
    assert not in_cooldown(None, 0.0, 60)
    assert [retry_delay(a, 2, 10) for a in (1, 2, 3, 4)] == [2, 4, 8, 10]
    with pytest.raises(ValueError):
        SeverityPolicy(major_margin=0.2, critical_margin=0.1)


def test_email_and_webhook_carry_the_explanation(kit):
    result = parse_score_result(_msg(kit, stationID="CA-77"))
    mail = compose_email(result, "critical", "from@x", ["a@x", "b@x"], "http://dash/")
    body = mail.get_content()
    assert mail["To"] == "a@x, b@x" and "CA-77" in mail["Subject"]
    assert "avg_kw" in body and "typical" in body and "http://dash/" in body
    hook = webhook_payload(result, "critical", "http://dash/")
    assert "avg_kw=2.4 (typ 3.2)" in hook["text"] and hook["blocks"][0]["type"] == "section"


def test_email_shows_log_features_in_their_own_units(kit):
    """The model explains a meter fault with log10 energy; the operator reads kWh."""
    from pipelines.data.features import feature_matrix
    from pipelines.data.synth import generate_sessions

    record = generate_sessions(1, seed=2, anomaly_rate=0.0)[0][0]
    meter = feature_matrix([{**record, "kWhDelivered": 0.02}]).iloc[0]
    typical = feature_matrix([record]).iloc[0]
    explanation = [{"feature": name, "value": float(meter[name]),
                    "typical": float(typical[name]), "contribution": 0.1 - i / 100}
                   for i, name in enumerate(("log_kwh_delivered", "kwh_delivered",
                                             "log_avg_kw"))]
    result = parse_score_result(_msg(kit, explanation=explanation))
    body = compose_email(result, "critical", "f@x", ["t@x"], "http://dash/").get_content()
    lines = [line.split() for line in body.splitlines() if "contribution" in line
             and "typical" in line and not line.startswith("Top")]
    assert [words[0] for words in lines] == ["kwh_delivered", "avg_kw"]  # no log_, no repeat
    printed = {"rel": 5e-3}  # 3 significant digits
    assert float(lines[0][1]) == pytest.approx(0.02, **printed)
    assert float(lines[0][3]) == pytest.approx(record["kWhDelivered"], **printed)
    assert float(lines[1][1]) == pytest.approx(meter["avg_kw"], **printed)
