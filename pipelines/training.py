"""Training: dataset -> tuning -> MLflow -> registry -> champion/challenger, without Prefect.

`run_training(settings, dataset, params)` runs every stage; `flows/train.py`
runs the same stage functions as Prefect tasks. Progress goes to the logger
`pipelines.training` (records carry `extra={"progress": (done, total)}`), and to
an optional callback.

The data side (dataset resolution, time split, labels, probes) is in
`pipelines.training_data`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from evguard.settings import Settings
from pipelines.training_data import (
    TrainingData,
    TrainingDataError,
    impossible_power_probes,
    prepare_data,
    resolve_dataset,
)
from pipelines.tuning import SearchSpace, TuningConfig, TuningResult

__all__ = ["TrainParams", "TrainingData", "TrainingDataError", "TrainingReport",
           "build_model", "impossible_power_probes", "log_and_register", "make_report",
           "prepare_data", "promote", "resolve_dataset", "run_training", "tune_candidates"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


class TrainParams(BaseModel):
    """Parameters of a training run (the Prefect UI shows them as a form)."""

    reason: str = Field("manual", description="Why this run was started (schedule, drift, "
                        "demo, manual); recorded as an MLflow tag")
    dataset_id: str | None = Field(None, description="Dataset to train on; empty = the newest "
                                   "one that passed validation")
    kinds: list[Literal["iforest", "eif", "isotree"]] = Field(
        ["iforest", "eif", "isotree"], description="Detector families to tune")
    n_estimators: list[int] = Field([100, 200], description="Trees per forest (grid)")
    max_samples: list[int] = Field([256, 512], description="Rows drawn per tree (grid)")
    max_features: list[float] = Field([0.5, 1.0],
                                      description="Isolation Forest: share of features per tree")
    extension_levels: list[int] = Field([1, 3, 64], description="Extension levels of eif and "
                                        "isotree (grid); values >= n_features - 1 mean fully "
                                        "extended")
    alert_budget: float = Field(0.01, gt=0, lt=0.5, description="Share of sessions that may "
                                "alert; sets the stored threshold")
    eval_fraction: float = Field(0.3, gt=0.05, lt=0.9, description="Latest share of sessions "
                                 "held out for evaluation")
    inject_rate: float = Field(0.03, ge=0, le=0.5, description="Without dataset labels: share "
                               "of held-out sessions turned into labelled anomalies (0 = none)")
    probes: int = Field(200, ge=0, description="Held-out sessions rewritten to impossible "
                        "power that a model must flag (0 = no probe gate)")
    min_probe_recall: float = Field(0.9, ge=0, le=1, description="Share of probes a model "
                                    "must flag to be chosen or promoted")
    promotion_margin: float = Field(0.01, ge=0, le=1, description="Relative improvement over "
                                    "the champion required for promotion")
    tolerance: float = Field(0.005, ge=0, description="PR-AUC differences below this are ties; "
                             "ties go to the cheaper candidate")
    seed: int = Field(42, description="Seed of split, detectors, injection and Monte Carlo")
    n_jobs: int = Field(2, ge=1, le=64, description="Parallel candidate evaluations")
    em_draws: int = Field(5, ge=0, le=50, description="Feature subsets averaged for EM/MV")
    em_uniform: int = Field(10_000, ge=500, description="Uniform Monte Carlo points for EM/MV")
    log_figures: bool = Field(True, description="Log PNG figures to MLflow")

    def search_space(self) -> SearchSpace:
        return SearchSpace(kinds=tuple(self.kinds), n_estimators=tuple(self.n_estimators),
                           max_samples=tuple(self.max_samples),
                           max_features=tuple(self.max_features),
                           extension_levels=tuple(self.extension_levels))

    def tuning_config(self) -> TuningConfig:
        return TuningConfig(alert_budget=self.alert_budget, seed=self.seed, n_jobs=self.n_jobs,
                            tolerance=self.tolerance, em_draws=self.em_draws,
                            em_uniform=self.em_uniform, min_probe_recall=self.min_probe_recall)


@dataclass
class TrainingReport:
    """What a training run did, for the CLI, the flow artifacts and callers."""

    dataset_id: str
    experiment_id: str
    parent_run_id: str
    model_uri: str
    version: str
    chosen: str
    criterion: str
    decision: str
    reason: str
    candidates: list[dict]
    tuning_seconds: float
    total_seconds: float


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    log.info("%s %d/%d", stage, done, total, extra={"progress": (stage, done, total)})
    if progress is not None:
        progress(stage, done, total)


def tune_candidates(data: TrainingData, params: TrainParams,
                    progress: Progress | None = None) -> TuningResult:
    """Evaluate the grid on the split (in parallel) and choose by the documented rule."""
    from pipelines.tuning import tune

    def on_result(done: int, total: int, result: Any) -> None:
        _report(progress, f"tuning ({result.candidate.name})", done, total)

    result = tune(data.split, params.search_space(), params.tuning_config(), progress=on_result)
    log.info("chose %s by %s in %.1fs", result.best.candidate.name, result.criterion,
             result.seconds)
    return result


def build_model(data: TrainingData, tuning: TuningResult, params: TrainParams):
    """Refit the chosen candidate (deterministic: same seed) and package it."""
    from pipelines.model_package import SessionAnomalyModel

    best = tuning.best
    detector = best.candidate.build(params.seed, n_features=len(data.feature_columns))
    detector.fit(data.split.X_train)
    return SessionAnomalyModel(detector, best.threshold, data.feature_columns,
                               data.feature_version, data.split.X_train, params.alert_budget,
                               best.candidate.name, seed=params.seed)


def log_and_register(settings: Settings, data: TrainingData, tuning: TuningResult, model: Any,
                     params: TrainParams) -> tuple[Any, str]:
    """Log parent and child runs plus the model, and register it as a new version."""
    from pipelines import tracking

    logged = tracking.log_tuning(settings, data.info, data.split, tuning, model,
                                 params.model_dump(), seed=params.seed,
                                 figures=params.log_figures)
    tags = {"dataset_id": data.dataset_id, "dataset_hash": data.info.content_hash,
            "feature_version": data.feature_version, "candidate": tuning.best.candidate.name,
            "threshold": f"{model.threshold:.6g}", "alert_budget": str(params.alert_budget),
            "label_source": data.info.label_source, "run_id": logged.parent_run_id}
    version = tracking.register(settings, logged.model_uri, tags)
    return logged, version


def promote(settings: Settings, version: str, model: Any, data: TrainingData,
            tuning: TuningResult, params: TrainParams):
    """Champion/challenger decision for the new version (see `pipelines.registry`)."""
    from pipelines.registry import promote_if_better

    return promote_if_better(settings, version, model, data.split, tuning.criterion,
                             margin=params.promotion_margin, seed=params.seed,
                             min_probe_recall=params.min_probe_recall)


def make_report(data: TrainingData, tuning: TuningResult, logged: Any, version: str,
                decision: Any, started: float) -> TrainingReport:
    from pipelines.tracking import candidates_table

    table = json.loads(candidates_table(tuning).to_json(orient="records"))  # NaN -> None
    return TrainingReport(data.dataset_id, logged.experiment_id, logged.parent_run_id,
                          logged.model_uri, version, tuning.best.candidate.name,
                          tuning.criterion, decision.decision, decision.reason, table,
                          tuning.seconds, time.perf_counter() - started)


def run_training(settings: Settings, dataset: Any | None = None,
                 params: TrainParams | None = None,
                 progress: Progress | None = None) -> TrainingReport:
    """Train, log, register and (maybe) promote, in one call.

    Args:
        settings: MLflow store, model name and data dir.
        dataset: a `pipelines.datasets.Dataset`; None resolves `params.dataset_id`
            (or the newest validated dataset).
        params: training parameters (defaults if None).
        progress: optional `progress(stage, done, total)` callback.

    Returns:
        The report: version, decision and reason, the candidates table.

    Raises:
        TrainingDataError: no usable dataset.
    """
    params = params or TrainParams()
    started = time.perf_counter()
    dataset = dataset if dataset is not None else resolve_dataset(settings, params.dataset_id)
    _report(progress, "loading dataset", 0, 1)
    data = prepare_data(dataset, params)
    tuning = tune_candidates(data, params, progress)
    _report(progress, "logging to MLflow", 0, 1)
    model = build_model(data, tuning, params)
    logged, version = log_and_register(settings, data, tuning, model, params)
    decision = promote(settings, version, model, data, tuning, params)
    _report(progress, "done", 1, 1)
    return make_report(data, tuning, logged, version, decision, started)
