"""Training: dataset -> tuning -> MLflow -> registry -> champion/challenger, without Prefect.

`run_training(settings, dataset, params)` runs every stage; `flows/train.py`
runs the same stage functions as Prefect tasks. Each stage is logged and reported
to an optional `progress(stage, done, total)` callback.

The data side (dataset resolution, time split, labels, probes) is in
`pipelines.models.training_data`, the parameters in `pipelines.models.train_params`,
the champion/challenger decision in `pipelines.models.promotion`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from pipelines.data.datasets import Dataset
from pipelines.models import tracking
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.candidates import CandidateResult
from pipelines.models.estimators import fit_trimmed
from pipelines.models.promotion import PromotionDecision, promote_if_better
from pipelines.models.tracking import LoggedTuning, candidates_table
from pipelines.models.train_params import TrainParams
from pipelines.models.training_data import TrainingData, prepare_data, resolve_dataset
from pipelines.models.tuning import TuningResult, tune
from pipelines.progress import Progress
from pipelines.settings import Settings

log = logging.getLogger(__name__)


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
    log.info("%s %d/%d", stage, done, total)
    if progress is not None:
        progress(stage, done, total)


def tune_candidates(data: TrainingData, params: TrainParams,
                    progress: Progress | None = None) -> TuningResult:
    """Evaluate the grid on the split (in parallel) and choose by the documented rule."""

    def on_result(done: int, total: int, result: CandidateResult) -> None:
        _report(progress, f"tuning ({result.candidate.name})", done, total)

    result = tune(data.split, params.search_space(), params.tuning_config(), progress=on_result)
    log.info("chose %s by %s in %.1fs", result.best.candidate.name, result.criterion,
             result.seconds)
    return result


def build_model(data: TrainingData, tuning: TuningResult,
                params: TrainParams) -> SessionAnomalyModel:
    """Refit the chosen candidate (deterministic: same seed, same trim) and package it."""
    best = tuning.best
    detector = best.candidate.build(params.seed, n_features=len(data.feature_columns))
    fit_trimmed(detector, data.split.X_train, params.trim)
    return SessionAnomalyModel(detector, best.threshold, data.feature_columns,
                               data.feature_version, data.split.X_train, params.alert_budget,
                               best.candidate.name, seed=params.seed)


def log_and_register(settings: Settings, data: TrainingData, tuning: TuningResult,
                     model: SessionAnomalyModel, params: TrainParams) -> tuple[LoggedTuning, str]:
    """Log parent and child runs plus the model, and register it as a new version."""
    logged = tracking.log_tuning(settings, data.info, data.split, tuning, model,
                                 params.model_dump(), seed=params.seed,
                                 figures=params.log_figures)
    tags = {"dataset_id": data.dataset_id, "dataset_hash": data.info.content_hash,
            "feature_version": data.feature_version, "candidate": tuning.best.candidate.name,
            "threshold": f"{model.threshold:.6g}", "alert_budget": str(params.alert_budget),
            "label_source": data.info.label_source, "run_id": logged.parent_run_id}
    version = tracking.register(settings, logged.model_uri, tags)
    return logged, version


def promote(settings: Settings, version: str, model: SessionAnomalyModel, data: TrainingData,
            tuning: TuningResult, params: TrainParams) -> PromotionDecision:
    """Champion/challenger decision for the new version (see `pipelines.models.promotion`)."""
    return promote_if_better(settings, version, model, data.split, tuning.criterion,
                             margin=params.promotion_margin, seed=params.seed,
                             min_probe_recall=params.min_probe_recall)


def make_report(data: TrainingData, tuning: TuningResult, logged: LoggedTuning, version: str,
                decision: PromotionDecision, started: float) -> TrainingReport:
    table = json.loads(candidates_table(tuning).to_json(orient="records"))  # NaN -> None
    return TrainingReport(data.dataset_id, logged.experiment_id, logged.parent_run_id,
                          logged.model_uri, version, tuning.best.candidate.name,
                          tuning.criterion, decision.decision, decision.reason, table,
                          tuning.seconds, time.perf_counter() - started)


def run_training(settings: Settings, dataset: Dataset | None = None,
                 params: TrainParams | None = None,
                 progress: Progress | None = None) -> TrainingReport:
    """Train, log, register and (maybe) promote, in one call.

    Args:
        settings: MLflow store, model name and data dir.
        dataset: a `pipelines.data.datasets.Dataset`; None resolves `params.dataset_id`
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
