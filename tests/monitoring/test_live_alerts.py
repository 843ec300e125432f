"""Live alerts (contract §5b) and connector snapshots (§5c) through the real RabbitMQ: stored by
the monitoring consumer, open live alerts emailed by the alerting consumer through the
project's SMTP sink."""

from __future__ import annotations

import email
import json
import threading
from collections import Counter
from dataclasses import replace
from email import policy

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from evguard.services.process import free_port, wait_until
from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from monitoring.monitor import MonitoringConsumer
from monitoring.rabbit import queue_depth
from pipelines.contracts.connector_status import (
    ConnectorStatusMessage,
    connector_status_body,
    encode_connector_statuses,
)
from pipelines.contracts.dead_letters import dlq_name
from pipelines.contracts.live_alert import (
    EXAMPLE_LIVE_ALERT,
    LiveAlertMessage,
    encode_live_alert,
    live_alert_id,
)
from pipelines.scores.store import MonitoringStore, connectors, live_alerts, metadata
from tests.support.queues import queue_messages

T0 = 1_556_273_700.0  # Fri, 26 Apr 2019 10:15 UTC


def live(charge_point: str, kind: str, status: str = "open", first: float = T0,
         connector: int = 1, site: str = "caltech", after_s: float = 20.0,
         evidence: str | None = None) -> LiveAlertMessage:
    """One detector event, as the telemetry processor publishes it."""
    at = first + after_s
    return LiveAlertMessage(
        alert_id=live_alert_id(charge_point, connector, kind, first),
        charge_point_id=charge_point, connector_id=connector, transaction_id="1187",
        site_id=site, kind=kind, status=status, first_sample_ts=first,
        first_received_ts=first + 0.3, at_ts=at,
        evidence=evidence or f"{kind} on {charge_point}/{connector} for {after_s:.0f} s",
        detected_ts=at + 0.4, metrics={"seconds": after_s, "current_a": 0.0},
        processor="telemetry-1")


def snapshot(charge_point: str, updated: float, state: str = "Charging", connector: int = 1,
             power_w: float | None = 7200.0, energy_wh: float | None = 1500.0,
             site: str = "caltech") -> ConnectorStatusMessage:
    return ConnectorStatusMessage(
        charge_point_id=charge_point, connector_id=connector, site_id=site, state=state,
        transaction_id="1187" if state == "Charging" else None, power_w=power_w,
        energy_wh=energy_wh, current_a=30.0, current_offered_a=32.0, temperature_c=35.0,
        error_code="", last_sample_ts=updated - 0.1, updated_ts=updated,
        open_alerts=(), processor="telemetry-1")


def publish(kit, settings, items: list, key: str = "") -> None:
    """Publish contract messages under their own routing key, raw bytes under `key`; a
    snapshot goes as a batch of one, a list of snapshots as one batch."""
    for item in items:
        if isinstance(item, bytes):
            kit.publish(settings, [item], key=key)
        elif isinstance(item, LiveAlertMessage):
            kit.publish(settings, [encode_live_alert(item)], key=item.routing_key)
        else:
            batch = item if isinstance(item, list) else [item]
            for routing_key, body in encode_connector_statuses(batch):
                kit.publish(settings, [body], key=routing_key)


def outbox(settings) -> list[email.message.EmailMessage]:
    files = sorted(settings.outbox_dir.glob("*.eml")) if settings.outbox_dir.exists() else []
    return [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]


def rows(store, table) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]


@pytest.fixture
def store(mon_settings):
    store = MonitoringStore(mon_settings.monitoring_db)
    yield store
    store.close()


@pytest.fixture
def alert_settings(mon_settings):
    return mon_settings.model_copy(update={"smtp_port": free_port(), "alert_cooldown_s": 600})


@pytest.fixture
def sink(alert_settings):
    stack = LocalStack(alert_settings)
    stack.up(only=("smtp",))
    yield stack
    stack.smtp_process().stop()


