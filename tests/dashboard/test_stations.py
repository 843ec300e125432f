"""The station view: its JSON API on a real uvicorn server over a real SQLite store, and the
expectation it compares each station with."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from dashboard.queries import DAY_S, expected_sessions
from pipelines.contracts.score_result import parse_score_result
from pipelines.scores.store import MonitoringStore


def test_expected_sessions_come_from_the_stations_own_previous_four_weeks():
    start = 100 * DAY_S  # the last 7 days begin here
    assert expected_sessions(28, start - 40 * DAY_S, start) == (7.0, 28.0)
    assert expected_sessions(56, start - 28 * DAY_S, start) == (14.0, 28.0)
    assert expected_sessions(0, start - 60 * DAY_S, start) == (0.0, 28.0)  # had gone quiet
    expected, days = expected_sessions(10, start - 14 * DAY_S, start)  # younger than 4 weeks
    assert (expected, days) == (pytest.approx(5.0), 14.0)
    assert expected_sessions(3, start - 3 * DAY_S, start) == (None, 3.0)  # too little history
    assert expected_sessions(0, None, start) == (None, 0.0)
    assert expected_sessions(0, start + DAY_S, start) == (None, 0.0)


def test_station_api_health_sessions_power_and_open_alerts(dash_settings, served, fleet):
    store = MonitoringStore(dash_settings.monitoring_db)
    store.save_scores([parse_score_result(json.dumps(s)) for s in fleet.scores])
    store.save_station_alerts(fleet.events)

    with httpx.Client(base_url=served, timeout=10) as http:
        page = http.get("/stations")
        assert page.status_code == 200 and '<script src="/static/stations.js">' in page.text
        for asset in ("/stations", "/static/stations.js", "/static/common.js"):
            assert not re.search(r"(src|href)=\"https?://", http.get(asset).text), asset
        assert 'href="/stations"' in http.get("/").text  # linked from the live page

        view = http.get("/api/stations").json()
        assert view["as_of"] == pytest.approx(fleet.now - 600 - 3 * 3600)  # newest session
        assert view["total"] == 6
        assert view["health"] == {"silent": 2, "failing": 0, "degraded": 1, "ok": 3}
        by_id = {s["station_id"]: s for s in view["stations"]}
        assert [s["station_id"] for s in view["stations"]] == [
            "CA-SILENT", "CA-GONE", "CA-SLOW", "CA-MENDED", "CA-OK", "CA-NEW"]
        assert {k: s["health"] for k, s in by_id.items()} == {
            "CA-SILENT": "silent", "CA-GONE": "silent", "CA-SLOW": "degraded",
            "CA-MENDED": "ok", "CA-OK": "ok", "CA-NEW": "ok"}
        assert {k: (s["observed_7d"], s["expected_7d"]) for k, s in by_id.items()} == {
            "CA-SILENT": (2, pytest.approx(7.0)), "CA-GONE": (0, None),
            "CA-SLOW": (7, pytest.approx(7.0)), "CA-MENDED": (7, pytest.approx(7.0)),
            "CA-OK": (7, pytest.approx(7.0)), "CA-NEW": (3, None)}
        silent = by_id["CA-SILENT"]
        assert silent["last_session_ts"] == pytest.approx(fleet.now - 5 * DAY_S - 600 - 3 * 3600)
        [alert] = silent["open_alerts"]
        assert alert["kind"] == "silent" and alert["evidence"].startswith("no session for 4.8")
        assert alert["notice"] is None  # no alerting consumer ran
        assert [a["kind"] for a in by_id["CA-GONE"]["open_alerts"]] == ["silent", "failing"]
        assert by_id["CA-GONE"]["last_session_ts"] is None and by_id["CA-GONE"]["power"] == []
        assert by_id["CA-MENDED"]["open_alerts"] == []
        power = [p["kw"] for p in by_id["CA-SLOW"]["power"]]
        assert power == [6.6] * 12 + [2.0] * 8  # oldest first, the newest 20 sessions
        ts = [p["ts"] for p in by_id["CA-SLOW"]["power"]]
        assert ts == sorted(ts)
        assert len(by_id["CA-NEW"]["power"]) == 3

        top = http.get("/api/stations", params={"limit": 2, "spark": 5}).json()
        assert [s["station_id"] for s in top["stations"]] == ["CA-SILENT", "CA-GONE"]
        assert top["total"] == 6 and len(top["stations"][0]["power"]) == 5

        store.save_station_alerts([fleet.closing("CA-SILENT", "silent")])
        after = http.get("/api/stations").json()
        assert after["health"]["silent"] == 1
        assert next(s for s in after["stations"] if s["station_id"] == "CA-SILENT")["health"] == "ok"
    store.close()
