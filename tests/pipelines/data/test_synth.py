"""The seeded synthetic generator and the anomaly injector."""

from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import pytest

from pipelines.contracts.dates import parse_dates
from pipelines.contracts.sessions import SESSION_FIELDS
from pipelines.data.anomalies import ANOMALY_TYPES, inject_anomalies
from pipelines.data.features import add_features, sessions_to_frame
from pipelines.data.synth import SITES, generate_sessions


@pytest.fixture(scope="module")
def synthetic():
    return generate_sessions(3000, seed=7, anomaly_rate=0.06)


def test_same_seed_same_data_other_seed_other_data(synthetic):
    again = generate_sessions(3000, seed=7, anomaly_rate=0.06)
    assert again == synthetic
    other, _ = generate_sessions(3000, seed=8, anomaly_rate=0.06)
    assert other != synthetic[0]


def test_records_are_in_exact_acn_format(synthetic):
    records, _ = synthetic
    assert all(tuple(sorted(r)) == tuple(sorted(SESSION_FIELDS)) for r in records)
    assert len({r["sessionID"] for r in records}) == len(records)
    for name in ("connectionTime", "disconnectTime"):
        assert not parse_dates([r[name] for r in records]).isna().any()
    assert {r["siteID"] for r in records} == {p.site_id for p in SITES.values()}
    with_inputs = [r for r in records if r["userInputs"]]
    assert with_inputs and any(r["userInputs"] is None for r in records)
    for r in with_inputs:
        assert isinstance(r["userID"], str)
        for e in r["userInputs"]:
            assert isinstance(e["userID"], int)
            assert e["kWhRequested"] == round(e["milesRequested"] * e["WhPerMile"] / 1000, 2)
    starts = [r["connectionTime"] for r in records]
    assert parse_dates(starts).is_monotonic_increasing


def test_labels_cover_every_type_and_name_real_sessions(synthetic):
    records, labels = synthetic
    assert len(labels) == round(0.06 * len(records))
    assert set(labels.values()) == set(ANOMALY_TYPES)
    assert set(labels) <= {r["sessionID"] for r in records}
    counts = Counter(labels.values())
    assert max(counts.values()) - min(counts.values()) <= 1


def test_each_anomaly_type_has_its_defining_property(synthetic):
    records, labels = synthetic
    frame = add_features(sessions_to_frame(records))
    kind = frame["sessionID"].map(labels).fillna("normal")
    by = {k: frame[kind == k] for k in set(kind)}
    assert (by["meter_fault"]["kwh_delivered"] <= 0.05).all()
    assert (by["meter_fault"]["connection_hours"] >= 6).all()
    assert (by["over_delivery"]["delivered_ratio"] >= 3).all()
    assert (by["over_delivery"]["avg_kw"] <= 7).all()
    assert (by["impossible_power"]["avg_kw"] >= 80).all()
    assert (by["stuck_session"]["connection_hours"] > 48).all()
    inverted = by["timestamp_inversion"]
    assert ((inverted["charging_hours"] <= -1) | (inverted["idle_hours"] <= -1)).all()
    absurd = by["absurd_request"]["kWhRequested"]
    assert ((absurd == 0) | (absurd >= 500)).all()
    normal = by["normal"]
    assert (normal["connection_hours"] < 48).all()
    assert (normal["charging_hours"] >= 0).all() and (normal["idle_hours"] >= 0).all()
    level2 = normal[normal["done_missing"] == 0]
    assert (level2["avg_kw"] <= 7).all()


def test_a_few_dc_fast_charger_sessions_exist(synthetic):
    frame = add_features(sessions_to_frame(synthetic[0]))
    fast = frame[(frame["done_missing"] == 1) & (frame["avg_kw"] > 10)]
    assert 0 < len(fast) < 0.05 * len(frame)
    assert fast["stationID"].nunique() == 1


def test_inject_anomalies_leaves_the_input_alone_and_is_deterministic(synthetic):
    clean, _ = generate_sessions(400, seed=3)
    before = copy.deepcopy(clean)
    out, labels = inject_anomalies(clean, rate=0.1, seed=11)
    assert clean == before
    assert (out, labels) == inject_anomalies(clean, rate=0.1, seed=11)
    changed = [i for i, (a, b) in enumerate(zip(clean, out)) if a != b]
    assert {out[i]["sessionID"] for i in changed} <= set(labels)
    assert len(labels) == 40
    with pytest.raises(ValueError):
        inject_anomalies(clean, rate=1.5, seed=1)


def test_calibrated_to_the_real_exports(shared_acn):
    """Synthetic medians fall within the spread of the real sites (see docs/data.md)."""
    real = [add_features(sessions_to_frame(json.loads(p.read_text())["_items"]))
            for p in sorted(shared_acn.glob("*.json"))]
    synth = add_features(sessions_to_frame(generate_sessions(4000, seed=1)[0]))
    for column in ("kwh_delivered", "connection_hours"):
        medians = [f[column].median() for f in real]
        assert 0.8 * min(medians) <= synth[column].median() <= 1.2 * max(medians), column
    local = synth["connectionTime"].dt.tz_convert("America/Los_Angeles")
    weekday_share = float((local.dt.day_of_week < 5).mean())
    assert 0.85 <= weekday_share <= 0.99
    assert 6 <= local[local.dt.day_of_week < 5].dt.hour.mode()[0] <= 9
    assert np.isclose(synth["kwh_delivered"].max(), 78, atol=10)
