"""A session's station context: one code path for training (replay) and serving (pure).

Serving calls `context_of(state, record)` when a session arrives, then
`observe(state, record)` (the worker both at once: `context_then_observe`, one reading
of the record and of each profile, its contexts kept as `ContextRows`); training and
evaluation call `replay_contexts(records)`, which runs the very same query and update
over a plain dict in event time: "query at connectionTime" and "observe at
disconnectTime", queries first at equal times. A session's context therefore uses
only sessions that ended before it connected.
Ties are broken by sessionID, so the input order does not matter.

The context holds the station's view (its profile shrunk towards its site's, the
site's shrunk towards `PRIOR`, see `profiles.py`), the hours since the station's
last session and the user's usual energy and duration (shrunk towards the
station's view); `context_features` turns it into the model's context columns.
A session whose charging power is more than twice its station's maximum
(`OUTLIER_LOG_KW`, once the station has `MIN_HISTORY` sessions) does not move any
power aggregate: an injected or real impossible-power reading cannot teach the
station that it is a fast charger. The site applies the same test with its own
maximum, so its prior stays the one of its typical post, even next to a DC
fast charger that is learning its own level.

Serving sees a session when it has ended, so the worker's state may already hold
a session of the same site or user that ended after this one connected; a
station's own sessions cannot overlap, so the station's part is exact.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pipelines.contracts.dates import date_to_epoch, rfc1123_to_epoch
from pipelines.stations.profiles import (
    PRIOR,
    SITE_WINDOW,
    STATION_WINDOW,
    USER_WINDOW,
    Profile,
    shrunk_values,
)

MIN_HISTORY = 5
OUTLIER_LOG_KW = math.log10(2.0)
_MIN_CONNECTION_H = 1 / 60  # the floors and the resolution of the f2 features
_MIN_CHARGING_H = 5 / 60
_LOG_FLOOR = 0.001

CONTEXT_KEYS: tuple[str, ...] = (
    "station_sessions", "station_log_kw", "station_log_kw_high", "station_log_kwh",
    "station_log_hours", "station_log_gap", "log_hours_since_last",
    "user_sessions", "user_log_kwh", "user_log_hours",
)
# what a context value falls back to when a caller's dict lacks it
_DEFAULTS = {"station_sessions": 0.0, "station_log_kw": PRIOR.power,
             "station_log_kw_high": PRIOR.power_high, "station_log_kwh": PRIOR.energy,
             "station_log_hours": PRIOR.duration, "station_log_gap": PRIOR.gap,
             "log_hours_since_last": PRIOR.gap, "user_sessions": 0.0,
             "user_log_kwh": PRIOR.energy, "user_log_hours": PRIOR.duration}

# every context column measured (benchmarks/feature_scales.py --try); the model gets the kept ones
CANDIDATE_COLUMNS: list[str] = [
    "kw_vs_station", "kw_vs_station_max", "kwh_vs_station", "hours_vs_station",
    "kwh_vs_user", "hours_vs_user", "station_max_kw", "station_history", "hours_since_last",
    "since_vs_station_gap", "kwh_shortfall_vs_station", "kwh_shortfall_vs_user",
    "kw_excess_vs_station_max", "hours_excess_vs_station",
]
# the ones that measurably help (docs/stations.md, "Station context"); f3 = f2 + these
CONTEXT_COLUMNS: list[str] = ["kw_vs_station", "kw_vs_station_max", "kwh_vs_station",
                              "kwh_vs_user"]


class SessionFacts(NamedTuple):
    """What a profile needs of each session, as arrays aligned to the records."""

    session: list[str]
    station: list[str]
    site: list[str]
    user: list[str | None]
    connect: np.ndarray  # epoch seconds, NaN when unknown
    end: np.ndarray  # disconnectTime, else doneChargingTime; NaN when neither
    power: np.ndarray  # log10 charging kW
    energy: np.ndarray  # log10 kWh
    duration: np.ndarray  # log10 connection hours


def _epoch(value: Any) -> float:
    """`date_to_epoch`, NaN when unreadable (the profiles' arithmetic carries NaN)."""
    epoch = rfc1123_to_epoch(value)  # what sessions carry: skip the other forms' checks
    if epoch is None:
        epoch = date_to_epoch(value)
    return math.nan if epoch is None else epoch


def _kwh(value: Any) -> float:
    try:
        kwh = float(value)
    except (TypeError, ValueError):
        return 0.0
    return kwh if 0.0 < kwh < math.inf else 0.0


def _numbers(record: dict) -> tuple[float, float, float, float, float]:
    """`(connect, end, log10 charging kW, log10 kWh, log10 connection hours)` of a session.

    Imputation follows the f2 features: null or negative energy is 0, a null disconnect is
    the done time, a null done time means charging lasted the whole connection.
    """
    return _numbers_at(_epoch(record.get("connectionTime")), _epoch(record.get("doneChargingTime")),
                       _epoch(record.get("disconnectTime")), record.get("kWhDelivered"))


def _numbers_at(connect: float, done: float, end: float,
                kwh_value: Any) -> tuple[float, float, float, float, float]:
    """`_numbers` once the three dates are read (epoch seconds, NaN when unknown)."""
    if math.isnan(end):
        end = done
    kwh = _kwh(kwh_value)
    connection_h = (end - connect) / 3600.0
    if math.isnan(connection_h):
        connection_h = 0.0
    charging_h = connection_h if math.isnan(done) else (done - connect) / 3600.0
    if math.isnan(charging_h):
        charging_h = 0.0
    return (connect, end, math.log10(kwh / max(charging_h, _MIN_CHARGING_H) + _LOG_FLOOR),
            math.log10(kwh + _LOG_FLOOR), math.log10(max(connection_h, _MIN_CONNECTION_H)))


def session_facts(records: Sequence[dict],
                  epochs: tuple[Sequence[float], Sequence[float], Sequence[float]] | None = None
                  ) -> SessionFacts:
    """Keys, times and log10 power, energy and duration of each record (pure).

    Args:
        records: session dicts.
        epochs: their `(connectionTime, doneChargingTime, disconnectTime)` as epoch seconds
            (NaN when missing), when the caller has read them already; else they are read here.
    """
    if epochs is None:
        rows = [_numbers(r) for r in records]
    else:
        rows = [_numbers_at(connect, done, end, r.get("kWhDelivered"))
                for r, connect, done, end in zip(records, *epochs, strict=True)]
    numbers = np.array(rows, dtype=float).reshape(len(records), 5)
    user = [r.get("userID") for r in records]
    return SessionFacts(
        [str(r.get("sessionID")) for r in records], [str(r.get("stationID")) for r in records],
        [str(r.get("siteID")) for r in records], [None if u is None else str(u) for u in user],
        *numbers.T)


def _since_hours_log(connect: float, last_end: float) -> float:
    return math.log10(1.0 + max(connect - last_end, 0.0) / 3600.0)


def _query_profiles(station: Profile | None, site: Profile | None, user: Profile | None,
                    connect: float) -> tuple[float, ...]:
    view = shrunk_values(station, shrunk_values(site, PRIOR))
    power, power_high, energy, duration, gap = view
    since = gap
    if station is not None and not math.isnan(station.last_end) and not math.isnan(connect):
        since = _since_hours_log(connect, station.last_end)
    user_view = shrunk_values(user, view)
    return (float(station.count if station else 0), power, power_high, energy, duration, gap,
            since, float(user.count if user else 0), user_view[2], user_view[3])


def _query(state: Mapping[str, Any], station_key: str, site_key: str,
           user_key: str | None, connect: float) -> tuple[float, ...]:
    return _query_profiles(state.get(station_key), state.get(site_key),
                           state.get(user_key) if user_key is not None else None, connect)


def _power_outlier(profile: Profile, power: float) -> bool:
    return profile.count >= MIN_HISTORY and power > profile.power_high + OUTLIER_LOG_KW


def _observe(state: MutableMapping[str, Any], station_key: str, site_key: str,
             user_key: str | None, connect: float, end: float, power: float, energy: float,
             duration: float) -> list[str]:
    if math.isnan(connect) or math.isnan(end):
        return []  # cannot be placed in time
    return _observe_profiles(
        state, station_key, site_key, user_key, state.get(station_key), state.get(site_key),
        state.get(user_key) if user_key is not None else None,
        connect, end, power, energy, duration)


def _observe_profiles(state: MutableMapping[str, Any], station_key: str, site_key: str,
                      user_key: str | None, station: Profile | None, site: Profile | None,
                      user: Profile | None, connect: float, end: float, power: float,
                      energy: float, duration: float) -> list[str]:
    """`_observe` on the profiles already read from `state` (None: not there yet)."""
    station = station or Profile()
    gap = math.nan if math.isnan(station.last_end) else _since_hours_log(connect,
                                                                          station.last_end)
    with_power = not _power_outlier(station, power)
    station.observe(power, energy, duration, end, gap, STATION_WINDOW, with_power)
    state[station_key] = station
    site = site or Profile()
    site.observe(power, energy, duration, end, gap, SITE_WINDOW,
                 with_power and not _power_outlier(site, power))
    state[site_key] = site
    if user_key is None:
        return [station_key, site_key]
    user = user or Profile()
    user.observe(power, energy, duration, end, math.nan, USER_WINDOW)
    state[user_key] = user
    return [station_key, site_key, user_key]


def _state_keys(station: Any, site: Any, user: Any) -> tuple[str, str, str | None]:
    return f"profile:{station}", f"site:{site}", None if user is None else f"user:{user}"


def _record_keys(record: dict) -> tuple[str, str, str | None]:
    return _state_keys(record.get("stationID"), record.get("siteID"), record.get("userID"))


def context_of(state: Mapping[str, Any], record: dict) -> dict[str, float]:
    """The context of a session from the current state (read only).

    Args:
        state: `profile:`, `site:` and `user:` keys to `Profile` (missing keys are fine).
        record: an ACN session dict.

    Returns:
        `CONTEXT_KEYS` to finite floats.
    """
    values = _query(state, *_record_keys(record), _epoch(record.get("connectionTime")))
    return dict(zip(CONTEXT_KEYS, values, strict=True))


def observe(state: MutableMapping[str, Any], record: dict) -> list[str]:
    """Fold a finished session into its station's, site's and user's profiles.

    Returns:
        The state keys it changed (none when the session has no usable times).
    """
    return _observe(state, *_record_keys(record), *_numbers(record))


def context_then_observe(state: MutableMapping[str, Any], record: dict,
                         apply: bool = True) -> tuple[float, ...]:
    """`context_of(state, record)`, then `observe(state, record)` unless `apply` is False:
    the worker's step per session, with one reading of the record and of each profile.

    Returns:
        The context values in `CONTEXT_KEYS` order (the floats `context_of` maps).
    """
    station_key, site_key, user_key = _record_keys(record)
    connect, end, power, energy, duration = _numbers(record)
    station, site = state.get(station_key), state.get(site_key)
    user = state.get(user_key) if user_key is not None else None
    values = _query_profiles(station, site, user, connect)
    if apply and not (math.isnan(connect) or math.isnan(end)):
        _observe_profiles(state, station_key, site_key, user_key, station, site, user,
                          connect, end, power, energy, duration)
    return values


class ContextRows(Sequence):
    """Contexts as rows of `CONTEXT_KEYS` values: each item reads as `context_of`'s dict, and
    `context_array` takes the rows as they are, with no dict per session in between."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[tuple[float, ...]] | None = None) -> None:
        self.rows = [] if rows is None else rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ContextRows(self.rows[index])
        return dict(zip(CONTEXT_KEYS, self.rows[index], strict=True))

    def __len__(self) -> int:
        return len(self.rows)


def replay_context_array(facts: SessionFacts) -> np.ndarray:
    """`replay_contexts` as a float array (rows aligned to the facts, columns `CONTEXT_KEYS`)."""
    n = len(facts.session)
    if n == 0:
        return np.zeros((0, len(CONTEXT_KEYS)))
    connect = np.where(np.isnan(facts.connect), -np.inf, facts.connect)
    placed = ~np.isnan(facts.connect) & ~np.isnan(facts.end)
    # an end before the connection is observed at the connection, never before its own query
    observed = np.flatnonzero(placed)
    times = np.concatenate([connect, np.maximum(facts.end[observed], connect[observed])])
    kinds = np.concatenate([np.zeros(n, np.int8), np.ones(len(observed), np.int8)])
    events = np.concatenate([np.arange(n), observed])
    # ties by sessionID; equal IDs keep their input order (lexsort is stable), as equal ranks
    rank = np.empty(n, np.int64)
    rank[np.argsort(np.array(facts.session, dtype=object), kind="stable")] = np.arange(n)
    order = np.lexsort((rank[events], kinds, times))
    del rank
    # memory, at millions of sessions: one key tuple per distinct (station, site, user),
    # and the numbers as C doubles (an `array` item is a float only while it is used)
    distinct: dict[tuple, tuple[str, str, str | None]] = {}
    keys = [distinct.get(k) or distinct.setdefault(k, _state_keys(*k))
            for k in zip(facts.station, facts.site, facts.user, strict=True)]
    del distinct
    c, e, p, en, d = [array("d", np.ascontiguousarray(a, dtype=float).tobytes())
                      for a in (facts.connect, facts.end, facts.power, facts.energy,
                                facts.duration)]
    state: dict[str, object] = {}
    flat, queried = array("d"), array("q")
    for kind, i in zip(kinds[order].tolist(), events[order].tolist(), strict=True):
        if kind == 0:
            station_key, site_key, user_key = keys[i]
            flat.extend(_query(state, station_key, site_key, user_key, c[i]))
            queried.append(i)
        else:
            station_key, site_key, user_key = keys[i]
            _observe(state, station_key, site_key, user_key, c[i], e[i], p[i], en[i], d[i])
    out = np.empty((n, len(CONTEXT_KEYS)))
    out[np.frombuffer(queried, dtype=np.int64)] = np.frombuffer(flat).reshape(n, -1)
    return out


def replay_contexts(records: Sequence[dict]) -> list[dict[str, float]]:
    """Each session's context from the sessions that ended before it connected.

    Args:
        records: the whole history, any order.

    Returns:
        One context per record, in input order.
    """
    rows = replay_context_array(session_facts(records)).tolist()
    return [dict(zip(CONTEXT_KEYS, row, strict=True)) for row in rows]


def context_array(contexts: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Contexts given as dicts (serving) as an array; a missing or non-finite value is
    replaced by what a station without history would get."""
    if isinstance(contexts, ContextRows):
        out = np.array(contexts.rows, dtype=float)
    else:
        out = np.array([[c.get(k, math.nan) if isinstance(c, Mapping) else math.nan
                         for k in CONTEXT_KEYS] for c in contexts], dtype=float)
    out = out.reshape(len(contexts), len(CONTEXT_KEYS))
    defaults = np.array([_DEFAULTS[k] for k in CONTEXT_KEYS])
    return np.where(np.isfinite(out), out, defaults)


def context_features(facts: SessionFacts, contexts: np.ndarray) -> dict[str, np.ndarray]:
    """The candidate context columns (`CANDIDATE_COLUMNS`, finite float64) of sessions.

    Args:
        facts: `session_facts` of the sessions.
        contexts: their contexts, rows aligned, columns `CONTEXT_KEYS`.
    """
    ctx = {k: contexts[:, j] for j, k in enumerate(CONTEXT_KEYS)}
    columns = {
        "kw_vs_station": facts.power - ctx["station_log_kw"],
        "kw_vs_station_max": facts.power - ctx["station_log_kw_high"],
        "kwh_vs_station": facts.energy - ctx["station_log_kwh"],
        "hours_vs_station": facts.duration - ctx["station_log_hours"],
        "kwh_vs_user": facts.energy - ctx["user_log_kwh"],
        "hours_vs_user": facts.duration - ctx["user_log_hours"],
        "station_max_kw": ctx["station_log_kw_high"],
        "station_history": np.log10(1.0 + ctx["station_sessions"]),
        "hours_since_last": ctx["log_hours_since_last"],
        "since_vs_station_gap": ctx["log_hours_since_last"] - ctx["station_log_gap"],
        "kwh_shortfall_vs_station": np.maximum(ctx["station_log_kwh"] - facts.energy, 0.0),
        "kwh_shortfall_vs_user": np.maximum(ctx["user_log_kwh"] - facts.energy, 0.0),
        "kw_excess_vs_station_max": np.maximum(facts.power - ctx["station_log_kw_high"], 0.0),
        "hours_excess_vs_station": np.maximum(facts.duration - ctx["station_log_hours"], 0.0),
    }
    return {name: np.where(np.isfinite(v), v, 0.0) for name, v in columns.items()}
