"""Behavioural tests of the trained model: what any model we ship must do.

The model is produced the way `evguard train` produces it: a small grid of
both detector families is tuned on seeded synthetic sessions (with labelled
anomalies and impossible-power probes), the chosen candidate is refitted and
packaged with its threshold and explainer.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

import numpy as np
import pytest

from pipelines.contracts.dates import RFC1123
from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.candidates import EvalSplit, SearchSpace
from pipelines.models.training_data import impossible_power_probes
from pipelines.models.tuning import TuningConfig, tune

ENERGY_OR_POWER = {"kwh_delivered", "kwh_requested", "avg_kw", "charging_kw", "delivered_ratio",
                   "log_kwh_delivered", "log_avg_kw", "log_delivered_ratio", "excess_kwh",
                   "kw_vs_station", "kw_vs_station_max", "kwh_vs_station", "kwh_vs_user",
                   "kwh_shortfall_vs_station", "kwh_shortfall_vs_user",
                   "kw_excess_vs_station_max"}  # f3: the session against its station
SPACE = SearchSpace(n_estimators=(100,), max_samples=(256, 512), max_features=(1.0,),
                    extension_levels=(1, 3))
CONFIG = TuningConfig(seed=3, em_draws=0, n_jobs=1)


@pytest.fixture(scope="module")
def sessions() -> list[dict]:
    records, _ = generate_sessions(3000, seed=21, anomaly_rate=0.0)
    return records


@pytest.fixture(scope="module")
def model(sessions) -> SessionAnomalyModel:
    records, labels = generate_sessions(3000, seed=22, anomaly_rate=0.03)
    X = feature_matrix(records).to_numpy()
    types = np.array([labels.get(r["sessionID"], "") for r in records], dtype=object)
    split = EvalSplit(X[:2000], X[2000:], types[2000:],
                      impossible_power_probes(records[2000:], 100, seed=1))
    best = tune(split, SPACE, CONFIG).best
    detector = best.candidate.build(CONFIG.seed, n_features=X.shape[1]).fit(split.X_train)
    return SessionAnomalyModel(detector, best.threshold, FEATURE_COLUMNS, FEATURE_VERSION,
                               split.X_train, CONFIG.alert_budget, best.candidate.name)


def _shift(record: dict, field: str, delta: timedelta) -> None:
    if record.get(field):
        when = datetime.strptime(record[field], RFC1123) + delta
        record[field] = when.strftime(RFC1123)


def impossible_power(record: dict) -> dict:
    """60 kWh in 15 minutes (240 kW): beyond any station of the network."""
    out = copy.deepcopy(record)
    connect = datetime.strptime(out["connectionTime"], RFC1123)
    out["kWhDelivered"] = 60.0
    out["doneChargingTime"] = (connect + timedelta(minutes=15)).strftime(RFC1123)
    out["disconnectTime"] = (connect + timedelta(minutes=20)).strftime(RFC1123)
    return out


def typical(model: SessionAnomalyModel, sessions: list[dict], n: int) -> list[dict]:
    """`n` unseen sessions scoring below the median: clearly normal for this model."""
    scores = model.score(feature_matrix(sessions))
    calm = np.flatnonzero(scores < np.median(scores))
    return [sessions[i] for i in np.random.default_rng(0).choice(calm, n, replace=False)]


def test_impossible_kwh_per_hour_scores_as_anomaly(model, sessions):
    broken = feature_matrix([impossible_power(r) for r in typical(model, sessions, 40)])
    assert (broken["avg_kw"] > 100).all()
    scores = model.score(broken)
    assert (scores >= model.threshold).all(), \
        f"{model.candidate} missed {(scores < model.threshold).sum()} of 40"


def test_small_change_to_a_normal_session_does_not_flip_it(model, sessions):
    normal = typical(model, sessions, 60)
    rng = np.random.default_rng(1)
    nudged = []
    for record in normal:
        out = copy.deepcopy(record)
        out["kWhDelivered"] = round(float(out["kWhDelivered"]) * rng.uniform(0.97, 1.03), 3)
        minutes = timedelta(minutes=float(rng.uniform(-5, 5)))
        for field in ("connectionTime", "disconnectTime", "doneChargingTime"):
            _shift(out, field, minutes)  # the whole session a few minutes earlier or later
        _shift(out, "disconnectTime", timedelta(minutes=float(rng.uniform(-5, 5))))
        nudged.append(out)
    before = model.score(feature_matrix(normal))
    after = model.score(feature_matrix(nudged))
    assert (before < model.threshold).all() and (after < model.threshold).all()
    assert np.abs(after - before).max() < 0.05


def test_top_explanation_of_absurd_kwh_per_hour_is_an_energy_or_power_feature(model, sessions):
    broken = feature_matrix([impossible_power(r) for r in typical(model, sessions, 20)])
    explanations = model.explain(broken, top_k=3)
    tops = [e[0] for e in explanations]
    assert all(t["feature"] in ENERGY_OR_POWER for t in tops), [t["feature"] for t in tops]
    assert all(t["contribution"] > 0 for t in tops)
    assert all(t["value"] > t["typical"] for t in tops
               if t["feature"] not in ("delivered_ratio", "log_delivered_ratio"))


def test_both_explanation_methods_blame_power(model, sessions):
    """Baseline Shapley (Isolation Forest) and occlusion (EIF) agree on the cause."""
    from pipelines.models.estimators import make_detector
    from pipelines.models.explain import Explainer, explain

    X = feature_matrix(sessions).to_numpy()
    broken = feature_matrix([impossible_power(r) for r in typical(model, sessions, 20)]) \
        .to_numpy()
    for kind, params in (("iforest", {"max_samples": 512}), ("eif", {"extension_level": 1})):
        detector = make_detector(kind, n_estimators=100, random_state=0, **params).fit(X)
        tops = [e[0]["feature"] for e in explain(Explainer(detector, X, FEATURE_COLUMNS), broken)]
        assert set(tops) <= ENERGY_OR_POWER, (kind, tops)
