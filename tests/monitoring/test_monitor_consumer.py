"""The monitoring consumer against the real RabbitMQ and a real SQLite store."""

from __future__ import annotations

import json
import random
import time

import pytest

from monitoring.monitor import MonitoringConsumer
from pipelines.contracts.dead_letters import dlq_name
from pipelines.contracts.score_result import parse_score_result
from pipelines.scores.store import MonitoringStore
from tests.support.queues import queue_messages


@pytest.fixture
def store(mon_settings):
    store = MonitoringStore(mon_settings.monitoring_db)
    yield store
    store.close()


def test_every_result_is_stored_once_even_when_redelivered(mon_settings, store, kit):
    messages = [kit.score_message(station=f"CA-{i % 7}", score=0.9 if i % 10 == 0 else 0.3)
                for i in range(120)]
    # a crash after the commit of the first 30 but before their ack: they come again
    store.save_scores([parse_score_result(json.dumps(m)) for m in messages[:30]])
    kit.publish(mon_settings, messages)
    consumer = MonitoringConsumer(mon_settings, store, batch_size=50)
    stats = consumer.drain(idle_s=0.6)
    assert store.count_scores() == 120
    assert (stats.received, stats.stored, stats.duplicates) == (120, 90, 30)

    kit.publish(mon_settings, messages[:40])  # a full redelivery adds nothing
    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    assert store.count_scores() == 120
    assert stats.duplicates == 70
    anomalies = store.scores_between(0, time.time() + 1)
    assert sum(r["is_anomaly"] for r in anomalies) == 12
    assert queue_messages(mon_settings, mon_settings.monitoring_queue) == []  # all acked


def test_poison_messages_go_to_the_dead_letter_queue_with_their_error(mon_settings, store, kit):
    good = [kit.score_message() for _ in range(5)]
    missing_score = kit.score_message()
    del missing_score["score"]
    poison = [b"\xff\xfe not json", json.dumps({"schema": "other/9"}).encode(),
              json.dumps(missing_score).encode()]
    mixed = good[:2] + poison[:1] + good[2:4] + poison[1:] + good[4:]
    kit.publish(mon_settings, mixed, key="score.0002.normal")
    consumer = MonitoringConsumer(mon_settings, store)
    stats = consumer.drain(idle_s=0.6)
    consumer.close()
    assert store.count_scores() == 5
    assert stats.dead_lettered == 3
    letters = queue_messages(mon_settings, dlq_name(mon_settings.monitoring_queue))
    assert sorted(body for _, body in letters) == sorted(poison)
    errors = " | ".join(h["error"] for h, _ in letters)
    assert "not JSON" in errors and "schema must be" in errors
    assert "score must be a finite number" in errors
    assert all(h["source_queue"] == mon_settings.monitoring_queue for h, _ in letters)


def _stream(kit, n: int, avg_kw_mean: float, anomaly_every: int, start: float) -> list[dict]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        avg_kw = max(0.1, rng.gauss(avg_kw_mean, 0.8))
        feats = {"duration_h": rng.uniform(1, 8), "kwh": avg_kw * 3, "avg_kw": avg_kw,
                 "idle_h": rng.uniform(0, 2), "start_hour": float(rng.randrange(24))}
        score = 0.9 if i % anomaly_every == 0 else rng.uniform(0.2, 0.5)
        out.append(kit.score_message(station=f"CA-{i % 9}", score=score, features=feats,
                                 scored_ts=start + i * 0.01))
    return out


def _reference() -> dict[str, list[float]]:
    rng = random.Random(1)
    avg_kw = [max(0.1, rng.gauss(3.0, 0.8)) for _ in range(500)]
    return {"avg_kw": avg_kw, "kwh": [a * 3 for a in avg_kw],
            "duration_h": [rng.uniform(1, 8) for _ in range(500)],
            "score": [rng.uniform(0.2, 0.5) for _ in range(500)]}


def test_window_health_and_drift_trigger_retraining_once_per_cooldown(mon_settings, store, kit):
    settings = mon_settings.model_copy(update={"monitor_window_s": 60, "monitor_min_volume": 50})
    launched: list[str] = []
    consumer = MonitoringConsumer(settings, store, reference=_reference,
                                  launcher=lambda reason: launched.append(reason) or "run-1")
    now = time.time()
    kit.publish(settings, _stream(kit, 200, avg_kw_mean=3.0, anomaly_every=50, start=now - 50))
    consumer.drain(idle_s=0.6)
    calm = consumer.evaluate_window(now=now)
    assert calm["volume"] == 200 and calm["anomalies"] == 4
    assert calm["retrain"]["state"] == "not_needed", calm["drift"]
    assert calm["latency_ms"]["p50"] == pytest.approx(40, abs=1)
    assert {s["key"] for s in calm["per_site"]} == {"0002"}

    # an hour later the chargers deliver ten times the power: the stream has drifted
    later = now + 3600
    kit.publish(settings, _stream(kit, 200, avg_kw_mean=30.0, anomaly_every=50, start=later - 50))
    consumer.drain(idle_s=0.6)
    drifted = consumer.evaluate_window(now=later)
    consumer.close()
    assert drifted["retrain"]["state"] == "triggered"
    assert len(launched) == 1 and "avg_kw PSI" in launched[0] and "kwh PSI" in launched[0]
    psi = {c["name"]: c["psi"] for c in drifted["drift"]["columns"]}
    assert psi["avg_kw"] > 1 and psi["duration_h"] < 0.25

    again = consumer.evaluate_window(now=later + 1)
    assert again["retrain"]["state"] == "cooldown" and len(launched) == 1
