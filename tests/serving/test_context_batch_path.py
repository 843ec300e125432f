"""The worker's batch path for station context (`StationTracker.process`, one reading of each
session and profile, contexts as rows) gives exactly what the per-session reference gives:
`context_of`, then `observe` and `on_session` unless the state already holds the session."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pandas as pd
import pytest

from keyed_state import PartitionState
from pipelines.contracts.sessions import Source
from pipelines.contracts.station_alert import parse_station_alert
from pipelines.data.features import feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.stations.context import (
    CONTEXT_KEYS,
    ContextRows,
    context_array,
    context_of,
    observe,
)
from pipelines.stations.health import on_session
from serving.stations import StationTracker

PARTITIONS = 3


def _partition(record: dict) -> int:
    return zlib.crc32(str(record.get("stationID")).encode()) % PARTITIONS


def _replay() -> list[tuple[dict, Source]]:
    """Synthetic sessions with planted anomalies and odd records, their Kafka positions, and
    a stretch delivered twice (a crash before the commit)."""
    records, _ = generate_sessions(3000, seed=21, anomaly_rate=0.05)
    rng = random.Random(21)
    for i in rng.sample(range(len(records)), 300):
        odd = dict(records[i])
        kind = i % 5
        if kind == 0:
            odd["userID"] = None
        elif kind == 1:
            odd["doneChargingTime"] = None
        elif kind == 2:
            odd["kWhDelivered"] = 0.01  # a failed session if it was long
        elif kind == 3:
            odd["disconnectTime"] = None  # cannot be placed in time
        else:
            odd["kWhDelivered"] = "junk"
        records[i] = odd
    # a charger that keeps failing: the failing detector opens and closes
    template = records[0]
    for n in range(12):
        records.insert(400 + 37 * n, {**template, "sessionID": f"dead-{n}", "stationID": "CA-DEAD",
                                      "kWhDelivered": 0.0 if n < 6 else 9.0})
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    positioned = []
    for record in records:
        p = _partition(record)
        positioned.append((record, Source("sessions", p, offsets[p], 0)))
        offsets[p] += 1
    return positioned[:2000] + positioned[1700:2000] + positioned[2000:]  # 1700-2000 twice


def _batches(positioned: list, seed: int) -> list[list]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(positioned):
        size = rng.choice((1, 2, 17, 250, 1000))
        out.append(positioned[i:i + size])
        i += size
    return out


def _reference(batches: list[list]):
    """Session by session, with the pure functions the training replay is built on."""
    states = {p: PartitionState(p) for p in range(PARTITIONS)}
    contexts, alerts, redelivered = [], [], 0
    for batch in batches:
        for record, source in batch:
            state = states[source.partition]
            view = state.view(source.offset)
            contexts.append(context_of(view, record))
            if state.applied_offset(f"profile:{record.get('stationID')}") >= source.offset:
                redelivered += 1
                continue
            observe(view, record)
            alerts += on_session(view, record)[1]
    return states, contexts, [(a.station_id, a.kind, a.status, a.evidence) for a in alerts], \
        redelivered


def _worker(batches: list[list]):
    states = {p: PartitionState(p) for p in range(PARTITIONS)}
    tracker = StationTracker(states.__getitem__, lambda: list(states), tick_s=float("inf"))
    contexts, alerts = [], []
    for batch in batches:
        rows, messages = tracker.process([r for r, _s in batch], [s for _r, s in batch])
        assert isinstance(rows, ContextRows) and len(rows) == len(batch)
        contexts += [rows[i] for i in range(len(rows))]
        alerts += [parse_station_alert(body) for _key, body in messages]
    return states, contexts, [(a.station_id, a.kind, a.status, a.evidence) for a in alerts], \
        tracker.redelivered


@pytest.mark.parametrize("seed", [1, 2])
def test_the_batch_path_gives_the_reference_contexts_state_alerts_and_features(seed):
    positioned = _replay()
    batches = _batches(positioned, seed)

    ref_states, ref_contexts, ref_alerts, ref_redelivered = _reference(batches)
    states, contexts, alerts, redelivered = _worker(batches)

    assert redelivered == ref_redelivered == 300
    assert contexts == ref_contexts  # every float, exactly
    assert alerts == ref_alerts and any(a[:3] == ("CA-DEAD", "failing", "open") for a in alerts)
    for p in range(PARTITIONS):
        assert sorted(states[p].keys()) == sorted(ref_states[p].keys())
        for key, value in ref_states[p].items():
            assert states[p].get(key).to_bytes() == value.to_bytes(), key
            assert states[p].applied_offset(key) == ref_states[p].applied_offset(key), key
        assert sorted(k for k, _v, _o in states[p].take_dirty()) == \
            sorted(k for k, _v, _o in ref_states[p].take_dirty())

    records = [r for r, _s in positioned]
    rows = ContextRows([tuple(c[k] for k in CONTEXT_KEYS) for c in contexts])
    pd.testing.assert_frame_equal(feature_matrix(records, rows),
                                  feature_matrix(records, ref_contexts), check_exact=True)


def test_context_rows_read_as_the_dicts_they_stand_for():
    dicts = [{k: float(i * 10 + j) for j, k in enumerate(CONTEXT_KEYS)} for i in range(4)]
    dicts[2]["station_log_kw"] = float("nan")  # replaced by the default in both forms
    rows = ContextRows([tuple(d[k] for k in CONTEXT_KEYS) for d in dicts])

    assert len(rows) == 4 and rows[1] == dicts[1] and list(rows[1:3]) == dicts[1:3]
    assert isinstance(rows[1:3], ContextRows)
    assert np.array_equal(context_array(rows), context_array(dicts))
    assert context_array(ContextRows()).shape == (0, len(CONTEXT_KEYS))
