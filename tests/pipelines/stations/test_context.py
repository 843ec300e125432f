"""Station context: point in time, one code path for replay and serving, shrinkage (pure)."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest

from pipelines.contracts.dates import format_rfc1123
from pipelines.data.exports import load_exports
from pipelines.data.features import F2_COLUMNS, FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.stations.context import (
    CONTEXT_COLUMNS,
    CONTEXT_KEYS,
    context_of,
    observe,
    replay_contexts,
)
from pipelines.stations.profiles import PRIOR, SHRINK_SESSIONS, Profile, shrunk

T0 = 1_546_300_800.0  # 2019-01-01 00:00 UTC


def session(station: str, start_h: float, hours: float, kwh: float, site: str = "0002",
            user: str | None = None, n: int = 0) -> dict:
    """A finished session: connected at T0 + `start_h`, charging the whole `hours`."""
    connect = T0 + start_h * 3600
    return {"sessionID": f"{station}-{n}-{start_h}", "stationID": station, "siteID": site,
            "userID": user, "connectionTime": format_rfc1123(connect),
            "disconnectTime": format_rfc1123(connect + hours * 3600),
            "doneChargingTime": format_rfc1123(connect + hours * 3600),
            "kWhDelivered": kwh, "timezone": "America/Los_Angeles", "userInputs": None}


def daily(station: str, days: int, kw: float, hours: float, site: str = "0002",
          first_day: int = 0, user: str | None = None) -> list[dict]:
    return [session(station, 24 * d + 8, hours, kw * hours, site, user, d)
            for d in range(first_day, first_day + days)]


def as_rows(contexts: list[dict]) -> np.ndarray:
    return np.array([[c[k] for k in CONTEXT_KEYS] for c in contexts])


@pytest.fixture(scope="module")
def history() -> list[dict]:
    records, _ = generate_sessions(600, seed=12)
    return records


def test_feature_version_f3_keeps_f2_first() -> None:
    assert FEATURE_VERSION == "f3" and FEATURE_COLUMNS[:20] == F2_COLUMNS
    assert set(FEATURE_COLUMNS[20:]) <= set(CONTEXT_COLUMNS) and len(FEATURE_COLUMNS) > 20


def test_later_sessions_never_change_an_earlier_context(history: list[dict]) -> None:
    before = as_rows(replay_contexts(history))
    features_before = feature_matrix(history).to_numpy()
    last_connect = max(T0 if r.get("connectionTime") is None else
                       _epoch(r["connectionTime"]) for r in history)
    # later sessions at the same stations, some connected before that, all ending after it
    stations = sorted({(r["stationID"], r["siteID"]) for r in history})[:8]
    later = [session(s, (last_connect - T0) / 3600 - 2 + i, 3 + i, 50.0, site, "000000001", i)
             for i, (s, site) in enumerate(stations)]
    after = as_rows(replay_contexts(history + later))
    np.testing.assert_array_equal(after[: len(history)], before)
    np.testing.assert_array_equal(feature_matrix(history + later).to_numpy()[: len(history)],
                                  features_before)
    assert not np.array_equal(after[len(history):], before[: len(later)])


def _epoch(text: str) -> float:
    from pipelines.contracts.dates import parse_rfc1123

    return parse_rfc1123(text).timestamp()


def test_replay_ignores_input_order(history: list[dict]) -> None:
    shuffled = list(range(len(history)))
    random.Random(3).shuffle(shuffled)
    contexts = as_rows(replay_contexts(history))
    reordered = as_rows(replay_contexts([history[i] for i in shuffled]))
    np.testing.assert_array_equal(reordered, contexts[shuffled])


def test_serving_path_equals_the_replay_for_a_station() -> None:
    records = daily("2-39-1-1", 30, kw=6.0, hours=5) + daily("2-39-1-1", 10, 2.0, 9, first_day=30)
    state: dict[str, object] = {}
    served = []
    for record in records:  # the worker: a session arrives when it has ended
        served.append(context_of(state, record))
        assert observe(state, record) == ["profile:2-39-1-1", "site:0002"]
    np.testing.assert_allclose(as_rows(served), as_rows(replay_contexts(records)), rtol=0,
                               atol=1e-12)


def test_context_tells_a_dc_fast_charger_from_a_level2_post() -> None:
    records = daily("dc", 40, kw=45.0, hours=0.6) + daily("l2", 40, kw=6.6, hours=4)
    state: dict[str, object] = {}
    for record in records:
        observe(state, record)
    surge = {"dc": session("dc", 24 * 50, 0.5, 30.0), "l2": session("l2", 24 * 50, 0.5, 30.0)}
    dc, l2 = (context_of(state, surge[s]) for s in ("dc", "l2"))
    # the Level-2 post's view is shrunk a little towards its site, which holds the DC charger
    assert dc["station_log_kw_high"] > math.log10(30) > math.log10(12) > l2["station_log_kw_high"]
    features = feature_matrix([surge["dc"], surge["l2"]], [dc, l2])
    # 60 kW is ordinary for the DC charger and nine times a Level-2 post's maximum
    assert features["kw_vs_station_max"][1] - features["kw_vs_station_max"][0] > 0.7
    assert features["kw_vs_station"][0] < 0.3 < features["kw_vs_station"][1]


def test_an_impossible_session_does_not_teach_the_station_it_is_fast() -> None:
    state: dict[str, object] = {}
    for record in daily("l2", 30, kw=6.6, hours=4):
        observe(state, record)
    high = state["profile:l2"].power_high
    for day in range(30, 33):
        observe(state, session("l2", 24 * day + 8, 0.25, 60.0, n=day))  # 240 kW
    assert state["profile:l2"].power_high == high


def test_observe_returns_the_keys_it_changed_and_context_of_reads_only() -> None:
    state: dict[str, object] = {}
    record = session("s1", 8, 4, 20.0, user="000000416")
    before = context_of(state, record)
    assert state == {}
    assert sorted(observe(state, record)) == ["profile:s1", "site:0002", "user:000000416"]
    assert observe(state, session("s1", 32, 4, 20.0)) == ["profile:s1", "site:0002"]
    snapshot = {k: v.to_bytes() for k, v in state.items()}
    context_of(state, session("s1", 60, 4, 20.0, user="000000416"))
    assert {k: v.to_bytes() for k, v in state.items()} == snapshot
    assert observe(state, {"stationID": "s1", "siteID": "0002", "connectionTime": None}) == []
    assert {k: v.to_bytes() for k, v in state.items()} == snapshot
    assert before["station_sessions"] == 0 and state["profile:s1"].count == 2


def test_a_new_station_sees_its_site_prior_then_the_global_prior() -> None:
    state: dict[str, object] = {}
    for record in daily("old", 20, kw=3.0, hours=6):
        observe(state, record)
    fresh = context_of(state, session("new", 24 * 30, 4, 10.0))
    site_view = shrunk(state["site:0002"], PRIOR)
    assert (fresh["station_log_kw"], fresh["station_log_kw_high"], fresh["station_log_kwh"],
            fresh["station_log_hours"]) == (site_view.power, site_view.power_high,
                                            site_view.energy, site_view.duration)
    assert fresh["station_sessions"] == 0 and fresh["log_hours_since_last"] == site_view.gap
    elsewhere = context_of(state, session("far", 24 * 30, 4, 10.0, site="0001"))
    assert elsewhere["station_log_kw"] == PRIOR.power
    assert elsewhere["user_log_kwh"] == PRIOR.energy


def test_user_profile_follows_the_user() -> None:
    records = [session(f"s{d % 5}", 24 * d + 8, 8, 30.0, user="000000007", n=d)
               for d in range(20)]
    state: dict[str, object] = {}
    for record in records:
        observe(state, record)
    context = context_of(state, session("s9", 24 * 40, 8, 30.0, user="000000007"))
    assert context["user_sessions"] == 20
    weight = 20 / (20 + SHRINK_SESSIONS)  # towards the (new) station's view
    assert context["user_log_kwh"] == pytest.approx(
        weight * math.log10(30.001) + (1 - weight) * context["station_log_kwh"])
    stranger = context_of(state, session("s9", 24 * 40, 8, 30.0, user="000000008"))
    assert stranger["user_sessions"] == 0


def test_odd_sessions_give_finite_context_and_features() -> None:
    odd = [{}, {"stationID": "x", "connectionTime": "garbage", "kWhDelivered": "n/a"},
           {**session("y", 1, 2, -5.0), "disconnectTime": None, "doneChargingTime": None},
           {**session("y", 5, 2, 5.0), "disconnectTime": format_rfc1123(T0)},  # before connect
           session("y", 9, 2, float("inf"))]
    rows = as_rows(replay_contexts(odd))
    assert np.isfinite(rows).all()
    assert np.isfinite(feature_matrix(odd).to_numpy()).all()
    given = feature_matrix(odd, [{}, {"station_log_kw": float("nan")}, {}, {}, {}])
    assert np.isfinite(given.to_numpy()).all()


def test_contexts_must_align_with_records() -> None:
    with pytest.raises(ValueError, match="contexts"):
        feature_matrix([session("a", 1, 2, 5.0)], [])


def test_profiles_survive_the_bytes_round_trip_mid_replay() -> None:
    records = daily("a", 15, 6.0, 4, user="000000001") + daily("b", 15, 45.0, 0.5, first_day=3)
    records.sort(key=lambda r: _epoch(r["disconnectTime"]))
    state: dict[str, object] = {}
    restored: dict[str, object] = {}
    for i, record in enumerate(records):
        if i == 12:  # the worker restarts: state comes back from the changelog's bytes
            restored = {k: Profile.from_bytes(v.to_bytes()) for k, v in state.items()}
            state = copy.deepcopy(state)
        if i >= 12:
            assert context_of(restored, record) == context_of(state, record)
            observe(restored, record)
        observe(state, record)


def test_dc_charger_of_the_real_exports_stands_out(shared_acn) -> None:
    records = load_exports(sorted(shared_acn.glob("*.json")))
    contexts = replay_contexts(records)
    highs: dict[str, float] = {}
    for record, context in zip(records, contexts, strict=True):
        highs[record["stationID"]] = context["station_log_kw_high"]  # the latest wins
    dc = highs.pop("2-39-81-4550")
    assert dc > math.log10(20) and max(highs.values()) < math.log10(12)
