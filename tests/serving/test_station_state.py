"""The worker's station state: restored after a kill, never counting a session twice, and
timing silent stations out with no message arriving (issue 12)."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter

import orjson

from keyed_state import PartitionState
from pipelines.contracts.sessions import Source, encode_session
from pipelines.data.features import CONTEXT_COLUMNS
from pipelines.data.synth import generate_sessions
from serving.kafka import ensure_topics
from serving.stations import STATION_STATE_CODEC, STATION_WRITE_LAST, StationTracker
from tests.support.brokers import delete_topics, produce
from tests.support.faultkit import wait_for_partitions
from tests.support.queues import ResultQueue
from tests.support.workers import InProcessWorker, start_worker_process


def _in_arrival_order(records: list[dict]) -> list[dict]:
    """Sessions reach Kafka when they end."""
    from evaluation.scoring import arrival_order

    return [records[i] for i in arrival_order(records)]


def _contexts(results) -> dict[str, dict]:
    return {b["sessionID"]: {c: b["features"][c] for c in CONTEXT_COLUMNS}
            for b in results.bodies}


def _own_topics(settings, tag: str):
    s = settings.model_copy(update={
        "topic_sessions": f"state-{tag}", "topic_dlq": f"state-{tag}.dlq",
        "topic_station_state": f"state-{tag}.station-state", "consumer_group": f"state-{tag}",
        "rabbitmq_exchange": f"ev.scores.state-{tag}"})
    ensure_topics(s)
    return s


def test_context_after_a_kill_and_restore_equals_an_uninterrupted_run(serving_settings,
                                                                      tmp_path):
    records = _in_arrival_order(generate_sessions(900, seed=12)[0])
    values = [encode_session(r) for r in records]
    keys = [str(r["stationID"]) for r in records]
    first, second = slice(0, 500), slice(500, None)
    later_ids = {r["sessionID"] for r in records[second]}

    # the reference: one worker reads everything
    reference = _own_topics(serving_settings, uuid.uuid4().hex[:6])
    queue = ResultQueue(reference.rabbitmq_url, reference.rabbitmq_exchange)
    worker = InProcessWorker(reference)
    try:
        produce(reference, values, keys)
        expected = _contexts(queue.wait_for(lambda r: len(r.sessions()) == len(records), 90))
    finally:
        worker.finish()
        queue.close()
        delete_topics(reference, [reference.topic_sessions, reference.topic_dlq,
                                  reference.topic_station_state])
    assert len(expected) == len(records)

    # the same stream, with the worker killed (SIGKILL) mid-way and restarted
    tag = uuid.uuid4().hex[:6]
    s = _own_topics(serving_settings, tag).model_copy(update={
        "serve_instance_id": f"state-{tag}", "metrics_port": _free_port(),
        "serve_batch_size": 50})
    queue = ResultQueue(s.rabbitmq_url, s.rabbitmq_exchange)
    process = start_worker_process(s, tmp_path / "worker.log")
    try:
        wait_for_partitions(s.metrics_port, alive=lambda: process.poll() is None)
        produce(s, values[first], keys[first])
        queue.wait_for(lambda r: len(r.sessions()) >= 250, 90)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
        process = start_worker_process(s, tmp_path / "worker.log")
        wait_for_partitions(s.metrics_port, alive=lambda: process.poll() is None)
        produce(s, values[second], keys[second])
        results = queue.wait_for(lambda r: r.sessions() >= later_ids, 90)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        queue.close()
        delete_topics(s, [s.topic_sessions, s.topic_dlq, s.topic_station_state])

    restored = {sid: ctx for sid, ctx in _contexts(results).items() if sid in later_ids}
    assert restored.keys() == later_ids, (tmp_path / "worker.log").read_text()[-3000:]
    differ = [sid for sid in later_ids if restored[sid] != expected[sid]]
    assert not differ, (differ[:3], [(restored[d], expected[d]) for d in differ[:1]])


def _free_port() -> int:
    from evguard.services.process import free_port

    return free_port()


def test_a_redelivered_session_changes_no_state():
    records = _in_arrival_order(generate_sessions(300, seed=5)[0])
    sources = [Source("sessions", 0, i, 0) for i in range(len(records))]
    state = PartitionState(0)
    tracker = StationTracker(lambda _p: state, lambda: [0], tick_s=float("inf"))
    tracker.process(records, sources)
    before = {key: value.to_bytes() for key, value in state.items()}

    contexts_again, _alerts = tracker.process(records[200:], sources[200:])  # after a crash

    assert {key: value.to_bytes() for key, value in state.items()} == before
    assert tracker.redelivered == 100 and len(contexts_again) == 100


def test_a_flush_cut_short_by_a_crash_leaves_a_state_that_catches_up_exactly():
    """A crash can cut a batch's changelog writes short. For each cut, the restored state
    with the batch redelivered must end as the state of a run that never crashed, and give
    its contexts and station alerts; what the cut batch alerted before is not alerted again."""
    from pipelines.contracts.station_alert import parse_station_alert

    records = _in_arrival_order(generate_sessions(400, seed=8, anomaly_rate=0.05)[0])
    busiest = {s for s, _n in Counter(r["stationID"] for r in records).most_common(2)}
    # two stations start failing (nothing delivered) in the second batch
    records = [{**r, "kWhDelivered": 0.0} if i >= 200 and r["stationID"] in busiest else r
               for i, r in enumerate(records)]
    sources = [Source("sessions", 0, i, 0) for i in range(len(records))]
    batches = [slice(0, 200), slice(200, 300), slice(300, None)]

    def run(state, parts):
        tracker = StationTracker(lambda _p: state, lambda: [0], tick_s=float("inf"))
        rows, alerts = [], []
        for part in parts:
            contexts, messages = tracker.process(records[part], sources[part])
            rows += contexts.rows
            events = [parse_station_alert(body) for _key, body in messages]
            alerts.append({(a.station_id, a.kind, a.status, a.opened_ts) for a in events})
        return rows, alerts

    def flush(state):  # the changelog records of a flush, in the order they are written
        return [(k, STATION_STATE_CODEC.encode(k, v), offset)
                for k, v, offset in state.take_dirty(STATION_WRITE_LAST)]

    reference = PartitionState(0)
    expected_rows, expected_alerts = run(reference, batches)
    expected_state = {k: v.to_bytes() for k, v in reference.items()}
    assert expected_alerts[1] | expected_alerts[2]  # the planted faults are alerted

    live = PartitionState(0)
    run(live, batches[:1])
    changelog = flush(live)  # the first batch: written in full
    run(live, batches[1:2])
    cut_batch = flush(live)
    assert cut_batch[-1][0].startswith(STATION_WRITE_LAST[-1])
    for cut in [*range(0, len(cut_batch), 7), len(cut_batch)]:
        written = changelog + cut_batch[:cut]
        restored = PartitionState.restored(
            0, {k: STATION_STATE_CODEC.decode(k, data) for k, data, _o in written},
            {k: offset for k, _data, offset in written})
        rows, alerts = run(restored, batches[1:])  # the cut batch is redelivered
        assert rows[100:] == expected_rows[300:], f"cut after {cut} of {len(cut_batch)} writes"
        assert {k: v.to_bytes() for k, v in restored.items()} == expected_state, cut
        assert alerts[1] == expected_alerts[2], cut
        assert alerts[0] <= expected_alerts[1], cut
    assert cut == len(cut_batch) and alerts[0] == set()  # all held: nothing alerted twice


def test_a_silent_station_is_alerted_with_no_message_arriving(serving_settings):
    """Three stations of a site charge daily for four weeks; then two keep going for ten days
    and the third sends nothing. No message of the silent one arrives: the worker's timer
    finds it silent."""
    from datetime import UTC, datetime, timedelta

    from pipelines.contracts.dates import format_rfc1123
    from pipelines.contracts.station_alert import parse_station_alert

    s = _own_topics(serving_settings.model_copy(update={"topic_partitions": 1}),
                    uuid.uuid4().hex[:6]).model_copy(update={"station_tick_s": 0.5})
    template = generate_sessions(1, seed=3)[0][0]
    start = datetime(2019, 3, 4, 16, tzinfo=UTC)
    sessions = []
    for day in range(38):
        for n, station in enumerate(("CA-SILENT", "CA-BUSY-1", "CA-BUSY-2")):
            if station == "CA-SILENT" and day >= 28:
                continue  # broken from day 28 on
            connect = start + timedelta(days=day, minutes=17 * n)
            sessions.append({**template, "sessionID": f"{station}-{day}", "stationID": station,
                             "connectionTime": format_rfc1123(connect),
                             "doneChargingTime": format_rfc1123(connect + timedelta(hours=2)),
                             "disconnectTime": format_rfc1123(connect + timedelta(hours=3)),
                             "kWhDelivered": 9.0, "userInputs": None})
    sessions = _in_arrival_order(sessions)
    alerts = ResultQueue(s.rabbitmq_url, s.rabbitmq_exchange, binding="station.#")
    worker = InProcessWorker(s)
    try:
        produce(s, [encode_session(r) for r in sessions], [r["stationID"] for r in sessions])
        got = alerts.wait_for(lambda r: any(b["kind"] == "silent" for b in r.bodies), 60)
    finally:
        worker.finish()
        alerts.close()
        delete_topics(s, [s.topic_sessions, s.topic_dlq, s.topic_station_state])
    silent = [parse_station_alert(orjson.dumps(b)) for b in got.bodies if b["kind"] == "silent"]
    assert [a.station_id for a in silent] == ["CA-SILENT"], got.bodies
    assert silent[0].status == "open" and "no session" in silent[0].evidence
    last_seen = start + timedelta(days=27, hours=3)
    assert silent[0].opened_ts >= last_seen.timestamp()


def test_dead_letters_of_a_known_station_make_it_failing_and_junk_keys_grow_no_state():
    from pipelines.contracts.station_alert import parse_station_alert
    from serving.steps.base import InvalidMessage

    template = generate_sessions(1, seed=4)[0][0]
    good = [{**template, "sessionID": f"ok-{i}", "stationID": "CA-DL"} for i in range(4)]
    state = PartitionState(0)
    tracker = StationTracker(lambda _p: state, lambda: [0], tick_s=float("inf"))
    tracker.process(good, [Source("sessions", 0, i, 0) for i in range(4)])
    before = len(state)

    junk = [InvalidMessage(Source("sessions", 0, 10 + i, 0), b"{", f"junk-{i}".encode(),
                           "not JSON", "decode") for i in range(50)]
    assert tracker.dead_lettered(junk) == [] and len(state) == before

    broken = [InvalidMessage(Source("sessions", 0, 100 + i, 0), b"{", b"CA-DL", "not JSON",
                             "decode") for i in range(3)]
    alerts = [parse_station_alert(body) for _key, body in tracker.dead_lettered(broken)]
    assert [(a.station_id, a.kind, a.status) for a in alerts] == [("CA-DL", "failing", "open")]
    counted = state.get("health:CA-DL").to_bytes()
    assert tracker.dead_lettered(broken) == []  # redelivered after a crash
    assert state.get("health:CA-DL").to_bytes() == counted  # not counted again
