"""What an alert says and whether to send it (pure): severity, cooldown, backoff, email, webhook."""

from __future__ import annotations

import pytest

from pipelines.contracts.score_result import parse_score_result
from pipelines.retry import RetryPolicy
from pipelines.scores.alerting import (
    SeverityPolicy,
    compose_email,
    in_cooldown,
    severity,
    webhook_payload,
)


def test_severity_cooldown_and_backoff():
    policy = SeverityPolicy(major_margin=0.05, critical_margin=0.15)
    assert [severity(s, 0.6, policy) for s in (0.61, 0.64, 0.70)] == ["minor", "major", "critical"]
    assert in_cooldown(100.0, 150.0, 60) and not in_cooldown(100.0, 161.0, 60)
    assert not in_cooldown(None, 0.0, 60)
    backoff = RetryPolicy(initial_s=2, max_s=10)
    assert [backoff.delay(a - 1) for a in (1, 2, 3, 4)] == [2, 4, 8, 10]
    with pytest.raises(ValueError):
        SeverityPolicy(major_margin=0.2, critical_margin=0.1)


def test_email_and_webhook_carry_the_explanation(kit):
    result = parse_score_result(kit.score_json(stationID="CA-77"))
    mail = compose_email(result, "critical", "from@x", ["a@x", "b@x"], "http://dash/")
    body = mail.get_content()
    assert mail["To"] == "a@x, b@x" and "CA-77" in mail["Subject"]
    assert "avg_kw" in body and "typical" in body and "http://dash/" in body
    hook = webhook_payload(result, "critical", "http://dash/")
    assert "avg_kw=2.4 (typ 3.2)" in hook["text"] and hook["blocks"][0]["type"] == "section"


def test_email_and_webhook_name_a_broken_rule_before_the_model_explanation(kit):
    explanation = [{"feature": "charging_hours", "value": -3.0, "contribution": 0.6,
                    "typical": None, "rule": "done charging no earlier than 15 min before "
                                             "connecting"},
                   {"feature": "avg_kw", "value": 2.4, "contribution": 0.1, "typical": 3.2}]
    result = parse_score_result(kit.score_json(explanation=explanation, score=1.0))
    assert result.explanation[0]["rule"].startswith("done charging")
    body = compose_email(result, "critical", "f@x", ["t@x"], "http://dash/").get_content()
    lines = [line for line in body.splitlines() if "charging_hours" in line or "avg_kw" in line]
    assert "breaks the rule: done charging no earlier" in lines[0] and "-3" in lines[0]
    assert "typical" in lines[1]
    text = webhook_payload(result, "critical", "http://dash/")["text"]
    assert "charging_hours=-3 (breaks: done charging" in text and "avg_kw=2.4 (typ 3.2)" in text


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
    result = parse_score_result(kit.score_json(explanation=explanation))
    body = compose_email(result, "critical", "f@x", ["t@x"], "http://dash/").get_content()
    lines = [line.split() for line in body.splitlines() if "contribution" in line
             and "typical" in line and not line.startswith("Top")]
    assert [words[0] for words in lines] == ["kwh_delivered", "avg_kw"]  # no log_, no repeat
    printed = {"rel": 5e-3}  # 3 significant digits
    assert float(lines[0][1]) == pytest.approx(0.02, **printed)
    assert float(lines[0][3]) == pytest.approx(record["kWhDelivered"], **printed)
    assert float(lines[1][1]) == pytest.approx(meter["avg_kw"], **printed)


def test_station_alert_emails_name_the_station_site_and_kind_and_say_when_it_recovered():
    from pipelines.contracts.station_alert import StationAlertMessage
    from pipelines.scores.alerting import compose_station_email, station_webhook_payload

    opened = StationAlertMessage(
        alert_id="CA-3:failing:1556236800", station_id="CA-3", site_id="0001", kind="failing",
        status="open", opened_ts=1_556_236_800.0, at_ts=1_556_236_800.0,
        evidence="4 of its last 6 sessions delivered under 0.1 kWh over 3 h or more",
        detected_ts=1_556_236_801.0, metrics={"failed": 4, "window": 6})
    mail = compose_station_email(opened, "from@x", ["ops@x"], "http://dash/stations")
    body = mail.get_content()
    assert mail["Subject"] == "[evguard] FAILING station CA-3 (site 0001)"
    assert mail["X-Evguard-Station-Alert"] == opened.alert_id
    assert "4 of its last 6 sessions delivered under 0.1 kWh" in body
    assert "too many of its last sessions failed" in body and "http://dash/stations" in body
    assert [line.split() for line in body.splitlines() if line.strip().startswith("failed")] == [
        ["failed", "4"]]
    closed = StationAlertMessage(**{**opened.__dict__, "status": "closed",
                                    "at_ts": opened.opened_ts + 3 * 86_400,
                                    "evidence": "5 of its last 6 sessions delivered energy"})
    note = compose_station_email(closed, "from@x", ["ops@x"], "http://dash/stations")
    assert note["Subject"] == "[evguard] RECOVERED station CA-3 (site 0001): no longer failing"
    assert "closed after 3.0 days" in note.get_content()
    assert "2019-04-29 00:00:00 UTC" in note.get_content()
    hook = station_webhook_payload(opened, "http://dash/stations")
    assert hook["text"].startswith("[evguard] FAILING station CA-3 (site 0001): 4 of its last")
