"""The monitoring store and the dashboard's queries on the machine's PostgreSQL (own schema)."""

from __future__ import annotations

import json
import time

import pytest

from dashboard import queries
from pipelines.contracts.score_result import parse_score_result
from pipelines.contracts.station_alert import StationAlertMessage
from pipelines.scores.store import MonitoringStore
from tests.support.postgres import fresh_schemas


@pytest.fixture
def pg_url():
    with fresh_schemas() as new_url:
        yield new_url()


def test_idempotent_writes_and_dashboard_queries_on_postgresql(pg_url, kit):
    store = MonitoringStore(pg_url)
    now = time.time()
    results = [parse_score_result(json.dumps(kit.score_message(
        station=f"CA-{i % 4}", score=0.9 if i % 5 == 0 else 0.3, scored_ts=now - 300 + i)))
        for i in range(50)]
    assert store.save_scores(results[:20]) == 20
    assert store.save_scores(results) == 30  # the first 20 again: skipped
    assert store.count_scores() == 50
    first = store.create_alert(results[0], "critical", "pending", "s")
    again = store.create_alert(results[0], "critical", "pending", "s")
    assert first["id"] == again["id"]
    store.update_alert(first["id"], state="sent", delivered_ts=now)
    assert store.last_sent_ts(results[0].station_id) == pytest.approx(now)

    totals = queries.totals(store.engine, now)
    assert (totals["sessions"], totals["anomalies"]) == (50, 10)
    assert sum(b["volume"] for b in queries.series(store.engine, now)) == 50
    assert {s["station_id"] for s in queries.stations(store.engine, now)} == {
        "CA-0", "CA-1", "CA-2", "CA-3"}
    assert [r["session_id"] for r in queries.feed(store.engine, limit=3)] == [
        r.session_id for r in results[:-4:-1]]
    store.close()


def test_station_alerts_and_the_station_view_on_postgresql(pg_url, kit):
    store = MonitoringStore(pg_url)
    day = 86_400.0
    now = time.time()
    results = [parse_score_result(json.dumps(kit.score_message(
        station="CA-1", scored_ts=now - d * day))) for d in range(1, 30)]
    store.save_scores(results)

    def event(status: str, opened: float, at: float) -> StationAlertMessage:
        return StationAlertMessage(alert_id=f"CA-1:degraded:{int(opened)}", station_id="CA-1",
                                   site_id="0002", kind="degraded", status=status,
                                   opened_ts=opened, at_ts=at, evidence="less power",
                                   detected_ts=at, metrics={"cusum": 5.0})

    older = event("open", now - 9 * day, now - 9 * day)  # its close was lost
    newer = event("open", now - 2 * day, now - 2 * day)
    assert store.save_station_alerts([older, newer, newer]) == 2
    assert [r["alert_id"] for r in store.open_station_alerts()] == [newer.alert_id]
    view = queries.station_view(store.engine, now)
    [station] = view["stations"]
    assert station["health"] == "degraded" and station["observed_7d"] == 7
    assert station["expected_7d"] == pytest.approx(7.0, abs=0.5)  # one a day before, too
    assert len(station["power"]) == 20 and station["power"][-1]["kw"] == pytest.approx(2.4)
    assert store.save_station_alerts([event("closed", newer.opened_ts, now)]) == 1
    assert queries.station_view(store.engine, now)["health"]["ok"] == 1
    store.close()
