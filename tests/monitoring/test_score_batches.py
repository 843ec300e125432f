"""Batches of score results (`evguard.scores/2`) through the monitoring and alerting consumers,
against the real RabbitMQ, SQLite store and SMTP sink; version-1 messages still accepted."""

from __future__ import annotations

import email
import threading
from email import policy

import orjson
import pytest
from sqlalchemy import select

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from monitoring.monitor import MonitoringConsumer
from pipelines.contracts.dead_letters import dlq_name, read_bad_elements
from pipelines.scores.store import MonitoringStore, alerts
from tests.support.queues import queue_messages


class RecordingStore(MonitoringStore):
    """The real store, noting how many results each transaction held."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.transactions: list[int] = []

    def save_scores(self, results, now=None):
        if results:
            self.transactions.append(len(results))
        return super().save_scores(results, now=now)


@pytest.fixture
def settings(mon_settings):
    return mon_settings.model_copy(update={"smtp_port": free_port(), "alert_cooldown_s": 600})


@pytest.fixture
def store(settings):
    store = RecordingStore(settings.monitoring_db)
    yield store
    store.close()


@pytest.fixture
def sink(settings):
    stack = LocalStack(settings)
    yield stack
    stack.smtp_process().stop()


def spoiled(message: tuple[str, bytes], index: int, column: str, value) -> tuple[str, bytes]:
    """A batch message with one field of one element broken."""
    key, body = message
    data = orjson.loads(body)
    data["results"][column][index] = value
    return key, orjson.dumps(data)


def mailed_sessions(settings) -> list[str]:
    files = sorted(settings.outbox_dir.glob("*.eml")) if settings.outbox_dir.exists() else []
    return sorted(email.message_from_bytes(f.read_bytes(), policy=policy.default)
                  ["X-Evguard-Session"] for f in files)


def alert_states(store) -> dict[str, str]:
    with store.engine.connect() as conn:
        return {r.session_id: r.state for r in conn.execute(select(alerts))}


def test_monitor_stores_the_good_results_of_a_batch_and_dead_letters_it_with_the_bad_ones(
        settings, store, kit):
    normal = [kit.score_message(station=f"CA-{i}", score=0.3) for i in range(5)]
    anomalous = [kit.score_message(station="CA-9", score=0.9) for _ in range(2)]
    batches = kit.score_batch(normal + anomalous)
    assert [key for key, _ in batches] == ["score.0002.normal", "score.0002.anomaly"]
    bad = spoiled(batches[0], 3, "sessionID", "")
    kit.publish(settings, [bad, batches[1]])
    consumer = MonitoringConsumer(settings, store)
    stats = consumer.drain(idle_s=0.6)
    consumer.close()

    stored = {r["session_id"] for r in store.scores_between(0, 4e9)}
    good = [m["sessionID"] for i, m in enumerate(normal + anomalous) if i != 3]
    assert stored == set(good) and store.count_scores() == 6
    assert (stats.received, stats.stored, stats.dead_lettered, stats.invalid_results) == \
        (2, 6, 1, 1)
    [(headers, body)] = queue_messages(settings, dlq_name(settings.monitoring_queue))
    assert body == bad[1]  # the whole batch, unchanged
    assert read_bad_elements(headers) == [(3, "sessionID must be a non-empty string, got ''")]
    assert headers["source_routing_key"] == "score.0002.normal"
    assert "1 of 5 results rejected: 3: sessionID" in headers["error"]
    assert queue_messages(settings, settings.monitoring_queue) == []  # acked after the commit


def test_monitor_bounds_a_transaction_by_results_and_takes_version_1_beside_batches(
        settings, store, kit):
    batches = [kit.score_batch([kit.score_message(station=f"CA-{b}-{i}") for i in range(40)])
               for b in range(3)]
    single = [kit.score_message(station="CA-v1") for _ in range(3)]
    kit.publish(settings, [m for batch in batches for m in batch] + single)
    # redelivered in the other version: stored once per (sessionID, model version)
    kit.publish(settings, kit.score_batch(single) + batches[0])
    consumer = MonitoringConsumer(settings, store, batch_size=50)
    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    assert store.count_scores() == 123
    assert (stats.received, stats.stored, stats.duplicates) == (8, 123, 43)
    # a transaction closes once it holds 50 results: at most one more batch of 40 goes in
    assert sum(store.transactions) == 166 and max(store.transactions) <= 89


def test_alerter_alerts_the_good_anomalies_of_a_batch_and_dead_letters_it_with_the_bad_one(
        settings, sink, store, kit):
    sink.up(only=("smtp",))
    anomalies = [kit.score_message(station=f"CA-{i}", score=0.9) for i in range(4)]
    [batch] = kit.score_batch(anomalies)
    bad = spoiled(batch, 1, "score", "high")
    kit.publish(settings, [bad])
    outcomes = AlertConsumer(settings, store).run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"sent": 3, "poison": 1}
    good = sorted(m["sessionID"] for i, m in enumerate(anomalies) if i != 1)
    assert mailed_sessions(settings) == good
    assert alert_states(store) == dict.fromkeys(good, "sent")
    [(headers, body)] = queue_messages(settings, dlq_name(settings.alerts_queue))
    assert body == bad[1]
    assert read_bad_elements(headers) == [(1, "score must be a finite number, got 'high'")]
    assert queue_messages(settings, settings.alerts_queue) == []


def test_alerter_takes_version_1_and_batches_and_alerts_a_session_once_in_either(
        settings, sink, store, kit):
    sink.up(only=("smtp",))
    first, second = (kit.score_message(station=s, score=0.9) for s in ("CA-1", "CA-2"))
    # the same results as one version-1 message each (an old worker) and in a batch (a new one)
    kit.publish(settings, [first, *kit.score_batch([first, second]), second])
    outcomes = AlertConsumer(settings, store).run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"sent": 2, "redelivered": 2}
    assert mailed_sessions(settings) == sorted([first["sessionID"], second["sessionID"]])
    assert queue_messages(settings, settings.alerts_queue) == []


def test_an_undeliverable_alert_of_a_batch_is_dead_lettered_naming_its_element(
        settings, store, kit):
    settings = settings.model_copy(update={"alert_max_attempts": 2})  # no SMTP server
    anomalies = [kit.score_message(station=f"CA-{i}", score=0.9) for i in range(2)]
    [batch] = kit.score_batch(anomalies)
    kit.publish(settings, [batch])
    outcomes = AlertConsumer(settings, store).run(threading.Event(), idle_exit_s=0.6)
    assert outcomes == {"dead_lettered": 2}
    letters = queue_messages(settings, dlq_name(settings.alerts_queue))
    assert [body for _, body in letters] == [batch[1]] * 2
    named = sorted(index for headers, _ in letters for index, _ in read_bad_elements(headers))
    assert named == [0, 1]
    assert all(h["attempts"] == 2 and h["result_count"] == 2 for h, _ in letters)
    assert set(alert_states(store).values()) == {"dead_lettered"}
    assert queue_messages(settings, settings.alerts_queue) == []
