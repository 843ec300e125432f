"""Fault: bad data and bad models on the way to the champion.

A batch that fails validation is refused by ingest (its failing rows and reasons are
quarantined), so training finds nothing to train on and registers no version. Models
whose evaluation gives NaN, or whose threshold is NaN, are registered but refused at
promotion: the champion stays, and the decision is tagged on the version.
"""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest

from pipelines.data.anomalies import RULE_BREAKING_ANOMALIES, inject_anomalies
from pipelines.data.datasets import list_datasets
from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
from pipelines.data.ingest import FileSource, ValidationFailed, run_ingest
from pipelines.data.synth import generate_sessions
from pipelines.models import promotion, registry
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.candidates import EvalSplit
from pipelines.models.estimators import make_detector
from pipelines.models.train_params import TrainParams
from pipelines.models.training import run_training
from pipelines.models.training_data import TrainingDataError
from pipelines.settings import Settings
from tests.support.champion import register_champion
from tests.support.champion import register_model as register_logged_model


def register_model(settings: Settings, X: np.ndarray, threshold: float) -> tuple[str, object]:
    """Log and register an Isolation Forest with this threshold (no alias)."""
    detector = make_detector("iforest", n_estimators=30, max_samples=128, random_state=1).fit(X)
    model = SessionAnomalyModel(detector, threshold, FEATURE_COLUMNS, FEATURE_VERSION, X, 0.01,
                                "faults-iforest")
    registered = register_logged_model(settings, model)
    return registered.version, registered.model


def test_bad_data_is_not_trained_on_and_bad_models_are_not_promoted(fault_store, tmp_path,
                                                                     fault_figures):
    s = Settings(_env_file=None, data_dir=tmp_path / "data", state_dir=fault_store["state_dir"],
                 mlflow_tracking_uri=fault_store["mlflow_tracking_uri"],
                 model_name=f"faults-train-{uuid.uuid4().hex[:8]}")
    client = registry.mlflow_client(s)

    # 1. a batch where 30 % of the sessions break the rules: refused, quarantined, not trained on
    records, _ = generate_sessions(400, seed=61)
    broken, labels = inject_anomalies(records, 0.3, seed=61, types=tuple(RULE_BREAKING_ANOMALIES))
    export = tmp_path / "broken-export.json"
    export.write_text(json.dumps(broken))
    with pytest.raises(ValidationFailed, match="validation failed") as refused:
        run_ingest(s, FileSource((str(export),)))
    report = refused.value.report
    quarantined = [json.loads(line) for line in refused.value.quarantine.read_text().splitlines()]
    assert list_datasets(s.data_dir) == []
    with pytest.raises(TrainingDataError, match="evguard ingest"):
        run_training(s, params=TrainParams(kinds=["iforest"], n_estimators=[20],
                                           max_samples=[64], max_features=[1.0]))
    versions_after_bad_data = client.search_model_versions(f"name='{s.model_name}'")

    # 2. a champion, then two broken candidates through the promotion gates
    champion = register_champion(s, seed=4).version
    X = feature_matrix(generate_sessions(1200, seed=62)[0]).to_numpy()
    no_anomalies = EvalSplit(X[:800], X[800:], np.array([""] * 400, dtype=object))
    nan_metric, nan_metric_model = register_model(s, X[:800], threshold=0.6)
    nan_threshold, nan_threshold_model = register_model(s, X[:800], threshold=math.nan)
    decisions = {
        "nan_metric": promotion.promote_if_better(s, nan_metric, nan_metric_model, no_anomalies,
                                                 "pr_auc"),
        "nan_threshold": promotion.promote_if_better(s, nan_threshold, nan_threshold_model,
                                                    no_anomalies, "em_mv_rank"),
    }
    aliases = {a: str(client.get_model_version_by_alias(s.model_name, a).version)
               for a in client.get_registered_model(s.model_name).aliases}

    quarantined_ids = {q["sessionID"] for q in quarantined}
    fault_figures("bad_training_data", messages=report.rows,
                  lost=len(set(labels) - quarantined_ids), duplicates=0,
                  quarantined=report.failed_rows, versions_after_bad_data=len(
                      versions_after_bad_data),
                  bad_models_promoted=sum(d.decision != "rejected" for d in decisions.values()))
    assert report.failed_rows == len(quarantined) >= len(labels)
    assert set(labels) <= quarantined_ids and all(q["failed"] for q in quarantined)
    assert versions_after_bad_data == []
    for name, decision in decisions.items():
        assert decision.decision == "rejected", (name, decision.reason)
        assert "gates" in decision.reason and "nan" in decision.reason.lower()
    assert aliases == {"champion": champion}
    for version in (nan_metric, nan_threshold):
        assert client.get_model_version(s.model_name, version).tags["decision"] == "rejected"
