"""The dashboard's JSON API on a real uvicorn server, over a real SQLite store and MLflow."""

from __future__ import annotations

import json
import re
import time

import httpx

from evguard.services.process import wait_until
from pipelines.contracts.score_result import parse_score_result
from pipelines.scores.store import MonitoringStore


def test_feed_overview_ack_and_champion(dash_settings, served, kit, alias_champion):
    store = MonitoringStore(dash_settings.monitoring_db)
    now = time.time()
    results = [parse_score_result(json.dumps(kit.score_message(
        station=f"CA-{i % 3}", score=0.9 if i % 4 == 0 else 0.3, scored_ts=now - 600 + i)))
        for i in range(20)]
    store.save_scores(results)
    alert = store.create_alert(results[0], "critical", "sent", "subject")

    with httpx.Client(base_url=served, timeout=5) as http:
        page = http.get("/").text
        assert '<script src="/static/app.js">' in page
        for asset in ("/", "/static/app.js", "/static/style.css"):
            body = http.get(asset).text
            assert not re.search(r"(src|href)=\"https?://", body), asset  # nothing from a CDN
            assert "cdn" not in body.lower()

        feed = http.get("/api/feed", params={"limit": 5}).json()
        assert [r["session_id"] for r in feed["scores"]] == [r.session_id for r in results[::-1][:5]]
        newer = http.get("/api/feed", params={"after_id": feed["last_id"] - 2}).json()
        assert len(newer["scores"]) == 2

        overview = http.get("/api/overview").json()
        totals = overview["totals"]
        assert (totals["sessions"], totals["anomalies"], totals["sessions_hour"]) == (20, 5, 20)
        assert totals["alerts"] == {"sent": 1} and totals["alerts_unacknowledged"] == 1
        assert sum(b["volume"] for b in overview["series"]) == 20
        assert sum(b["anomalies"] for b in overview["series"]) == 5
        assert {s["station_id"]: s["anomalies"] for s in overview["stations"]} == {
            "CA-0": 2, "CA-1": 2, "CA-2": 1}  # anomalies at i = 0, 4, 8, 12, 16
        assert overview["worker"]["state"] == "unreachable"
        assert overview["champion"]["state"] in ("loading", "none")
        assert overview["links"]["prefect"].endswith(str(dash_settings.prefect_port))

        assert http.post("/api/alerts/999999/ack").status_code == 404
        assert http.post(f"/api/alerts/{alert['id']}/ack").json()["ok"] is True
        assert http.get("/api/overview").json()["totals"]["alerts_unacknowledged"] == 0

        alias_champion()

        def champion() -> dict:
            return http.get("/api/overview").json()["champion"]

        assert wait_until(lambda: champion()["state"] == "ok", 30), champion()
        found = champion()
        assert found["version"] == "1" and found["metrics"]["pr_auc"] == 0.81
        assert found["decision_reason"] == "first valid model: no champion yet"
        assert found["threshold"]["trained"] == 0.62 and found["threshold"]["served"] == 0.71
        assert found["threshold"]["window"] == "5000" and found["threshold"]["calibrated_at"]
    store.close()
