"""Parsing and features of ACN sessions: the one module used by training and serving.

`sessions_to_frame` parses session dicts (API, export files, Kafka) into typed
columns; `add_features` derives the model input; `feature_matrix` does both and
returns exactly `FEATURE_COLUMNS` as float64, NaN-free, one row per record in
record order. No session is ever dropped: missing or odd values are imputed as
below, and the two flags `has_user_inputs` and `done_missing` record that.

Feature table (version `FEATURE_VERSION`):

| column               | definition                                                  | when missing / odd                         |
|----------------------|-------------------------------------------------------------|--------------------------------------------|
| kwh_delivered        | kWhDelivered                                                | null -> 0                                  |
| kwh_requested        | kWhRequested of the last userInputs edit (the one in force) | no userInputs -> kwh_delivered             |
| connection_hours     | disconnectTime - connectionTime                             | null disconnect -> done - connect, else 0  |
| charging_hours       | doneChargingTime - connectionTime (signed)                  | null done -> connection_hours              |
| idle_hours           | disconnectTime - doneChargingTime (signed)                  | null done -> 0                             |
| avg_kw               | kwh_delivered / connection_hours                            | hours floored at 1 minute                  |
| charging_kw          | kwh_delivered / charging_hours                              | hours floored at 5 minutes                 |
| delivered_ratio      | kwh_delivered / kwh_requested                               | request floored at 0.1 kWh; no inputs -> 1 |
| arrival_hour_sin/cos | sin/cos(2 pi h / 24), h = local fractional connection hour  | unknown timezone -> UTC                    |
| weekday              | local weekday of the connection, Monday = 0                 |                                            |
| minutes_available    | minutesAvailable of the last edit                           | no userInputs -> connection minutes        |
| departure_gap_hours  | disconnectTime - requestedDeparture of the last edit        | no userInputs -> 0                         |
| n_edits              | number of userInputs edits                                  | null -> 0                                  |
| has_user_inputs      | 1 when userInputs is a non-empty list                       |                                            |
| done_missing         | 1 when doneChargingTime is null (common at DC fast chargers) |                                           |
| log_kwh_delivered    | log10(kwh_delivered + 0.001)                                | negative energy -> 0 first                 |
| log_avg_kw           | log10(avg_kw + 0.001)                                       | negative power -> 0 first                  |
| log_delivered_ratio  | log2((kwh_delivered + 0.001) / (kwh_requested + 0.001))     | request floored at 0.1 kWh; no inputs -> 0 |
| excess_kwh           | max(kwh_delivered - kwh_requested, 0)                       | no inputs -> 0                             |
| kw_vs_station        | log10 charging kW - the station's typical log10 charging kW | no history: the site's, then a prior       |
| kw_vs_station_max    | log10 charging kW - the station's maximum (0.9-expectile)   | as above                                   |
| kwh_vs_station       | log10 kWh - the station's typical log10 kWh                 | as above                                   |
| kwh_vs_user          | log10 kWh - the user's usual log10 kWh                      | no userID or history: the station's view   |

The four context columns (added in `f3`, after the 20 `f2` columns, which stay
first and unchanged as `F2_COLUMNS`) judge a session against its own charger and
driver, from the sessions that ended before it connected (`pipelines.stations`,
docs/stations.md). `feature_matrix(records, contexts)` takes the contexts the
serving worker built; without them it replays the records in event time as
the whole history. Charging kW is kWh / charging hours, floored at 5 minutes.

The log columns (added in `f2`) put near-zero energy on its own scale: the
exports never go below 0.5 kWh, and on a linear axis a 0.02 kWh meter fault
sits right next to them; 0.001 is the exports' resolution (1 Wh). `excess_kwh`
is the energy delivered beyond the request in force: 0 for 97 % of the real
sessions, so an over-delivery stands apart on it.

Signed durations keep timestamp inversions visible (negative charging or idle
hours). Anything still non-finite after these rules (an unparseable date, an
infinite number) becomes 0, so serving never raises on a schema-valid session.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from pipelines.contracts.dates import parse_dates, read_rfc1123, rfc1123_to_epoch
from pipelines.contracts.sessions import DATE_FIELDS, SESSION_FIELDS, TEXT_FIELDS
from pipelines.stations.context import (
    CONTEXT_COLUMNS,
    SessionFacts,
    context_array,
    context_features,
    replay_context_array,
    session_facts,
)

FEATURE_VERSION = "f3"

F2_COLUMNS: list[str] = [
    "kwh_delivered",
    "kwh_requested",
    "connection_hours",
    "charging_hours",
    "idle_hours",
    "avg_kw",
    "charging_kw",
    "delivered_ratio",
    "arrival_hour_sin",
    "arrival_hour_cos",
    "weekday",
    "minutes_available",
    "departure_gap_hours",
    "n_edits",
    "has_user_inputs",
    "done_missing",
    "log_kwh_delivered",
    "log_avg_kw",
    "log_delivered_ratio",
    "excess_kwh",
]
FEATURE_COLUMNS: list[str] = F2_COLUMNS + CONTEXT_COLUMNS
# what a context row is built from, besides its time and key columns
_FACT_FIELDS = ("sessionID", "stationID", "siteID", "userID", "connectionTime",
                "disconnectTime", "doneChargingTime", "kWhDelivered")

_MIN_CONNECTION_H = 1 / 60
_MIN_CHARGING_H = 5 / 60
_MIN_REQUEST_KWH = 0.1
_LOG_FLOOR_KWH = 0.001  # the exports' resolution: 1 Wh


def _last_edit(inputs: Any) -> dict:
    if isinstance(inputs, list) and inputs and isinstance(inputs[-1], dict):
        return inputs[-1]
    return {}


def _number(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def sessions_to_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Parse ACN session dicts into a typed frame, one row per record, in order.

    The last `userInputs` edit (the request in force) is flattened into
    `kWhRequested, milesRequested, WhPerMile, minutesAvailable, requestedDeparture,
    paymentRequired`; `n_edits` counts the edits. Dates become UTC timestamps.
    Extra keys (e.g. Kafka's `schema_version`) are ignored; missing keys become null.

    Args:
        records: session dicts in ACN API/export format.

    Returns:
        A DataFrame with a RangeIndex aligned to `records`.
    """
    records = [r if isinstance(r, dict) else {} for r in records]
    columns: dict[str, Any] = {}
    for name in SESSION_FIELDS:
        values = [r.get(name) for r in records]
        if name in TEXT_FIELDS:
            columns[name] = np.array([_text(v) for v in values], dtype=object)
        elif name in DATE_FIELDS:
            columns[name] = parse_dates(values)
        elif name == "kWhDelivered":
            columns[name] = np.array([_number(v) for v in values], dtype=float)
        else:
            columns[name] = np.array(values + [None], dtype=object)[:-1]  # keep lists intact
    inputs = columns["userInputs"]
    last = [_last_edit(u) for u in inputs]
    columns["n_edits"] = np.array([len(u) if isinstance(u, list) else 0 for u in inputs], dtype=int)
    for name in ("kWhRequested", "milesRequested", "WhPerMile", "minutesAvailable"):
        columns[name] = np.array([_number(e.get(name, np.nan)) for e in last], dtype=float)
    columns["requestedDeparture"] = parse_dates([e.get("requestedDeparture") for e in last])
    columns["paymentRequired"] = pd.array([e.get("paymentRequired") if isinstance(
        e.get("paymentRequired"), bool) else None for e in last], dtype="boolean")
    return pd.DataFrame(columns, index=pd.RangeIndex(len(records)))


