"""The alerting consumer against the real RabbitMQ and the real local SMTP sink."""

from __future__ import annotations

import email
import json
import threading
from email import policy
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from sqlalchemy import select

from evguard.services.process import free_port, wait_until
from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from pipelines.contracts.dead_letters import dlq_name
from pipelines.scores.store import MonitoringStore, alerts
from tests.support.queues import queue_messages


@pytest.fixture
def alert_settings(mon_settings, kit):
    return mon_settings.model_copy(update={"smtp_port": free_port(), "alert_cooldown_s": 600})


@pytest.fixture
def sink(alert_settings):
    """The project's SMTP sink for these settings; started by the test when it wants it."""
    stack = LocalStack(alert_settings)
    yield stack
    stack.smtp_process().stop()


@pytest.fixture
def store(alert_settings):
    store = MonitoringStore(alert_settings.monitoring_db)
    yield store
    store.close()


def outbox(settings) -> list[email.message.EmailMessage]:
    files = sorted(settings.outbox_dir.glob("*.eml")) if settings.outbox_dir.exists() else []
    return [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]


def alert_rows(store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(alerts).order_by(alerts.c.id))]


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_a_burst_from_one_station_sends_one_explained_email_per_cooldown(
        alert_settings, sink, store, kit):
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    settings = alert_settings.model_copy(update={
        "alert_webhook_url": f"http://127.0.0.1:{hook.server_port}/hook"})
    sink.up(only=("smtp",))
    burst = [kit.score_message(station="CA-7", score=0.60 + i * 0.05,
                               features={"avg_kw": 41.0 + i, "idle_h": 0.1, "kwh": 20.0})
             for i in range(6)]
    other = [kit.score_message(station="CA-9", site="0001", score=0.95) for _ in range(2)]
    normal = [kit.score_message(station="CA-7", score=0.2) for _ in range(3)]
    kit.publish(settings, burst[:3] + other[:1] + normal + burst[3:] + other[1:])
    clock = [1_000_000.0]
    consumer = AlertConsumer(settings, store, clock=lambda: clock[0])
    outcomes = consumer.run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"sent": 2, "suppressed": 6}

    mails = outbox(settings)
    assert len(mails) == 2
    first = next(m for m in mails if "CA-7" in m["Subject"])
    assert first["Subject"] == "[evguard] MINOR anomaly at station CA-7 (site 0002)"
    body = first.get_content()
    assert burst[0]["sessionID"] in body and "0.6000 against threshold 0.5800" in body
    assert "avg_kw" in body and "41" in body and "typical        3.2" in body
    assert "version 3" in body
    rows = alert_rows(store)
    by_station = {s: [r["state"] for r in rows if r["station_id"] == s] for s in ("CA-7", "CA-9")}
    assert by_station == {"CA-7": ["sent"] + ["suppressed"] * 5, "CA-9": ["sent", "suppressed"]}
    assert sorted(h["text"].split(":")[0] for h in _Hook.received) == sorted(
        m["Subject"] for m in mails)  # outbox names do not keep the order within a second
    assert all(r["webhook_state"] == "sent" for r in rows if r["state"] == "sent")

    # a redelivered message is not alerted twice; after the cooldown the station alerts again
    kit.publish(settings, burst[:1])
    clock[0] += settings.alert_cooldown_s + 1
    late = kit.score_message(station="CA-7", score=0.99)
    kit.publish(settings, [late])
    outcomes = consumer.run(threading.Event(), idle_exit_s=0.6)
    hook.shutdown()
    assert outcomes == {"sent": 3, "suppressed": 6, "redelivered": 1}
    mails = outbox(settings)
    assert len(mails) == 3
    assert any(m["Subject"].startswith("[evguard] CRITICAL") and late["sessionID"] in
               m.get_content() for m in mails)


def test_smtp_down_then_up_delivers_every_alert(alert_settings, sink, store, kit):
    settings = alert_settings.model_copy(update={"alert_max_attempts": 100})
    messages = [kit.score_message(station=f"CA-{i}", score=0.9) for i in range(3)]
    kit.publish(settings, messages)
    stop = threading.Event()
    consumer = AlertConsumer(settings, store)
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    try:
        assert wait_until(lambda: any(r["attempts"] >= 3 and r["state"] == "retrying"
                                      for r in alert_rows(store)), 15)
        assert outbox(settings) == []
        sink.up(only=("smtp",))
        assert wait_until(lambda: len(outbox(settings)) == 3, 20), alert_rows(store)
    finally:
        stop.set()
        worker.join(10)
    rows = alert_rows(store)
    assert [r["state"] for r in rows] == ["sent"] * 3
    assert rows[0]["attempts"] >= 3 and "smtp" not in (rows[0]["last_error"] or "")
    got = sorted(m["X-Evguard-Session"] for m in outbox(settings))
    assert got == sorted(m["sessionID"] for m in messages)
    assert queue_messages(settings, settings.alerts_queue) == []
    assert queue_messages(settings, dlq_name(settings.alerts_queue)) == []


def test_an_alert_that_cannot_be_delivered_is_dead_lettered_and_recorded(
        alert_settings, store, kit):
    settings = alert_settings.model_copy(update={"alert_max_attempts": 3})
    message = kit.score_message(station="CA-3", score=0.9)
    kit.publish(settings, [message, b"{broken"])
    outcomes = AlertConsumer(settings, store).run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"dead_lettered": 1, "poison": 1}
    letters = queue_messages(settings, dlq_name(settings.alerts_queue))
    assert len(letters) == 2
    undelivered = next(h for h, body in letters if json.loads(body) == message)
    assert undelivered["attempts"] == 3 and "smtp" in undelivered["error"]
    [row] = alert_rows(store)
    assert row["state"] == "dead_lettered" and row["attempts"] == 3
    assert queue_messages(settings, settings.alerts_queue) == []
