"""Registry: champion / challenger on a real sqlite MLflow, loading in a fresh process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

from evguard.services.process import free_port
from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.models import promotion, registry, tracking
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.candidates import EvalSplit, SearchSpace
from pipelines.models.tuning import TuningConfig, tune

CONFIG = TuningConfig(seed=5, em_draws=1, em_uniform=1000, n_jobs=1)
INFO = tracking.DatasetInfo("test-ds", "hash123", FEATURE_VERSION, "dataset", 2000)


@pytest.fixture(scope="module")
def store(base_settings, tmp_path_factory):
    """One sqlite MLflow store for this module (creating one costs seconds)."""
    path = tmp_path_factory.mktemp("mlflow-registry")
    return base_settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{path}/mlflow.db",
                                            "state_dir": path / "state"})


@pytest.fixture(scope="module")
def split() -> EvalSplit:
    records, labels = generate_sessions(2000, seed=8, anomaly_rate=0.05)
    X = feature_matrix(records).to_numpy()
    types = np.array([labels.get(r["sessionID"], "") for r in records], dtype=object)
    return EvalSplit(X[:1200], X[1200:], types[1200:])


def register_candidate(settings, split: EvalSplit, space: SearchSpace,
                       threshold: float | None = None, figures: bool = False,
                       columns: list[str] = FEATURE_COLUMNS,
                       feature_version: str = FEATURE_VERSION) -> tuple[str, SessionAnomalyModel]:
    if columns != FEATURE_COLUMNS:
        split = promotion.split_for_columns(split, FEATURE_COLUMNS, columns)
    tuning = tune(split, space, CONFIG)
    best = tuning.best
    detector = best.candidate.build(CONFIG.seed, split.X_train.shape[1]).fit(split.X_train)
    model = SessionAnomalyModel(detector, best.threshold if threshold is None else threshold,
                                columns, feature_version, split.X_train,
                                CONFIG.alert_budget, best.candidate.name)
    logged = tracking.log_tuning(settings, INFO, split, tuning, model, {"grid": "test"}, seed=1,
                                  figures=figures)
    return tracking.register(settings, logged.model_uri, {"dataset_id": INFO.dataset_id}), model


GOOD = SearchSpace(kinds=("eif",), n_estimators=(60,), max_samples=(256,), extension_levels=(1,))
# two trees of four samples: close to a random ranking
WORSE = SearchSpace(kinds=("iforest",), n_estimators=(2,), max_samples=(4,), max_features=(0.2,))


def test_champion_loads_in_a_fresh_process_and_scores_identically(store, split, tmp_path):
    from mlflow import MlflowClient

    mlflow_settings = store
    assert registry.champion_version(mlflow_settings) is None
    with pytest.raises(registry.NoChampionError, match="evguard train"):
        registry.load_champion(mlflow_settings)
    version, model = register_candidate(mlflow_settings, split, GOOD, figures=True)
    run_id = MlflowClient(store.mlflow_uri).get_model_version(store.model_name, version).run_id
    logged = {a.path for a in MlflowClient(store.mlflow_uri).list_artifacts(run_id)}
    assert {"score_histogram.png", "pr_curve.png", "shap_summary.png",
            "candidates.csv"} <= logged
    decision = promotion.promote_if_better(mlflow_settings, version, model, split, "pr_auc")
    assert decision.decision == "promoted" and "first valid model" in decision.reason
    assert registry.champion_version(mlflow_settings) == version

    rows = pd.DataFrame(split.X_eval[:300], columns=FEATURE_COLUMNS)
    rows.to_parquet(tmp_path / "rows.parquet")
    code = f"""
import json, sys, mlflow, numpy as np, pandas as pd
from pipelines.settings import Settings
from pipelines.models.registry import load_champion
settings = Settings(_env_file=None, mlflow_tracking_uri={mlflow_settings.mlflow_uri!r},
                    state_dir={str(mlflow_settings.state_dir)!r})
