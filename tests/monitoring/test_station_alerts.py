"""Station alerts (contract §5a) through the real RabbitMQ: stored by the monitoring consumer,
emailed by the alerting consumer through the project's SMTP sink."""

from __future__ import annotations

import email
import json
import threading
from collections import Counter
from email import policy

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from evguard.services.process import free_port, wait_until
from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from monitoring.monitor import MonitoringConsumer
from monitoring.rabbit import queue_depth
from pipelines.contracts.dead_letters import dlq_name
from pipelines.contracts.station_alert import (
    EXAMPLE_STATION_ALERT,
    StationAlertMessage,
    encode_station_alert,
    station_alert_id,
)
from pipelines.scores.store import MonitoringStore, metadata, station_alerts, station_notices
from tests.support.queues import queue_messages

T0 = 1_556_236_800.0  # Fri, 26 Apr 2019 00:00 UTC


def event(station: str, kind: str, status: str = "open", opened: float = T0,
          hours: float = 0.0, site: str = "0002", evidence: str | None = None) -> StationAlertMessage:
    """One detector event, as the worker publishes it."""
    at = opened + hours * 3600
    return StationAlertMessage(
        alert_id=station_alert_id(station, kind, opened), station_id=station, site_id=site,
        kind=kind, status=status, opened_ts=opened, at_ts=at,
        evidence=evidence or f"{kind} at {station}: evidence {int(opened)}",
        detected_ts=at + 2, metrics={"hours": hours, "expected": 6.2}, worker="w-1")


def publish(kit, settings, events: list[StationAlertMessage | bytes], key: str = "") -> None:
    for item in events:
        if isinstance(item, bytes):
            kit.publish(settings, [item], key=key)
        else:
            kit.publish(settings, [encode_station_alert(item)], key=item.routing_key)


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


def test_station_alerts_are_stored_once_beside_the_scores_and_poison_is_dead_lettered(
        mon_settings, store, kit):
    consumer = MonitoringConsumer(mon_settings, store, batch_size=50)
    assert consumer.rabbit.channel.is_open  # declares the queue's bindings, station.# too
    silent = event("CA-1", "silent")
    failing = event("CA-2", "failing", opened=T0 + 3600)
    degraded = event("CA-3", "degraded", site="0001")
    recovered = event("CA-1", "silent", "closed", hours=31, evidence="a session again after 31 h")
    # CA-4 was silent; the worker lost that episode's close and opened a newer one, now closed
    lost = event("CA-4", "silent")
    newer = [event("CA-4", "silent", opened=T0 + 86_400),
             event("CA-4", "silent", "closed", opened=T0 + 86_400, hours=5)]
    bad_kind = json.dumps({**EXAMPLE_STATION_ALERT, "kind": "slow"}).encode()
    scores = [kit.score_message(station=f"CA-{i}") for i in range(5)]
    store.save_station_alerts([degraded])  # committed, then a crash before the ack: redelivered
    kit.publish(mon_settings, scores[:2])
    publish(kit, mon_settings, [silent, failing, degraded, failing])  # failing: published twice
    publish(kit, mon_settings, [bad_kind], key="station.0002.silent")
    kit.publish(mon_settings, scores[2:])
    publish(kit, mon_settings, [recovered, lost, *newer])

    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    assert (stats.received, stats.stored) == (14, 5)
    assert (stats.station_alerts, stats.station_duplicates, stats.dead_lettered) == (6, 2, 1)
    stored = rows(store, station_alerts)
    assert len(stored) == 7 and store.count_scores() == 5
    assert [(r["status"], r["at_ts"] - r["opened_ts"]) for r in
            store.station_alert_events(silent.alert_id)] == [("open", 0), ("closed", 31 * 3600)]
    first = next(r for r in stored if r["alert_id"] == failing.alert_id)
    assert (first["station_id"], first["site_id"], first["kind"], first["worker"]) == (
        "CA-2", "0002", "failing", "w-1")
    assert first["metrics"] == {"hours": 0.0, "expected": 6.2}
    assert first["detected_ts"] == T0 + 3600 + 2 and first["evidence"] == failing.evidence
    # current status = the newest event of the newest episode of each station and kind
    assert [(r["station_id"], r["kind"]) for r in store.open_station_alerts()] == [
        ("CA-2", "failing"), ("CA-3", "degraded")]

    [(headers, body)] = queue_messages(mon_settings, dlq_name(mon_settings.monitoring_queue))
    assert body == bad_kind and "kind must be one of" in headers["error"]
    assert headers["source_routing_key"] == "station.0002.silent"
    assert queue_messages(mon_settings, mon_settings.monitoring_queue) == []  # all acked


def test_station_alerts_are_acked_only_after_they_are_stored(mon_settings, store, kit):
    consumer = MonitoringConsumer(mon_settings, store)
    assert consumer.rabbit.channel.is_open
    events = [event(f"CA-{i}", "degraded") for i in range(4)]
    publish(kit, mon_settings, events)
    with store.engine.begin() as conn:  # the store loses its table: every commit fails
        station_alerts.drop(conn)
    with pytest.raises(OperationalError):
        consumer.drain(idle_s=0.6)
    assert wait_until(lambda: queue_depth(mon_settings, mon_settings.monitoring_queue) == 4, 5)
    metadata.create_all(store.engine)
    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    assert stats.station_alerts == 4 and len(rows(store, station_alerts)) == 4
    assert queue_messages(mon_settings, mon_settings.monitoring_queue) == []


