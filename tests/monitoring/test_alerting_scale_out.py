"""Alerting scales out: two `evguard alert` processes on ONE queue, real RabbitMQ, the project's
SMTP sink, the store on SQLite and on the machine's PostgreSQL.

A burst of anomalous sessions (several per station, each result published twice, as a
replaying worker does), station alert events and live alert events (each twice, and a second
episode per connector within the cooldown) is emailed exactly once per alert: one email per
station per cooldown, one per station alert event, one per connector and fault. A second
burst loses nothing when one consumer is SIGKILLed in the middle of it; a re-sent email is
allowed only for the one alert the killed consumer held, and it carries the same Message-ID.
"""

from __future__ import annotations

import email
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from email import policy
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa

from evguard.services.process import free_port, wait_until
from evguard.services.stack import LocalStack
from pipelines.contracts.live_alert import LiveAlertMessage, encode_live_alert, live_alert_id
from pipelines.contracts.score_result import encode_score_result
from pipelines.contracts.station_alert import (
    StationAlertMessage,
    encode_station_alert,
    station_alert_id,
)
from pipelines.settings import Settings, settings_env
from tests.support.postgres import fresh_schemas

EVGUARD = Path(sys.executable).with_name("evguard")
LEASE_S = 3  # how long a dead consumer's claim blocks the alert it held
T0 = 1_556_236_800.0  # Fri, 26 Apr 2019 00:00 UTC


@pytest.fixture
def store_url():
    """The monitoring store both consumers share: a schema of its own on the machine's
    PostgreSQL (dropped afterwards), the docker-compose store. The claim races on SQLite and
    PostgreSQL alike are in test_alert_claims.py."""
    with fresh_schemas("evguard_scale") as new_url:
        yield new_url()


@pytest.fixture
def settings(mon_settings, store_url):
    return mon_settings.model_copy(update={"monitoring_db_url": store_url,
                                           "smtp_port": free_port(), "alert_cooldown_s": 600})


@pytest.fixture
def sink(settings):
    stack = LocalStack(settings)
    stack.up(only=("smtp",))
    yield settings.outbox_dir
    stack.smtp_process().stop()


class Consumers:
    """`evguard alert` child processes, each in its own session, logging to a file."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.env = {**os.environ, **settings_env(settings),
                    "EVGUARD_ALERT_CLAIM_LEASE_S": str(LEASE_S)}
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log = self.logs / f"alert-{len(self.procs)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(EVGUARD), "alert"], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.logs / f"alert-{index}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def queue_state(settings: Settings) -> tuple[int, int]:
    """(messages ready, consumers) of the alerts queue."""
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        declared = conn.channel().queue_declare(settings.alerts_queue, passive=True).method
        return declared.message_count, declared.consumer_count


def publish(settings: Settings, bodies: list[tuple[str, bytes]]) -> None:
    with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for key, body in bodies:
            channel.basic_publish(settings.rabbitmq_exchange, key, body,
                                  pika.BasicProperties(delivery_mode=2))


def station_event(station: str, status: str, opened: float) -> StationAlertMessage:
    at = opened + (0 if status == "open" else 7200)
    return StationAlertMessage(
        alert_id=station_alert_id(station, "silent", opened), station_id=station,
        site_id="0002", kind="silent", status=status, opened_ts=opened, at_ts=at,
        evidence=f"no session at {station} for 27 h", detected_ts=at + 2,
        metrics={"hours": 27.0}, worker="w-1")


def live_event(charge_point: str, first: float) -> LiveAlertMessage:
    return LiveAlertMessage(
        alert_id=live_alert_id(charge_point, 1, "no_current", first),
        charge_point_id=charge_point, connector_id=1, transaction_id="1187", site_id="caltech",
        kind="no_current", status="open", first_sample_ts=first, first_received_ts=first + 0.3,
        at_ts=first + 20, evidence=f"no current on {charge_point}/1 for 20 s",
        detected_ts=time.time(), metrics={"seconds": 20.0}, processor="telemetry-1")


@dataclass
class Burst:
    """What is published, and which emails it must produce (by the alert each one is for)."""

    bodies: list[tuple[str, bytes]] = field(default_factory=list)
    expected: set[str] = field(default_factory=set)  # one key per email that must arrive
    # anomalies per station: the email of a station may name any one of them
    sessions_by_station: dict[str, set[str]] = field(default_factory=dict)
    live_by_connector: dict[str, set[str]] = field(default_factory=dict)


def make_burst(kit, tag: str, stations: int, per_station: int, connectors: int,
               station_alerts: int, closing: list[StationAlertMessage] = ()) -> tuple[Burst, list]:
    """Every message twice in a row, so the two consumers get the copies at the same time."""
    burst = Burst()
    for s in range(stations):
        station = f"{tag}-ST-{s}"
        burst.expected.add(f"session-station:{station}")
        for _ in range(per_station):
            message = kit.score_message(station=station, score=0.9)
            burst.sessions_by_station.setdefault(station, set()).add(message["sessionID"])
            burst.bodies += [encode_score_result(message)] * 2
    for c in range(connectors):
        charge_point = f"{tag}-CP-{c}"
        burst.expected.add(f"live-connector:{charge_point}")
        for episode in range(2):  # the second within the cooldown: not emailed
            event = live_event(charge_point, T0 + 3600 * episode)
            burst.live_by_connector.setdefault(charge_point, set()).add(event.alert_id)
            burst.bodies += [(event.routing_key, encode_live_alert(event))] * 2
    opened = []
    for a in range(station_alerts):
        event = station_event(f"{tag}-SA-{a}", "open", T0)
        opened.append(event)
        burst.expected.add(f"station:{event.alert_id}:open")
        burst.bodies += [(event.routing_key, encode_station_alert(event))] * 2
    for event in closing:
        closed = station_event(event.station_id, "closed", event.opened_ts)
        burst.expected.add(f"station:{closed.alert_id}:closed")
        burst.bodies += [(closed.routing_key, encode_station_alert(closed))] * 2
    return burst, opened


def read_outbox(outbox: Path) -> list[email.message.EmailMessage]:
    files = sorted(outbox.glob("*.eml")) if outbox.exists() else []
    return [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]


def alert_key(mail: email.message.EmailMessage, bursts: list[Burst]) -> str:
    """Which alert an email is for: a station's anomalies, a connector's fault, a station alert
    event."""
    if mail["X-Evguard-Session"]:
        session = mail["X-Evguard-Session"]
        station = next(s for b in bursts for s, ids in b.sessions_by_station.items()
                       if session in ids)
        return f"session-station:{station}"
    if mail["X-Evguard-Live-Alert"]:
        alert_id = mail["X-Evguard-Live-Alert"]
        charge_point = next(c for b in bursts for c, ids in b.live_by_connector.items()
                            if alert_id in ids)
        return f"live-connector:{charge_point}"
    return f"station:{mail['X-Evguard-Station-Alert']}:{mail['X-Evguard-Station-Alert-Status']}"


def tally(outbox: Path, bursts: list[Burst]) -> tuple[Counter, dict[str, set[str]]]:
    """Emails per alert, and the Message-IDs each alert's emails carried."""
    counts: Counter = Counter()
    message_ids: dict[str, set[str]] = {}
    for mail in read_outbox(outbox):
        key = alert_key(mail, bursts)
        counts[key] += 1
        message_ids.setdefault(key, set()).add(mail["Message-ID"])
    return counts, message_ids


