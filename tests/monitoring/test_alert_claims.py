"""The alert consumers' shared state in the store (claims with a lease, cooldowns), on SQLite and
on the machine's PostgreSQL, raced by real processes; and what a consumer does with an alert
whose claim a dead consumer left behind (real RabbitMQ, the project's SMTP sink)."""

from __future__ import annotations

import email
import json
import subprocess
import sys
import threading
import time
import uuid
from email import policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from evguard.services.process import free_port, wait_until
from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer, stable_message_id
from pipelines.contracts.score_result import encode_score_result, parse_score_result
from pipelines.scores.store import MonitoringStore, alert_claims
from tests.support.postgres import fresh_schemas
from tests.support.queues import queue_messages

ROOT = Path(__file__).resolve().parents[2]
DEAD = "dead-host:1:00000000"  # a consumer that crashed holding a claim


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store_url(request, tmp_path):
    """A URL of a store nobody has created yet: a SQLite file, or an empty PostgreSQL schema."""
    if request.param == "sqlite":
        yield lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex[:8]}.db"
        return
    with fresh_schemas("evguard_claims") as new_url:
        yield new_url


RACER = """
import json, sys, time
from pipelines.scores.store import MonitoringStore
url, me = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
store = MonitoringStore(url)  # all create the new store's tables at once
print("created", flush=True)
sys.stdin.readline()
print(json.dumps({"claim": store.claim_alert("session:s-1:3", me, time.time(), 60),
                  "cooldown": store.take_cooldown("session:CA-7", f"alert-of-{me}",
                                                  time.time(), 600)}), flush=True)
"""


def race(url: str, racers: int) -> list[dict]:
    """`racers` processes create the new store at once, then claim one alert and take one
    cooldown at the same instant; what each one got. Each step starts when the parent has
    heard every racer finish the one before (a line on stdout) and says go to all at once."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, f"racer-{i}"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(racers)]
    try:
        for step in ("ready", "created"):
            heard = [p.stdout.readline().strip() for p in procs]
            assert heard == [step] * racers, (heard, [p.stderr.read()[-600:] for p in procs
                                                     if p.poll() is not None])
            for p in procs:
                p.stdin.write("go\n")
            for p in procs:
                p.stdin.flush()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err[-600:] for _, err in outputs]
    return [json.loads(out) for out, _ in outputs]


def test_of_processes_racing_for_a_claim_and_a_cooldown_exactly_one_wins_each(new_store_url):
    results = race(new_store_url(), racers=4)
    assert sum(r["claim"] for r in results) == 1, results
    assert sum(r["cooldown"] for r in results) == 1, results


def test_a_lapsed_claim_is_taken_over_once_and_a_released_one_is_free(new_store_url):
    store = MonitoringStore(new_store_url())
    try:
        assert store.claim_alert("live:a", "A", 100.0, 10)
        assert store.claim_alert("live:a", "A", 105.0, 10)  # renewed until 115
        assert not store.claim_alert("live:a", "B", 114.0, 10)
        assert store.claim_alert("live:a", "B", 115.0, 10)  # A's lease ran out
        assert not store.claim_alert("live:a", "A", 116.0, 10)
        store.release_alert("live:a", "A")  # not A's any more: changes nothing
        assert not store.claim_alert("live:a", "C", 116.0, 10)
        store.release_alert("live:a", "B")
        assert store.claim_alert("live:a", "C", 116.0, 10)
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(alert_claims.c.takeovers)).scalar_one() == 1

        assert store.take_cooldown("live:CP-1:1:no_current", "e1", 100.0, 600)
        assert store.take_cooldown("live:CP-1:1:no_current", "e1", 300.0, 600)  # same alert
        assert not store.take_cooldown("live:CP-1:1:no_current", "e2", 300.0, 600)
        store.restart_cooldown("live:CP-1:1:no_current", "e1", 200.0)  # delivered at 200
        assert not store.take_cooldown("live:CP-1:1:no_current", "e2", 790.0, 600)
        assert store.take_cooldown("live:CP-1:1:no_current", "e2", 800.0, 600)
        store.release_cooldown("live:CP-1:1:no_current", "e2")  # e2 was dead-lettered
        assert store.take_cooldown("live:CP-1:1:no_current", "e3", 801.0, 600)
    finally:
        store.close()


# ---- a consumer meeting the claim of a dead one ---------------------------------------

@pytest.fixture
def alert_settings(mon_settings):
    return mon_settings.model_copy(update={"smtp_port": free_port(), "alert_cooldown_s": 600,
                                           "alert_claim_lease_s": 5.0})


@pytest.fixture
def store(alert_settings):
    store = MonitoringStore(alert_settings.monitoring_db)
    yield store
    store.close()


@pytest.fixture
def sink(alert_settings):
    stack = LocalStack(alert_settings)
    stack.up(only=("smtp",))
    yield alert_settings.outbox_dir
    stack.smtp_process().stop()


def outbox(directory: Path) -> list[email.message.EmailMessage]:
    files = sorted(directory.glob("*.eml")) if directory.exists() else []
    return [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]


def takeovers(store: MonitoringStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.sum(alert_claims.c.takeovers))).scalar_one()


@pytest.mark.parametrize("state_at_crash, emails", [("pending", 1), ("sent", 0)])
def test_an_alert_a_dead_consumer_claimed_is_taken_over_after_its_lease(
        alert_settings, store, sink, kit, state_at_crash, emails):
    """The dead consumer claimed the alert, recorded it, and died before (`pending`) or after
    (`sent`) delivering it, without acking: the redelivered message is emailed once in all."""
    message = kit.score_message(station="CA-7", score=0.9)
    result = parse_score_result(encode_score_result(message)[1])
    key = f"session:{result.session_id}:{result.model_version}"
    assert store.claim_alert(key, DEAD, time.time(), lease_s=1.5)
    store.create_alert(result, "critical", state_at_crash, "subject")
    kit.publish(alert_settings, [message])

    outcomes = AlertConsumer(alert_settings, store).run(threading.Event(), idle_exit_s=0.6)

    assert outcomes == ({"sent": 1} if emails else {"redelivered": 1})
    mails = outbox(sink)
    assert len(mails) == emails
    assert [m["Message-ID"] for m in mails] == [stable_message_id(key)] * emails
    assert takeovers(store) == 1
    assert queue_messages(alert_settings, alert_settings.alerts_queue) == []


def test_a_consumer_that_lost_its_claim_while_smtp_was_down_requeues_the_message(
        alert_settings, store, kit):
    settings = alert_settings.model_copy(update={"alert_max_attempts": 100,
                                                 "alert_claim_lease_s": 1.0})
    message = kit.score_message(station="CA-8", score=0.9)
    kit.publish(settings, [message])
    stop = threading.Event()
    consumer = AlertConsumer(settings, store)
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    try:
        assert wait_until(lambda: any(row.holder == consumer.name for row in claims(store)), 10)
        with store.engine.begin() as conn:  # another consumer took it over (it stalled, say)
            conn.execute(sa.update(alert_claims).values(holder="other", lease_until_ts=1e12))
        assert wait_until(lambda: consumer.outcomes["requeued"] >= 1, 15), consumer.outcomes
    finally:
        stop.set()
        worker.join(15)
    assert not worker.is_alive()
    assert [json.loads(body)["sessionID"] for _, body in
            queue_messages(settings, settings.alerts_queue)] == [message["sessionID"]]


def claims(store: MonitoringStore) -> list:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(alert_claims)))
