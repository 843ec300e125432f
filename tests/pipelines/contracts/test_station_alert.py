"""The station alert contract (§5a): built by the worker's health detectors, parsed by the consumers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.contracts.station_alert import (
    EXAMPLE_STATION_ALERT,
    KINDS,
    SCHEMA,
    InvalidStationAlert,
    encode_station_alert,
    parse_station_alert,
    station_alert_body,
    station_alert_id,
    station_alert_message,
    station_routing_key,
)


@dataclass(frozen=True)
class DetectorEvent:
    """Shaped like the worker's pure `StationAlert` (the contract must not import it)."""

    kind: str = "degraded"
    station_id: str = "1-1-179-810"
    site_id: str = "0002"
    status: str = "closed"
    opened_at: float = 1_556_236_800.0
    at: float = 1_556_841_600.0
    evidence: str = "power 2.1 kW over its last 8 sessions, 6.4 kW usual (CUSUM 5.3 > 4)"
    metrics: dict = field(default_factory=lambda: {"cusum": 5.3, "usual_kw": 6.4,
                                                   "recent_kw": float("nan")})
    alert_id: str = "1-1-179-810:degraded:1556236800"


def example(**changes) -> str:
    return json.dumps({**EXAMPLE_STATION_ALERT, **changes})


def test_the_example_parses_and_each_broken_field_is_named():
    alert = parse_station_alert(example())
    assert (alert.kind, alert.status, alert.is_open) == ("silent", "open", True)
    assert alert.opened_ts == alert.at_ts == 1_556_236_800.0
    assert alert.detected_ts == pytest.approx(1_556_236_802.114)
    assert alert.metrics == {"hours_since_last": 27.0, "expected_sessions": 6.2}
    assert alert.routing_key == "station.0002.silent"
    for name, value, words in [
            ("schema", "evguard.score/1", "schema must be"), ("kind", "slow", "kind must be one of"),
            ("status", "resolved", "status must be one of"), ("alert_id", "", "alert_id"),
            ("stationID", None, "stationID"), ("siteID", "x" * 33, "longer than 32"),
            ("evidence", " ", "evidence"), ("opened_at", "yesterday", "opened_at"),
            ("at", "2019-04-25T23:00:00+00:00", "before opened_at"),
            ("detected_at", 1_556_236_802, "detected_at"), ("metrics", [1], "metrics"),
            ("worker", 7, "worker")]:
        with pytest.raises(InvalidStationAlert, match=words):
            parse_station_alert(example(**{name: value}))
    with pytest.raises(InvalidStationAlert, match="not JSON"):
        parse_station_alert(b"\xff{")
    with pytest.raises(InvalidStationAlert, match="JSON object"):
        parse_station_alert(b"[1, 2]")
    assert issubclass(InvalidStationAlert, ValueError)
    # a figure that is not a number is dropped, the alert is kept; the worker field is optional
    lenient = {**EXAMPLE_STATION_ALERT, "metrics": {"a": "x", "b": None, "c": True, "d": 2}}
    del lenient["worker"]
    odd = parse_station_alert(json.dumps(lenient))
    assert odd.metrics == {"d": 2.0} and odd.worker == ""


@given(st.binary(max_size=200))
def test_parse_never_raises_anything_but_invalid_station_alert(raw):
    try:
        parse_station_alert(raw)
    except InvalidStationAlert:
        pass


def test_a_detector_event_becomes_a_message_that_round_trips():
    event = DetectorEvent()
    message = station_alert_message(event, "2019-05-03T00:00:01.250+00:00", worker="w-2")
    assert (message.alert_id, message.station_id, message.kind, message.status) == (
        event.alert_id, event.station_id, "degraded", "closed")
    assert (message.opened_ts, message.at_ts) == (event.opened_at, event.at)
    assert message.detected_ts == 1_556_841_601.25
    assert message.metrics == {"cusum": 5.3, "usual_kw": 6.4}  # NaN says nothing: left out
    body = orjson.loads(encode_station_alert(message))
    assert body == station_alert_body(message)
    assert body["schema"] == SCHEMA and body["opened_at"] == "2019-04-26T00:00:00+00:00"
    assert body["at"] == "2019-05-03T00:00:00+00:00" and body["worker"] == "w-2"
    assert set(body) == set(EXAMPLE_STATION_ALERT)
    assert parse_station_alert(encode_station_alert(message)) == message
    assert message.routing_key == "station.0002.degraded"
    with pytest.raises(InvalidStationAlert, match="evidence"):
        station_alert_message(DetectorEvent(evidence=""), "2019-05-03T00:00:01+00:00")
    with pytest.raises(InvalidStationAlert, match="kind"):
        station_alert_message(DetectorEvent(kind="slow"), "2019-05-03T00:00:01+00:00")


def test_routing_keys_and_episode_ids():
    assert [station_routing_key("0019", kind) for kind in KINDS] == [
        "station.0019.silent", "station.0019.failing", "station.0019.degraded"]
    # a site with a routing-key separator or wildcard still has exactly three words
    assert station_routing_key("a.b#*", "silent") == "station.a_b__.silent"
    assert station_routing_key("", "failing") == "station._.failing"
    with pytest.raises(ValueError, match="kind"):
        station_routing_key("0002", "anomaly")
    assert station_alert_id("CA-1", "silent", 1_556_236_800.9) == "CA-1:silent:1556236800"


def test_the_documented_example_is_the_modules_example():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "contracts.md").read_text()
    section = text.split("## 5a. Station alert", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(section) == EXAMPLE_STATION_ALERT
