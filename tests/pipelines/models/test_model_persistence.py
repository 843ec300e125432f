"""Registered models keep loading when the code moves.

A model logged today pickles plain state and one loader function, no class of the
project; a model logged by the code before the packages were split (kept in
`legacy_models/`, see its README) still loads through the registry and scores and
explains exactly as that code did.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.models import registry
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.estimators import DETECTOR_KINDS, make_detector

LEGACY = Path(__file__).with_name("legacy_models")
PROJECT_PACKAGES = ("pipelines", "serving", "monitoring", "dashboard", "evaluation", "flows",
                    "evguard")


def _register_artifact(settings, model_dir: Path) -> str:
    """Log a saved MLflow model directory as a run's `model` and alias it `champion`."""
    client = registry.mlflow_client(settings)
    experiment = client.create_experiment("legacy", settings.mlflow_artifact_root.as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", settings.model_name)
    client.set_registered_model_alias(settings.model_name, registry.CHAMPION, version.version)
    return str(version.version)


@pytest.mark.parametrize("kind", sorted(p.name for p in LEGACY.iterdir() if p.is_dir()))
def test_a_champion_registered_before_the_split_loads_and_scores_identically(mlflow_settings,
                                                                             kind):
    expected = json.loads((LEGACY / kind / "expected.json").read_text())
    version = _register_artifact(mlflow_settings, LEGACY / kind / "model")
    champion = registry.load_champion(mlflow_settings)
    rows = pd.DataFrame(expected["rows"], columns=expected["feature_columns"])
    assert champion.version == version and champion.threshold == expected["threshold"]
    assert champion.feature_version == expected["feature_version"]
    assert champion.feature_columns == expected["feature_columns"]
    np.testing.assert_allclose(champion.score(rows), expected["scores"], rtol=1e-12, atol=0)
    explained = champion.explain(rows, top_k=3)
    assert [[e["feature"] for e in row] for row in explained] == \
        [[e["feature"] for e in row] for row in expected["explanations"]]
    np.testing.assert_allclose([[e["contribution"] for e in row] for row in explained],
                               [[e["contribution"] for e in row]
                                for row in expected["explanations"]], rtol=1e-9, atol=1e-12)
    assert champion.reference["score"][:5] == expected["reference_score_head"]
    # and it keeps loading the ordinary way afterwards: the old paths were only borrowed
    assert "pipelines.model_package" not in sys.modules


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles, and records every global the pickle names."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.globals: set[str] = set()

    def find_class(self, module: str, name: str):
        self.globals.add(f"{module}:{name}")
        return super().find_class(module, name)


@pytest.fixture(scope="module")
def training_rows() -> np.ndarray:
    return feature_matrix(generate_sessions(300, seed=4)[0]).to_numpy()


@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_a_logged_model_pickles_no_class_of_the_project(training_rows, kind):
    detector = make_detector(kind, n_estimators=10, max_samples=64,
                             random_state=5).fit(training_rows)
    model = SessionAnomalyModel(detector, 0.6, FEATURE_COLUMNS, FEATURE_VERSION, training_rows,
                                0.01, f"test-{kind}")
    unpickler = _RecordingUnpickler(cloudpickle.dumps(model))  # as MLflow pickles it
    restored = unpickler.load()
    ours = {g for g in unpickler.globals if g.split(".")[0].split(":")[0] in PROJECT_PACKAGES}
    assert ours == {"pipelines.models.anomaly_model:restore_model"}
    assert isinstance(restored, SessionAnomalyModel)
    np.testing.assert_array_equal(restored.score(training_rows), model.score(training_rows))
    assert restored.explain(training_rows[:5]) == model.explain(training_rows[:5])
    assert restored.reference == model.reference and restored.threshold == model.threshold
