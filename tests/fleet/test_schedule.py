"""Which sessions run where and when, and which faults they carry (pure)."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from fleet import (
    assign_faults,
    assign_versions,
    replicate_stations,
    schedule_sessions,
    select_sessions,
)
from pipelines.contracts.dates import rfc1123_to_epoch
from pipelines.data.synth import generate_sessions
from pipelines.telemetry.charging import FAULT_KINDS, plantable_kinds


@pytest.fixture(scope="module")
def sessions() -> list[dict]:
    return generate_sessions(600, seed=21)[0]


def test_the_busiest_stations_are_kept_and_sessions_come_in_connection_order(sessions):
    chosen = select_sessions(sessions, max_sessions=50, max_stations=5)
    assert len(chosen) == 50 and len({s["stationID"] for s in chosen}) <= 5
    counts = Counter(s["stationID"] for s in sessions)
    least_kept = min(counts[s["stationID"]] for s in chosen)
    assert sum(c > least_kept for c in counts.values()) < 5
    times = [rfc1123_to_epoch(s["connectionTime"]) for s in chosen]
    assert times == sorted(times)
    broken = [{**sessions[0], "disconnectTime": None}, {**sessions[1], "stationID": None}]
    assert select_sessions(broken) == []


def test_versions_follow_the_share_and_the_seed(sessions):
    stations = [s["stationID"] for s in sessions]
    versions = assign_versions(stations, 0.3, seed=4)
    assert Counter(versions.values())["2.0.1"] == round(0.3 * len(set(stations)))
    assert versions == assign_versions(reversed(stations), 0.3, seed=4)
    assert versions != assign_versions(stations, 0.3, seed=5)
    with pytest.raises(ValueError, match="share"):
        assign_versions(stations, 1.5, seed=0)


def test_faults_are_even_and_only_where_they_can_show(sessions):
    versions = assign_versions([s["stationID"] for s in sessions], 0.5, seed=1)
    faults = assign_faults(sessions, versions, 0.4, seed=2)
    assert len(faults) == 240
    counts = Counter(faults.values())
    assert set(counts) == set(FAULT_KINDS) and max(counts.values()) - min(counts.values()) <= 2
    by_id = {s["sessionID"]: s for s in sessions}
    last = {s["stationID"]: s["sessionID"] for s in sessions}
    for sid, kind in faults.items():
        record = by_id[sid]
        assert kind in plantable_kinds(record)
        if kind == "overtemperature":
            assert versions[record["stationID"]] == "1.6"
        if kind == "never_unplugged":
            assert last[record["stationID"]] == sid
    assert faults == assign_faults(sessions, versions, 0.4, seed=2)
    only = assign_faults(sessions, versions, 0.1, kinds=["silent", "faulted"], seed=2)
    assert set(only.values()) == {"silent", "faulted"}
    with pytest.raises(ValueError, match="unknown"):
        assign_faults(sessions, versions, 0.1, kinds=["melted"])


def test_calendar_keeps_the_sessions_times_and_packed_runs_them_back_to_back(sessions):
    chosen = select_sessions(sessions, max_sessions=80, max_stations=6)
    versions = assign_versions([s["stationID"] for s in chosen], 0.5, seed=0)
    calendar = schedule_sessions(chosen, versions, {}, mode="calendar")
    first = rfc1123_to_epoch(chosen[0]["connectionTime"])
    assert [c.offset_s for c in calendar] == [
        rfc1123_to_epoch(s["connectionTime"]) - first for s in chosen]
    packed = schedule_sessions(chosen, versions, {}, mode="packed", gap_s=300)
    for station in versions:
        mine = [p for p in packed if p.station_id == station]
        assert mine[0].offset_s < 300
        for before, after in pairwise(mine):
            stay = (rfc1123_to_epoch(before.session["disconnectTime"])
                    - rfc1123_to_epoch(before.session["connectionTime"]))
            assert after.offset_s == pytest.approx(before.offset_s + stay + 300)
    with pytest.raises(ValueError, match="calendar or packed"):
        schedule_sessions(chosen, versions, {}, mode="shuffled")


def test_stations_can_be_replicated_for_load_tests(sessions):
    few = sessions[:10]
    many = replicate_stations(few, 3)
    assert len(many) == 30 and many[:10] == few
    assert len({s["sessionID"] for s in many}) == 30
    assert {s["stationID"] for s in many[10:20]} == {f"{s['stationID']}-r1" for s in few}
    with pytest.raises(ValueError, match="copies"):
        replicate_stations(few, 0)