def test_live_alerts_are_stored_once_per_episode_and_connectors_keep_their_newest_snapshot(
        mon_settings, store, kit):
    consumer = MonitoringConsumer(mon_settings, store, batch_size=50)
    assert consumer.rabbit.channel.is_open  # declares live.# and connector.# too
    no_current = live("CP-1", "no_current")
    cleared = replace(no_current, status="closed", at_ts=T0 + 300, detected_ts=T0 + 300.5,
                      evidence="current 29.5 A again")
    hot = live("CP-2", "overtemperature", site="0002")
    hot_closed_first = replace(hot, status="closed", at_ts=T0 + 90, evidence="cooled to 41 C")
    store.save_live_alerts([no_current])  # committed, then a crash before the ack: redelivered
    publish(kit, mon_settings, [no_current, snapshot("CP-1", T0 + 10), hot_closed_first,
                                snapshot("CP-1", T0 + 30, power_w=0.0), hot])
    publish(kit, mon_settings, [[snapshot("CP-1", T0 + 20, power_w=9999.0),  # late: older
                                 snapshot("CP-2", T0 + 5, state="Available", energy_wh=0.0)],
                                snapshot("CP-1", T0 + 30, power_w=0.0)])  # redelivered
    bad_kind = json.dumps({**EXAMPLE_LIVE_ALERT, "kind": "smoke"}).encode()
    publish(kit, mon_settings, [bad_kind], key="live.caltech.smoke")
    # a batch with one bad element is poison as a whole: its good snapshot is not stored
    poison = connector_status_body("caltech", "telemetry-1", [snapshot("CP-3", T0 + 50)] * 3)
    poison["connectors"][1]["connectorId"] = "one"
    publish(kit, mon_settings, [json.dumps(poison).encode()], key="connector.caltech.status")
    kit.publish(mon_settings, [kit.score_message(station="CA-1")])
    publish(kit, mon_settings, [cleared, cleared])

    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    assert (stats.received, stats.stored, stats.dead_lettered) == (12, 1, 2)
    assert stats.connector_messages == 5
    assert (stats.live_alerts, stats.live_duplicates) == (3, 2)  # hot: closed, then open
    # the late and the redelivered snapshot are never applied (nor one that a newer
    # snapshot of the same batch supersedes)
    assert stats.connector_snapshots + stats.connector_stale == 5
    assert stats.connector_stale >= 2

    episodes = {r["alert_id"]: r for r in rows(store, live_alerts)}
    assert len(episodes) == 2
    first = episodes[no_current.alert_id]
    assert (first["status"], first["charge_point_id"], first["connector_id"], first["kind"]) == (
        "closed", "CP-1", 1, "no_current")
    assert (first["first_sample_ts"], first["first_received_ts"]) == (T0, T0 + 0.3)
    assert (first["opened_ts"], first["closed_ts"]) == (T0 + 20, T0 + 300)
    assert first["evidence"] == no_current.evidence
    assert first["closed_evidence"] == "current 29.5 A again"
    assert first["metrics"] == {"seconds": 20.0, "current_a": 0.0}
    assert first["detected_ts"] == T0 + 20.4 and first["email_state"] is None
    # the closed event arrived first; the open event filled in its part, the status stays
    late_open = episodes[hot.alert_id]
    assert (late_open["status"], late_open["site_id"], late_open["opened_ts"]) == (
        "closed", "0002", T0 + 20)
    assert (late_open["evidence"], late_open["closed_evidence"]) == (hot.evidence,
                                                                    "cooled to 41 C")
    assert store.open_live_alerts() == []

    newest = {(r["charge_point_id"], r["connector_id"]): r for r in rows(store, connectors)}
    assert len(newest) == 2
    assert (newest["CP-1", 1]["updated_ts"], newest["CP-1", 1]["power_w"]) == (T0 + 30, 0.0)
    assert (newest["CP-2", 1]["state"], newest["CP-2", 1]["transaction_id"]) == (
        "Available", None)

    letters = queue_messages(mon_settings, dlq_name(mon_settings.monitoring_queue))
    assert sorted(h["source_routing_key"] for h, _ in letters) == [
        "connector.caltech.status", "live.caltech.smoke"]
    reasons = {h["source_routing_key"]: h["error"] for h, _ in letters}
    assert "kind must be one of" in reasons["live.caltech.smoke"]
    assert reasons["connector.caltech.status"].startswith(
        "1 of 3 snapshots are invalid: connectors[1]: connectorId must be an integer")
    assert queue_messages(mon_settings, mon_settings.monitoring_queue) == []  # all acked


def test_a_batch_of_snapshots_counts_by_its_snapshots_toward_the_consumers_batch(
        mon_settings, store, kit):
    consumer = MonitoringConsumer(mon_settings, store, batch_size=3)
    assert consumer.rabbit.channel.is_open
    publish(kit, mon_settings, [[snapshot(f"CP-{i}", T0 + i) for i in range(5)],
                                snapshot("CP-9", T0)])
    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    # five snapshots fill a batch of three on their own: stored before the next message
    assert (stats.received, stats.connector_messages, stats.batches) == (2, 2, 2)
    assert stats.connector_snapshots == 6 and len(rows(store, connectors)) == 6


def test_live_alerts_and_snapshots_are_acked_only_after_they_are_stored(mon_settings, store, kit):
    consumer = MonitoringConsumer(mon_settings, store)
    assert consumer.rabbit.channel.is_open
    publish(kit, mon_settings, [live(f"CP-{i}", "meter_frozen") for i in range(3)]
            + [snapshot("CP-9", T0 + i) for i in range(2)])  # two batches of one
    with store.engine.begin() as conn:  # the store loses its table: every commit fails
        connectors.drop(conn)
    with pytest.raises(OperationalError):
        consumer.drain(idle_s=0.6)
    assert wait_until(lambda: queue_depth(mon_settings, mon_settings.monitoring_queue) == 5, 5)
    metadata.create_all(store.engine)
    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    # the live alerts were committed before the snapshots failed: redelivered, stored once
    assert (stats.live_alerts, stats.live_duplicates, stats.connector_snapshots) == (0, 3, 1)
    assert len(rows(store, live_alerts)) == 3
    assert [r["updated_ts"] for r in rows(store, connectors)] == [T0 + 1]
    assert queue_messages(mon_settings, mon_settings.monitoring_queue) == []


