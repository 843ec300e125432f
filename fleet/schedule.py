"""Which sessions run where, in which OCPP version, with which fault, and when (pure, seeded)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipelines.contracts.dates import rfc1123_to_epoch
from pipelines.telemetry.charging import FAULT_KINDS, OCPP16_ONLY, PlanOptions, plantable_kinds

Schedule = Literal["calendar", "packed"]


@dataclass(frozen=True)
class ScheduledSession:
    """One session as the fleet will replay it.

    Attributes:
        offset_s: simulated seconds after the run's start when the car plugs in (a station
            still busy with its previous car starts it later).
        fault: the live fault kind to plant, or None.
    """

    session: Mapping
    station_id: str
    ocpp_version: str
    fault: str | None
    offset_s: float

    @property
    def session_id(self) -> str:
        return str(self.session.get("sessionID"))


def _connection(record: Mapping) -> float:
    return rfc1123_to_epoch(record.get("connectionTime")) or 0.0


def select_sessions(sessions: Iterable[Mapping], max_sessions: int | None = None,
                    max_stations: int | None = None) -> list[Mapping]:
    """The sessions to replay, by connection time: those of the `max_stations` busiest
    stations, then the first `max_sessions` of them. Sessions without a readable
    connection time or station are left out."""
    usable = sorted((s for s in sessions if s.get("stationID") and rfc1123_to_epoch(
        s.get("connectionTime")) is not None and rfc1123_to_epoch(s.get("disconnectTime"))
        is not None), key=_connection)
    if max_stations is not None:
        busiest = Counter(str(s["stationID"]) for s in usable).most_common(max_stations)
        keep = {station for station, _ in busiest}
        usable = [s for s in usable if str(s["stationID"]) in keep]
    return usable[:max_sessions] if max_sessions is not None else usable


def replicate_stations(sessions: Sequence[Mapping], copies: int) -> list[Mapping]:
    """The sessions `copies` times over, each copy on its own stations (`<stationID>-r<k>`,
    sessionID `<sessionID>-r<k>`; copy 0 keeps the ids): many chargers from few records,
    for load tests."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    out = list(sessions)
    for k in range(1, copies):
        out += [{**s, "stationID": f"{s['stationID']}-r{k}",
                 "sessionID": f"{s.get('sessionID')}-r{k}"} for s in sessions]
    return out


def assign_versions(station_ids: Iterable[str], share_201: float, seed: int) -> dict[str, str]:
    """Each station's OCPP version: `round(share_201 * n)` of them speak 2.0.1, the rest 1.6."""
    if not 0 <= share_201 <= 1:
        raise ValueError(f"the 2.0.1 share must be within [0, 1], got {share_201}")
    stations = sorted(set(station_ids))
    rng = np.random.default_rng([seed, 201])
    newer = set(rng.permutation(len(stations))[:round(share_201 * len(stations))].tolist())
    return {s: "2.0.1" if i in newer else "1.6" for i, s in enumerate(stations)}


def assign_faults(sessions: Sequence[Mapping], versions: Mapping[str, str], rate: float,
                  kinds: Iterable[str] = FAULT_KINDS, seed: int = 0,
                  options: PlanOptions | None = None) -> dict[str, str]:
    """sessionID -> fault kind for `round(rate * n)` sessions, the kinds as even as the
    sessions allow.

    A kind goes only where the session can show it (`plantable_kinds`), `overtemperature`
    only to 1.6 stations, and `never_unplugged` only to a station's last session, so the
    car that stays does not hold up the station's later sessions.

    Raises:
        ValueError: a rate outside [0, 1] or an unknown kind.
    """
    kinds = tuple(dict.fromkeys(kinds))
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown or not 0 <= rate <= 1:
        raise ValueError(f"need a rate in [0, 1] and kinds from {FAULT_KINDS}; got {rate}, "
                         f"unknown {sorted(unknown)}")
    options = options or PlanOptions()
    rng = np.random.default_rng([seed, 13])
    order = [kinds[i] for i in rng.permutation(len(kinds))]
    last_of_station = {str(s["stationID"]): str(s.get("sessionID")) for s in sessions}
    wanted, counts, faults = round(rate * len(sessions)), Counter(), {}
    shuffled = rng.permutation(len(sessions)).tolist()
    if "never_unplugged" in order and wanted:  # scarce (one per station): served first
        quota = -(-wanted // len(order))
        for index in shuffled:
            record = sessions[index]
            sid = str(record.get("sessionID"))
            if counts["never_unplugged"] < quota and last_of_station[
                    str(record["stationID"])] == sid:
                faults[sid] = "never_unplugged"
                counts["never_unplugged"] += 1
    for index in shuffled:
        if len(faults) >= wanted or not order:
            break
        record = sessions[index]
        station, sid = str(record["stationID"]), str(record.get("sessionID"))
        if sid in faults:
            continue
        allowed = set(plantable_kinds(record, options)) & set(order)
        if versions.get(station) != "1.6":
            allowed -= OCPP16_ONLY
        if last_of_station[station] != sid:
            allowed.discard("never_unplugged")
        if allowed:
            kind = min(allowed, key=lambda k: (counts[k], order.index(k)))
            faults[sid] = kind
            counts[kind] += 1
    return faults


def schedule_sessions(sessions: Sequence[Mapping], versions: Mapping[str, str],
                      faults: Mapping[str, str], mode: Schedule = "calendar",
                      gap_s: float = 600.0, seed: int = 0) -> list[ScheduledSession]:
    """When each session starts, in simulated seconds after the run's start.

    `calendar` keeps the sessions' own times (the first connection is at 0); `packed`
    runs each station's sessions back to back, `gap_s` apart, every station starting
    within the first `gap_s` (idle nights removed; charger times then differ from the
    records')."""
    if mode not in ("calendar", "packed"):
        raise ValueError(f"schedule must be calendar or packed, got {mode!r}")
    if not sessions:
        return []
    first = min(_connection(s) for s in sessions)
    rng = np.random.default_rng([seed, 7])
    station_clock: dict[str, float] = {}
    planned = []
    for record in sorted(sessions, key=_connection):
        station = str(record["stationID"])
        if mode == "calendar":
            offset = _connection(record) - first
        else:
            offset = station_clock.get(station, float(rng.uniform(0, gap_s)))
            stay = (rfc1123_to_epoch(record.get("disconnectTime")) or 0.0) - _connection(record)
            station_clock[station] = offset + max(stay, 0.0) + gap_s
        planned.append(ScheduledSession(record, station, versions[station],
                                        faults.get(str(record.get("sessionID"))), offset))
    return planned
