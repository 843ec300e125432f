"""Evaluation on real ACN sessions: inject labelled faults, run the real pipeline, measure.

Protocol (docs/evaluation.md):

1. `inject_anomalies(records, rate, seed)` turns a share of the real sessions
   into labelled faults. The labels stay here: the pipeline sees the sessions
   unlabelled, as a user's would be.
2. Two scenarios. **Time split**: the latest `eval_fraction` of sessions by
   connectionTime is scored, the earlier ones train (no session or later time
   leaks into training). **Cross-site**: all sessions of one site train, all of
   another are scored.
3. Training sessions go through `run_ingest` (Great Expectations, quarantine,
   versioned dataset) and `run_training` (tuning, MLflow, registry, promotion),
   in a private data dir per scenario and one private sqlite MLflow per run.
4. The scored sessions are ingested too, only to learn which rows the suites
   would quarantine. Then every scored session is encoded as the Kafka message
   the replay producer sends and pushed through the worker's own Decode and
   Score steps with the `@champion` from `load_champion`: the scores,
   thresholds and explanations are the ones production publishes.
5. The seed baseline (`evaluation.baseline`) learns from the same validated
   training rows and scores the same sessions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.baseline import SEED_GRID, seed_baseline
from evaluation.drift import WEEK_S, drift_section
from evaluation.report import EXPECTED_FEATURES, ScenarioOutcome, scenario_metrics
from evaluation.scoring import feature_frame_end_times, score_through_serving, serving_model
from evaluation.split import EvaluationError, split_by_site, split_by_time, time_range
from pipelines.data.anomalies import inject_anomalies
from pipelines.data.ingest import FileSource, IngestReport, ValidationFailed, run_ingest
from pipelines.models.registry import ChampionModel
from pipelines.models.selection import NoEligibleCandidate
from pipelines.models.train_params import TrainParams
from pipelines.models.training import run_training
from pipelines.models.training_data import resolve_dataset
from pipelines.progress import Progress
from pipelines.settings import Settings

MIN_SESSIONS = 100


@dataclass(frozen=True)
class EvaluationConfig:
    """What to inject, how to split, and the training grid.

    Args:
        rate: share of sessions turned into labelled faults.
        seed: seed of the injection, training and baseline.
        eval_fraction: latest share of sessions scored in the time split.
        alert_budget: share of sessions allowed to alert (model and baseline thresholds).
        train_site, score_site: the cross-site scenario (names of `pipelines.data.synth.SITES`);
            None skips it.
        train: `TrainParams` fields overriding the defaults (the grid, `n_jobs`...).
        baseline_grid: `GridSearchCV` grid of the seed baseline (None = `SEED_GRID`).
        max_failure_rate: ingest refuses a training batch with more failing rows.
    """

    rate: float = 0.03
    seed: int = 1
    eval_fraction: float = 0.3
    alert_budget: float = 0.01
    train_site: str | None = "caltech"
    score_site: str | None = "jpl"
    train: dict[str, Any] = field(default_factory=dict)
    baseline_grid: dict[str, Sequence[Any]] | None = None
    max_failure_rate: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.rate < 0.5:
            raise ValueError(f"rate must be in (0, 0.5), got {self.rate}")
        if not 0.05 <= self.eval_fraction <= 0.9:
            raise ValueError(f"eval_fraction must be in [0.05, 0.9], got {self.eval_fraction}")


@dataclass
class EvaluationResult:
    """The JSON report and, per scenario title, the arrays behind the PR curves."""

    report: dict
    curves: dict[str, dict[str, np.ndarray]]


def _ingest(settings: Settings, path: Path, records: Sequence[dict], **options) -> IngestReport:
    """`run_ingest` of `records` through an export file, removed after (the dataset keeps them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"_meta": {"generator": "evguard evaluate"},
                                "_items": list(records)}))
    try:
        return run_ingest(settings, FileSource((str(path),)), **options)
    finally:
        path.unlink()


def _quarantined_ids(path: str | None) -> set[str]:
    if not path:
        return set()
    with open(path) as handle:
        return {str(json.loads(line).get("sessionID")) for line in handle if line.strip()}


