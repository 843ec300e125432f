"""Station-level faults planted in real ACN sessions, and how soon station health finds them.

Protocol (docs/stations.md, "Station health"):

1. `plant_station_faults(records, seed)` picks stations with enough history and gives
   each at most one fault, at a random time inside its site's data:
   - **outage**: the station's sessions removed for 3-14 days;
   - **degraded**: kWhDelivered cut to 30-50 % for two weeks (doneChargingTime kept, so
     the charging power drops by the same factor);
   - **failing**: for a week, every session becomes a near-zero-energy long connection.
2. `replay_health` feeds every session in event time (its disconnectTime, when a finished
   session reaches the worker) through `pipelines.stations.health.on_session`, and calls
   `on_tick` at every hour of event time.
3. `score_station_faults` matches the alerts to the faults: share detected, delay from
   the fault's start (hours, and sessions for degraded and failing), and the false
   station alerts per 100 station-weeks of untouched data (stations and time away from
   any planted fault, outside site-wide gaps in the data). For outages it also gives the
   delay of an oracle that knows the station's true hour-of-week rates (measured on the
   clean export) and alerts at the same expected count.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from pipelines.contracts.dates import format_rfc1123
from pipelines.stations.health import (
    DEFAULT_POLICY,
    HOURS_PER_WEEK,
    HealthPolicy,
    StationAlert,
    epoch_seconds,
    hour_of_week,
    on_session,
    on_tick,
    time_to_expect,
)

FaultKind = Literal["outage", "degraded", "failing"]
ALERT_OF: dict[str, str] = {"outage": "silent", "degraded": "degraded", "failing": "failing"}
DAY_S = 86400.0
SITE_GAP_DAYS = 7.0  # a site with no session for this long has a gap in its data
TOUCHED_MARGIN_DAYS = 7.0  # after a fault, the station's alerts are neither true nor false
DEGRADED_WITHIN_SESSIONS = 10


@dataclass(frozen=True)
class StationFault:
    """One planted fault: `kind` at `station_id` from `start_s` to `end_s`."""

    kind: FaultKind
    station_id: str
    site_id: str
    start_s: float
    end_s: float
    factor: float = 1.0  # degraded: share of the energy kept
    sessions: int = 0  # sessions of the station inside the window (removed, for an outage)
    weekday_rate: float = 0.0  # the station's sessions per weekday in its site's data


@dataclass(frozen=True)
class PlantingPlan:
    """Shares of eligible stations given each fault, per site segment."""

    outage: float = 0.4
    degraded: float = 0.3
    failing: float = 0.15
    min_sessions: int = 20  # a station needs this many sessions in the segment
    min_history_days: float = 21.0  # faults start this long after the segment starts


@dataclass
class Segment:
    """A stretch of one site's data without a site-wide gap."""

    site_id: str
    start_s: float
    end_s: float
    records: list[dict]


def _times(record: dict) -> tuple[float | None, float | None]:
    return epoch_seconds(record.get("connectionTime")), epoch_seconds(record.get("disconnectTime"))


def site_segments(records: Iterable[dict], gap_days: float = SITE_GAP_DAYS) -> list[Segment]:
    """Each site's sessions split wherever the site had no connection for `gap_days`."""
    by_site: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for r in records:
        connect, end = _times(r)
        if connect is not None and end is not None and r.get("stationID"):
            by_site[str(r.get("siteID") or "")].append((connect, r))
    segments = []
    for site, items in sorted(by_site.items()):
        items.sort(key=lambda item: item[0])
        current: list[tuple[float, dict]] = []
        for connect, r in items:
            if current and connect - current[-1][0] > gap_days * DAY_S:
                segments.append(Segment(site, current[0][0], current[-1][0], [x[1] for x in current]))
                current = []
            current.append((connect, r))
        if current:
            segments.append(Segment(site, current[0][0], current[-1][0], [x[1] for x in current]))
    return segments


def _weekdays(start_s: float, end_s: float) -> int:
    days = np.arange(math.floor(start_s / DAY_S), math.floor(end_s / DAY_S) + 1)
    return int(((days + 3) % 7 < 5).sum())  # day 0 (1970-01-01) was a Thursday


def weekday_rates(segment: Segment) -> dict[str, float]:
    """Sessions per weekday of each station over its segment."""
    counts: dict[str, int] = defaultdict(int)
    for r in segment.records:
        connect = epoch_seconds(r["connectionTime"])
        if hour_of_week(connect) < 120:
            counts[r["stationID"]] += 1
    weekdays = max(1, _weekdays(segment.start_s, segment.end_s))
    return {s: n / weekdays for s, n in counts.items()}


