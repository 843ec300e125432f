"""Labelled anomalies planted into ACN sessions: for the synthetic data and the evaluation.

| type                | what is changed                                                      | breaks a suite rule |
|---------------------|----------------------------------------------------------------------|---------------------|
| meter_fault         | 0-0.05 kWh over a connection of at least 6 h                         | no                  |
| over_delivery       | request in force cut to 3-8 kWh, delivered 3-6x that at level-2 power | no                  |
| impossible_power    | 40-75 kWh in 8-30 min: 80-560 kW average, beyond any ACN station     | yes (avg_kw)        |
| stuck_session       | connected 49-240 h, energy unchanged                                 | no                  |
| timestamp_inversion | doneChargingTime 1-12 h before connect or 1-24 h after disconnect    | yes (done window)   |
| absurd_request      | last request 0 kWh, or 500-5000 kWh                                  | yes (kWhRequested)  |

`RULE_BREAKING_ANOMALIES` are the ones the Great Expectations suites quarantine by
design; the others are plausible in isolation and are left to the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np

from pipelines.contracts.dates import format_rfc1123, parse_rfc1123

ANOMALY_TYPES: tuple[str, ...] = ("meter_fault", "over_delivery", "impossible_power",
                                  "stuck_session", "timestamp_inversion", "absurd_request")
RULE_BREAKING_ANOMALIES = frozenset({"impossible_power", "timestamp_inversion", "absurd_request"})


def _get(record: dict, name: str) -> datetime | None:
    return parse_rfc1123(record.get(name))


def _set(record: dict, name: str, when: datetime) -> None:
    record[name] = format_rfc1123(when)


def _hours(h: float) -> timedelta:
    return timedelta(seconds=round(h * 3600))


def _ensure_request(record: dict, connect: datetime, rng: np.random.Generator) -> dict:
    """The edit in force; a session without inputs gets one (user inputs are optional)."""
    if not isinstance(record.get("userInputs"), list) or not record["userInputs"]:
        user = int(rng.integers(1, 3000))
        record["userID"] = record.get("userID") or f"{user:09d}"
        record["userInputs"] = [{
            "WhPerMile": 400, "kWhRequested": 8.0, "milesRequested": 20, "minutesAvailable": 480,
            "modifiedAt": format_rfc1123(connect + timedelta(minutes=2)),
            "paymentRequired": True,
            "requestedDeparture": format_rfc1123(connect + timedelta(minutes=480)),
            "userID": user}]
    record["userInputs"][-1] = dict(record["userInputs"][-1])
    return record["userInputs"][-1]


def _request(edit: dict, kwh: float) -> None:
    """Set the request, keeping kWhRequested = milesRequested * WhPerMile / 1000."""
    wh_per_mile = edit.get("WhPerMile") or 400
    edit["WhPerMile"] = wh_per_mile
    edit["milesRequested"] = round(kwh * 1000 / wh_per_mile)
    edit["kWhRequested"] = round(edit["milesRequested"] * wh_per_mile / 1000, 2)


def _meter_fault(r: dict, connect: datetime, rng: np.random.Generator) -> None:
    disconnect = _get(r, "disconnectTime") or connect
    if (disconnect - connect) < timedelta(hours=6):
        disconnect = connect + _hours(rng.uniform(6, 12))
        _set(r, "disconnectTime", disconnect)
    r["kWhDelivered"] = round(float(rng.uniform(0, 0.05)), 3)
    _set(r, "doneChargingTime", connect + timedelta(minutes=float(rng.uniform(1, 10))))


def _over_delivery(r: dict, connect: datetime, rng: np.random.Generator) -> None:
    edit = _ensure_request(r, connect, rng)
    _request(edit, rng.uniform(3, 8))
    kwh = edit["kWhRequested"] * rng.uniform(3, 6)
    charging_h = kwh / rng.uniform(5.0, 6.6)
    disconnect = _get(r, "disconnectTime") or connect
    disconnect = max(disconnect, connect + _hours(charging_h + rng.uniform(0.1, 2)))
    r["kWhDelivered"] = round(float(kwh), 3)
    _set(r, "disconnectTime", disconnect)
    _set(r, "doneChargingTime", connect + _hours(charging_h))


def _impossible_power(r: dict, connect: datetime, rng: np.random.Generator) -> None:
    minutes = rng.uniform(8, 30)
    r["kWhDelivered"] = round(float(rng.uniform(40, 75)), 3)
    _set(r, "disconnectTime", connect + timedelta(minutes=float(minutes)))
    _set(r, "doneChargingTime", connect + timedelta(minutes=float(minutes - 1)))


def _stuck_session(r: dict, connect: datetime, rng: np.random.Generator) -> None:
    _set(r, "disconnectTime", connect + _hours(rng.uniform(49, 240)))


def _timestamp_inversion(r: dict, connect: datetime, rng: np.random.Generator) -> None:
    if rng.random() < 0.5:
        _set(r, "doneChargingTime", connect - _hours(rng.uniform(1, 12)))
    else:
        disconnect = _get(r, "disconnectTime") or connect
        _set(r, "doneChargingTime", disconnect + _hours(rng.uniform(1, 24)))


def _absurd_request(r: dict, connect: datetime, rng: np.random.Generator) -> None:
    edit = _ensure_request(r, connect, rng)
    if rng.random() < 0.5:
        edit["milesRequested"], edit["kWhRequested"] = 0, 0.0
    else:
        _request(edit, rng.uniform(500, 5000))


_APPLY: dict[str, Callable[[dict, datetime, np.random.Generator], None]] = {
    "meter_fault": _meter_fault, "over_delivery": _over_delivery,
    "impossible_power": _impossible_power, "stuck_session": _stuck_session,
    "timestamp_inversion": _timestamp_inversion, "absurd_request": _absurd_request,
}


def inject_anomalies(records: list[dict], rate: float, seed: int,
                     types: tuple[str, ...] = ANOMALY_TYPES,
                     ) -> tuple[list[dict], dict[str, str]]:
    """Turn a seeded random fraction of sessions into labelled anomalies.

    The input is not modified: changed sessions are deep copies. Types are spread
    evenly over the chosen sessions. Sessions without a parseable connectionTime
    are never chosen.

    Args:
        records: ACN session dicts (real or synthetic).
        rate: fraction of sessions to change, 0..1.
        seed: the same seed and input give the same output.
        types: anomaly types to use (subset of `ANOMALY_TYPES`).

    Returns:
        `(records, labels)`: the new list and `sessionID -> anomaly type`.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be within [0, 1], got {rate}")
    unknown = set(types) - set(ANOMALY_TYPES)
    if unknown or not types:
        raise ValueError(f"unknown anomaly types {sorted(unknown)}; choose from {ANOMALY_TYPES}")
    rng = np.random.default_rng(seed)
    wanted = round(rate * len(records))
    chosen: list[int] = []
    for i in rng.permutation(len(records)).tolist() if wanted else []:
        if len(chosen) == wanted:
            break
        if records[i].get("sessionID") and _get(records[i], "connectionTime"):
            chosen.append(i)
    chosen.sort()
    count = len(chosen)
    kinds = rng.permutation(np.resize(np.array(types), count)).tolist() if count else []
    out = list(records)
    labels: dict[str, str] = {}
    for index, kind in zip(chosen, kinds):
        record = copy.deepcopy(records[index])
        _APPLY[kind](record, _get(record, "connectionTime"), rng)
        out[index] = record
        labels[str(record["sessionID"])] = kind
    return out, labels