def run_scenario(settings: Settings, workdir: Path, title: str, train: Sequence[dict],
                 scored: Sequence[dict], labels: dict[str, str], config: EvaluationConfig,
                 progress: Progress,
                 training_progress: Progress | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Ingest and train on `train`, then score `scored` through the serving steps.

    Returns:
        `(scenario report, PR-curve arrays)`.
    """
    if len(train) < MIN_SESSIONS or len(scored) < MIN_SESSIONS:
        raise EvaluationError(f"{title}: {len(train)} training and {len(scored)} scored "
                              f"sessions; each needs at least {MIN_SESSIONS}")
    # one sqlite store per evaluation (creating one costs seconds), one model name per scenario
    s = settings.model_copy(update={
        "data_dir": workdir / "data", "state_dir": workdir / "state",
        "mlflow_tracking_uri": f"sqlite:///{workdir.parent.resolve() / 'mlflow.db'}",
        "model_name": f"{settings.model_name}-eval-{workdir.name}"})
    steps = 6
    progress(f"{title}: ingest training sessions", 0, steps)
    ingest = _ingest(s, workdir / "train.json", train, max_failure_rate=config.max_failure_rate,
                     fresh=True)
    progress(f"{title}: train, register, promote", 1, steps)
    params = TrainParams(**{"alert_budget": config.alert_budget, "seed": config.seed,
                            "reason": "evaluation", "log_figures": False, **config.train})
    training = run_training(s, resolve_dataset(s, ingest.dataset_id), params,
                            progress=training_progress)
    progress(f"{title}: validate scored sessions", 2, steps)
    # the stream is not refused as a batch, so no failure rate refuses these rows either
    scored_ingest = _ingest(s, workdir / "scored.json", scored, max_failure_rate=1.0)
    quarantined = _quarantined_ids(scored_ingest.quarantine_path)
    progress(f"{title}: score through the serving steps", 3, steps)
    model, promoted = serving_model(s, training.version)
    # the worker has already seen the training sessions of the sites it scores (time split);
    # a site scored only after training elsewhere starts with no station history (cross-site)
    sites = {r.get("siteID") for r in scored}
    served = score_through_serving(model, scored, s,
                                   history=[r for r in train if r.get("siteID") in sites])
    progress(f"{title}: seed baseline", 4, steps)
    trained_on = resolve_dataset(s, ingest.dataset_id).records()
    baseline = seed_baseline(trained_on, scored, config.alert_budget, config.seed,
                             grid=config.baseline_grid or SEED_GRID, n_jobs=params.n_jobs)
    ids = [str(r.get("sessionID")) for r in scored]
    outcome = ScenarioOutcome(
        types=np.array([labels.get(i, "") for i in ids], dtype=object),
        quarantined=np.array([i in quarantined for i in ids]),
        dead_lettered=served.dead_lettered, scores=served.scores, alerts=served.alerts,
        threshold=model.threshold, top_features=served.top_features,
        baseline_scores=baseline.scores, baseline_threshold=baseline.threshold,
        baseline_params=baseline.best_params, rules=served.rules,
        model_scores=served.model_scores)
    metrics = scenario_metrics(outcome, config.alert_budget)
    metrics["monitoring_recalibration"] = _with_recalibration(s, model, served.scores, scored,
                                                              outcome.types, config.alert_budget)
    progress(f"{title}: done", steps, steps)
    train_ids = {str(r.get("sessionID")) for r in train}
    report = {
        "title": title,
        "train": {"sessions": len(train), "time_range": time_range(train),
                  "injected": sum(1 for i in train_ids if i in labels),
                  "quarantined_by_ingest": ingest.quarantined, "dataset_id": ingest.dataset_id,
                  "training_rows": len(trained_on)},
        "scored": {"sessions": len(scored), "time_range": time_range(scored)},
        "model": {"name": s.model_name, "version": training.version, "candidate": training.chosen,
                  "decision": training.decision, "reason": training.reason,
                  "scored_with_champion": promoted, "threshold": model.threshold,
                  "tuning_seconds": round(training.tuning_seconds, 1)},
        "baseline": {"params": baseline.best_params, "training_rows": baseline.train_rows,
                     "features": list(baseline.features), "cv_mean_score": baseline.cv_mean_score,
                     "fit_seconds": round(baseline.fit_seconds, 1)},
        "serving": {"batches": served.batches, "seconds": round(served.seconds, 2),
                    "dead_letter_reasons": served.dead_letter_reasons},
        "metrics": metrics,
        "workdir": str(workdir),
    }
    curves = {"labels": outcome.types != "", "evguard": served.scores,
              "evguard_model": served.model_scores,
              "baseline": baseline.scores, "evguard_threshold": model.threshold,
              "baseline_threshold": baseline.threshold}
    return report, curves


def _with_recalibration(settings: Settings, model: ChampionModel, scores: np.ndarray,
                        scored: Sequence[dict], types: np.ndarray, alert_budget: float) -> dict:
    """False alerts and recall when monitoring re-calibrates the threshold every week from
    the newest stored scores (its settings), the scored sessions taken as they arrive."""
    section = drift_section(
        scores, feature_frame_end_times(scored) / 1e9, types,
        {alert_budget: model.original_threshold}, model.reference.get("score"),
        max_scores=settings.recalibration_window, step_s=WEEK_S,
        policy_options={"tolerance": settings.recalibration_tolerance,
                        "max_factor": settings.recalibration_max_factor,
                        "min_tail": settings.recalibration_min_tail})
    return {"step_s": WEEK_S, "window_scores": settings.recalibration_window,
            **section["budgets"][str(alert_budget)]["recalibrated"]}


def run_evaluation(settings: Settings, records: Sequence[dict], config: EvaluationConfig,
                   workdir: Path, progress: Progress | None = None,
                   training_progress: Progress | None = None) -> EvaluationResult:
    """Inject faults into real sessions and evaluate the time split and the cross-site case.

    Args:
        settings: the base settings (serving options, model name); data, state and
            MLflow are redirected under `workdir`.
        records: real ACN sessions (e.g. `pipelines.data.exports.load_exports(paths)`).
        config: injection, split and training parameters.
        workdir: private directory for each scenario's data dir and MLflow store.
        progress: `progress(stage, done, total)` of the evaluation's stages.
        training_progress: the same, of the candidates within each training.

    Returns:
        The report (JSON-safe) and the PR-curve arrays.

    A scenario whose training sessions fail validation, or where no candidate
    passes the training gates, is listed under `failed` with the reason; the
    other scenario is still evaluated.

    Raises:
        EvaluationError: too few sessions, or unknown sites.
    """
    progress = progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    injected, labels = inject_anomalies(list(records), config.rate, config.seed)
    plans = [("time_split", f"Time split: latest {config.eval_fraction:.0%} scored",
              split_by_time(injected, config.eval_fraction))]
    skipped = {}
    if config.train_site and config.score_site:
        train, scored = split_by_site(injected, config.train_site, config.score_site)
        if min(len(train), len(scored)) >= MIN_SESSIONS:
            title = f"Cross-site: train {config.train_site}, score {config.score_site}"
            plans.append(("cross_site", title, (train, scored)))
        else:
            skipped["cross_site"] = (f"{len(train)} {config.train_site} and {len(scored)} "
                                     f"{config.score_site} sessions in the input; "
                                     f"{MIN_SESSIONS} of each needed")
    scenarios, curves, failed = {}, {}, {}
    for key, title, (train, scored) in plans:
        try:
            scenarios[key], curves[title] = run_scenario(settings, Path(workdir) / key, title,
                                                         train, scored, labels, config, progress,
                                                         training_progress)
        except (ValidationFailed, NoEligibleCandidate) as exc:  # the other scenario still counts
            failed[key] = f"{title}: {exc}"
    report = {
        "sessions": len(records), "injected": len(labels), "rate": config.rate,
        "seed": config.seed, "eval_fraction": config.eval_fraction,
        "alert_budget": config.alert_budget, "train_params": config.train,
        "expected_features": {k: list(v) for k, v in EXPECTED_FEATURES.items()},
        "scenarios": scenarios, "skipped": skipped, "failed": failed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return EvaluationResult(report, curves)
