"""MLflow tracking of a tuning: one experiment per dataset, a parent run, one child per candidate.

Layout (experiment `ev-sessions/<dataset_id>`, artifacts under the state dir):

    tune-<UTC time>                      parent run: TrainParams, best metrics, model
    ├── params: search space, alert budget, seed, criterion ...
    ├── metrics: the chosen candidate's metrics, tuning_seconds, n_candidates
    ├── artifacts: candidates.csv, score_histogram.png, pr_curve.png, shap_summary.png,
    │              model/ (pyfunc: signature + input example)
    ├── <candidate name>                 child run per candidate (e.g. eif-n100-s256-ext1)
    │   ├── params: kind + hyperparameters;  metrics: all of `MetricName`, recall_type_*,
    │   │           threshold;  tags: dataset_hash, feature_version, selected
    │   └── artifacts: score_histogram.png, pr_curve.png (+ shap_summary.png if selected)
    └── ...
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.models import plots
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.candidates import CandidateResult, EvalSplit
from pipelines.models.registry import mlflow_client
from pipelines.models.tuning import TuningResult
from pipelines.settings import Settings

SHAP_ROWS = 400


@dataclass(frozen=True)
class DatasetInfo:
    """What identifies the training data in MLflow tags."""

    dataset_id: str
    content_hash: str
    feature_version: str
    label_source: str  # "dataset", "injected" or "none"
    rows: int


@dataclass
class LoggedTuning:
    experiment_id: str
    parent_run_id: str
    child_run_ids: list[str]
    model_uri: str
    artifacts: dict[str, bytes] = field(default_factory=dict, repr=False)


def experiment_name(dataset_id: str) -> str:
    return f"ev-sessions/{dataset_id}"


def ensure_experiment(settings: Settings, dataset_id: str) -> str:
    """The id of the dataset's experiment, created with its artifacts under the state dir."""
    client = mlflow_client(settings)
    name = experiment_name(dataset_id)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = settings.mlflow_artifact_root / name.replace("/", "_")
    location.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=location.as_uri())


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def candidate_figures(result: CandidateResult, split: EvalSplit) -> dict[str, bytes]:
    """Score histogram (and PR curve with labels) of one candidate."""
    labels = split.eval_labels if split.has_labels else None
    figures = {"score_histogram.png": plots.score_histogram(
        result.eval_scores, result.threshold, labels, title=f"{result.candidate.name}: scores")}
    if labels is not None:
        figures["pr_curve.png"] = plots.pr_curve(result.eval_scores, labels, result.threshold,
                                                 title=f"{result.candidate.name}: precision-recall")
    return figures


def shap_figure(model: SessionAnomalyModel, split: EvalSplit, seed: int) -> bytes:
    """Attribution summary of the model on a sample of held-out rows."""
    rng = np.random.default_rng(seed)
    rows = split.X_eval[rng.choice(len(split.X_eval), min(SHAP_ROWS, len(split.X_eval)),
                                   replace=False)]
    method = {"baseline_shap": "baseline Shapley", "tree_shap": "TreeSHAP"}.get(
        model.explainer.method, "occlusion")
    return plots.attribution_summary(model.explainer.contributions(rows), rows,
                                     model.feature_columns,
                                     title=f"{model.candidate}: {method} contributions")


def _log_bytes(client: Any, run_id: str, files: Mapping[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            path.write_bytes(content)
            client.log_artifact(run_id, str(path))


def candidates_table(tuning: TuningResult) -> pd.DataFrame:
    """One row per candidate: name, kind, params, threshold, metrics, selected."""
    rows = []
    for i, result in enumerate(tuning.results):
        rows.append({"candidate": result.candidate.name, "kind": result.candidate.kind,
                     **result.candidate.param_dict, "threshold": result.threshold,
                     **result.metrics, "selected": i == tuning.best_index})
    return pd.DataFrame(rows)


def _signature(columns: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("double", c) for c in columns]),
                          outputs=Schema([ColSpec("double", "score"),
                                          ColSpec("boolean", "is_anomaly")]))


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "scikit-learn", "eif", "shap", "numpy",
                                            "pandas", "cloudpickle")]


def log_tuning(settings: Settings, info: DatasetInfo, split: EvalSplit, tuning: TuningResult,
               model: SessionAnomalyModel, run_params: Mapping[str, Any], seed: int,
               figures: bool = True) -> LoggedTuning:
    """Log the parent run, the child runs and the chosen model (not yet registered).

    Args:
        settings: tracking store and artifact root.
        info: dataset identity for tags.
        split: the rows the candidates were evaluated on.
        tuning: the tuning result.
        model: the chosen `SessionAnomalyModel`.
        run_params: parameters of the training run (logged on the parent).
        seed: seed of the SHAP row sample.
        figures: log the PNG figures (off saves a few seconds, e.g. in tests).

    Returns:
        Run ids and the logged model's URI.
    """
    import mlflow

    client = mlflow_client(settings)
    experiment_id = ensure_experiment(settings, info.dataset_id)
    tags = {"dataset_id": info.dataset_id, "dataset_hash": info.content_hash,
            "feature_version": info.feature_version, "label_source": info.label_source,
            "criterion": tuning.criterion, "reason": str(run_params.get("reason", ""))}
    best = tuning.best
    best_figures = {**candidate_figures(best, split),
                    "shap_summary.png": shap_figure(model, split, seed)} if figures else {}
    run_name = time.strftime("tune-%Y%m%dT%H%M%SZ", time.gmtime())
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as parent:
        parent_id = parent.info.run_id
        mlflow.log_params({k: str(v) for k, v in run_params.items()})
        mlflow.log_params({"chosen_candidate": best.candidate.name, "rows": info.rows,
                           "train_rows": len(split.X_train), "eval_rows": len(split.X_eval),
                           "train_rows_total": split.train_rows_total or len(split.X_train),
                           "eval_rows_total": split.eval_rows_total or len(split.X_eval)})
        children = []
        for i, result in enumerate(tuning.results):
            selected = i == tuning.best_index
            with mlflow.start_run(experiment_id=experiment_id, run_name=result.candidate.name,
                                  nested=True, tags={**tags, "selected": str(selected)}) as child:
                mlflow.log_params({"kind": result.candidate.kind, **result.candidate.param_dict})
                mlflow.log_metrics(_finite({**result.metrics, "threshold": result.threshold}))
                if figures:
                    _log_bytes(client, child.info.run_id, best_figures if selected
                               else candidate_figures(result, split))
                children.append(child.info.run_id)
        mlflow.log_metrics(_finite({**best.metrics, "threshold": best.threshold,
                                    "tuning_seconds": tuning.seconds,
                                    "n_candidates": len(tuning.results)}))
        table = candidates_table(tuning).to_csv(index=False).encode()
        _log_bytes(client, parent_id, {**best_figures, "candidates.csv": table})
        example = pd.DataFrame(split.X_train[:3], columns=model.feature_columns)
        with warnings.catch_warnings():  # the explicit signature replaces type-hint validation
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            logged = mlflow.pyfunc.log_model(
                name="model", python_model=model, signature=_signature(model.feature_columns),
                input_example=example, pip_requirements=_requirements())
    return LoggedTuning(experiment_id, parent_id, children, logged.model_uri, best_figures)


def register(settings: Settings, model_uri: str, tags: Mapping[str, str]) -> str:
    """Register the logged model as a new version of `settings.model_name`; returns the version."""
    import mlflow

    mlflow_client(settings)
    version = mlflow.register_model(model_uri, settings.model_name,
                                    tags={k: str(v) for k, v in tags.items()})
    return str(version.version)
