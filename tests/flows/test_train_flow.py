"""Smoke test of `train_flow` under the Prefect test harness (logic is tested in pipelines)."""

from __future__ import annotations

import pytest

from pipelines.data import datasets
from pipelines.data.anomalies import RULE_BREAKING_ANOMALIES
from pipelines.data.features import add_features, sessions_to_frame
from pipelines.data.synth import generate_sessions
from pipelines.settings import load_settings

SMALL = {"n_estimators": [60], "max_samples": [256], "max_features": [1.0],
         "extension_levels": [1], "em_draws": 1, "em_uniform": 1000, "log_figures": False,
         "n_jobs": 1}


@pytest.fixture
def train_env(tmp_path, monkeypatch):
    """The flow builds its settings from the environment: private data dir and MLflow store."""
    monkeypatch.setenv("EVGUARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EVGUARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EVGUARD_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return load_settings()


def write(settings, n: int, seed: int, passed: bool = True) -> datasets.Dataset:
    """A dataset as ingest writes it: rule-breaking sessions were quarantined."""
    records, labels = generate_sessions(n, seed=seed, anomaly_rate=0.04)
    records = [r for r in records if labels.get(r["sessionID"]) not in RULE_BREAKING_ANOMALIES]
    labels = {k: v for k, v in labels.items() if v not in RULE_BREAKING_ANOMALIES}
    features = datasets.features_table(add_features(sessions_to_frame(records)))
    dataset, _ = datasets.write_dataset(settings.data_dir, datasets.sessions_table(records),
                                        features, labels, {"passed": passed, "failed": ["x"]},
                                        {"kind": "synth"})
    return dataset


def test_train_flow_registers_a_champion_and_publishes_artifacts(prefect_harness, train_env):
    from prefect.artifacts import Artifact

    from flows.train import TrainParams, train_flow
    from pipelines.models.registry import champion_version

    state = train_flow(TrainParams(**SMALL), return_state=True)
    assert state.is_failed()
    assert "no dataset" in str(state.result(raise_on_failure=False))

    dataset = write(train_env, 1500, seed=4)
    refused = write(train_env, 300, seed=9, passed=False)
    state = train_flow(TrainParams(**SMALL, dataset_id=refused.dataset_id), return_state=True)
    assert state.is_failed() and "failed validation" in str(state.result(raise_on_failure=False))

    report = train_flow(TrainParams(**SMALL), reason="drift")
    assert report["dataset_id"] == dataset.dataset_id and report["decision"] == "promoted"
    assert report["criterion"] == "pr_auc" and len(report["candidates"]) == 3  # one per family
    chosen = next(c for c in report["candidates"] if c["selected"])
    assert chosen["probe_recall"] >= 0.9 and chosen["candidate"] == report["chosen"]
    assert champion_version(train_env) == report["version"] == "1"
    table = Artifact.get("train-candidates")
    assert table is not None and report["chosen"] in table.data
    decision = Artifact.get("train-promotion")
    assert decision is not None and "promoted" in decision.data and "drift" in decision.data