def _shift(record: dict, name: str, t_s: float) -> None:
    record[name] = format_rfc1123(t_s)


def _apply(fault: StationFault, record: dict, rng: np.random.Generator) -> dict | None:
    """The record as the fault leaves it (None when the fault removes it)."""
    if fault.kind == "outage":
        return None
    record = copy.deepcopy(record)
    if fault.kind == "degraded":
        record["kWhDelivered"] = round(float(record["kWhDelivered"]) * fault.factor, 3)
        return record
    connect = epoch_seconds(record["connectionTime"])
    end = max(epoch_seconds(record["disconnectTime"]), connect + rng.uniform(1.5, 4.0) * 3600)
    _shift(record, "disconnectTime", end)
    _shift(record, "doneChargingTime", connect + rng.uniform(60, 600))
    record["kWhDelivered"] = round(float(rng.uniform(0.0, 0.05)), 3)
    return record


def plant_station_faults(records: Sequence[dict], seed: int,
                         plan: PlantingPlan = PlantingPlan(),
                         ) -> tuple[list[dict], list[StationFault]]:
    """Plant station-level faults in a copy of `records`.

    Args:
        records: ACN sessions (several sites and periods).
        seed: the same seed plants the same faults.
        plan: shares of stations per fault kind.

    Returns:
        `(records, faults)`: the sessions as the faulty stations would have sent them,
        and the faults.
    """
    rng = np.random.default_rng(seed)
    faults: list[StationFault] = []
    for segment in site_segments(records):
        rates = weekday_rates(segment)
        by_station: dict[str, list[float]] = defaultdict(list)
        for r in segment.records:
            by_station[r["stationID"]].append(epoch_seconds(r["connectionTime"]))
        stations = sorted(s for s, t in by_station.items() if len(t) >= plan.min_sessions)
        rng.shuffle(stations)
        cut = np.cumsum([plan.outage, plan.degraded, plan.failing]) * len(stations)
        for i, station in enumerate(stations):
            kind: FaultKind | None = ("outage" if i < cut[0] else "degraded" if i < cut[1]
                                      else "failing" if i < cut[2] else None)
            if kind is None:
                continue
            days = {"outage": rng.uniform(3, 14), "degraded": 14.0, "failing": 7.0}[kind]
            earliest = segment.start_s + plan.min_history_days * DAY_S
            latest = segment.end_s - days * DAY_S
            if latest <= earliest:
                continue
            connects = np.array(by_station[station])
            for _ in range(20):  # a window in which the station had sessions to lose
                start = float(rng.uniform(earliest, latest))
                inside = int(((connects >= start) & (connects < start + days * DAY_S)).sum())
                if inside:
                    break
            faults.append(StationFault(kind, station, segment.site_id, start,
                                       start + days * DAY_S, float(rng.uniform(0.3, 0.5))
                                       if kind == "degraded" else 1.0, inside,
                                       rates.get(station, 0.0)))
    return _planted(records, faults, rng), faults


def _planted(records: Sequence[dict], faults: list[StationFault],
             rng: np.random.Generator) -> list[dict]:
    by_station: dict[tuple[str, str], list[StationFault]] = defaultdict(list)
    for f in faults:  # one per station and segment: a station may have one in each period
        by_station[(f.station_id, f.site_id)].append(f)
    out = []
    for r in records:
        connect = epoch_seconds(r.get("connectionTime"))
        fault = next((f for f in by_station.get((r.get("stationID"), r.get("siteID") or ""), [])
                      if connect is not None and f.start_s <= connect < f.end_s), None)
        if fault is None:
            out.append(r)
        elif (changed := _apply(fault, r, rng)) is not None:
            out.append(changed)
    return out


@dataclass
class Replay:
    """What a replay produced: every alert event, and the cost of the calls."""

    alerts: list[StationAlert]
    sessions: int
    ticks: int
    session_seconds: float
    tick_seconds: float
    station_ticks: int