def test_a_station_alert_is_emailed_once_when_it_opens_and_once_when_it_recovers(
        alert_settings, sink, store, kit):
    clock = [T0 + 100_000]
    consumer = AlertConsumer(alert_settings, store, clock=lambda: clock[0])
    assert consumer.rabbit.channel.is_open  # binds station.*.*
    silent = event("CA-1", "silent", evidence="no session for 27 h; 6.2 expected in that window")
    degraded = event("CA-2", "degraded", site="0001")
    recovered = event("CA-1", "silent", "closed", hours=31,
                      evidence="a session again after 31 h")
    anomaly = kit.score_message(station="CA-9", score=0.95)
    publish(kit, alert_settings, [silent, degraded, silent])  # a repeated open event
    kit.publish(alert_settings, [anomaly])
    publish(kit, alert_settings, [recovered, recovered])
    outcomes = consumer.run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"station_opened": 2, "station_recovered": 1,
                        "station_redelivered": 2, "sent": 1}

    mails = {m["X-Evguard-Station-Alert"] + "/" + m["X-Evguard-Station-Alert-Status"]: m
             for m in outbox(alert_settings) if m["X-Evguard-Station-Alert"]}
    assert sorted(mails) == sorted([f"{silent.alert_id}/open", f"{degraded.alert_id}/open",
                                    f"{silent.alert_id}/closed"])
    opened = mails[f"{silent.alert_id}/open"]
    assert opened["Subject"] == "[evguard] SILENT station CA-1 (site 0002)"
    body = opened.get_content()
    assert "no session for 27 h; 6.2 expected in that window" in body
    assert "open since       2019-04-26 00:00:00 UTC" in body and "worker w-1" in body
    assert "expected" in body and "6.2" in body and "/stations" in body
    assert mails[f"{degraded.alert_id}/open"]["Subject"] == \
        "[evguard] DEGRADED station CA-2 (site 0001)"
    closed = mails[f"{silent.alert_id}/closed"]
    assert closed["Subject"] == "[evguard] RECOVERED station CA-1 (site 0002): no longer silent"
    assert "closed after 31.0 h" in closed.get_content()
    assert "a session again after 31 h" in closed.get_content()
    assert len(outbox(alert_settings)) == 4  # and the session's own alert

    # CA-1 flaps: a new episode within the cooldown is shown, not emailed, nor is its close
    clock[0] += 60
    flap = event("CA-1", "silent", opened=T0 + 200_000)
    flap_closed = event("CA-1", "silent", "closed", opened=T0 + 200_000, hours=2)
    publish(kit, alert_settings, [flap, flap_closed])
    before = Counter(outcomes)  # the consumer keeps counting in the same Counter
    assert consumer.run(threading.Event(), idle_exit_s=0.6) - before == {
        "station_suppressed": 1, "station_recorded": 1}
    # after the cooldown, a new episode is emailed again
    clock[0] += alert_settings.alert_cooldown_s
    again = event("CA-1", "silent", opened=T0 + 300_000)
    publish(kit, alert_settings, [again])
    assert consumer.run(threading.Event(), idle_exit_s=0.6)["station_opened"] == 3
    assert len(outbox(alert_settings)) == 5
    states = {(r["alert_id"], r["status"]): r["state"] for r in rows(store, station_notices)}
    assert states == {(silent.alert_id, "open"): "sent", (silent.alert_id, "closed"): "sent",
                      (degraded.alert_id, "open"): "sent",
                      (flap.alert_id, "open"): "suppressed", (flap.alert_id, "closed"): "recorded",
                      (again.alert_id, "open"): "sent"}
    assert queue_messages(alert_settings, alert_settings.alerts_queue) == []


def test_an_undeliverable_station_alert_is_dead_lettered_and_its_recovery_recorded_silently(
        alert_settings, store, kit):
    settings = alert_settings.model_copy(update={"alert_max_attempts": 2})  # no SMTP sink
    consumer = AlertConsumer(settings, store)
    assert consumer.rabbit.channel.is_open
    failing = event("CA-5", "failing")
    publish(kit, settings, [failing, event("CA-5", "failing", "closed", hours=3)])
    publish(kit, settings, [b'{"schema": "evguard.station_alert/1"}'], key="station.0002.failing")
    outcomes = consumer.run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"dead_lettered": 1, "station_recorded": 1, "poison": 1}
    letters = queue_messages(settings, dlq_name(settings.alerts_queue))
    assert len(letters) == 2
    undelivered = next(h for h, body in letters if body == encode_station_alert(failing))
    assert undelivered["attempts"] == 2 and "smtp" in undelivered["error"]
    assert undelivered["source_routing_key"] == "station.0002.failing"
    poison = next(h for h, body in letters if body != encode_station_alert(failing))
    assert "opened_at is not ISO-8601" in poison["error"]
    assert [(r["status"], r["state"], r["attempts"]) for r in rows(store, station_notices)] == [
        ("open", "dead_lettered", 2), ("closed", "recorded", 0)]
    assert outbox(settings) == []