mlflow.set_tracking_uri(settings.mlflow_uri)
rows = pd.read_parquet(sys.argv[1] + "/rows.parquet")
pyfunc = mlflow.pyfunc.load_model("models:/{mlflow_settings.model_name}@champion")
champion = load_champion(settings)
np.save(sys.argv[1] + "/pyfunc.npy", pyfunc.predict(rows)["score"].to_numpy())
np.save(sys.argv[1] + "/champion.npy", champion.score(rows))
print(json.dumps({{"version": champion.version, "threshold": champion.threshold,
                  "columns": champion.feature_columns, "ref": sorted(champion.reference),
                  "explain": champion.explain(rows.iloc[:2], top_k=2)}}))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True,
                          capture_output=True, text=True, timeout=120)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    expected = model.score(rows)
    np.testing.assert_array_equal(np.load(tmp_path / "pyfunc.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "champion.npy"), expected)
    assert loaded["version"] == version and loaded["threshold"] == model.threshold
    assert loaded["columns"] == FEATURE_COLUMNS and "score" in loaded["ref"]
    assert loaded["explain"] == model.explain(rows.iloc[:2], top_k=2)


def test_worse_model_is_not_promoted_and_better_one_is(store, split):
    from mlflow import MlflowClient

    mlflow_settings = store.model_copy(update={"model_name": f"anomaly-{uuid.uuid4().hex[:8]}"})
    client = MlflowClient(mlflow_settings.mlflow_uri)
    name = mlflow_settings.model_name
    worse_first, worse_model = register_candidate(mlflow_settings, split, WORSE)
    promotion.promote_if_better(mlflow_settings, worse_first, worse_model, split, "pr_auc")

    good, good_model = register_candidate(mlflow_settings, split, GOOD)
    promoted = promotion.promote_if_better(mlflow_settings, good, good_model, split, "pr_auc",
                                          margin=0.05)
    assert promoted.decision == "promoted", promoted.reason
    assert promoted.new_value > promoted.champion_value * 1.05

    worse, model = register_candidate(mlflow_settings, split, WORSE)
    decision = promotion.promote_if_better(mlflow_settings, worse, model, split, "pr_auc",
                                          margin=0.05)
    assert decision.decision == "challenger" and decision.champion_version == good
    assert decision.new_value < decision.champion_value
    assert str(client.get_model_version_by_alias(name, "champion").version) == good
    assert str(client.get_model_version_by_alias(name, "previous").version) == worse_first
    assert str(client.get_model_version_by_alias(name, "challenger").version) == worse
    tags = client.get_model_version(name, worse).tags
    assert tags["decision"] == "challenger" and "does not beat" in tags["decision_reason"]

    # a model with no usable threshold fails the gates and gets no alias
    broken, broken_model = register_candidate(mlflow_settings, split, GOOD, threshold=math.nan)
    rejected = promotion.promote_if_better(mlflow_settings, broken, broken_model, split, "pr_auc")
    assert rejected.decision == "rejected"
    assert str(client.get_model_version_by_alias(name, "champion").version) == good
    assert client.get_model_version(name, broken).tags["decision"] == "rejected"


def test_a_champion_of_an_older_feature_version_is_compared_on_its_own_columns(store, split):
    """After a feature-version upgrade the champion still has to be beaten: it is scored on
    the columns it knows (a subset of the new ones), not waved through."""
    s = store.model_copy(update={"model_name": f"anomaly-{uuid.uuid4().hex[:8]}"})
    older = FEATURE_COLUMNS[:-4]
    champion, champion_model = register_candidate(s, split, GOOD, columns=older,
                                                  feature_version="old")
    older_split = promotion.split_for_columns(split, FEATURE_COLUMNS, older)
    assert promotion.promote_if_better(s, champion, champion_model, older_split,
                                      "pr_auc").decision == "promoted"

    worse, worse_model = register_candidate(s, split, WORSE)
    decision = promotion.promote_if_better(s, worse, worse_model, split, "pr_auc", margin=0.05)
    assert decision.decision == "challenger", decision.reason
    assert decision.champion_version == champion
    assert decision.new_value < decision.champion_value

    better, better_model = register_candidate(s, split, GOOD)
    decision = promotion.promote_if_better(s, better, better_model, split, "pr_auc", margin=-1.0)
    assert decision.decision == "promoted" and decision.champion_value is not None

    # a champion whose columns no longer exist cannot be scored at all
    assert promotion.split_for_columns(split, FEATURE_COLUMNS, ["no_such_feature"]) is None


def test_an_unreachable_registry_is_not_mistaken_for_no_champion(base_settings, tmp_path,
                                                                 monkeypatch):
    # a refused connection fails at once instead of after MLflow's backoff (minutes)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = base_settings.model_copy(
        update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(registry.RegistryUnavailable):
        registry.champion_version(down)
    with pytest.raises(registry.RegistryUnavailable):
        registry.load_champion(down)
    empty = base_settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp_path}/empty.db"})
    assert registry.champion_version(empty) is None
    with pytest.raises(registry.NoChampionError, match="evguard train"):
        registry.load_champion(empty)