def holds_a_claim(store_url: str, pid: int) -> bool:
    """Whether the consumer with this PID holds a claim on an alert right now."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT COUNT(*) FROM alert_claims WHERE holder LIKE :me"),
                {"me": f"{socket.gethostname()}:{pid}:%"}).scalar_one() > 0
    finally:
        engine.dispose()


def taken_over(store_url: str) -> int:
    """Claims taken from a consumer whose lease ran out (the killed one's)."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT COALESCE(SUM(takeovers), 0) FROM alert_claims")).scalar_one()
    finally:
        engine.dispose()


def test_two_consumers_on_one_queue_email_each_alert_once_even_when_one_is_killed(
        settings, sink, kit, store_url, tmp_path):
    consumers = Consumers(settings, tmp_path)
    try:
        first, second = consumers.start(), consumers.start()
        assert wait_until(lambda: queue_state(settings)[1] == 2, 60), \
            (consumers.log(0), consumers.log(1))

        # burst 1: both consumers alive
        one, opened = make_burst(kit, "b1", stations=25, per_station=3, connectors=12,
                                 station_alerts=10)
        publish(settings, one.bodies)
        assert wait_until(lambda: set(tally(sink, [one])[0]) >= one.expected, 90), \
            (tally(sink, [one])[0], consumers.log(0), consumers.log(1))
        assert wait_until(lambda: queue_state(settings)[0] == 0, 30)
        time.sleep(1.5)  # a duplicate would come now
        counts, _ = tally(sink, [one])
        print(f"burst 1: {len(one.bodies)} messages, {len(one.expected)} alerts, "
              f"{sum(counts.values())} emails")
        assert set(counts) == one.expected
        repeated = {k: n for k, n in counts.items() if n != 1}
        assert not repeated, (f"{len(repeated)} of {len(one.expected)} alerts emailed more than "
                              f"once: {sorted(repeated.items())}")

        # burst 2: one consumer is killed with SIGKILL once a third of its emails are out
        two, _ = make_burst(kit, "b2", stations=40, per_station=3, connectors=16,
                            station_alerts=10, closing=opened)
        before = sum(counts.values())
        publish(settings, two.bodies)
        assert wait_until(lambda: sum(tally(sink, [one, two])[0].values()) - before
                          >= len(two.expected) // 3, 90)
        # best when it holds an alert's claim: that alert must then be taken over
        wait_until(lambda: holds_a_claim(store_url, first.pid), 5, interval=0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = sum(tally(sink, [one, two])[0].values()) - before
        assert second.poll() is None

        expected = one.expected | two.expected
        assert wait_until(lambda: set(tally(sink, [one, two])[0]) >= expected, 120), \
            (sorted(expected - set(tally(sink, [one, two])[0])), consumers.log(1))
        assert wait_until(lambda: queue_state(settings)[0] == 0, 30)
        time.sleep(LEASE_S + 1.5)  # the killed one's claim expires: its alert comes now if due
        consumers.stop_all()
        assert queue_state(settings)[0] == 0, "every message was acked"

        counts, message_ids = tally(sink, [one, two])
        repeated = {k: n for k, n in counts.items() if n != 1}
        takeovers = taken_over(store_url)
        print(f"burst 2: {len(two.bodies)} messages, {len(two.expected)} alerts, "
              f"{sum(counts.values()) - before} emails, killed after {killed_at}; "
              f"re-sent {repeated}, claims taken over {takeovers}")
        assert set(counts) == expected, "no alert lost, none unexpected"
        # the one alert the killed consumer held may have been accepted by SMTP just before
        # the kill: then it is re-sent once, under the same Message-ID
        assert len(repeated) <= 1 and all(n == 2 for n in repeated.values()), repeated
        assert all(len(message_ids[k]) == 1 for k in repeated)
        assert takeovers <= 1 and len(repeated) <= takeovers
        assert "alerts:" in consumers.log(1)
    finally:
        consumers.stop_all()