def test_an_open_live_alert_is_emailed_once_per_episode_with_a_cooldown_per_connector_and_kind(
        alert_settings, sink, store, kit):
    clock = [T0 + 2.5]
    consumer = AlertConsumer(alert_settings, store, clock=lambda: clock[0])
    assert consumer.rabbit.channel.is_open  # binds live.*.*
    no_current = live("CP-1", "no_current",
                      evidence="current 0.0 A for 20 s while Charging, offered 32 A")
    other_connector = live("CP-1", "no_current", connector=2)
    other_kind = live("CP-1", "overcurrent")
    cleared = replace(no_current, status="closed", at_ts=T0 + 300, evidence="current is back")
    publish(kit, alert_settings, [no_current, other_connector, no_current, other_kind, cleared])
    outcomes = consumer.run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"live_emailed": 3, "live_redelivered": 1, "live_closed": 1}

    mails = {m["X-Evguard-Live-Alert"]: m for m in outbox(alert_settings)}
    assert sorted(mails) == sorted([no_current.alert_id, other_connector.alert_id,
                                    other_kind.alert_id])
    mail = mails[no_current.alert_id]
    assert mail["Subject"] == "[evguard] LIVE NO CURRENT on CP-1/1 (site caltech)"
    assert mail["X-Evguard-Live-Kind"] == "no_current"
    body = mail.get_content()
    assert "charger CP-1, connector 1 at site caltech, transaction 1187" in body
    assert "current 0.0 A for 20 s while Charging, offered 32 A" in body
    assert "since            2019-04-26 10:15:00 UTC (charger time" in body
    assert "this email 2.2 s later" in body  # first_received_ts = T0 + 0.3, now = T0 + 2.5
    assert "current_a" in body and "/live" in body
    episode = store.get_live_alert(no_current.alert_id)
    assert (episode["email_state"], episode["email_attempts"], episode["emailed_ts"]) == (
        "sent", 1, T0 + 2.5)
    assert episode["status"] == "closed"  # the alerting consumer stores the episode too

    # CP-1/1 flaps: a new no_current episode within the cooldown is stored, not emailed
    clock[0] += 60
    flap = live("CP-1", "no_current", first=T0 + 400)
    publish(kit, alert_settings, [flap, replace(flap, status="closed", at_ts=T0 + 460)])
    before = Counter(outcomes)  # the consumer keeps counting in the same Counter
    assert consumer.run(threading.Event(), idle_exit_s=0.6) - before == {
        "live_suppressed": 1, "live_closed": 1}
    assert store.get_live_alert(flap.alert_id)["email_state"] == "suppressed"
    # after the cooldown, a new episode of that connector and kind is emailed again
    clock[0] += alert_settings.alert_cooldown_s
    again = live("CP-1", "no_current", first=T0 + 2000)
    publish(kit, alert_settings, [again])
    assert consumer.run(threading.Event(), idle_exit_s=0.6)["live_emailed"] == 4
    assert len(outbox(alert_settings)) == 4
    assert store.get_live_alert(again.alert_id)["emailed_ts"] == clock[0]
    assert queue_messages(alert_settings, alert_settings.alerts_queue) == []


def test_an_undeliverable_live_alert_is_dead_lettered_and_poison_goes_with_its_reason(
        alert_settings, store, kit):
    settings = alert_settings.model_copy(update={"alert_max_attempts": 2})  # no SMTP sink
    consumer = AlertConsumer(settings, store)
    assert consumer.rabbit.channel.is_open
    faulted = live("CP-5", "faulted", evidence="Faulted with GroundFailure")
    publish(kit, settings, [faulted])
    publish(kit, settings, [b'{"schema": "evguard.live_alert/1"}'], key="live.caltech.faulted")
    outcomes = consumer.run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"dead_lettered": 1, "poison": 1}
    letters = queue_messages(settings, dlq_name(settings.alerts_queue))
    assert len(letters) == 2
    undelivered = next(h for h, body in letters if body == encode_live_alert(faulted))
    assert undelivered["attempts"] == 2 and "smtp" in undelivered["error"]
    assert undelivered["source_routing_key"] == "live.caltech.faulted"
    poison = next(h for h, body in letters if body != encode_live_alert(faulted))
    assert "connectorId" in poison["error"]
    episode = store.get_live_alert(faulted.alert_id)
    assert (episode["email_state"], episode["email_attempts"], episode["emailed_ts"]) == (
        "dead_lettered", 2, None)
    assert "smtp" in episode["email_error"]
    assert outbox(settings) == []
