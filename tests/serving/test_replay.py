"""The replay producer: pacing (pure) and delivery to the real broker."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer

from serving.kafka import pacing_wait_s
from serving.replay import ReplayPace, load_records, replay, schedule
from tests.serving.stand_ins import session


def test_pace_is_a_rate_or_a_speedup_never_both_nor_nonsense():
    with pytest.raises(ValueError, match="not both"):
        ReplayPace(rate=10, speedup=60)
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError):
            ReplayPace(rate=bad)


def test_pacing_never_asks_librdkafka_for_less_than_its_millisecond():
    """librdkafka's poll returns at once below 1 ms: a shorter wait would spin the loop."""
    for wait in (1e-6, 0.0004, 0.00099):
        assert pacing_wait_s(wait) == 0.001
    for wait in (0.001, 0.004, 0.05):
        assert pacing_wait_s(wait) == wait
    assert pacing_wait_s(3.0) == 0.05  # short enough to keep serving delivery reports


def test_a_rate_spaces_sessions_evenly_in_file_order():
    records = [session(i) for i in range(5)]
    ordered, offsets = schedule(records, ReplayPace(rate=4))
    assert ordered == records and offsets == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_speedup_replays_in_disconnect_order_with_real_gaps_shrunk():
    late, early, middle = session(0, hours=6), session(1, hours=1), session(2, hours=3)
    ordered, offsets = schedule([late, early, middle], ReplayPace(speedup=3600))
    assert [r["sessionID"] for r in ordered] == ["s1", "s2", "s0"]
    assert offsets == pytest.approx([0.0, 2.0, 5.0])  # 2 h and 5 h later, at 3600x


def test_sessions_without_dates_are_sent_at_the_start_not_dropped():
    broken = {**session(9), "disconnectTime": None, "connectionTime": "garbage"}
    ordered, offsets = schedule([session(0, hours=1), session(1, hours=2), broken],
                                ReplayPace(speedup=3600))
    assert [r["sessionID"] for r in ordered] == ["s0", "s9", "s1"]
    assert offsets == pytest.approx([0.0, 0.0, 1.0])


def test_replay_delivers_every_session_keyed_by_station_with_schema_version(kafka_settings):
    from serving.kafka import ensure_topics

    tag = uuid.uuid4().hex[:8]
    settings = kafka_settings.model_copy(update={"topic_sessions": f"replay-{tag}",
                                                 "topic_dlq": f"replay-{tag}.dlq"})
    ensure_topics(settings)
    records = load_records("synthetic", settings, sessions=40, seed=2)
    seen = []
    t0 = time.monotonic()
    report = replay(settings, records, ReplayPace(rate=100), repeat=2, progress=seen.append)
    elapsed = time.monotonic() - t0
    assert (report.produced, report.delivered, report.failed) == (80, 80, 0)
    assert elapsed >= 0.7  # 80 sessions at 100/s are paced, not sent at once
    assert seen and seen[-1].delivered == 80

    consumer = Consumer({"bootstrap.servers": settings.kafka_servers, "group.id": tag,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.topic_sessions])
    messages = []
    deadline = time.monotonic() + 20
    while len(messages) < 80 and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(100, 0.2) if m.error() is None]
    consumer.close()
    bodies = [orjson.loads(m.value()) for m in messages]
    assert {b["schema_version"] for b in bodies} == {1}
    assert all(m.key().decode() == b["stationID"] for m, b in zip(messages, bodies))
    ids = [b["sessionID"] for b in bodies]
    assert len(set(ids)) == 80  # the second round got new sessionIDs
    assert {i.split("~r")[0] for i in ids} == {r["sessionID"] for r in records}


def test_replay_from_real_acn_export_files(kafka_settings, shared_acn):
    records = load_records("files", kafka_settings, paths=[shared_acn / "jpl_2019q1.json"])
    assert len(records) == 4117 and records[0]["siteID"] == "0001"


def test_files_source_needs_paths(kafka_settings):
    with pytest.raises(ValueError, match="path"):
        load_records("files", kafka_settings)


def test_replay_fails_fast_and_readably_without_a_broker_or_topic(kafka_settings):
    from evguard.services.process import free_port

    nowhere = kafka_settings.model_copy(update={"kafka_port": free_port()})
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="evguard services up"):
        replay(nowhere, [session(0)], connect_timeout_s=1.0)
    assert time.monotonic() - t0 < 10
    with pytest.raises(LookupError, match="does not exist"):
        replay(kafka_settings, [session(0)], topic=f"missing-{uuid.uuid4().hex[:8]}")