def replay_health(records: Iterable[dict], policy: HealthPolicy = DEFAULT_POLICY,
                  tick_s: float = 3600.0) -> Replay:
    """Feed sessions in event time (disconnectTime) through `on_session`, with `on_tick`
    every `tick_s` of event time; the state is a plain dict."""
    events = sorted(((end, r) for r in records
                     for end in [_times(r)[1]] if end is not None), key=lambda e: e[0])
    state: dict[str, object] = {}
    alerts: list[StationAlert] = []
    session_time = tick_time = 0.0
    ticks = station_ticks = 0
    next_tick = math.ceil(events[0][0] / tick_s) * tick_s if events else 0.0
    for end, record in events:
        while next_tick <= end:
            began = time.perf_counter()
            alerts += on_tick(state, next_tick, policy=policy)[1]
            tick_time += time.perf_counter() - began
            ticks += 1
            station_ticks += sum(1 for key in state if key.startswith("health:"))
            next_tick += tick_s
        began = time.perf_counter()
        alerts += on_session(state, record, policy=policy)[1]
        session_time += time.perf_counter() - began
    return Replay(alerts, len(events), ticks, session_time, tick_time, station_ticks)


def _episodes(alerts: Iterable[StationAlert]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(station, alert kind) -> [(opened_at, closed at or inf)] from the alert events."""
    episodes: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    closed = {a.alert_id: a.at for a in alerts if a.status == "closed"}
    for a in alerts:
        if a.status == "open":
            episodes[(a.station_id, a.kind)].append((a.opened_at, closed.get(a.alert_id, math.inf)))
    return episodes


def oracle_rates(segment: Segment, station_id: str) -> np.ndarray:
    """A station's true arrivals per hour of week over its clean segment."""
    counts = np.zeros(HOURS_PER_WEEK)
    for r in segment.records:
        if r["stationID"] == station_id:
            counts[int(hour_of_week(epoch_seconds(r["connectionTime"])))] += 1
    return counts / max((segment.end_s - segment.start_s) / (7 * DAY_S), 1.0)


def _last_end_before(segment: Segment, station_id: str, t_s: float) -> float | None:
    ends = [e for r in segment.records if r["stationID"] == station_id
            for c, e in [_times(r)] if c < t_s]
    return max(ends) if ends else None


def _fault_outcome(fault: StationFault, episodes: list[tuple[float, float]],
                   ends: list[float], segment: Segment, policy: HealthPolicy) -> dict:
    """Detection and delays of one fault."""
    margin = 0.0 if fault.kind == "outage" else TOUCHED_MARGIN_DAYS * DAY_S
    hits = [opened for opened, closed in episodes
            if fault.start_s <= opened <= fault.end_s + margin or opened < fault.start_s < closed]
    alert_s = max(min(hits), fault.start_s) if hits else None
    out = {**asdict(fault), "detected": alert_s is not None,
           "delay_h": None if alert_s is None else (alert_s - fault.start_s) / 3600.0,
           "delay_sessions": None if alert_s is None else sum(1 for e in ends if e <= alert_s)}
    if fault.kind == "outage":
        last_end = _last_end_before(segment, fault.station_id, fault.start_s)
        due = math.inf if last_end is None else time_to_expect(
            oracle_rates(segment, fault.station_id), last_end, policy.silent_expected)
        out |= {"oracle_detected": due < fault.end_s,
                "oracle_delay_h": max(0.0, due - fault.start_s) / 3600.0
                if due < math.inf else None}
    return out


def _station_weeks(segments: list[Segment], faults: list[StationFault]) -> float:
    """Station-weeks away from any planted fault (and its margin), inside the segments."""
    touched: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in faults:
        touched[f.station_id].append((f.start_s, f.end_s + TOUCHED_MARGIN_DAYS * DAY_S))
    total = 0.0
    for segment in segments:
        firsts: dict[str, float] = {}
        for r in segment.records:
            c = epoch_seconds(r["connectionTime"])
            firsts[r["stationID"]] = min(firsts.get(r["stationID"], c), c)
        for station, first in firsts.items():
            span = segment.end_s - first
            for a, b in touched.get(station, []):
                span -= max(0.0, min(b, segment.end_s) - max(a, first))
            total += max(0.0, span)
    return total / (7 * DAY_S)


def _is_false(alert: StationAlert, touched: dict[str, list[tuple[float, float]]]) -> bool:
    return not any(a <= alert.opened_at <= b for a, b in touched.get(alert.station_id, []))


def score_station_faults(clean: Sequence[dict], planted: Sequence[dict],
                         faults: list[StationFault], alerts: list[StationAlert],
                         policy: HealthPolicy = DEFAULT_POLICY) -> dict:
    """Match the alerts to the planted faults (see the module docstring).

    Returns:
        `{"faults": [per-fault outcome], "false_alerts": {kind: n}, "station_weeks": w}`.
    """
    segments = site_segments(clean)
    segment_of = {}
    for seg in segments:
        for r in seg.records:
            segment_of.setdefault((r["stationID"], seg.site_id, seg.start_s), seg)
    ends: dict[str, list[float]] = defaultdict(list)
    for r in planted:
        connect, end = _times(r)
        if connect is not None and end is not None:
            ends[r["stationID"]].append((connect, end))
    episodes = _episodes(alerts)
    outcomes = []
    for f in faults:
        segment = next(s for s in segments if s.site_id == f.site_id
                       and s.start_s <= f.start_s <= s.end_s)
        inside = sorted(e for c, e in ends[f.station_id] if f.start_s <= c < f.end_s)
        outcomes.append(_fault_outcome(f, episodes.get((f.station_id, ALERT_OF[f.kind]), []),
                                       inside, segment, policy))
    touched: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in faults:
        touched[f.station_id].append((f.start_s, f.end_s + TOUCHED_MARGIN_DAYS * DAY_S))
    false = [a for a in alerts if a.status == "open" and _is_false(a, touched)]
    return {"faults": outcomes,
            "false_alerts": {k: sum(a.kind == k for a in false)
                             for k in ("silent", "failing", "degraded")},
            "false_examples": [f"{a.station_id} {format_rfc1123(a.opened_at)}: {a.evidence}"
                               for a in false[:20]],
            "station_weeks": _station_weeks(segments, faults)}


def _share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def summarise(scored: dict) -> dict:
    """Per kind: faults, share detected, delays; false alerts per 100 station-weeks."""
    rows: dict[str, dict] = {}
    for kind in ("outage", "degraded", "failing"):
        fs = [f for f in scored["faults"] if f["kind"] == kind]
        row = {"planted": len(fs), "detected": _share([f["detected"] for f in fs]),
               "median_delay_h": _median([f["delay_h"] for f in fs]),
               "median_delay_sessions": _median([f["delay_sessions"] for f in fs])}
        if kind == "outage":
            target = [f for f in fs if f["end_s"] - f["start_s"] >= 5 * DAY_S
                      and f["weekday_rate"] >= 1.0]
            row |= {"target_planted": len(target),
                    "target_detected": _share([f["detected"] for f in target]),
                    "target_median_delay_h": _median([f["delay_h"] for f in target]),
                    "target_oracle_detected": _share([f["oracle_detected"] for f in target]),
                    "target_oracle_median_delay_h": _median(
                        [f["oracle_delay_h"] for f in target])}
        if kind == "degraded":
            row["within_10_sessions"] = _share(
                [f["detected"] and f["delay_sessions"] <= DEGRADED_WITHIN_SESSIONS for f in fs])
        rows[kind] = row
    weeks = scored["station_weeks"]
    false = sum(scored["false_alerts"].values())
    return {"kinds": rows, "false_alerts": scored["false_alerts"], "station_weeks": weeks,
            "false_per_100_station_weeks": 100.0 * false / weeks if weeks else None}


def evaluate_station_faults(records: Sequence[dict], seeds: Sequence[int] = (1, 2, 3),
                            policy: HealthPolicy = DEFAULT_POLICY,
                            plan: PlantingPlan = PlantingPlan()) -> dict:
    """Plant, replay and score once per seed; the summary of each seed and their mean."""
    runs = {}
    for seed in seeds:
        planted, faults = plant_station_faults(records, seed, plan)
        replay = replay_health(planted, policy)
        scored = score_station_faults(records, planted, faults, replay.alerts, policy)
        runs[seed] = {**summarise(scored), "false_examples": scored["false_examples"],
                      "us_per_session": 1e6 * replay.session_seconds / max(replay.sessions, 1),
                      "us_per_station_tick": 1e6 * replay.tick_seconds
                      / max(replay.station_ticks, 1)}
    return {"policy": asdict(policy), "plan": asdict(plan), "seeds": runs,
            "mean": _mean_of(list(runs.values()))}


def _mean_of(runs: list[dict]) -> dict:
    """The mean over seeds of every number in the summaries (None where a seed has none)."""
    def mean(values: list) -> object:
        if all(isinstance(v, dict) for v in values):
            return {k: mean([v.get(k) for v in values]) for k in values[0]}
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        return float(np.mean(numbers)) if numbers else None
    return {k: mean([r[k] for r in runs]) for k in runs[0] if k != "false_examples"}


def with_policy(policy: HealthPolicy = DEFAULT_POLICY, **changes: float) -> HealthPolicy:
    """`policy` with some thresholds changed (for tuning sweeps)."""
    return replace(policy, **changes)
