"""Parsing and features: pure functions, no network."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contracts.dates import format_date, parse_dates
from pipelines.data.features import (
    FEATURE_COLUMNS,
    FEATURE_VERSION,
    add_features,
    feature_matrix,
    sessions_to_frame,
)


def edit(kwh: float, minutes: int, departure: str, user: int = 416) -> dict:
    return {"WhPerMile": 400, "kWhRequested": kwh, "milesRequested": int(kwh * 2.5),
            "minutesAvailable": minutes, "modifiedAt": "Wed, 02 Jan 2019 14:03:00 GMT",
            "paymentRequired": True, "requestedDeparture": departure, "userID": user}


def session(**changes) -> dict:
    base = {
        "_id": "5c367245f9af8b4639a8f364", "clusterID": "0001",
        "connectionTime": "Wed, 02 Jan 2019 16:00:00 GMT",  # 08:00 in Pasadena
        "disconnectTime": "Wed, 02 Jan 2019 20:00:00 GMT",
        "doneChargingTime": "Wed, 02 Jan 2019 18:00:00 GMT",
        "kWhDelivered": 10.0, "sessionID": "1_1_179_810_2019-01-02 16:00:00.476493",
        "siteID": "0001", "spaceID": "AG-3F30", "stationID": "1-1-179-810",
        "timezone": "America/Los_Angeles", "userID": "000000416",
        "userInputs": [edit(30.0, 300, "Wed, 02 Jan 2019 21:00:00 GMT"),
                       edit(20.0, 240, "Wed, 02 Jan 2019 20:30:00 GMT")],
    }
    base.update(changes)
    return base


def test_features_follow_the_documented_definitions():
    row = feature_matrix([session()]).iloc[0]
    assert row["connection_hours"] == 4.0 and row["charging_hours"] == 2.0
    assert row["idle_hours"] == 2.0
    assert row["avg_kw"] == 10.0 / 4.0 and row["charging_kw"] == 10.0 / 2.0
    # the last edit is the request in force
    assert row["kwh_requested"] == 20.0 and row["delivered_ratio"] == 0.5
    assert row["minutes_available"] == 240 and row["departure_gap_hours"] == -0.5
    assert row["n_edits"] == 2 and row["has_user_inputs"] == 1 and row["done_missing"] == 0
    assert math.isclose(row["arrival_hour_sin"], math.sin(2 * math.pi * 8 / 24))
    assert math.isclose(row["arrival_hour_cos"], math.cos(2 * math.pi * 8 / 24))
    assert row["weekday"] == 2  # Wednesday


def test_log_and_excess_columns_follow_the_documented_definitions():
    base, over, meter, no_inputs = feature_matrix([
        session(), session(kWhDelivered=30.0), session(kWhDelivered=0.0),
        session(userInputs=None, userID=None)]).to_dict("records")
    assert math.isclose(base["log_kwh_delivered"], math.log10(10.001))
    assert math.isclose(base["log_avg_kw"], math.log10(2.501))
    assert math.isclose(base["log_delivered_ratio"], math.log2(10.001 / 20.001))
    assert base["excess_kwh"] == 0.0 and over["excess_kwh"] == 10.0
    # no energy lands 3 decades below 1 kWh, not next to the 0.5 kWh sessions
    assert meter["log_kwh_delivered"] == meter["log_avg_kw"] == -3.0
    assert no_inputs["log_delivered_ratio"] == no_inputs["excess_kwh"] == 0.0


def test_null_done_charging_time_is_imputed_and_flagged():
    row = feature_matrix([session(doneChargingTime=None)]).iloc[0]
    assert row["done_missing"] == 1
    assert row["charging_hours"] == row["connection_hours"] == 4.0
    assert row["idle_hours"] == 0.0


def test_null_user_inputs_is_imputed_and_flagged():
    row = feature_matrix([session(userInputs=None, userID=None)]).iloc[0]
    assert row["has_user_inputs"] == 0 and row["n_edits"] == 0
    assert row["kwh_requested"] == row["kwh_delivered"] == 10.0
    assert row["delivered_ratio"] == 1.0
    assert row["minutes_available"] == 240.0 and row["departure_gap_hours"] == 0.0


def test_timestamp_inversions_stay_visible_as_negative_durations():
    early = feature_matrix([session(doneChargingTime="Wed, 02 Jan 2019 15:00:00 GMT")]).iloc[0]
    late = feature_matrix([session(doneChargingTime="Wed, 02 Jan 2019 23:00:00 GMT")]).iloc[0]
    assert early["charging_hours"] == -1.0
    assert late["idle_hours"] == -3.0


def test_matrix_is_aligned_to_records_and_typed():
    records = [session(kWhDelivered=float(k), sessionID=f"s{k}") for k in range(1, 8)]
    order = [3, 0, 6, 1, 5, 2, 4]
    matrix = feature_matrix(records)
    shuffled = feature_matrix([records[i] for i in order])
    assert list(matrix.columns) == FEATURE_COLUMNS
    assert (matrix.dtypes == "float64").all()
    assert list(shuffled.index) == list(range(7))
    assert shuffled["kwh_delivered"].tolist() == [records[i]["kWhDelivered"] for i in order]
    assert feature_matrix([]).shape == (0, len(FEATURE_COLUMNS))


def test_add_features_agrees_with_feature_matrix():
    records = [session(), session(doneChargingTime=None), session(userInputs=None)]
    frame = add_features(sessions_to_frame(records))
    pd.testing.assert_frame_equal(frame[FEATURE_COLUMNS], feature_matrix(records))
    assert str(frame["connectionTime"].dt.tz) == "UTC"
    assert frame["sessionID"].tolist() == [r["sessionID"] for r in records]
    assert isinstance(FEATURE_VERSION, str) and FEATURE_VERSION


def test_dates_round_trip_and_accept_iso():
    text = "Wed, 01 May 2019 00:00:00 GMT"
    parsed = parse_dates([text, "2019-05-01T00:00:00Z", None, "garbage"])
    assert format_date(parsed[0]) == text and parsed[1] == parsed[0]
    assert parsed[2] is pd.NaT and parsed[3] is pd.NaT


def test_the_real_exports_featurise_without_loss(shared_acn):
    import json

    for path in sorted(shared_acn.glob("*.json")):
        records = json.loads(path.read_text())["_items"]
        matrix = feature_matrix(records)
        assert len(matrix) == len(records), path.name
        assert np.isfinite(matrix.to_numpy()).all(), path.name


values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                   st.sampled_from(["Wed, 02 Jan 2019 16:00:00 GMT", "Mon, 31 Feb 2019 1:0:0 GMT",
                                    "Nowhere/Zone", "UTC", "2019-01-02T16:00:00+02:00"]))
odd_inputs = st.one_of(st.none(), st.just([]), st.text(max_size=5),
                       st.lists(st.dictionaries(st.sampled_from(
                           ["kWhRequested", "minutesAvailable", "requestedDeparture", "WhPerMile"]),
                           values, max_size=4), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries(
    {}, optional={k: values for k in ("connectionTime", "disconnectTime", "doneChargingTime",
                                      "kWhDelivered", "timezone", "sessionID", "userID")}
    | {"userInputs": odd_inputs}), max_size=5))
def test_odd_sessions_never_raise_and_stay_finite(records):
    matrix = feature_matrix(records)
    assert matrix.shape == (len(records), len(FEATURE_COLUMNS))
    assert np.isfinite(matrix.to_numpy()).all()
