"""The store's live alert episodes and connector snapshots, and the live view's query, on SQLite
and on the machine's PostgreSQL (own schema)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dashboard import queries
from pipelines.contracts.connector_status import ConnectorStatusMessage
from pipelines.contracts.live_alert import LiveAlertMessage, live_alert_id
from pipelines.scores.store import MonitoringStore, newest_snapshots
from tests.support.postgres import fresh_schemas

T0 = 1_556_273_700.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
        yield store
        store.close()
        return
    with fresh_schemas() as new_url:
        store = MonitoringStore(new_url())
        yield store
        store.close()


def opened(charge_point: str, kind: str, first: float = T0, connector: int = 1) -> LiveAlertMessage:
    return LiveAlertMessage(
        alert_id=live_alert_id(charge_point, connector, kind, first),
        charge_point_id=charge_point, connector_id=connector, transaction_id="7",
        site_id="caltech", kind=kind, status="open", first_sample_ts=first,
        first_received_ts=first + 0.2, at_ts=first + 20, evidence=f"{kind} for 20 s",
        detected_ts=first + 20.3, metrics={"seconds": 20.0}, processor="t-1")


def closing(event: LiveAlertMessage, after_s: float = 120) -> LiveAlertMessage:
    return replace(event, status="closed", at_ts=event.first_sample_ts + after_s,
                   evidence="cleared", metrics={"seconds": after_s})


def snapshot(charge_point: str, updated: float, connector: int = 1, state: str = "Charging",
             power_w: float | None = 7000.0, age_s: float = 1.0,
             transaction: str | None = "7") -> ConnectorStatusMessage:
    return ConnectorStatusMessage(
        charge_point_id=charge_point, connector_id=connector, site_id="caltech", state=state,
        transaction_id=transaction, power_w=power_w, energy_wh=2500.0, current_a=30.0,
        current_offered_a=32.0, temperature_c=None, error_code="",
        last_sample_ts=updated - age_s, updated_ts=updated)


def test_an_episode_is_one_row_whatever_the_order_and_repetition_of_its_events(store):
    frozen, hot = opened("CP-1", "meter_frozen"), opened("CP-2", "overtemperature")
    assert store.save_live_alerts([frozen, frozen]) == 1
    assert store.save_live_alerts([closing(hot)]) == 1  # the close first (its open was delayed)
    assert store.get_live_alert(hot.alert_id)["opened_ts"] is None
    assert store.save_live_alerts([hot, closing(hot), closing(frozen), frozen]) == 2
    assert store.save_live_alerts([hot, closing(hot), closing(frozen)]) == 0
    for event in (frozen, hot):
        row = store.get_live_alert(event.alert_id)
        assert (row["status"], row["opened_ts"], row["closed_ts"]) == (
            "closed", event.at_ts, event.first_sample_ts + 120)
        assert (row["evidence"], row["closed_evidence"]) == (event.evidence, "cleared")
        assert (row["metrics"], row["closed_metrics"]) == ({"seconds": 20.0}, {"seconds": 120.0})


def test_open_episodes_leave_out_closed_and_superseded_ones(store):
    lost_close = opened("CP-1", "silent", first=T0)
    newer = opened("CP-1", "silent", first=T0 + 3600)
    other_connector = opened("CP-1", "silent", first=T0, connector=2)
    done = opened("CP-3", "faulted")
    store.save_live_alerts([lost_close, newer, other_connector, done, closing(done)])
    assert [r["alert_id"] for r in store.open_live_alerts()] == [newer.alert_id,
                                                                other_connector.alert_id]


def test_the_email_decision_is_taken_once_and_the_cooldown_reads_the_last_delivery(store):
    first, second = opened("CP-1", "no_current"), opened("CP-1", "no_current", first=T0 + 99)
    store.save_live_alerts([first, second])
    assert store.claim_live_email(first.alert_id, "pending", "subject") is True
    assert store.claim_live_email(first.alert_id, "suppressed", "subject") is False
    assert store.last_live_email_ts("CP-1", 1, "no_current") is None  # not delivered yet
    store.update_live_email(first.alert_id, state="sent", attempts=1, delivered_ts=T0 + 21.5,
                            last_error=None, webhook_state="sent")
    store.claim_live_email(second.alert_id, "suppressed", "subject")
    row = store.get_live_alert(first.alert_id)
    assert (row["email_state"], row["email_attempts"], row["emailed_ts"], row["webhook_state"]) \
        == ("sent", 1, T0 + 21.5, "sent")
    assert store.last_live_email_ts("CP-1", 1, "no_current") == T0 + 21.5
    assert store.last_live_email_ts("CP-1", 2, "no_current") is None
    assert store.last_live_email_ts("CP-1", 1, "overcurrent") is None
    delays = [(r["alert_id"], r["emailed_ts"] and r["emailed_ts"] - r["first_received_ts"])
              for r in store.live_alert_rows()]
    assert delays == [(first.alert_id, pytest.approx(21.3)), (second.alert_id, None)]
    assert [r["alert_id"] for r in store.live_alert_rows(since_ts=T0 + 1)] == [second.alert_id]


def test_a_connector_keeps_its_newest_snapshot(store):
    assert store.save_connector_statuses([snapshot("CP-1", T0 + 10), snapshot("CP-2", T0 + 5),
                                          snapshot("CP-1", T0 + 30, power_w=0.0),
                                          snapshot("CP-1", T0 + 20)]) == 2
    assert store.save_connector_statuses([snapshot("CP-1", T0 + 30, power_w=5.0),  # same time
                                          snapshot("CP-1", T0 + 29)]) == 0
    assert store.save_connector_statuses([snapshot("CP-1", T0 + 31, state="Finishing",
                                                   power_w=None)]) == 1
    found = {r["charge_point_id"]: r for r in store.connector_rows()}
    assert (found["CP-1"]["state"], found["CP-1"]["power_w"], found["CP-1"]["updated_ts"]) == (
        "Finishing", None, T0 + 31)
    assert found["CP-2"]["updated_ts"] == T0 + 5
    assert [s.updated_ts for s in newest_snapshots(
        [snapshot("A", 3), snapshot("B", 1), snapshot("A", 2)])] == [3, 1]


def test_the_live_view_orders_connectors_and_marks_offline_ones(store):
    now = T0 + 10_000
    store.save_connector_statuses([
        snapshot("CP-OK", now, age_s=3),
        snapshot("CP-IDLE", now - 7200, state="Available", power_w=None, transaction=None),
        snapshot("CP-STALE", now - 500, age_s=100),  # in a transaction, 600 s without a sample
        snapshot("CP-GONE", now - 60, state="Offline", transaction=None),
        snapshot("CP-HOT", now, age_s=2)])
    hot = opened("CP-HOT", "overtemperature", first=now - 60)
    store.save_live_alerts([hot, opened("CP-NEW", "faulted", first=now - 30)])
    view = queries.live_view(store.engine, now, offline_after_s=120)
    order = [c["connector"] for c in view["connectors"]]
    assert order == ["CP-HOT/1", "CP-NEW/1", "CP-STALE/1", "CP-GONE/1", "CP-OK/1", "CP-IDLE/1"]
    by_name = {c["connector"]: c for c in view["connectors"]}
    assert {name for name, c in by_name.items() if c["offline"]} == {"CP-GONE/1", "CP-STALE/1"}
    assert by_name["CP-IDLE/1"]["age_s"] == 7201  # idle for 2 h: old, but not offline
    assert [a["kind"] for a in by_name["CP-HOT/1"]["open_alerts"]] == ["overtemperature"]
    assert by_name["CP-NEW/1"]["state"] is None  # alerted before its first snapshot
    counts = view["counts"]
    assert (counts["connectors"], counts["offline"], counts["alerting"], counts["open_alerts"]) \
        == (6, 2, 2, 2)
    assert counts["power_w"] == 14_000.0  # CP-OK and CP-HOT; the stale one is offline
    assert view["alerts"][0]["detection_delay_s"] == pytest.approx(20.1)
    assert len(queries.live_view(store.engine, now, 120, limit=2)["connectors"]) == 2


@pytest.mark.parametrize(("state", "transaction", "age", "offline"), [
    ("Offline", None, 1.0, True), ("Charging", "7", 121.0, True), ("Charging", "7", 119.0, False),
    ("SuspendedEV", None, 500.0, True), ("Available", None, 86_400.0, False),
    ("Preparing", "7", 200.0, True), ("Charging", "7", None, False)])
def test_offline_means_reported_so_or_silent_in_a_transaction(state, transaction, age, offline):
    assert queries.is_offline(state, transaction, age, 120.0) is offline