def _hours(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    return (later - earlier) / np.timedelta64(1, "h")


def _utc_ns(frame: pd.DataFrame, name: str) -> np.ndarray:
    index = pd.DatetimeIndex(frame[name])
    if index.tz is not None:
        index = index.tz_convert(None)  # naive UTC
    return index.to_numpy("datetime64[ns]")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        return None


# below this many sessions, converting each date alone beats pandas' fixed cost per call
# (a micro-batch at 1,000 sessions/s holds a few dozen)
_FEW_DATES = 64


def _local_times(connect: np.ndarray, timezones: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Fractional local hour and weekday of each connection (naive-UTC datetime64[ns]),
    one tz conversion per zone."""
    if len(connect) < _FEW_DATES:
        return _local_times_each(connect, timezones)
    hour = np.zeros(len(connect))
    weekday = np.zeros(len(connect))
    zones = np.array([z if isinstance(z, str) else "UTC" for z in timezones], dtype=object)
    index = pd.DatetimeIndex(connect).tz_localize("UTC")
    for name in set(zones):
        mask = zones == name
        zone = _zone(name)  # unknown zone: UTC, as documented
        local = index[mask].tz_convert(zone) if zone else index[mask]
        hour[mask] = local.hour + local.minute / 60.0
        weekday[mask] = local.day_of_week
    return hour, weekday


def _local_times_each(connect: np.ndarray,
                      timezones: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """`_local_times` one date at a time, with the same arithmetic (NaT -> NaN)."""
    hour = np.full(len(connect), np.nan)
    weekday = np.full(len(connect), np.nan)
    moments = connect.astype("datetime64[us]").astype(object)  # NaT -> None
    for i, (moment, name) in enumerate(zip(moments, timezones)):
        if moment is None:
            continue
        zone = _zone(name if isinstance(name, str) else "UTC")
        local = moment.replace(tzinfo=UTC)
        if zone is not None:
            local = local.astimezone(zone)
        hour[i] = local.hour + local.minute / 60.0
        weekday[i] = local.weekday()
    return hour, weekday


class _Inputs(NamedTuple):
    """What the f2 columns are computed from, one array entry per session."""

    kwh: np.ndarray  # kWhDelivered, NaN when not a number
    n_edits: np.ndarray
    requested: np.ndarray  # kWhRequested of the last edit, NaN when absent
    minutes: np.ndarray  # minutesAvailable of the last edit, NaN when absent
    connect: np.ndarray  # naive-UTC datetime64[ns], NaT when missing or unreadable
    disconnect: np.ndarray
    done: np.ndarray
    departure: np.ndarray  # requestedDeparture of the last edit
    timezones: Sequence[Any]


def _frame_inputs(frame: pd.DataFrame) -> _Inputs:
    return _Inputs(frame["kWhDelivered"].to_numpy(float), frame["n_edits"].to_numpy(float),
                   frame["kWhRequested"].to_numpy(float), frame["minutesAvailable"].to_numpy(float),
                   _utc_ns(frame, "connectionTime"), _utc_ns(frame, "disconnectTime"),
                   _utc_ns(frame, "doneChargingTime"), _utc_ns(frame, "requestedDeparture"),
                   frame["timezone"].to_numpy())


_NS = 1_000_000_000
_NAT = np.iinfo(np.int64).min  # NaT as int64


def _date_ns(values: list[Any]) -> tuple[np.ndarray, list[float] | None]:
    """`parse_dates(values)` as naive-UTC datetime64[ns], with RFC 1123 dates read by
    arithmetic; any other non-null value sends the whole column through `parse_dates`.
    Also the epoch seconds read (NaN for None), or None when the column was sent there."""
    read_rfc1123(values)
    out, epochs = [], []
    nan = math.nan
    for value in values:
        if value is None:
            out.append(_NAT)
            epochs.append(nan)
            continue
        seconds = rfc1123_to_epoch(value)
        if seconds is None:
            return parse_dates(values).tz_convert(None).to_numpy("datetime64[ns]"), None
        out.append(int(seconds) * _NS)
        epochs.append(seconds)
    return np.array(out, dtype=np.int64).view("datetime64[ns]"), epochs


def _record_inputs(records: list[dict]) -> tuple[_Inputs, SessionFacts]:
    """`_frame_inputs(sessions_to_frame(records))` and `session_facts(records)` without the
    frame and with one reading of each date: the same values
    (`tests/pipelines/data/test_fast_features.py`)."""
    n = len(records)
    kwh, n_edits, requested, minutes = (np.empty(n) for _ in range(4))
    dates: tuple[list, list, list, list] = ([], [], [], [])
    timezones = []
    nan = np.nan
    for i, r in enumerate(records):
        value = r.get("kWhDelivered")
        kwh[i] = value if type(value) is float else _number(value)
        inputs = r.get("userInputs")
        last = inputs[-1] if isinstance(inputs, list) and inputs else None
        if isinstance(last, dict):
            n_edits[i] = len(inputs)
            value = last.get("kWhRequested", nan)
            requested[i] = value if type(value) is float else _number(value)
            value = last.get("minutesAvailable", nan)
            minutes[i] = value if type(value) is float else _number(value)
            departure = last.get("requestedDeparture")
        else:
            n_edits[i] = len(inputs) if isinstance(inputs, list) else 0
            requested[i] = minutes[i] = nan
            departure = None
        dates[0].append(r.get("connectionTime"))
        dates[1].append(r.get("disconnectTime"))
        dates[2].append(r.get("doneChargingTime"))
        dates[3].append(departure)
        timezones.append(r.get("timezone"))
    (connect, connect_s), (disconnect, disconnect_s), (done, done_s), (departure_ns, _) = (
        _date_ns(d) for d in dates)
    read = connect_s is not None and done_s is not None and disconnect_s is not None
    facts = session_facts(records, (connect_s, done_s, disconnect_s) if read else None)
    return _Inputs(kwh, n_edits, requested, minutes, connect, disconnect, done, departure_ns,
                   [_text(z) for z in timezones]), facts


def _compute_features(inputs: _Inputs) -> dict[str, np.ndarray]:
    n_edits = inputs.n_edits
    has_inputs = (n_edits > 0) & ~np.isnan(inputs.requested)
    connect, done = inputs.connect, inputs.done
    disconnect = inputs.disconnect
    done_missing = np.isnat(done)
    disconnect = np.where(np.isnat(disconnect), done, disconnect)
    kwh = np.nan_to_num(inputs.kwh, nan=0.0)

    connection_h = np.nan_to_num(_hours(disconnect, connect), nan=0.0)
    charging_h = np.where(done_missing, connection_h, _hours(done, connect))
    idle_h = np.where(done_missing, 0.0, _hours(disconnect, done))
    requested = np.where(has_inputs, inputs.requested, kwh)
    minutes = np.where(has_inputs, inputs.minutes, connection_h * 60.0)
    gap_h = np.where(has_inputs, _hours(disconnect, inputs.departure), 0.0)
    hour, weekday = _local_times(connect, inputs.timezones)
    angle = 2.0 * np.pi * hour / 24.0

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        avg_kw = kwh / np.maximum(connection_h, _MIN_CONNECTION_H)
        positive_kwh = np.maximum(kwh, 0.0) + _LOG_FLOOR_KWH
        log_ratio = np.log2(positive_kwh / (np.maximum(requested, _MIN_REQUEST_KWH)
                                            + _LOG_FLOOR_KWH))
        features = {
            "kwh_delivered": kwh,
            "kwh_requested": requested,
            "connection_hours": connection_h,
            "charging_hours": charging_h,
            "idle_hours": idle_h,
            "avg_kw": avg_kw,
            "charging_kw": kwh / np.maximum(charging_h, _MIN_CHARGING_H),
            "delivered_ratio": np.where(has_inputs,
                                        kwh / np.maximum(requested, _MIN_REQUEST_KWH), 1.0),
            "arrival_hour_sin": np.sin(angle),
            "arrival_hour_cos": np.cos(angle),
            "weekday": weekday,
            "minutes_available": minutes,
            "departure_gap_hours": gap_h,
            "n_edits": n_edits,
            "has_user_inputs": has_inputs.astype(float),
            "done_missing": done_missing.astype(float),
            "log_kwh_delivered": np.log10(positive_kwh),
            "log_avg_kw": np.log10(np.maximum(avg_kw, 0.0) + _LOG_FLOOR_KWH),
            "log_delivered_ratio": np.where(has_inputs, log_ratio, 0.0),
            "excess_kwh": np.where(has_inputs, np.maximum(kwh - requested, 0.0), 0.0),
        }
        return {name: np.where(np.isfinite(v := np.asarray(features[name], dtype=float)), v, 0.0)
                for name in F2_COLUMNS}


def _with_context(f2: dict[str, np.ndarray], facts: SessionFacts,
                  contexts: Sequence[Mapping[str, float]] | None) -> dict[str, np.ndarray]:
    """The f2 columns plus the kept context columns, contexts replayed when not given."""
    if contexts is None:
        values = replay_context_array(facts)
    else:
        if len(contexts) != len(facts.session):
            raise ValueError(f"{len(contexts)} contexts for {len(facts.session)} sessions")
        values = context_array(contexts)
    context = context_features(facts, values)
    return {**f2, **{name: context[name] for name in CONTEXT_COLUMNS}}


def add_features(frame: pd.DataFrame,
                 contexts: Sequence[Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Add `FEATURE_COLUMNS` to a frame from `sessions_to_frame` (pure; returns a new frame).

    Args:
        frame: output of `sessions_to_frame`.
        contexts: each row's station context (`pipelines.stations.context.context_of`);
            None replays the frame's sessions in event time as the whole history.

    Returns:
        `frame` with the feature columns added (replacing any of the same name),
        all finite float64.
    """
    features = pd.DataFrame(_with_context(_compute_features(_frame_inputs(frame)),
                                          _frame_facts(frame), contexts), index=frame.index)
    return pd.concat([frame.drop(columns=FEATURE_COLUMNS, errors="ignore"), features], axis=1)


def _frame_facts(frame: pd.DataFrame) -> SessionFacts:
    facts = frame[list(_FACT_FIELDS)]
    return session_facts(facts.astype(object).where(facts.notna(), None).to_dict("records"))


def join_facts(parts: Sequence[SessionFacts]) -> SessionFacts:
    """The facts of consecutive chunks of sessions as the facts of all of them (pure)."""
    return SessionFacts(*(np.concatenate(columns) if isinstance(columns[0], np.ndarray)
                          else [value for column in columns for value in column]
                          for columns in zip(*parts, strict=True)))


def add_features_in_chunks(chunks: Iterable[Sequence[dict]],
                           keep: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                           ) -> pd.DataFrame:
    """`add_features(sessions_to_frame(records))` of the concatenated chunks of records,
    holding one chunk's parsed frame at a time.

    The f2 columns are computed chunk by chunk (row by row anyway); the station context is
    replayed once over all the chunks' facts, as in one call. Memory: what stays is what
    `keep` takes of each chunk's parsed frame and the feature columns, not the chunks' dicts
    (so `keep` should not hold on to their lists of edits, see
    `pipelines.data.validation.input_kinds`).

    Args:
        chunks: session dicts in order, e.g. slices of one list or read from a table
            chunk by chunk (a generator is consumed once).
        keep: what to keep of a chunk's parsed frame besides `FEATURE_COLUMNS`, e.g. some of
            its columns (every column when None).

    Returns:
        The same frame as one `add_features(sessions_to_frame(...))` (reduced by `keep`,
        then the features), with a RangeIndex.
    """
    kept, f2_parts, facts_parts = [], [], []
    # one string object per station, site and user across the chunks, not one per session
    shared: dict[str, dict] = {"station": {}, "site": {}, "user": {}}
    for records in chunks:
        frame = sessions_to_frame(records)
        kept.append(frame if keep is None else keep(frame))
        f2_parts.append(_compute_features(_frame_inputs(frame)))
        facts = _frame_facts(frame)
        facts_parts.append(facts._replace(**{
            name: [seen.setdefault(v, v) for v in getattr(facts, name)]
            for name, seen in shared.items()}))
        del frame, facts
    if not kept:
        return add_features_in_chunks([[]], keep)
    frame = pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0]
    del kept
    f2 = {name: np.concatenate([part[name] for part in f2_parts]) for name in F2_COLUMNS}
    del f2_parts
    facts = join_facts(facts_parts)
    del facts_parts
    features = _with_context(f2, facts, None)
    del f2, facts
    frame = frame.drop(columns=FEATURE_COLUMNS, errors="ignore")
    for name in FEATURE_COLUMNS:  # one column at a time: no copy of the whole frame
        frame[name] = features.pop(name)
    return frame


def feature_matrix(records: Iterable[dict],
                   contexts: Sequence[Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Featurise session dicts: exactly `FEATURE_COLUMNS`, float64, index aligned to records.

    Args:
        records: session dicts in ACN format (extra keys ignored).
        contexts: each session's station context, aligned to `records` (serving passes the
            worker's point-in-time contexts); None replays `records` in event time as the
            whole history (training, evaluation).

    Returns:
        A NaN-free float64 DataFrame with columns `FEATURE_COLUMNS`.
    """
    records = [r if isinstance(r, dict) else {} for r in records]
    inputs, facts = _record_inputs(records)
    features = _with_context(_compute_features(inputs), facts, contexts)
    matrix = np.empty((len(records), len(FEATURE_COLUMNS)))
    for j, name in enumerate(FEATURE_COLUMNS):
        matrix[:, j] = features[name]
    # one float64 block: a frame from a dict of columns costs ~1.5 ms whatever its length
    return pd.DataFrame(matrix, index=pd.RangeIndex(len(records)), columns=FEATURE_COLUMNS,
                        copy=False)


# log column -> (its linear twin, the inverse transform); for people, not for the model
_LINEAR_TWINS = {
    "log_kwh_delivered": ("kwh_delivered", lambda v: max(10.0 ** v - _LOG_FLOOR_KWH, 0.0)),
    "log_avg_kw": ("avg_kw", lambda v: max(10.0 ** v - _LOG_FLOOR_KWH, 0.0)),
    "log_delivered_ratio": ("delivered_ratio", lambda v: 2.0 ** v),
}


def readable_explanation(items: Iterable[dict]) -> list[dict]:
    """Explanation items as an operator reads them: a log column is shown as its linear
    twin (`log_kwh_delivered -1.7` becomes `kwh_delivered 0.02`), and a feature already
    listed is not listed again. Order and contributions are kept."""
    out, seen = [], set()
    for item in items:
        twin = _LINEAR_TWINS.get(item.get("feature"))
        if twin is not None:
            name, inverse = twin
            item = {**item, "feature": name,
                    **{k: inverse(item[k]) for k in ("value", "typical")
                       if isinstance(item.get(k), (int, float))}}
        if item.get("feature") not in seen:
            seen.add(item.get("feature"))
            out.append(item)
    return out
