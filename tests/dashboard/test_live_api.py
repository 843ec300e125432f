"""The live view's API (`/api/live`) and page (`/live`) on a real uvicorn server, over a store
filled from the telemetry processor's contracts."""

from __future__ import annotations

import re
import time
from dataclasses import replace

import httpx
import pytest

from pipelines.contracts.connector_status import (
    ConnectorStatusMessage,
    encode_connector_statuses,
    parse_connector_statuses,
)
from pipelines.contracts.live_alert import (
    LiveAlertMessage,
    encode_live_alert,
    live_alert_id,
    parse_live_alert,
)
from pipelines.scores.store import MonitoringStore


def alert(charge_point: str, kind: str, first: float, status: str = "open") -> LiveAlertMessage:
    message = LiveAlertMessage(
        alert_id=live_alert_id(charge_point, 1, kind, first), charge_point_id=charge_point,
        connector_id=1, transaction_id="31", site_id="jpl", kind=kind, status=status,
        first_sample_ts=first, first_received_ts=first + 0.5, at_ts=first + 15,
        evidence=f"{kind} for 15 s", detected_ts=first + 15.7,
        metrics={"seconds": 15.0}, processor="t-1")
    return parse_live_alert(encode_live_alert(message))  # as the consumer reads it


def snapshot(charge_point: str, now: float, state: str, age_s: float, power_w: float | None,
             energy_wh: float | None, transaction: str | None) -> ConnectorStatusMessage:
    message = ConnectorStatusMessage(
        charge_point_id=charge_point, connector_id=1, site_id="jpl", state=state,
        transaction_id=transaction, power_w=power_w, energy_wh=energy_wh, current_a=None,
        current_offered_a=None, temperature_c=None, error_code="", last_sample_ts=now - age_s,
        updated_ts=now - age_s + 0.1)
    [(_key, body)] = encode_connector_statuses([message])
    [parsed] = parse_connector_statuses(body)  # as the consumer reads it
    return parsed


def test_live_api_gives_connectors_with_offline_flags_and_alerts_open_first(dash_settings, served):
    settings = dash_settings
    now = time.time()
    store = MonitoringStore(settings.monitoring_db)
    store.save_connector_statuses([
        snapshot("CP-A", now, "Charging", 2, 7200.0, 5321.0, "31"),
        snapshot("CP-B", now, "Charging", settings.live_offline_after_s + 60, 6000.0, 900.0, "32"),
        snapshot("CP-C", now, "Available", 3 * 3600, None, 0.0, None)])
    old = alert("CP-A", "meter_frozen", now - 900)
    store.save_live_alerts([old, replace(old, status="closed", at_ts=now - 600,
                                         evidence="register moves again")])
    live_now = alert("CP-A", "no_current", now - 40)
    store.save_live_alerts([live_now])
    store.claim_live_email(live_now.alert_id, "pending", "subject")
    store.update_live_email(live_now.alert_id, state="sent", attempts=1,
                            delivered_ts=live_now.first_received_ts + 2.25)
    store.close()

    with httpx.Client(base_url=served, timeout=5) as http:
        page = http.get("/live").text
        assert '<script src="/static/live.js">' in page and "/static/common.js" in page
        for asset in ("/live", "/static/live.js"):
            body = http.get(asset).text
            assert not re.search(r"(src|href)=\"https?://", body), asset  # nothing from a CDN
        for other in ("/", "/stations"):  # the other pages link to it
            assert '<a id="link-connectors" href="/live">' in http.get(other).text

        view = http.get("/api/live").json()
        assert view["offline_after_s"] == settings.live_offline_after_s
        assert view["now"] == pytest.approx(time.time(), abs=5)
        assert [c["connector"] for c in view["connectors"]] == ["CP-A/1", "CP-B/1", "CP-C/1"]
        a, b, c = view["connectors"]
        assert (a["state"], a["power_w"], a["energy_wh"], a["offline"]) == (
            "Charging", 7200.0, 5321.0, False)
        assert a["last_sample_ts"] == pytest.approx(now - 2)
        assert [x["kind"] for x in a["open_alerts"]] == ["no_current"]
        assert (b["offline"], b["open_alerts"]) == (True, [])  # in a transaction, no sample
        assert (c["offline"], c["transaction_id"]) == (False, None)  # idle: old is normal
        assert c["age_s"] == pytest.approx(3 * 3600, abs=5)
        counts = view["counts"]
        assert counts["states"] == {"Charging": 2, "Available": 1}
        assert (counts["offline"], counts["in_transaction"], counts["open_alerts"]) == (1, 2, 1)
        assert counts["power_w"] == 7200.0

        first, second = view["alerts"]
        assert (first["alert_id"], first["status"], first["email_state"]) == (
            live_now.alert_id, "open", "sent")
        assert first["email_delay_s"] == pytest.approx(2.25)
        assert first["detection_delay_s"] == pytest.approx(15.2)
        assert first["first_sample_ts"] == pytest.approx(now - 40)
        assert (second["status"], second["closed_evidence"], second["email_state"]) == (
            "closed", "register moves again", None)
        assert second["closed_ts"] - second["first_sample_ts"] == pytest.approx(300)

        assert len(http.get("/api/live", params={"limit": 1}).json()["connectors"]) == 1
        assert http.get("/api/live", params={"limit": 1}).json()["total"] == 3
        assert [x["status"] for x in http.get("/api/live", params={"alerts": 1}).json()[
            "alerts"]] == ["open"]
        assert http.get("/api/live", params={"limit": 0}).status_code == 422
