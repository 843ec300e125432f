"""`feature_matrix` reads the records in one pass, with no frame in between; it must give the
very floats the frame path gives (`add_features(sessions_to_frame(records))`, what ingest and
training use), for every column of every feature version (f1 and f2 columns are the first
ones of `FEATURE_COLUMNS`, f3 adds the context columns), odd records included."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from pipelines.contracts.dates import date_to_epoch, parse_dates, rfc1123_to_epoch
from pipelines.data.features import (
    F2_COLUMNS,
    FEATURE_COLUMNS,
    add_features,
    feature_matrix,
    sessions_to_frame,
)
from pipelines.data.synth import generate_sessions
from pipelines.stations.context import CONTEXT_KEYS, ContextRows, replay_contexts

ODD_DATES = [
    None,
    "Wed, 31 Feb 2019 10:00:00 GMT",  # not in the calendar
    "Wed, 02 Jan 2019 24:00:00 GMT",  # no such hour
    "2019-01-02T16:30:00+00:00",  # ISO 8601
    "Wed, +2 Jan 2019 16:00:00 GMT",  # not two digits
    "Wed, 0\u0662 Jan 2019 16:00:00 GMT",  # a non-ASCII digit
    "Wed, 02 Jan 2019 16:00:00 UTC",
    "junk",
    12345,
    ["Wed, 02 Jan 2019 16:00:00 GMT"],  # not even hashable
]


def _odd(record: dict, kind: int, rng: random.Random) -> dict:
    odd = dict(record)
    if kind == 0:
        for name in ("userID", "timezone", "userInputs", "doneChargingTime", "_id"):
            odd.pop(name, None)  # missing fields
    elif kind == 1:
        odd["disconnectTime"] = odd["doneChargingTime"] = odd["connectionTime"]  # zero hours
    elif kind == 2:
        odd["stationID"], odd["siteID"] = f"never-seen-{rng.random()}", "9999"
    elif kind == 3:
        odd["kWhDelivered"] = rng.choice([None, "junk", "12.5", 0, -3.0, float("inf"), True])
    elif kind == 4:
        odd["userInputs"] = rng.choice([None, [], ["not an edit"], [{}], "junk",
                                        [{"kWhRequested": "8", "minutesAvailable": None,
                                          "requestedDeparture": "junk"}]])
    elif kind == 5:
        odd["doneChargingTime"] = odd["disconnectTime"]
        odd["disconnectTime"] = None
    elif kind == 6:
        odd["timezone"] = rng.choice(["Mars/Olympus_Mons", "Europe/Amsterdam", "", 7])
    elif kind == 7:
        odd["doneChargingTime"], odd["connectionTime"] = odd["connectionTime"], \
            odd["doneChargingTime"]  # inverted times
    elif kind == 8:
        odd["userInputs"] = [*(odd.get("userInputs") or []),
                             {"kWhRequested": 4, "minutesAvailable": 30,
                              "requestedDeparture": "Tue, 01 Jan 2019 00:00:00 GMT"}]
    return odd


def _sessions(seed: int, odd_share: float) -> list[dict]:
    records, _ = generate_sessions(1500, seed=seed, anomaly_rate=0.05)
    rng = random.Random(seed)
    for i in rng.sample(range(len(records)), int(odd_share * len(records))):
        records[i] = _odd(records[i], rng.randrange(9), rng)
    return records


def _reference(records: list[dict], contexts=None) -> pd.DataFrame:
    return add_features(sessions_to_frame(records), contexts)[FEATURE_COLUMNS]


@pytest.mark.parametrize("seed", [3, 4])
def test_the_fast_path_gives_the_frame_paths_floats_on_valid_and_odd_sessions(seed):
    records = _sessions(seed, odd_share=0.2)

    fast = feature_matrix(records)
    pd.testing.assert_frame_equal(fast, _reference(records), check_exact=True)
    assert list(fast.columns) == FEATURE_COLUMNS and fast.columns[:len(F2_COLUMNS)].tolist() \
        == F2_COLUMNS


def test_served_contexts_give_the_frame_paths_floats_unknown_stations_included():
    records = _sessions(5, odd_share=0.2)
    contexts = replay_contexts(records)
    contexts[3] = {}  # a station the worker knows nothing of: defaults
    contexts[4] = {k: float("nan") for k in CONTEXT_KEYS}
    rows = ContextRows([tuple(c.get(k, float("nan")) for k in CONTEXT_KEYS) for c in contexts])

    expected = _reference(records, contexts)
    pd.testing.assert_frame_equal(feature_matrix(records, contexts), expected, check_exact=True)
    pd.testing.assert_frame_equal(feature_matrix(records, rows), expected, check_exact=True)


@pytest.mark.parametrize("odd_date", ODD_DATES)
@pytest.mark.parametrize("field", ["connectionTime", "disconnectTime", "doneChargingTime",
                                   "requestedDeparture"])
def test_a_date_the_arithmetic_does_not_read_sends_its_column_through_parse_dates(odd_date,
                                                                                  field):
    records = _sessions(6, odd_share=0.0)[:50]
    target = records[7]["userInputs"][-1] if field == "requestedDeparture" else records[7]
    target[field] = odd_date

    pd.testing.assert_frame_equal(feature_matrix(records), _reference(records),
                                  check_exact=True)


def test_no_records_and_non_dict_records():
    assert feature_matrix([]).shape == (0, len(FEATURE_COLUMNS))
    records = [None, "junk", *_sessions(7, odd_share=0.0)[:3]]
    expected = _reference([r if isinstance(r, dict) else {} for r in records])
    pd.testing.assert_frame_equal(feature_matrix(records), expected, check_exact=True)
    assert np.isfinite(feature_matrix(records).to_numpy()).all()


@pytest.mark.parametrize("value", [
    "Wed, 02 Jan 2019 14:55:53 GMT", "Thu, 29 Feb 2024 23:59:59 GMT",
    "Mon, 01 Mar 1900 00:00:00 GMT", "Sat, 01 Jan 2000 00:00:00 GMT",
    *[v for v in ODD_DATES if v is not None]])
def test_the_date_arithmetic_reads_what_parse_dates_reads_or_nothing(value):
    seconds = rfc1123_to_epoch(value)
    if seconds is None:
        return
    assert seconds == parse_dates([value])[0].timestamp() == date_to_epoch(value)


def test_a_sessions_features_do_not_depend_on_the_size_of_its_micro_batch():
    # small batches convert local times one date at a time, large ones per zone with pandas
    records = _sessions(8, odd_share=0.2)
    rng = random.Random(8)
    transitions = ["Sun, 10 Mar 2019 09:59:00 GMT", "Sun, 10 Mar 2019 10:00:00 GMT",
                   "Sun, 03 Nov 2019 08:59:00 GMT", "Sun, 03 Nov 2019 09:00:00 GMT",
                   "Sun, 31 Mar 2019 00:59:59 GMT", "Sun, 31 Mar 2019 01:00:00 GMT"]
    for i in rng.sample(range(len(records)), 120):
        records[i] = {**records[i], "connectionTime": rng.choice(transitions),
                      "timezone": rng.choice(["America/Los_Angeles", "Europe/Amsterdam",
                                              "Asia/Kolkata", "Mars/Olympus_Mons", None])}
    contexts = replay_contexts(records)
    whole = feature_matrix(records, contexts)

    for size in (1, 17, 63):
        for start in range(0, len(records), size * 7):
            part = feature_matrix(records[start:start + size], contexts[start:start + size])
            expected = whole.iloc[start:start + size].reset_index(drop=True)
            pd.testing.assert_frame_equal(part, expected, check_exact=True)
